"""Prints the marching_tets benchmark tables (see taichi_dr/bench/marching_tets.py). Usage: python benchmarks/bench_marching_tets.py [--quick]"""
import sys

from taichi_dr.bench.marching_tets import main

if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

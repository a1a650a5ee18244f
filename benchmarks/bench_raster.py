"""Prints the raster benchmark tables (see taichi_dr/bench/raster.py). Usage: python benchmarks/bench_raster.py [--quick]"""
import sys

from taichi_dr.bench.raster import main

if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

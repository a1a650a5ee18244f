"""Prints the texture benchmark table (see taichi_dr/bench/texture.py). Usage: python benchmarks/bench_texture.py [--quick]"""
import sys

from taichi_dr.bench.texture import main

if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

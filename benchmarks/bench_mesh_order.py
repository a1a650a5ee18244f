"""Prints the mesh-order benchmark (see taichi_dr/bench/mesh_order.py). Usage: python benchmarks/bench_mesh_order.py [--quick]"""
import os
import sys

# before torch loads: its OpenMP threads must sleep, not spin, between ops, and large tensors
# should sit on huge pages (fewer page faults); see README, Benchmarks
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from taichi_dr.bench.mesh_order import main  # noqa: E402  (imports torch)

if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

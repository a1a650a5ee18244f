"""Benchmark implementations shared by ``benchmarks/*.py`` and ``taichi-dr bench``.

Timings are medians over repeats after one warm-up call; the first call's extra time (Taichi's
JIT compile, or loading it from the offline cache) is reported separately as "compile".
"""
import statistics
import time
from typing import Callable, Tuple

__all__ = ["timed", "timed_stats", "table", "refinement_mesh"]


def _sync() -> None:
    """Wait for queued GPU work (CUDA launches return before the kernel ends); no-op on the CPU."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed_stats(fn: Callable[[], object], repeats: int = 5) -> Tuple[float, float, float]:
    """Returns (first-call seconds minus median, min seconds, median seconds) of ``fn()``."""
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync()
        runs.append(time.perf_counter() - t)
    med = statistics.median(runs)
    return max(first - med, 0.0), min(runs), med


def timed(fn: Callable[[], object], repeats: int = 5) -> Tuple[float, float]:
    """Returns (first-call seconds minus median, median seconds) of ``fn()``."""
    compile_s, _, med = timed_stats(fn, repeats)
    return compile_s, med


def table(head, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    fmt = " | ".join(f"{{:>{w}}}" for w in widths)
    line = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*head), line] + [fmt.format(*r) for r in rows])


def refinement_mesh(grid: int):
    """A refinement-pass mesh: marching tets of a bumpy sphere on a DMTet grid (its irregular triangles,
    numbered in the grid's edge order), split twice at edge midpoints as the reconstruction splits a
    DMTet mesh of up to 10,000 faces: ``(verts [V, 3] float64, faces [F, 3] int64)``, in subdivision order."""
    import torch

    from taichi_dr import TetGrid, marching_tets
    from taichi_dr.recon.subdivide import subdivide_midpoint

    g = TetGrid.create(grid, 2.0)
    p = g.verts.double()
    sdf = p.norm(dim=1) - 0.7 - 0.05 * torch.sin(7 * p[:, 0]) * torch.sin(5 * p[:, 1])
    v, f = marching_tets(p, sdf, g)
    return subdivide_midpoint(v.detach(), f.long(), times=2)

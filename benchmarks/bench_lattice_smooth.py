"""Seconds per DMTet smooth step (``LatticeSmoother``: forward + backward of ``(I + λL)⁻¹`` on the SDF
and the three offsets), against a sparse-LU peer (scipy ``splu``, what ``recon/large_steps.py`` uses
on meshes). Usage: python benchmarks/bench_lattice_smooth.py [--quick]"""
import os
import sys
import time

# before torch loads: its OpenMP threads must sleep, not spin, between ops (see README, Benchmarks)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.sparse import diags, identity, kron  # noqa: E402
from scipy.sparse.linalg import splu  # noqa: E402

from taichi_dr.bench import timed  # noqa: E402
from taichi_dr.geometry.lattice_smooth import LatticeSmoother  # noqa: E402


def _lattice_system(n: int, lam: float):
    adj = diags([np.ones(n - 1), np.ones(n - 1)], [1, -1], shape=(n, n))
    path = diags(np.asarray(adj.sum(axis=1)).ravel()) - adj
    eye = identity(n)
    lap = kron(kron(path, eye), eye) + kron(kron(eye, path), eye) + kron(kron(eye, eye), path)
    return (identity(n ** 3) + lam * lap).tocsc()


def main(quick: bool = False) -> None:
    grids = (16, 40) if quick else (40, 64, 96, 128)
    print(f"{'grid':>5s} {'values':>9s} {'DCT s/step':>10s} {'splu factor s':>13s} {'splu s/step':>11s} "
          f"{'ratio':>6s}", flush=True)
    for g in grids:
        n = g + 1
        smoother = LatticeSmoother(n, 1.0)
        u = torch.randn(n ** 3, 4, requires_grad=True)

        def dct_step():
            smoother(u).sum().backward()  # one DMTet step: the solve and its adjoint

        t_dct = timed(dct_step)[1]
        if g <= 40:  # the LU fill-in grows ~n^4: grid 40 already takes ~50 s to factor, beyond that minutes and GBs
            t0 = time.perf_counter()
            lu = splu(_lattice_system(n, 1.0))
            t_fact = time.perf_counter() - t0
            b = np.random.default_rng(0).standard_normal((n ** 3, 4))
            t_lu = timed(lambda: (lu.solve(b), lu.solve(b)), repeats=3)[1]
            print(f"{g:5d} {4 * n ** 3:9d} {t_dct:10.3f} {t_fact:13.2f} {t_lu:11.3f} {t_lu / t_dct:6.1f}",
                  flush=True)
        else:
            print(f"{g:5d} {4 * n ** 3:9d} {t_dct:10.3f} {'-':>13s} {'-':>11s} {'-':>6s}", flush=True)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

"""Smooth-step solve benchmark: ``x = (I + λL)⁻¹ u`` for three columns (the refinement pass does two
a step: positions and their gradient) on refinement-pass meshes (marching tets on grids 16 / 24 /
32, subdivided twice: 29k / 65k / 115k vertices), SuperLU's own solve against our Taichi
substitution with the same factors (recon/_trisolve_kernels.py), timed in one process."""
import time

import torch

from taichi_dr.bench import refinement_mesh, table, timed

__all__ = ["main"]


def main(quick: bool = False) -> None:
    from taichi_dr.recon.large_steps import SmoothParametrization

    torch.set_num_threads(2)
    lam = 25.0  # the refinement's default strength (ReconConfig.refine_smoothing)
    rows = []
    for grid in ([16, 24] if quick else [16, 24, 32]):
        v, f = refinement_mesh(grid)
        nv = v.shape[0]
        u = torch.randn(nv, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        SmoothParametrization(f, nv, lam, solver="superlu")  # warm-up: first-touch of SuperLU's memory
        t = time.perf_counter()
        ref = SmoothParametrization(f, nv, lam, solver="superlu")
        t_fac = time.perf_counter() - t
        t = time.perf_counter()
        ours = SmoothParametrization(f, nv, lam, solver="taichi")
        t_ours = time.perf_counter() - t
        nnz = ours._lu.L.nnz + ours._lu.U.nnz
        reps = 5 if nv > 100_000 else 11
        _, t_s = timed(lambda: ref(u), reps)
        c, t_t = timed(lambda: ours(u), reps)
        err = float((ours(u) - ref(u)).abs().max())
        rows.append([nv, f"{nnz / 1e6:.2f}", f"{t_fac:.2f}", f"{t_ours - t_fac:+.2f}", f"{t_s * 1e3:.1f}",
                     f"{t_t * 1e3:.1f}", f"{t_s / t_t:.2f}", f"{err:.1e}", f"{c:.2f}"])
    print(f"smooth-step solve (I + {lam:g} L) x = u, 3 columns, float64 (CPU; medians)")
    print(table(["vertices", "L+U non-zeros M", "factorise s", "copy factors s", "SuperLU solve ms",
                 "Taichi solve ms", "speed-up", "max |diff|", "compile s"], rows))
    print("factorise: SuperLU, minimum degree on A + Aᵀ, no pivoting; copy factors: the extra set-up of"
          " solver='taichi' (its factors out of SuperLU as sorted CSR)")


if __name__ == "__main__":
    main()

"""Seconds per DMTet pass step spent on the SDF and offsets (forward + backward of ``DMTet()``, no
marching tets or rendering), MLP mode against direct mode with the defaults' smooth steps, and the
MLP with the grid's positional encoding recomputed every step (the peer the cached encoding
replaced). Why ``--sdf-mode mlp`` costs more on finer grids: the network runs over every grid vertex.
Then, with the grid fitted to a sphere, a loss on the marching-tets mesh (what a reconstruction
step reads: the ends of sign-changing edges) through autograd over every vertex against
``DMTet.forward(grad_rows=surface_rows)`` (round 35: autograd on those rows only).
Usage: python benchmarks/bench_dmtet_mlp.py [--quick]"""
import os
import sys

# before torch loads: its OpenMP threads must sleep, not spin, between ops (see README, Benchmarks)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

from taichi_dr.bench import table, timed  # noqa: E402  (imports torch)
from taichi_dr.geometry.dmtet import DMTet, positional_encoding  # noqa: E402


def main(quick: bool = False) -> None:
    rows = []
    for g in ((12,) if quick else (40, 64, 96)):
        # 3 x 64 hidden, DMTet's default 4 frequencies (the README's table; reconstruction uses 6 since round 26)
        mlp = DMTet(grid_resolution=g, mode="mlp")
        direct = DMTet(grid_resolution=g, mode="direct", smoothing=1.0)  # the defaults' smooth steps

        def step(m):
            sdf, off = m()
            (sdf.sum() + off.sum()).backward()

        def mlp_encoding_each_step():
            out = mlp.net(positional_encoding(mlp.verts / (mlp.scale / 2), mlp.multires))
            (out[:, 0].sum() + (0.5 * mlp.cell * out[:, 1:].tanh()).sum()).backward()

        t_mlp = timed(lambda: step(mlp))[1]
        t_peer = timed(mlp_encoding_each_step)[1]
        t_direct = timed(lambda: step(direct))[1]
        rows.append((g, mlp.verts.shape[0], f"{t_direct:.3f}", f"{t_mlp:.3f}", f"{t_peer:.3f}",
                     f"{t_peer / t_mlp:.2f}", f"{t_mlp / t_direct:.1f}"))
    print(table(("grid", "vertices", "direct s/step", "MLP s/step", "MLP, encoding each step", "peer / MLP",
                 "MLP / direct"), rows), flush=True)
    rows = []
    for g in ((12,) if quick else (40, 64)):
        mlp = DMTet(grid_resolution=g, mode="mlp", multires=6)  # reconstruction's 6 frequencies
        mlp.init_sphere(0.6, steps=60 if quick else 300)

        def mesh_step(grad_rows):
            mlp.zero_grad(set_to_none=True)
            sdf, off = mlp(grad_rows=grad_rows)
            v, _ = mlp.mesh(sdf, off)
            (v ** 2).sum().backward()

        with torch.no_grad():
            k = mlp.surface_rows(mlp()[0]).numel()
        t_all = timed(lambda: mesh_step(None))[1]
        t_rows = timed(lambda: mesh_step(mlp.surface_rows))[1]
        n = mlp.verts.shape[0]
        rows.append((g, n, f"{k} ({100 * k / n:.0f} %)", f"{t_all:.3f}", f"{t_rows:.3f}", f"{t_all / t_rows:.2f}"))
    print("\nMLP mode, a loss on the marching-tets mesh of a sphere (forward + marching tets + backward)")
    print(table(("grid", "vertices", "rows a mesh loss reads", "autograd on all s/step", "grad_rows s/step",
                 "speed-up"), rows), flush=True)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

"""Marching-tets benchmark: forward and backward on grids of 0.2 M, 1.5 M and 12 M tets, and
scikit-image's marching_cubes on a voxel grid with the same vertex count (when installed); also the
SDF regulariser over the same grid's edges (``sdf_reg_loss``, forward + backward: the DMTet pass
evaluates both every step)."""
import time

import torch

from taichi_dr.bench import table, timed

__all__ = ["main"]


def main(quick: bool = False) -> None:
    from taichi_dr import TetGrid, marching_tets, sdf_reg_loss

    torch.set_num_threads(2)
    rows = []
    for res in ([32, 64] if quick else [32, 64, 128]):
        t = time.perf_counter()
        g = TetGrid.create(res, 2.0)
        t_grid = time.perf_counter() - t
        sdf = (g.verts.norm(dim=1) - 0.7).requires_grad_(True)
        verts = g.verts.clone().requires_grad_(True)

        def fwd():  # the grid itself: lattice path (indices from arithmetic)
            return marching_tets(verts, sdf, g)

        def fwd_arrays():  # its arrays: general path (any tet mesh)
            return marching_tets(verts, sdf, g.tets, g.edges, g.tet_edges)

        reps = 5 if res >= 128 else 11
        c, t_f = timed(fwd, reps)
        _, t_a = timed(fwd_arrays, reps)
        mv, faces = fwd()
        loss = mv.sum()

        def bwd():
            loss.backward(retain_graph=True)
        _, t_b = timed(bwd, reps)
        def reg():
            sdf.grad = None
            sdf_reg_loss(sdf, g.edges).backward()
        _, t_r = timed(reg, reps)
        mc = "not installed"  # scikit-image is optional: pip install scikit-image to compare
        try:
            from skimage.measure import marching_cubes

            n = res + 1
            lin = torch.linspace(-1, 1, n)
            vol = (torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).norm(dim=-1) - 0.7).numpy()
            _, t_mc = timed(lambda: marching_cubes(vol, 0.0), reps)
            mc = f"{t_mc * 1e3:.1f}"
        except ImportError:
            pass
        rows.append([res, g.tets.shape[0], g.verts.shape[0], faces.shape[0], f"{t_grid:.2f}", f"{t_f * 1e3:.1f}",
                     f"{t_a * 1e3:.1f}", f"{t_b * 1e3:.1f}", mc, f"{t_r * 1e3:.1f}", f"{c:.2f}"])
    print("marching_tets (CPU, sphere SDF; medians)")
    print(table(["grid", "tets", "verts", "triangles", "grid build s", "forward ms", "forward (arrays) ms",
                 "backward ms", "skimage MC ms", "sdf_reg fwd+bwd ms", "compile s"], rows))
    print("forward: marching_tets(verts, sdf, grid) (lattice path); arrays: marching_tets(verts, sdf, tets, edges,"
          " tet_edges) (general path, identical output)")


if __name__ == "__main__":
    main()

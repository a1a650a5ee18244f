"""Mesh-order benchmark: what the refinement pass' renders cost with its faces in subdivision order and
in space order (``mesh.spatial_order``, round 35), timed in one process.

The refinement pass renders its mesh four views at a time, 256² (128² images, 2×2 supersampled).
Its mesh is the DMTet mesh split twice at edge midpoints, which lists every face's first child,
then every second child, ...: consecutive faces lie far apart. Timed: rasterize + interpolate +
antialias, forward and backward.
"""
import torch

from taichi_dr.bench import refinement_mesh, table, timed

__all__ = ["main"]


def _render_ops(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor, res: int):
    """One forward and backward of what every refinement step runs on the geometry."""
    from taichi_dr import antialias, interpolate, rasterize
    from taichi_dr.camera import transform_pos

    def run():
        v = verts.clone().requires_grad_(True)
        clip = transform_pos(mvp, v)
        rast, _ = rasterize(clip, faces, (res, res), grad_db=False)
        attr, _ = interpolate(v, rast, faces)
        img = antialias(torch.cat([attr, (rast[..., 3:] > 0).to(attr.dtype)], -1), rast, clip, faces)
        img.sum().backward()
    return run


def main(quick: bool = False) -> None:
    from taichi_dr.camera import orbit_views, perspective
    from taichi_dr.mesh import spatial_order

    torch.set_num_threads(2)
    c2w = orbit_views(4, 4.0, elevation_deg=[20.0, -10.0, 35.0, 5.0])
    proj = perspective(0.6911, 1.0, 0.1, 100.0)  # NeRF-synthetic's 39.6° field of view, 4 from the object
    mvp = proj.unsqueeze(0) @ torch.linalg.inv(c2w)
    reps = 3 if quick else 7
    rows = []
    for grid in ([16] if quick else [16, 24, 32]):
        v, f = refinement_mesh(grid)
        v, f = v.float(), f.int()
        v2, f2 = spatial_order(v, f)[:2]
        c, t_sub = timed(_render_ops(v, f, mvp, 256), reps)
        _, t_sp = timed(_render_ops(v2, f2, mvp, 256), reps)
        rows.append([f"{f.shape[0]:,}", f"{t_sub * 1e3:.1f}", f"{t_sp * 1e3:.1f}", f"{t_sub / t_sp:.2f}", f"{c:.2f}"])
    print("refinement mesh, 4 views at 256²: rasterize + interpolate + antialias, forward + backward (CPU; medians)")
    print(table(["faces", "subdivision order ms", "space order ms", "speed-up", "compile s"], rows))


if __name__ == "__main__":
    main()

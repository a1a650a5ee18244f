"""The built-in demo: a coloured trefoil-knot tube, rendered by us into a NeRF-synthetic dataset,
then reconstructed from those images alone.

The trefoil is non-convex and has a hole (genus 1): a visual hull alone cannot recover it, so the
image and mask losses have real work to do. Its surface is the zero level set of
``|p − curve| − r``, extracted with our own marching tets on a fine grid; its albedo is a smooth
function of position.
"""
import math
import os
import time
from typing import Optional

import torch

from taichi_dr.camera import camera_position, fovy_from_fovx, orbit_views, perspective
from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.mesh import Mesh, save_obj

__all__ = ["trefoil_sdf", "trefoil_albedo", "make_demo_mesh", "make_demo_dataset", "run_demo"]

DEMO_FOVX = math.radians(45.0)
DEMO_RADIUS = 3.2
DEMO_SUPERSAMPLE = 4  # samples per pixel side of the demo images (box filter)


def _trefoil_curve(n: int = 720) -> torch.Tensor:
    t = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    c = torch.stack([torch.sin(t) + 2 * torch.sin(2 * t), torch.cos(t) - 2 * torch.cos(2 * t), -2.0 * torch.sin(3 * t)], 1)
    return c * 0.27


def trefoil_sdf(p: torch.Tensor, tube: float = 0.16, chunk: int = 65536) -> torch.Tensor:
    """Signed distance ``[P]`` to a trefoil tube (knot radius ≈ 0.8, tube radius ``tube``)."""
    curve = _trefoil_curve().to(p)
    out = []
    for s in range(0, p.shape[0], chunk):
        out.append(torch.cdist(p[s:s + chunk], curve).min(1)[0] - tube)
    return torch.cat(out)


def trefoil_albedo(p: torch.Tensor) -> torch.Tensor:
    """Smooth albedo ``[P, 3]`` in [0.1, 0.9] (linear colour) of a world position."""
    r = 0.5 + 0.4 * torch.sin(2.2 * p[:, 0] + 0.5)
    g = 0.5 + 0.4 * torch.sin(2.0 * p[:, 1] + 2.0)
    b = 0.5 + 0.4 * torch.cos(1.8 * p[:, 2] + 1.0 + p[:, 0])
    return torch.stack([r, g, b], 1)


def make_demo_mesh(resolution: int = 96) -> Mesh:
    """Ground-truth trefoil mesh with vertex colours (marching tets of :func:`trefoil_sdf`)."""
    from taichi_dr.runtime import torch_device_for_arch

    grid = TetGrid.create(resolution, 2.2).to(torch_device_for_arch())  # where the kernels read it
    verts, faces = marching_tets(grid.verts, trefoil_sdf(grid.verts), grid)
    return Mesh(verts.detach(), faces, colors=trefoil_albedo(verts.detach()))


def demo_cameras(n: int, elevations, azimuth_offset: float) -> torch.Tensor:
    return orbit_views(n, DEMO_RADIUS, elevations, azimuth_offset_deg=azimuth_offset)


def make_demo_dataset(root: str, res: int = 128, n_train: int = 24, n_test: int = 8, gt_res: int = 96) -> Mesh:
    """Render the demo shape into ``root`` (NeRF-synthetic layout) and save ``root/gt_mesh.obj``."""
    from taichi_dr.data.nerf import write_nerf_dataset
    from taichi_dr.render.pipeline import SimpleLight, render_mesh_views

    mesh = make_demo_mesh(gt_res)
    dev = mesh.verts.device
    light = SimpleLight.default(device=dev)
    fovy = fovy_from_fovx(DEMO_FOVX, res, res)
    proj = perspective(fovy, 1.0, 0.1, 100.0)
    for split, n, elev, off in (("train", n_train, [-25.0, 5.0, 30.0, 60.0], 0.0),
                                ("test", n_test, [15.0, 45.0, -10.0], 22.5)):
        c2w = demo_cameras(n, elev, off)
        mv = torch.linalg.inv(c2w)
        imgs = []
        for i in range(n):  # one view at a time keeps memory flat
            # 4×4 samples per pixel, box-filtered: pixels are area averages, like a path tracer's
            imgs.append(render_mesh_views(mesh.verts, mesh.faces, mesh.colors, (proj @ mv[i])[None].to(dev),
                                          camera_position(mv[i:i + 1]).to(dev), (res, res), light,
                                          supersample=DEMO_SUPERSAMPLE)[0])
        write_nerf_dataset(root, split, torch.stack(imgs), c2w, DEMO_FOVX)
    save_obj(os.path.join(root, "gt_mesh.obj"), mesh)
    return mesh


def run_demo(out_dir: str = "taichi_dr_out/demo", iters: Optional[int] = None, resume: bool = False,
             seed: int = 0, res: int = 128, config=None) -> dict:
    """Build the demo dataset under ``out_dir/dataset`` (once) and reconstruct it into ``out_dir``."""
    from taichi_dr.recon import ReconConfig, reconstruct

    data = os.path.join(out_dir, "dataset")
    if not os.path.isfile(os.path.join(data, "transforms_test.json")):
        t = time.time()
        make_demo_dataset(data, res=res)
        print(f"demo dataset: {data} ({time.time() - t:.1f} s)", flush=True)
    cfg = config if config is not None else ReconConfig(seed=seed)
    if iters is not None:
        cfg.iters = iters
    return reconstruct(data, out_dir, cfg, resume=resume, gt_mesh=os.path.join(data, "gt_mesh.obj"))

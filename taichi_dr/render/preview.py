"""``taichi-dr render``: a shaded, antialiased picture of any OBJ from an orbit view."""
import math
from typing import Tuple

import numpy as np
import torch

from taichi_dr.camera import camera_position, look_at, perspective
from taichi_dr.mesh import Mesh, load_obj
from taichi_dr.render.pipeline import SimpleLight, render_mesh_views

__all__ = ["render_mesh", "render_obj_to_png"]


def render_mesh(mesh: Mesh, res: int = 512, view: Tuple[float, float] = (30.0, 20.0)) -> np.ndarray:
    """Render ``mesh`` framed in view from azimuth/elevation ``view`` (degrees) on white.

    Returns:
        ``[res, res, 3]`` uint8 sRGB image, top row first (ready to save).
    """
    from taichi_dr.recon_outputs import to_srgb_u8

    if res < 1:
        raise ValueError(f"res: expected a positive size, got {res}")
    lo, hi = mesh.verts.min(0)[0], mesh.verts.max(0)[0]
    center, radius = (lo + hi) / 2, float((hi - lo).norm()) / 2
    az, el = (math.radians(a) for a in view)
    direction = torch.tensor([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    fovy = math.radians(35.0)
    dist = radius / math.sin(fovy / 2) * 1.05
    mv = look_at((center + dist * direction).tolist(), center.tolist())
    proj = perspective(fovy, 1.0, dist * 0.05, dist * 4)
    colors = mesh.colors if mesh.colors is not None else torch.full_like(mesh.verts, 0.7)
    # a head light from over the viewer's shoulder
    light = SimpleLight(direction + torch.tensor([0.0, 0.6, 0.0]), torch.full((3,), 0.3), torch.full((3,), 0.8))
    with torch.no_grad():
        img = render_mesh_views(mesh.verts.float(), mesh.faces, colors.float(), (proj @ mv)[None],
                                camera_position(mv[None]), (res, res), light, torch.ones(1, res, res, 3))
    return to_srgb_u8(img[0, ..., :3])


def render_obj_to_png(path: str, out: str, res: int = 512, view: Tuple[float, float] = (30.0, 20.0)) -> None:
    """Load the OBJ at ``path`` and write its rendering to the PNG ``out``."""
    from taichi_dr.recon_outputs import save_png

    save_png(out, render_mesh(load_obj(path), res, view))

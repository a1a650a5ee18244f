"""``taichi-dr render``: a shaded, antialiased picture of any OBJ, framed from an orbit view.

Nothing here renders by itself: the camera is :func:`~taichi_dr.camera.frame_sphere` around the
mesh's bounding sphere, the image is :func:`~taichi_dr.render.pipeline.render_mesh_views` (the one
mesh renderer: rasterize -> interpolate -> shade -> composite on white -> antialias) under a key
light from over the viewer's shoulder, and the file encoding is :func:`~taichi_dr.image.to_srgb_u8`.
"""
import math
from typing import Sequence, Tuple, Union

import numpy as np
import torch

from taichi_dr.camera import bounding_sphere, frame_sphere
from taichi_dr.mesh import Mesh, load_obj

__all__ = ["render_mesh", "render_obj_to_png"]

_AMBIENT, _KEY = 0.3, 0.75  # linear radiances of the preview light


class _KdTexture:
    """An OBJ's ``map_Kd`` image as a textured material for ``render_mesh_views`` (kd only)."""

    def __init__(self, mesh: Mesh):
        from taichi_dr.losses import srgb_to_linear

        # the PNG is sRGB-encoded (as image files are); shading works on linear colour
        self.tex = srgb_to_linear(mesh.texture.float().clamp(0, 1))[None].contiguous()
        self.uvs, self.uv_faces = mesh.uvs.float().contiguous(), mesh.uv_faces.int().contiguous()

    def sample(self, uv: torch.Tensor, uv_da: torch.Tensor) -> torch.Tensor:
        from taichi_dr.render.texture import texture

        return texture(self.tex.to(uv.dtype), uv.contiguous(), uv_da.contiguous(),
                       filter_mode="linear-mipmap-linear", boundary_mode="wrap")


def _material(mesh: Mesh):
    """Linear albedo: the kd texture, else the vertex colours, else a light grey."""
    if mesh.texture is not None and mesh.uvs is not None and mesh.uv_faces is not None:
        return _KdTexture(mesh)
    if mesh.colors is not None:
        return mesh.colors.float()
    return torch.full((mesh.verts.shape[0], 3), 0.6)


def render_mesh(mesh: Mesh, res: int = 512, view: Tuple[float, float] = (30.0, 20.0),
                as_float: bool = False, up: Union[str, Sequence[float]] = "y") -> Union[np.ndarray, torch.Tensor]:
    """Render ``mesh`` from azimuth/elevation ``view`` (degrees) on white, its bounding sphere framed.

    Args:
        mesh: any :class:`~taichi_dr.mesh.Mesh`; uses its kd texture or vertex colours when present
            (vertex colours are linear albedo, as ``save_obj`` writes our reconstructions; a
            ``map_Kd`` PNG is sRGB-encoded, as usual for image files). Shading normals are the
            area-weighted vertex normals; surfaces are two-sided.
        res: image side in pixels.
        view: (azimuth, elevation) in degrees; azimuth 0 looks down −z, elevation > 0 from above
            (with ``up="y"``; see :func:`~taichi_dr.camera.frame_sphere` for other up axes).
        up: the mesh's up axis, ``"y"`` or ``"z"`` (Blender scenes), or a 3-vector.
        as_float: return the linear ``[res, res, 3]`` float32 torch image, rows bottom-up.

    Returns:
        ``[res, res, 3]`` uint8 sRGB image, top row first (ready to save), unless ``as_float``.
    """
    from taichi_dr.image import to_srgb_u8
    from taichi_dr.render.light import DirectionalLight
    from taichi_dr.render.pipeline import render_mesh_views

    if not isinstance(res, int) or isinstance(res, bool) or res < 1:
        raise ValueError(f"res: expected a positive int, got {res!r}")
    if mesh.faces.shape[0] == 0:
        raise ValueError("mesh: has no faces to render")
    verts, faces = mesh.verts.detach().float().contiguous(), mesh.faces.int().contiguous()
    center, radius = bounding_sphere(verts)
    mv, proj, eye = frame_sphere(center, radius, float(view[0]), float(view[1]), up=up)
    # key light from over the viewer's shoulder: up and to the left of the view direction
    to_eye = torch.nn.functional.normalize(eye - torch.tensor(center, dtype=torch.float32), dim=0)
    cam_up = torch.linalg.inv(mv)[:3, 1]  # the image's up, whatever the mesh's up axis
    key = to_eye + 0.7 * cam_up + 0.4 * torch.linalg.cross(cam_up, to_eye)
    light = DirectionalLight(key, torch.full((3,), _KEY * math.pi), torch.full((3,), _AMBIENT))  # Lambert: kd·_KEY·cos
    with torch.no_grad():
        img = render_mesh_views(verts, faces, _material(mesh), (proj @ mv)[None], eye[None], (res, res), light,
                                torch.ones((1, res, res, 3)))[0, ..., :3].clamp(0, 1)
    return img if as_float else to_srgb_u8(img)


def render_obj_to_png(path: str, out: str, res: int = 512, view: Tuple[float, float] = (30.0, 20.0),
                      up: Union[str, Sequence[float]] = "y") -> None:
    """Load the OBJ at ``path`` and write its rendering to the PNG ``out`` (atomically)."""
    from taichi_dr.image import save_png

    save_png(out, render_mesh(load_obj(path), res, view, up=up))

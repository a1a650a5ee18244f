"""``taichi-dr render``: a shaded, antialiased picture of any OBJ from an orbit view.

The pipeline is the whole renderer in miniature:

    frame the bounding sphere -> clip = P·MV·v -> rasterize -> interpolate normals / colours / uvs
    -> shade (ambient + Lambert key light + a little GGX from a headlight) -> composite on white
    -> antialias (smooth silhouettes) -> linear to sRGB

Per-corner OBJ attributes (``vn``/``vt`` with their own face indices) need no unrolling: the
rasterizer output only stores a triangle id and barycentrics, so ``interpolate`` can read any
attribute array through its own ``[F, 3]`` index (``normal_faces``, ``uv_faces``).
"""
import math
from typing import Tuple, Union

import numpy as np
import torch

from taichi_dr.camera import look_at, perspective, transform_pos
from taichi_dr.mesh import Mesh, load_obj
from taichi_dr.render.antialias import antialias
from taichi_dr.render.interpolate import interpolate
from taichi_dr.render.rasterize import rasterize
from taichi_dr.render.shading import ggx_specular, lambert, safe_normalize, vertex_normals

__all__ = ["render_mesh", "render_obj_to_png"]

_FOVY_DEG = 35.0
_AMBIENT, _KEY, _HEAD_SPEC = 0.25, 0.8, 0.35  # linear radiances of the three light terms
_ROUGHNESS = 0.45


def _orbit_camera(mesh: Mesh, view: Tuple[float, float]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mvp [4, 4], eye [3], direction from the centre to the eye [3]) framing the bounding sphere."""
    lo, hi = mesh.verts.min(0)[0].double(), mesh.verts.max(0)[0].double()
    center, radius = (lo + hi) / 2, max(float((hi - lo).norm()) / 2, 1e-6)
    az, el = (math.radians(float(a)) for a in view)
    direction = torch.tensor([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], dtype=torch.float64)
    fovy = math.radians(_FOVY_DEG)
    dist = radius / math.sin(fovy / 2) * 1.05  # the whole bounding sphere fits in the frustum
    eye = center + dist * direction
    # keep "up" away from the view direction when looking straight down/up
    up = (0.0, 1.0, 0.0) if abs(math.sin(el)) < 0.999 else (0.0, 0.0, -math.copysign(1.0, el))
    mv = look_at(eye.tolist(), center.tolist(), up)
    proj = perspective(fovy, 1.0, max(dist - radius, dist * 1e-3) * 0.5, (dist + radius) * 1.5)
    return (proj @ mv).float(), eye.float(), direction.float()


def _albedo(mesh: Mesh, rast: torch.Tensor) -> torch.Tensor:
    """Linear base colour per pixel ``[1, H, W, 3]``: texture, else vertex colours, else grey."""
    if mesh.texture is not None and mesh.uvs is not None and mesh.uv_faces is not None:
        from taichi_dr.render.texture import texture

        from taichi_dr.losses import srgb_to_linear

        uv, _ = interpolate(mesh.uvs.float(), rast, mesh.uv_faces.int())

        tex = srgb_to_linear(mesh.texture.float().clamp(0, 1))[None].contiguous()
        return texture(tex, uv.contiguous(), filter_mode="linear", boundary_mode="wrap")
    if mesh.colors is not None:
        return interpolate(mesh.colors.float(), rast, mesh.faces.int())[0]
    return torch.full(rast.shape[:-1] + (3,), 0.6)


def render_mesh(mesh: Mesh, res: int = 512, view: Tuple[float, float] = (30.0, 20.0),
                as_float: bool = False) -> Union[np.ndarray, torch.Tensor]:
    """Render ``mesh`` framed in view from azimuth/elevation ``view`` (degrees) on white.

    Args:
        mesh: any :class:`~taichi_dr.mesh.Mesh`; uses its normals, kd texture or vertex colours
            when present (vertex colours are linear albedo, as ``save_obj`` writes our reconstructions;
            a ``map_Kd`` PNG is sRGB-encoded, as usual for image files).
        res: image side in pixels.
        view: (azimuth, elevation) in degrees; azimuth 0 looks down −z, elevation > 0 from above.
        as_float: return the linear ``[res, res, 3]`` float32 torch image, rows bottom-up.

    Returns:
        ``[res, res, 3]`` uint8 sRGB image, top row first (ready to save), unless ``as_float``.
    """
    from taichi_dr.losses import linear_to_srgb

    if not isinstance(res, int) or res < 1:
        raise ValueError(f"res: expected a positive int, got {res!r}")
    if mesh.faces.shape[0] == 0:
        raise ValueError("mesh: has no faces to render")
    verts, faces = mesh.verts.detach().float().contiguous(), mesh.faces.int().contiguous()
    mvp, eye, to_eye = _orbit_camera(mesh, view)
    with torch.no_grad():
        clip = transform_pos(mvp[None], verts).contiguous()
        rast, _ = rasterize(clip, faces, (res, res))
        if mesh.normals is not None and mesh.normal_faces is not None:
            normals, nfaces = mesh.normals.float(), mesh.normal_faces.int()
        else:
            normals, nfaces = vertex_normals(verts, faces), faces
        n = safe_normalize(interpolate(normals.contiguous(), rast, nfaces.contiguous())[0])
        pos = interpolate(verts, rast, faces)[0]
        v = safe_normalize(eye.view(1, 1, 1, 3) - pos)
        n = torch.where((n * v).sum(-1, keepdim=True) < 0, -n, n)  # two-sided: show inner walls too
        kd = _albedo(mesh, rast)
        # key light from over the viewer's shoulder (up and to the left of the view direction)
        key = safe_normalize(to_eye + torch.tensor([0.0, 0.7, 0.0]) + 0.4 * torch.linalg.cross(
            torch.tensor([0.0, 1.0, 0.0]), to_eye)).view(1, 1, 1, 3)
        spec = ggx_specular(n, v, v, torch.tensor([_ROUGHNESS]), torch.tensor([0.04]))  # headlight: l = v
        color = kd * (_AMBIENT + _KEY * lambert(n, key)) + _HEAD_SPEC * spec
        cov = (rast[..., 3:] > 0).float()
        color = color * cov + (1 - cov)  # white background
        color = antialias(color.contiguous(), rast, clip, faces)
    img = color[0].clamp(0, 1)
    if as_float:
        return img
    srgb = linear_to_srgb(img).numpy()[::-1]  # our images are bottom-up; files are top-down
    return (srgb * 255 + 0.5).astype(np.uint8)


def render_obj_to_png(path: str, out: str, res: int = 512, view: Tuple[float, float] = (30.0, 20.0)) -> None:
    """Load the OBJ at ``path`` and write its rendering to the PNG ``out`` (atomically)."""
    import imageio.v3 as iio

    from taichi_dr.mesh import atomic_write

    img = np.ascontiguousarray(render_mesh(load_obj(path), res, view))
    atomic_write(out, lambda tmp: iio.imwrite(tmp, img, extension=".png"))

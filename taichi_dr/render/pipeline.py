"""A complete differentiable render of a coloured triangle mesh, used by the reconstruction loop,
the demo dataset and ``taichi-dr render``:

    clip = P·MV·v  ->  rasterize  ->  interpolate (normals, colours)  ->  shade
    ->  composite over a background  ->  antialias (silhouette gradients)

Shading is a learnable "ambient + one directional light" Lambert model on per-vertex albedo:

    c = albedo · (ambient + diffuse · max(0, n·l)),

simple enough to be recovered jointly with the geometry, and exactly what the demo dataset is
rendered with, so a perfect reconstruction can reach a perfect image.
"""
import dataclasses
from typing import Optional, Tuple

import torch

from taichi_dr.camera import transform_pos
from taichi_dr.render.antialias import antialias, antialias_construct_topology_hash
from taichi_dr.render.interpolate import interpolate
from taichi_dr.render.rasterize import rasterize
from taichi_dr.render.shading import safe_normalize, vertex_normals

__all__ = ["SimpleLight", "render_mesh_views"]


@dataclasses.dataclass
class SimpleLight:
    """Ambient + directional light (world space). Tensors may require grad.

    Attributes:
        direction: ``[3]`` direction *towards* the light.
        ambient: ``[3]`` ambient radiance.
        diffuse: ``[3]`` directional radiance.
    """

    direction: torch.Tensor
    ambient: torch.Tensor
    diffuse: torch.Tensor

    @staticmethod
    def default(device="cpu") -> "SimpleLight":
        return SimpleLight(torch.tensor([0.4, 0.8, 0.45], device=device), torch.full((3,), 0.35, device=device),
                           torch.full((3,), 0.75, device=device))


def render_mesh_views(verts: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor, mvp: torch.Tensor,
                      campos: torch.Tensor, resolution: Tuple[int, int], light: SimpleLight,
                      background: Optional[torch.Tensor] = None, topology_hash=None,
                      normals: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Render a vertex-coloured mesh from ``N`` cameras.

    Args:
        verts: ``[V, 3]`` world positions; faces: ``[F, 3]`` int32; colors: ``[V, 3]`` linear albedo.
        mvp: ``[N, 4, 4]`` projection · model-view.
        campos: ``[N, 3]`` camera centres in world space (for two-sided shading).
        resolution: (H, W).
        light: :class:`SimpleLight`, or any object with ``shade(pos, normal, kd, campos) -> [N, H, W, 3]``
            (e.g. :class:`~taichi_dr.recon.model.LearnedEnvLight`).
        background: ``[N, H, W, 3]`` linear background colours (default black).
        normals: ``[V, 3]`` shading normals (default: area-weighted vertex normals).

    Returns:
        ``[N, H, W, 4]`` antialiased linear RGB + coverage, rows bottom-up.
    """
    H, W = resolution
    N = mvp.shape[0]
    if background is None:
        background = torch.zeros((N, H, W, 3), dtype=verts.dtype, device=verts.device)
    if faces.shape[0] == 0:
        return torch.cat([background, torch.zeros_like(background[..., :1])], -1)
    clip = transform_pos(mvp, verts)
    rast, _ = rasterize(clip, faces, (H, W))
    if normals is None:
        normals = vertex_normals(verts, faces)
    attrs, _ = interpolate(torch.cat([verts, normals, colors], 1), rast, faces)
    n = safe_normalize(attrs[..., 3:6])
    view = campos.to(verts.dtype).view(N, 1, 1, 3) - attrs[..., :3]
    # two-sided: a surface seen from behind (open meshes, inner walls) is shaded like its front
    n = torch.where((n * view).sum(-1, keepdim=True) < 0, -n, n)
    cov = (rast[..., 3:] > 0).to(verts.dtype)
    if hasattr(light, "shade"):  # e.g. an environment light: split-sum shading of every pixel
        # background pixels get a harmless normal (their result is masked out below)
        n = torch.where(cov > 0, n, torch.tensor([0.0, 0.0, 1.0], dtype=n.dtype, device=n.device).expand_as(n))
        shade = light.shade(attrs[..., :3], n, attrs[..., 6:9], campos)
    else:
        l = safe_normalize(light.direction.to(verts.dtype)).view(1, 1, 1, 3)
        cos = torch.clamp((n * l).sum(-1, keepdim=True), min=0.0)
        shade = attrs[..., 6:9] * (light.ambient + light.diffuse * cos)
    img = torch.cat([shade * cov + background * (1 - cov), cov], -1)
    if topology_hash is None:
        topology_hash = antialias_construct_topology_hash(faces)
    return antialias(img, rast, clip, faces, topology_hash=topology_hash)

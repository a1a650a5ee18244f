"""A complete differentiable render of a coloured triangle mesh, used by the reconstruction loop,
the demo dataset and ``taichi-dr render``:

    clip = P·MV·v  ->  rasterize  ->  interpolate (normals, colours)  ->  shade
    ->  composite over a background  ->  antialias (silhouette gradients)

The material is per-vertex albedo, or per pixel: a field of world position evaluated on the
covered pixels (pass 1 of the reconstruction) or 2-D textures looked up with mipmapped trilinear
filtering (pass 2), see :func:`render_mesh_views`. The default shading is a learnable
"ambient + one directional light" Lambert model on the albedo kd:

    c = albedo · (ambient + diffuse · max(0, n·l)),

simple enough to be recovered jointly with the geometry, and exactly what the demo dataset is
rendered with, so a perfect reconstruction can reach a perfect image.
"""
from typing import Optional, Tuple

import torch

from taichi_dr.camera import transform_pos
from taichi_dr.render.antialias import antialias
from taichi_dr.render.interpolate import interpolate
from taichi_dr.render.light import DirectionalLight
from taichi_dr.render.rasterize import rasterize
from taichi_dr.render.shading import perturb_normal, safe_normalize, vertex_normals

__all__ = ["SimpleLight", "render_mesh_views"]


# the reconstruction's "ambient + one directional light": DirectionalLight(direction, color, ambient);
# with ks=None its shade() is c = kd·(ambient + color/π·max(0, n·l)) (the old SimpleLight)
SimpleLight = DirectionalLight


def _shade(light, pos: torch.Tensor, n: torch.Tensor, kd: torch.Tensor, ks: Optional[torch.Tensor],
           campos: torch.Tensor) -> torch.Tensor:
    """Radiance ``[N, H, W, 3]`` of surface points under ``light`` (see :func:`render_mesh_views`)."""
    return light.shade(pos, n, kd, ks, campos)


def _material_pixels(colors, attrs: torch.Tensor, rast: torch.Tensor, rast_db: torch.Tensor) -> torch.Tensor:
    """Per-pixel material channels ``[N, H, W, C]`` of a callable or textured material.

    Either is evaluated on the covered pixels only (typically 10-40 % of the image), then scattered
    back; background pixels get zeros (they are composited away). For textures this also keeps the
    background's (0, 0) coordinates from piling zero gradients onto one texel.
    """
    N, H, W = rast.shape[:3]
    idx = (rast[..., 3] > 0).reshape(-1).nonzero().squeeze(1)
    if hasattr(colors, "uvs") and hasattr(colors, "sample"):
        uv, uv_da = interpolate(colors.uvs.to(rast.dtype), rast, colors.uv_faces, rast_db, diff_attrs="all")
        uv = uv.reshape(-1, 2).index_select(0, idx).view(1, 1, -1, 2)
        uv_da = uv_da.reshape(-1, 4).index_select(0, idx).view(1, 1, -1, 4)
        vals = colors.sample(uv, uv_da).reshape(idx.numel(), -1)
    else:
        vals = colors(attrs[..., :3].reshape(-1, 3).index_select(0, idx))
    if vals.dim() != 2 or vals.shape[0] != idx.numel() or vals.shape[1] not in (3, 6, 9):
        raise ValueError(f"colors: a material callable must return [P, 3|6|9] for [P, 3] positions, got "
                         f"{list(vals.shape)} for P = {idx.numel()}")
    full = torch.zeros((N * H * W, vals.shape[1]), dtype=vals.dtype, device=vals.device)
    return full.index_put((idx,), vals).view(N, H, W, -1).to(attrs.dtype)


def render_mesh_views(verts: torch.Tensor, faces: torch.Tensor, colors, mvp: torch.Tensor,
                      campos: torch.Tensor, resolution: Tuple[int, int], light,
                      background: Optional[torch.Tensor] = None, topology_hash=None,
                      normals: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Render a mesh with per-vertex colours or a per-pixel material from ``N`` cameras.

    Args:
        verts: ``[V, 3]`` world positions; faces: ``[F, 3]`` int32.
        colors: the material, one of
            * ``[V, 3]`` linear albedo per vertex (kd; Lambert / the light's default ks);
            * a callable ``f(pos [P, 3]) -> [P, C]`` evaluated per covered pixel on the interpolated
              world position (e.g. :class:`~taichi_dr.recon.material.MaterialField`);
            * a textured material: any object with ``uvs [Vt, 2]``, ``uv_faces [F, 3]`` and
              ``sample(uv [N, H, W, 2], uv_da [N, H, W, 4]) -> [N, H, W, C]`` (e.g.
              :class:`~taichi_dr.recon.texture_pass.TexturedMaterial`: mipmapped trilinear lookups with
              the pixel footprint ``uv_da`` from :func:`interpolate`).
            Channels: kd (0:3) and optionally ks (3:6: occlusion, roughness, metallic) and a
            tangent-space normal map (6:9), C = 3, 6 or 9; the normal map is applied when the
            material also has ``tangents(verts, faces) -> [Vt, 3]`` (textured materials).
        mvp: ``[N, 4, 4]`` projection · model-view.
        campos: ``[N, 3]`` camera centres in world space (for two-sided shading).
        resolution: (H, W).
        light: any light of :mod:`taichi_dr.render.light` (e.g. ``DirectionalLight.default()``) or
            object with ``shade(pos, normal, kd, ks, campos) -> [N, H, W, 3]`` (ks ``[N, H, W, 3]``
            or ``None``: Lambert).
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
    per_vertex = isinstance(colors, torch.Tensor)
    if not per_vertex and not callable(colors) and not hasattr(colors, "sample"):
        raise TypeError(f"colors: expected a [V, 3] tensor, a material callable or a textured material, "
                        f"got {type(colors).__name__}")
    if per_vertex and (colors.dim() != 2 or colors.shape[0] != verts.shape[0] or colors.shape[1] != 3):
        raise ValueError(f"colors: expected per-vertex albedo [{verts.shape[0]}, 3], got {list(colors.shape)}")
    clip = transform_pos(mvp, verts)
    # the pixel footprint (rast_db) only picks mip levels: no geometry gradients through it
    rast, rast_db = rasterize(clip, faces, (H, W), grad_db=False)
    if normals is None:
        normals = vertex_normals(verts, faces)
    attrs, _ = interpolate(torch.cat([verts, normals] + ([colors] if per_vertex else []), 1), rast, faces)
    mat = attrs[..., 6:9] if per_vertex else _material_pixels(colors, attrs, rast, rast_db)
    kd = mat[..., 0:3]
    ks = mat[..., 3:6] if mat.shape[-1] >= 6 else None
    n = safe_normalize(attrs[..., 3:6])
    view = campos.to(verts.dtype).view(N, 1, 1, 3) - attrs[..., :3]
    # two-sided: a surface seen from behind (open meshes, inner walls) is shaded like its front
    n = torch.where((n * view).sum(-1, keepdim=True) < 0, -n, n)
    cov = (rast[..., 3:] > 0).to(verts.dtype)
    if mat.shape[-1] >= 9 and hasattr(colors, "tangents"):
        # tangent-space normal map: the UV tangent made orthogonal to n (Gram-Schmidt), then
        # n' = T·x − B·y + N·z with B = T × N (perturb_normal, OpenGL convention); on the covered
        # pixels only (the per-pixel cross products cost as much as the shading otherwise)
        tan, _ = interpolate(colors.tangents(verts, faces).to(verts.dtype), rast, colors.uv_faces)
        idx = (rast[..., 3] > 0).reshape(-1).nonzero().squeeze(1)
        n_c, t_c = n.reshape(-1, 3).index_select(0, idx), tan.reshape(-1, 3).index_select(0, idx)
        t_c = t_c - n_c * (t_c * n_c).sum(-1, keepdim=True)
        n_ts = mat.reshape(-1, mat.shape[-1]).index_select(0, idx)[:, 6:9]
        n = n.reshape(-1, 3).index_put((idx,), perturb_normal(n_c, t_c, n_ts)).view(n.shape)
    if hasattr(light, "shade"):
        # background pixels get a harmless normal (their result is masked out below)
        n = torch.where(cov > 0, n, torch.tensor([0.0, 0.0, 1.0], dtype=n.dtype, device=n.device).expand_as(n))
    shade = _shade(light, attrs[..., :3], n, kd, ks, campos)
    img = torch.cat([shade * cov + background * (1 - cov), cov], -1)
    # None: antialias reuses the table it cached for this faces tensor (turntables, test views)
    return antialias(img, rast, clip, faces, topology_hash=topology_hash)

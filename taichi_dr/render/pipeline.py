"""A complete differentiable render of a coloured triangle mesh, used by the reconstruction loop,
the demo dataset and ``taichi-dr render``:

    clip = P·MV·v  ->  rasterize  ->  interpolate (normals, colours)  ->  shade
    ->  composite over a background  ->  antialias (silhouette gradients)
    [->  the mean of k×k samples per pixel, ``supersample=k``: pixel-area averages]

The material is per-vertex albedo, or per pixel: a field of world position evaluated on the
covered pixels (pass 1 of the reconstruction) or 2-D textures looked up with mipmapped trilinear
filtering (pass 2), see :func:`render_mesh_views`. The default shading is a learnable
"ambient + one directional light" Lambert model on the albedo kd:

    c = albedo · (ambient + diffuse · max(0, n·l)),

simple enough to be recovered jointly with the geometry, and exactly what the demo dataset is
rendered with, so a perfect reconstruction can reach a perfect image.
"""
import numbers
from typing import Optional, Tuple, Union

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


def _covered(rast: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The covered pixels of ``rast`` ``[N, H, W, 4]`` and their packed layout.

    Returns:
        idx ``[P]`` int64 flat pixel indices (view-major, as in ``rast.reshape(-1, 4)``), slot ``[P]``
        int64 row of each in a ``[N·Pmax]`` per-view packing (view n owns rows n·Pmax ...), and Pmax,
        the most covered pixels of one view.
    """
    N = rast.shape[0]
    mask = (rast[..., 3] > 0).reshape(N, -1)
    counts = mask.sum(1)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    pmax = int(counts.max()) if idx.numel() else 0
    view = torch.div(idx, mask.shape[1], rounding_mode="floor")
    start = torch.cumsum(counts, 0) - counts  # position in idx of each view's first pixel
    rank = torch.arange(idx.numel(), device=idx.device) - start[view]
    return idx, view * pmax + rank, pmax


def _pack(x: torch.Tensor, slot: torch.Tensor, rows: int, pad: Optional[Tuple[float, ...]] = None) -> torch.Tensor:
    """``[rows, C]`` with row ``slot[i]`` = ``x[i]`` (``x`` ``[P, C]``); the other rows are ``pad``
    (default zeros). Differentiable in ``x`` (its backward is a gather)."""
    base = x.new_zeros(rows, x.shape[1]) if pad is None else \
        torch.tensor(pad, dtype=x.dtype, device=x.device).expand(rows, x.shape[1])
    return base.index_put((slot,), x)


def _wants_tangents(colors) -> bool:
    """Whether a textured material carries a normal map (channels 6:9) and the tangents to apply it."""
    tex = getattr(colors, "tex", None)
    return hasattr(colors, "tangents") and (tex is None or tex.shape[-1] >= 9)


def _material_pixels(colors, verts: torch.Tensor, faces: torch.Tensor, pos: torch.Tensor, rast_c: torch.Tensor,
                     rast_db_c: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Material channels ``[P, C]`` of a callable or textured material on the P covered pixels
    (world positions ``pos`` ``[P, 3]``; their rasterizer outputs ``rast_c``, ``rast_db_c``
    ``[1, 1, P, 4]``), and for a normal-mapped texture the ``[P, 3]`` UV tangents there (else None).

    Only the covered pixels (typically 10-40 % of the image) are evaluated; for textures this also
    keeps the background's (0, 0) coordinates from piling zero gradients onto one texel.
    """
    tan = None
    if hasattr(colors, "uvs") and hasattr(colors, "sample"):
        uvs = colors.uvs.to(rast_c.dtype)
        if _wants_tangents(colors):
            # one interpolation for the coordinates (with their footprint) and the tangent frame:
            # both live on the UV vertices; the tangents follow verts but take no gradient
            uvs = torch.cat([uvs, colors.tangents(verts, faces).detach().to(rast_c.dtype)], 1)
        attr, uv_da = interpolate(uvs, rast_c, colors.uv_faces, rast_db_c, diff_attrs=[0, 1])
        vals = colors.sample(attr[..., :2], uv_da).reshape(pos.shape[0], -1)
        attr = attr.view(-1, attr.shape[-1])
        tan = attr[:, 2:5] if attr.shape[1] >= 5 else None
    else:
        vals = colors(pos)
    if vals.dim() != 2 or vals.shape[0] != pos.shape[0] or vals.shape[1] not in (3, 6, 9):
        raise ValueError(f"colors: a material callable must return [P, 3|6|9] for [P, 3] positions, got "
                         f"{list(vals.shape)} for P = {pos.shape[0]}")
    return vals.to(pos.dtype), tan


def render_mesh_views(verts: torch.Tensor, faces: torch.Tensor, colors, mvp: torch.Tensor,
                      campos: torch.Tensor, resolution: Tuple[int, int], light,
                      background: Optional[torch.Tensor] = None, topology_hash=None,
                      normals: Optional[torch.Tensor] = None, supersample: int = 1,
                      albedo: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
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
        supersample: ``k >= 1``: render at ``k·H × k·W`` (the background repeated k×k per pixel) and
            average each k×k block, a box filter. A path tracer's box-filtered pixel is the exact area
            average over the pixel; :func:`antialias` approximates that from one sample per pixel and
            errs most where silhouettes curve or parts are a pixel or two wide (measured on a
            128² Mitsuba render of a cow, mean squared coverage error of its true mesh: 9.5e-4 at
            k = 1, 1.3e-4 at 2, 2e-5 at 4), so the reconstruction's losses compare like with like.

    Returns:
        ``[N, H, W, 4]`` antialiased linear RGB + coverage, rows bottom-up.
    """
    H, W = resolution
    N = mvp.shape[0]
    if isinstance(supersample, bool) or not isinstance(supersample, numbers.Integral):
        raise TypeError(f"supersample: expected an int >= 1, got {type(supersample).__name__}")
    supersample = int(supersample)
    if supersample < 1:
        raise ValueError(f"supersample: expected an int >= 1, got {supersample}")
    if background is None:
        background = torch.zeros((N, H, W, 3), dtype=verts.dtype, device=verts.device)
    k = supersample
    if k > 1:
        background = background.repeat_interleave(k, 1).repeat_interleave(k, 2)
    img, alb = _render(verts, faces, colors, mvp, campos, H * k, W * k, light, background, topology_hash, normals,
                       k if albedo else 0)
    if k > 1:  # [N, kH, kW, 4] -> the mean of each k×k block (rows bottom-up either way)
        img = img.reshape(N, H, k, W, k, img.shape[-1]).mean((2, 4))
    return (img, alb) if albedo else img


def _render(verts, faces, colors, mvp, campos, H: int, W: int, light, background: torch.Tensor, topology_hash,
            normals, pool: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One sample per pixel of :func:`render_mesh_views`: ``[N, H, W, 4]`` image, and with ``pool = k
    > 0`` the albedo image averaged over k×k blocks, ``[N, H/k, W/k, 4]`` (else None)."""
    N = mvp.shape[0]
    if faces.shape[0] == 0:
        img = torch.cat([background, torch.zeros_like(background[..., :1])], -1)
        return img, (img.new_zeros(N, H // pool, W // pool, 4) if pool else None)
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
    # everything per pixel from here on runs on the covered pixels only (typically 10-40 % of the
    # image), gathered into a [1, 1, P, ·] "image" (interpolate and texture look at each pixel on
    # its own): the interpolation, the material, the normal map and the shading. The shading gets
    # them packed per view, [N, 1, Pmax, ·] (its camera is per view); padding rows are dropped.
    idx, slot, pmax = _covered(rast)
    cov = (rast[..., 3:] > 0).to(verts.dtype)
    if idx.numel() == 0:
        img = antialias(torch.cat([background * (1 - cov), cov], -1), rast, clip, faces, topology_hash=topology_hash)
        return img, (img.new_zeros(N, H // pool, W // pool, 4) if pool else None)
    rast_c = rast.reshape(-1, 4).index_select(0, idx).view(1, 1, -1, 4)
    a, _ = interpolate(torch.cat([verts, normals] + ([colors] if per_vertex else []), 1), rast_c, faces)
    a = a.view(idx.numel(), -1)  # [P, 6 or 9]
    pos = a[:, :3]
    if per_vertex:
        mat, tan = a[:, 6:9], None
    else:
        rast_db_c = rast_db.reshape(-1, 4).index_select(0, idx).view(1, 1, -1, 4)
        mat, tan = _material_pixels(colors, verts, faces, pos, rast_c, rast_db_c)
    n = safe_normalize(a[:, 3:6])
    view_of = torch.div(idx, H * W, rounding_mode="floor")
    view = campos.to(verts.dtype).index_select(0, view_of) - pos
    # two-sided: a surface seen from behind (open meshes, inner walls) is shaded like its front
    n = torch.where((n * view).sum(-1, keepdim=True) < 0, -n, n)
    if mat.shape[-1] >= 9 and tan is not None:
        # tangent-space normal map: the UV tangent made orthogonal to n (Gram-Schmidt), then
        # n' = T·x − B·y + N·z with B = T × N (perturb_normal, OpenGL convention)
        tan = tan - n * (tan * n).sum(-1, keepdim=True)
        n = perturb_normal(n, tan, mat[:, 6:9])
    rows = N * pmax
    packed = [_pack(pos, slot, rows), _pack(n, slot, rows, (0.0, 0.0, 1.0)), _pack(mat[:, 0:3], slot, rows),
              _pack(mat[:, 3:6], slot, rows) if mat.shape[-1] >= 6 else None]
    packed = [None if t is None else t.view(N, 1, pmax, 3) for t in packed]
    shade = light.shade(*packed, campos).reshape(rows, 3).index_select(0, slot)
    shade = shade.new_zeros(N * H * W, 3).index_put((idx,), shade).view(N, H, W, 3)
    img = torch.cat([shade + background * (1 - cov), cov], -1)
    # None: antialias reuses the table it cached for this faces tensor (turntables, test views)
    img = antialias(img, rast, clip, faces, topology_hash=topology_hash)
    if not pool:
        return img, None
    # (kd, 1) of each covered sample added into its pixel of the k×k-pooled image, / k²: the block
    # mean without building the full-size image (a scatter of the covered samples only)
    h, w = H // pool, W // pool
    r = idx - view_of * (H * W)
    y = torch.div(r, W, rounding_mode="floor")
    low = view_of * (h * w) + torch.div(y, pool, rounding_mode="floor") * w + torch.div(r - y * W, pool,
                                                                                        rounding_mode="floor")
    vals = torch.cat([mat[:, 0:3], torch.ones_like(mat[:, :1])], 1) / (pool * pool)
    return img, vals.new_zeros(N * h * w, 4).index_add(0, low, vals).view(N, h, w, 4)

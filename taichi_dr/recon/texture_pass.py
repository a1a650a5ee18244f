"""Pass 2 of the reconstruction: the pass-1 mesh with real 2-D material textures.

After the DMTet pass the topology is fixed, so the material can leave the 3-D field for ordinary
textures, as nvdiffrec does:

1. **UV atlas** — :func:`unwrap` cuts the mesh into charts and packs them into [0, 1]² with
   ``xatlas`` (a few texels of padding between islands, sized for the texture resolution).
2. **Bake** — :func:`bake` rasterizes the mesh *in UV space* (clip position = (2u − 1, 2v − 1, 0, 1))
   with our own rasterizer, interpolates the world position at every texel centre and evaluates
   the material field there: the texture starts exactly where pass 1 ended.
3. **Pad** — :func:`dilate` fills the texels outside every island with the average of their
   covered neighbours, ring by ring, so that bilinear taps and coarse mip levels that straddle an
   island border read the island's colour, not black: no seams.
4. **Optimise** — :class:`TexturedMaterial` holds one ``[1, T, T, 6]`` texture (kd | ks) that
   :func:`~taichi_dr.render.pipeline.render_mesh_views` samples with our :func:`texture` op,
   ``linear-mipmap-linear`` with the pixel footprint ``uv_da`` from :func:`interpolate`'s screen
   derivatives; the reconstruction loop optimises it jointly with the vertex positions and clamps
   it to the material bounds after each step (nvdiffrec's scheme).

Texture rows are bottom-up (row 0 is v = 0, like all our images; OBJ's convention), so the PNG
files written by :mod:`~taichi_dr.recon.export` are flipped once, on writing.
"""
import math
import warnings
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taichi_dr._checks import check_index
from taichi_dr._sparse import csr
from taichi_dr.mesh import spatial_order
from taichi_dr.recon.material import KS_MAX, KS_MIN
from taichi_dr.recon.subdivide import subdivide_midpoint
from taichi_dr.render.interpolate import interpolate
from taichi_dr.render.rasterize import rasterize
from taichi_dr.render.texture import texture

__all__ = ["texture_resolution", "unwrap", "bake", "dilate", "TexturedMaterial", "make_textured_material", "uv_tangents",
           "uv_tangent_operator",
           "VertexColors", "start_material_pass"]


def texture_resolution(image_hw: Tuple[int, int], lo: int = 128, hi: int = 2048) -> int:
    """Texture side for training images of size ``image_hw``: the power of two ≥ the image side, in
    [lo, hi] (256² images -> 256², 800² -> 1024²). An object seen whole covers well under the full
    frame, so this is already about one texel per foreground pixel: finer textures get texels that
    few pixels ever sample (they stay noisy and hurt novel views; measured on Spot, docs/10_materials.md)."""
    side = max(int(image_hw[0]), int(image_hw[1]))
    if side < 1:
        raise ValueError(f"image_hw: expected positive sizes, got {tuple(image_hw)}")
    return int(min(hi, max(lo, 2 ** math.ceil(math.log2(side)))))


def unwrap(verts: torch.Tensor, faces: torch.Tensor, resolution: int = 512, padding: int = 2
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UV atlas of a triangle mesh with xatlas.

    Args:
        verts: ``[V, 3]`` float positions; faces: ``[F, 3]`` int vertex indices.
        resolution: texture side the charts are packed for; padding: texels between charts.

    Returns:
        faces ``[F, 3]`` int32 (the same triangles, in xatlas' order), uvs ``[Vt, 2]`` float32 in
        [0, 1], uv_faces ``[F, 3]`` int32 indexing ``uvs`` (row k of both is the same triangle).
    """
    import xatlas

    if faces.dim() != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"faces: expected a non-empty [F, 3] tensor, got {list(faces.shape)}")
    atlas = xatlas.Atlas()
    atlas.add_mesh(verts.detach().cpu().float().numpy(), faces.cpu().numpy().astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = int(resolution), int(padding), True
    atlas.generate(pack_options=pack)
    vmap, idx, uvs = atlas[0]
    idx = idx.astype(np.int64)
    out_faces = torch.from_numpy(vmap.astype(np.int64)[idx]).to(torch.int32)
    return out_faces, torch.from_numpy(uvs.astype(np.float32)), torch.from_numpy(idx).to(torch.int32)


@torch.no_grad()
def bake(verts: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor,
         field: Callable[[torch.Tensor], torch.Tensor], resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Evaluate ``field`` (world position ``[P, 3]`` -> ``[P, C]``) at every covered texel.

    Returns:
        tex ``[resolution, resolution, C]`` float32 (zeros outside the charts) and the coverage
        mask ``[resolution, resolution]`` bool; rows bottom-up (row 0 is v = 0).
    """
    R = int(resolution)
    clip = torch.cat([uvs.float() * 2 - 1, torch.zeros_like(uvs[:, :1]).float(), torch.ones_like(uvs[:, :1]).float()], 1)
    rast, _ = rasterize(clip[None].contiguous(), uv_faces, (R, R))
    # the world position of each uv vertex: the uv triangle k and the mesh triangle k share corners
    pos_uv = torch.zeros((uvs.shape[0], 3), dtype=torch.float32, device=verts.device)
    pos_uv[uv_faces.long().reshape(-1)] = verts.detach().float()[faces.long().reshape(-1)]
    pos, _ = interpolate(pos_uv, rast, uv_faces)
    mask = rast[0, ..., 3] > 0
    p = pos[0][mask]
    vals = torch.cat([field(p[s:s + 65536]).float() for s in range(0, p.shape[0], 65536)]) if p.shape[0] else None
    C = vals.shape[1] if vals is not None else int(field(pos.new_zeros((1, 3))).shape[1])
    tex = torch.zeros((R, R, C), dtype=torch.float32, device=verts.device)
    if vals is not None:
        tex[mask] = vals
    return tex, mask


@torch.no_grad()
def dilate(tex: torch.Tensor, mask: torch.Tensor, rings: int = 16) -> torch.Tensor:
    """Fill uncovered texels ``[H, W, C]`` from covered neighbours (mask ``[H, W]``), one 3×3 ring per
    step (``rings`` steps; what is still empty after that gets the mean of the covered texels)."""
    if tex.dim() != 3 or mask.shape != tex.shape[:2]:
        raise ValueError(f"mask: expected shape {list(tex.shape[:2])} (tex [H, W, C]), got {list(mask.shape)}")
    val = (tex * mask[..., None]).permute(2, 0, 1)[None].float()
    m = mask[None, None].float()
    known = m.clone()
    for _ in range(rings):
        s = F.avg_pool2d(val * known, 3, 1, 1, count_include_pad=False)
        c = F.avg_pool2d(known, 3, 1, 1, count_include_pad=False)
        grow = (c > 0) & (known == 0)
        val = torch.where(grow, s / c.clamp(min=1e-12), val)
        known = torch.where(grow, torch.ones_like(known), known)
        if bool(known.all()):
            break
    out = val[0].permute(1, 2, 0)
    if not bool(known.all()) and bool(mask.any()):
        mean = tex[mask].mean(0)
        out = torch.where(known[0, 0, ..., None] > 0, out, mean.expand_as(out))
    return out.to(tex.dtype)


def _tangent_weights(faces: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor, dtype: torch.dtype):
    """Per face, the weights ``(a, b)`` ``[F]`` of T·|det| = a·e1 − b·e2 (``uv_tangents``)."""
    t = uvs.to(dtype)[uv_faces.long()]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    sign = torch.sign(d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1])
    return d2[:, 1] * sign, d1[:, 1] * sign


def uv_tangent_operator(faces: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor, num_verts: int,
                        dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The unnormalised UV tangents as one sparse ``[Vt, V]`` CSR matrix ``K``: ``uv_tangents`` =
    normalise(``K @ verts``).

    A face's T·|det| = a·e1 − b·e2 = (b − a)·p0 + a·p1 − b·p2 is linear in its corner positions, and
    its weights depend on the atlas only, so for a fixed mesh and atlas (the refinement pass) the
    gathers, products and corner scatter of every call fold into one product (a 131k-face
    sphere: 6.5 -> 0.6 ms a call on 2 CPU cores).

    Args:
        faces: ``[F, 3]`` int triangles of the mesh, ``V = num_verts`` vertices.
        uvs: ``[Vt, 2]`` float texture coordinates; uv_faces: ``[F, 3]`` int (row k = triangle k).
        dtype, device: of the positions it will multiply.
    """
    check_index("faces", faces, num_verts, expected="[F, 3]")
    check_index("uv_faces", uv_faces, uvs.shape[0], expected=f"[{faces.shape[0]}, 3]")
    if uv_faces.shape[0] != faces.shape[0]:
        raise ValueError(f"uv_faces: expected [{faces.shape[0]}, 3] (one row per face), got {list(uv_faces.shape)}")
    f, tf = faces.long().to(device), uv_faces.long().to(device)
    a, b = _tangent_weights(f, uvs.to(device), tf, dtype)
    w = torch.stack([b - a, a, -b], 1)  # [F, 3]: the weight of corner position k
    rows = tf[:, :, None].expand(-1, 3, 3).reshape(-1)  # every UV corner gets ...
    cols = f[:, None, :].expand(-1, 3, 3).reshape(-1)  # ... the face's three position weights
    vals = w[:, None, :].expand(-1, 3, 3).reshape(-1)
    return csr(rows, cols, vals, (uvs.shape[0], num_verts))


def uv_tangents(verts: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor,
                operator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unit tangents ``[Vt, 3]`` (direction of increasing u on the surface) per UV vertex.

    Per face, T = (e1·Δv2 − e2·Δv1) / (Δu1·Δv2 − Δu2·Δv1) from its edges e and UV edges (Δu, Δv);
    summed (weighted by |det|, i.e. UV area) over the faces of each UV vertex and normalised. UV
    vertices are split along seams, so charts never mix their frames. Not differentiated (the
    positions are detached): the tangent only orients the normal map.

    ``operator``: optional ``[Vt, V]`` matrix from :func:`uv_tangent_operator` for these faces and
    atlas in ``verts``' dtype (a fixed mesh called many times).
    """
    if operator is not None:
        if tuple(operator.shape) != (uvs.shape[0], verts.shape[0]) or operator.dtype != verts.dtype:
            raise ValueError(f"operator: expected a [{uvs.shape[0]}, {verts.shape[0]}] {verts.dtype} matrix "
                             f"(uv_tangent_operator), got {list(operator.shape)} {operator.dtype}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            acc = operator @ verts.detach()
    else:
        p = verts.detach()[faces.long()]
        a, b = _tangent_weights(faces, uvs, uv_faces, verts.dtype)
        tan = (p[:, 1] - p[:, 0]) * a[:, None] - (p[:, 2] - p[:, 0]) * b[:, None]  # = T·|det|
        acc = torch.zeros((uvs.shape[0], 3), dtype=verts.dtype, device=verts.device)
        acc.index_add_(0, uv_faces.long().t().reshape(-1), tan.repeat(3, 1))  # the three corners in one scatter
    return acc / acc.norm(dim=1, keepdim=True).clamp(min=1e-20)


class TexturedMaterial(nn.Module):
    """kd | ks (| normal) textures ``[1, T, T, 6 or 9]`` on a UV atlas, sampled per pixel (mipmapped trilinear).

    Attributes:
        tex: parameter ``[1, T, T, C]`` float32 (kd RGB, then occlusion, roughness, metallic, then
            with C = 9 a tangent-space normal (x, y, z) in [−1, 1]² × [0, 1], OpenGL convention).
        uvs: ``[Vt, 2]`` float32; uv_faces: ``[F, 3]`` int32 (row k = the mesh's triangle k).
        mask: ``[T, T]`` bool, texels inside a chart (for re-padding before export).
    """

    def __init__(self, tex: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        if tex.dim() != 4 or tex.shape[0] != 1 or tex.shape[-1] not in (6, 9):
            raise ValueError(f"tex: expected [1, T, T, 6 or 9], got {list(tex.shape)}")
        self.tex = nn.Parameter(tex.float().contiguous())
        self.register_buffer("uvs", uvs.float().contiguous())
        self.register_buffer("uv_faces", uv_faces.to(torch.int32).contiguous())
        self.register_buffer("mask", mask.bool())
        lo = torch.tensor([0.0, 0.0, 0.0] + list(KS_MIN) + [-1.0, -1.0, 0.0])[:tex.shape[-1]]
        hi = torch.tensor([1.0, 1.0, 1.0] + list(KS_MAX) + [1.0, 1.0, 1.0])[:tex.shape[-1]]
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("hi", hi, persistent=False)

    def sample(self, uv: torch.Tensor, uv_da: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, C]`` material at texture coordinates ``uv`` ``[N, H, W, 2]`` with footprint ``uv_da`` ``[N, H, W, 4]``."""
        return texture(self.tex.to(uv.dtype), uv.contiguous(), uv_da.contiguous(), filter_mode="linear-mipmap-linear",
                       boundary_mode="clamp")

    def tangents(self, verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """``[Vt, 3]`` tangent per UV vertex of the mesh ``verts``/``faces`` (for the normal map).

        Called every step of the refinement pass on the same mesh and atlas: the computation is kept
        as one sparse matrix (:func:`uv_tangent_operator`), rebuilt when ``faces`` or ``uv_faces`` is
        another tensor or was written to, or the dtype or device changes.
        """
        # (the faces and uv_faces it was built from, their versions, the matrix)
        cached, key = getattr(self, "_tangent_op", None), (faces._version, self.uv_faces._version, verts.dtype,
                                                             verts.device)
        if cached is None or cached[0] is not faces or cached[1] is not self.uv_faces or cached[2] != key:
            op = uv_tangent_operator(faces, self.uvs, self.uv_faces, verts.shape[0], verts.dtype, verts.device)
            cached = (faces, self.uv_faces, key, op)
            self._tangent_op = cached
        return uv_tangents(verts, faces, self.uvs, self.uv_faces, cached[3])

    def __getstate__(self):
        """Pickled (checkpoints save the whole material) without the tangents' matrix: a cache."""
        state = dict(self.__dict__)
        state.pop("_tangent_op", None)
        return state

    def material(self) -> "TexturedMaterial":
        """What :func:`~taichi_dr.render.pipeline.render_mesh_views` takes: the module itself."""
        return self

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the texels back into the material bounds (call after each optimiser step)."""
        self.tex.data.clamp_(min=self.lo, max=self.hi)  # in place: no texture-sized temporaries

    @torch.no_grad()
    def padded(self) -> torch.Tensor:
        """``[T, T, C]`` texture with the chart borders re-dilated (for export: the optimiser only
        moves texels that some pixel sampled)."""
        return dilate(self.tex.detach()[0], self.mask)


def make_textured_material(verts: torch.Tensor, faces: torch.Tensor, field: Callable[[torch.Tensor], torch.Tensor],
                           image_hw: Tuple[int, int], normal_map: bool = True) -> Tuple[torch.Tensor, TexturedMaterial]:
    """Unwrap, bake and pad: the pass-2 material of the pass-1 mesh.

    Args:
        verts: ``[V, 3]``; faces: ``[F, 3]``; field: pass-1 material (``[P, 3]`` -> ``[P, 6 or 9]``; the
            first 6 channels are baked); image_hw: training image size (chooses the texture size);
            normal_map: add a tangent-space normal map (channels 6:9), starting flat (0, 0, 1).

    Returns:
        faces ``[F, 3]`` int32 in the atlas' triangle order (use these with the material) and the
        :class:`TexturedMaterial`.
    """
    R = texture_resolution(image_hw)
    _, faces2, uvs, uv_faces = _atlas(verts, faces, R)
    return faces2, _baked_material(verts, faces2, uvs, uv_faces, field, R, normal_map)


def _atlas(verts: torch.Tensor, faces: torch.Tensor, R: int, subdivisions: int = 0):
    """The mesh's UV atlas for an ``R``² texture, then the mesh and the atlas split ``subdivisions`` times
    at their edges' midpoints together (row k of ``faces`` and ``uv_faces`` stays one triangle):
    ``(verts, faces, uvs, uv_faces)``, on ``verts``' device. Unwrapping before the split gives the same
    charts while xatlas sees 4^n times fewer faces (the Mitsuba cup: 9,620 instead of 153,920). The
    result comes in :func:`~taichi_dr.mesh.spatial_order` (faces and ``uv_faces`` rows permuted alike)."""
    faces, uvs, uv_faces = (t.to(verts.device) for t in unwrap(verts, faces, R))  # xatlas runs on the CPU
    verts, faces = subdivide_midpoint(verts, faces, subdivisions)
    uvs, uv_faces = subdivide_midpoint(uvs, uv_faces, subdivisions)
    # every step renders this mesh: neighbours next to each other in memory (mesh.spatial_order)
    verts, faces, _, face_order = spatial_order(verts, faces)
    return verts, faces, uvs, uv_faces[face_order]


def _baked_material(verts: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor,
                    field: Callable[[torch.Tensor], torch.Tensor], R: int, normal_map: bool) -> TexturedMaterial:
    """The :class:`TexturedMaterial` of an unwrapped mesh: ``field`` baked into its ``R``² atlas, padded."""
    tex, mask = bake(verts, faces, uvs, uv_faces, lambda p: field(p)[:, :6], R)
    tex = dilate(tex, mask)
    if normal_map:
        tex = torch.cat([tex, torch.tensor([0.0, 0.0, 1.0]).expand(R, R, 3)], -1)
    return TexturedMaterial(tex[None], uvs, uv_faces, mask)


class VertexColors(nn.Module):
    """Per-vertex albedo ``[V, 3]`` kept in (0, 1) by a sigmoid (the pass-2 material when pass 1
    used per-vertex colours, ``ReconConfig.material = 'vertex'``)."""

    def __init__(self, colors: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(torch.logit(colors.detach().float().clamp(1e-4, 1 - 1e-4)))

    def material(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def clamp_(self) -> None:
        """Nothing to project (the sigmoid bounds the colours)."""


def start_material_pass(field, verts: torch.Tensor, faces: torch.Tensor, image_hw: Tuple[int, int],
                        normal_map: bool = True, subdivisions: int = 0):
    """The pass-2 mesh and material of the pass-1 mesh: the mesh split ``subdivisions`` times at its
    edges' midpoints (:func:`~taichi_dr.recon.subdivide.subdivide_midpoint`), with textures baked from
    a :class:`MaterialField` (with a tangent-space normal map if ``normal_map``), or per-vertex colours
    from a colour field returning ``[V, 3]``.

    The UV atlas is made *before* the split and split with the mesh (every UV triangle into the same
    four as its mesh triangle, so row k of both stays one triangle): the charts are the same, but
    xatlas sees 4^n times fewer faces (the Mitsuba cup: 9,620 faces instead of 153,920, and ~70 s
    less on the loaded 2-core machine; docs/08 round 21).

    Returns:
        ``(verts [V', 3], faces [F', 3] int32, material)``: the mesh to render with, its vertices and
        faces in space order (:func:`~taichi_dr.mesh.spatial_order`: every step renders it, and the
        rasterizer runs up to ~3x faster on faces that follow each other on screen), and a module with
        ``material()`` (what to pass to :func:`~taichi_dr.render.pipeline.render_mesh_views`) and
        ``clamp_()`` (after each step).
    """
    from taichi_dr.recon.material import MaterialField

    if isinstance(field, MaterialField):
        R = texture_resolution(image_hw)
        verts, faces, uvs, uv_faces = _atlas(verts, faces, R, subdivisions)
        return verts, faces, _baked_material(verts, faces, uvs, uv_faces, field, R, normal_map)
    verts, faces = subdivide_midpoint(verts, faces, subdivisions)
    verts, faces = spatial_order(verts, faces)[:2]
    with torch.no_grad():
        return verts, faces.to(torch.int32), VertexColors(field(verts))

"""texture(): filtered texture lookups (nearest, bilinear, mipmapped), 2-D and cube maps.

Work is split where each part is simplest to read and to differentiate:

* **torch** (differentiable by autograd): the mip pyramid (2×2 box filter per level) and, for
  cube maps, the face projection of a direction and the chain rule of the pixel footprint through
  it (d(s, t)/dX = d(s, t)/d(direction) · d(direction)/dX);
* **Taichi** (forward + hand-written adjoint, in :mod:`taichi_dr.render._texture_kernels`): per
  pixel, the level of detail from the (s, t) footprint and the bias, then the filtered lookup at
  coordinates (s, t) ∈ [0, 1]² on a face.
  The adjoint scatters weights to texels (atomic adds) and returns dL/ds, dL/dt, dL/d(footprint)
  and dL/dbias; autograd carries them on to ``uv``, ``uv_da`` and ``mip_level_bias``. Doing the
  level of detail in the kernel spares ~10 full-image torch temporaries per call.

2-D inputs are checked for NaN/Inf inside the kernel (see ``_texture_kernels.fwd``), cube-map
inputs in torch.

Conventions (nvdiffrast's): texel (i, j) of a W×H level has its centre at s = (i + ½)/W, so a
coordinate maps to the continuous texel position x = s·W − ½; bilinear filtering blends the 4
texels around x. The level of detail of a pixel is ½·log2 of the largest eigenvalue of JᵀJ, J the
2×2 Jacobian of texel position w.r.t. pixel position (an isotropic footprint), plus the bias; with
``linear-mipmap-linear`` the two nearest levels are blended by its fractional part.

Mip pyramid: level k+1 halves each side of level k (floor, at least 1) by averaging 2×2 blocks; a
side of odd length drops its last row/column (use even sides, or ``max_mip_level``, to avoid that).

Cube maps ``[N, 6, S, S, C]`` use the OpenGL face order (+x, −x, +y, −y, +z, −z) and face
coordinates; a bilinear tap that falls off a face is re-projected through its 3-D direction onto
the neighbouring face, so filtering is seamless across edges.
"""
import functools
from typing import List, Optional

import torch
import torch.nn.functional as F

from taichi_dr._checks import (FLOATS, check_choice, check_finite, check_float, check_device, check_tensor,
                               shape_str)
from taichi_dr.render._texture_kernels import kernels as _kernels
from taichi_dr.runtime import current_arch, ensure_init, ti_real

__all__ = ["texture", "texture_construct_mip", "MipStack", "cube_face_coords"]

FILTERS = ("nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear", "auto")
BOUNDARIES = ("wrap", "clamp", "zero", "cube")


class MipStack:
    """A texture with its mip pyramid, packed for the sampling kernel (from :func:`texture_construct_mip`).

    Attributes:
        levels: list of ``[N, F, H_k, W_k, C]`` tensors (F = 1 for 2-D, 6 for cube maps).
        cube: whether this is a cube map.
    """

    def __init__(self, levels: List[torch.Tensor], cube: bool):
        self.levels, self.cube = levels, cube

    def packed(self):
        """``[N, Σ F·H_k·W_k, C]`` data and per-level (offset, H, W) int32 tensors."""
        # the concatenation copies the whole pyramid: skip it for a single level (a view) and
        # reuse it for a constant stack (no autograd graph to keep, e.g. a prebuilt mip of a fixed texture)
        cached = getattr(self, "_packed", None)
        if cached is not None:
            return cached
        N, C = self.levels[0].shape[0], self.levels[0].shape[-1]
        if len(self.levels) == 1:
            flat = self.levels[0].reshape(N, -1, C).contiguous()
        else:
            flat = torch.cat([l.reshape(N, -1, C) for l in self.levels], 1).contiguous()
        sizes = [(l.shape[1] * l.shape[2] * l.shape[3], l.shape[2], l.shape[3]) for l in self.levels]
        offs = [0]
        for n, _, _ in sizes[:-1]:
            offs.append(offs[-1] + n)
        dev = flat.device
        meta = torch.tensor([[o, h, w] for o, (_, h, w) in zip(offs, sizes)], dtype=torch.int32, device=dev)
        if not flat.requires_grad:
            self._packed = (flat, meta)
        return flat, meta


def _build_levels(tex5: torch.Tensor, max_mip_level: Optional[int]) -> List[torch.Tensor]:
    levels = [tex5]
    while True:
        cur = levels[-1]
        N, Fc, H, W, C = cur.shape
        if (H == 1 and W == 1) or (max_mip_level is not None and len(levels) > max_mip_level):
            break
        x = cur.reshape(N * Fc, H, W, C).permute(0, 3, 1, 2)
        h2, w2 = max(H // 2, 1), max(W // 2, 1)
        # 2x2 box filter; a side of length 1 is averaged with itself
        x = x[:, :, : h2 * 2 if H > 1 else 1, : w2 * 2 if W > 1 else 1]
        x = F.avg_pool2d(x, (2 if H > 1 else 1, 2 if W > 1 else 1))
        levels.append(x.permute(0, 2, 3, 1).reshape(N, Fc, h2, w2, C))
    return levels


def texture_construct_mip(tex: torch.Tensor, max_mip_level: Optional[int] = None, cube_mode: bool = False) -> MipStack:
    """Build the mip pyramid of ``tex`` once, to reuse across :func:`texture` calls.

    Args:
        tex: ``[N, H, W, C]`` (or ``[N, 6, S, S, C]`` with ``cube_mode``) float32/float64.
        max_mip_level: highest level to build (level 0 is ``tex``); ``None`` = down to 1×1.
        cube_mode: ``tex`` is a cube map.
    """
    tex5 = _check_tex(tex, cube_mode)
    if max_mip_level is not None and (int(max_mip_level) != max_mip_level or max_mip_level < 0):
        raise ValueError(f"max_mip_level: expected an int >= 0, got {max_mip_level!r}")
    return MipStack(_build_levels(tex5, max_mip_level), cube_mode)


def _check_tex(tex, cube: bool) -> torch.Tensor:
    # shape and dtype only: a finiteness scan of the whole texture would cost more than the lookup
    # itself (NaN texels simply propagate to the pixels that sample them)
    if cube:
        check_tensor("tex", tex, 5, None, FLOATS, "[N, 6, S, S, C] (cube map)")
        if tex.shape[1] != 6 or tex.shape[2] != tex.shape[3]:
            raise ValueError(f"tex: expected cube map shape [N, 6, S, S, C] with square faces, got {shape_str(tex.shape)}")
        return tex
    check_tensor("tex", tex, 4, None, FLOATS, "[N, H, W, C]")
    return tex.unsqueeze(1)


def _cube_frame(d: torch.Tensor):
    """The one definition of the OpenGL cube-face selection for directions ``[..., 3]``: the
    components, the major-axis masks ``is_x``, ``is_y`` (else z), ``ma = |major component|`` and the
    face-plane coordinates ``sc``, ``tc`` (so that s = (sc/ma + 1)/2, t = (tc/ma + 1)/2)."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    ax, ay, az = x.abs(), y.abs(), z.abs()
    is_x = (ax >= ay) & (ax >= az)
    is_y = ~is_x & (ay >= az)
    ma = torch.where(is_x, ax, torch.where(is_y, ay, az)).clamp(min=1e-20)
    sc = torch.where(is_x, torch.where(x >= 0, -z, z), torch.where(is_y, x, torch.where(z >= 0, x, -x)))
    tc = torch.where(is_x, -y, torch.where(is_y, torch.where(y >= 0, z, -z), -y))
    return x, y, z, is_x, is_y, ma, sc, tc


def cube_face_coords(d: torch.Tensor):
    """OpenGL cube-map projection of directions ``[..., 3]``: face ``[...]`` int32 (+x, −x, +y, −y,
    +z, −z) and face coordinates ``[..., 2]`` in [0, 1] (differentiable w.r.t. ``d``)."""
    x, y, z, is_x, is_y, ma, sc, tc = _cube_frame(d)
    face = torch.where(is_x, torch.where(x >= 0, 0, 1), torch.where(is_y, torch.where(y >= 0, 2, 3),
                                                                      torch.where(z >= 0, 4, 5)))
    st = torch.stack([(sc / ma + 1) * 0.5, (tc / ma + 1) * 0.5], -1)
    return face.to(torch.int32), st


class _Sample(torch.autograd.Function):
    """The Taichi lookup as an autograd node. ``face`` (cube maps only), ``da`` (the ``[N, H, W, 4]``
    (s, t) footprint) and ``bias`` (``[N, H, W]``) may be None: the kernel is then compiled without
    them and gets 1-element dummies."""

    @staticmethod
    def forward(ctx, flat, meta, face, st, da, bias, filt, bmode):
        N, H, W = st.shape[:3]
        C = flat.shape[2]
        fwd, _ = _kernels(ti_real(flat.dtype), C, current_arch() == "cpu")
        # .contiguous() returns the tensor itself when it already is (the usual case): no copy
        flat_c, st_c = flat.detach().contiguous(), st.detach().contiguous()
        da_c = None if da is None else da.detach().contiguous()
        bias_c = None if bias is None else bias.detach().contiguous()
        out = torch.empty((N, H, W, C), dtype=flat.dtype, device=flat.device)
        bad = torch.zeros(4, dtype=torch.int32, device=flat.device)
        fwd(flat_c, meta, *_flat_args(face, st_c, da_c, bias_c), H * W, filt, bmode, da is not None,
            bias is not None, out.view(-1, C), bad)
        if bad.any():  # the op's one host sync: NaN/Inf in a 2-D input, as a check before the lookup would say
            flags = bad.tolist()
            for name, t, b in zip(("uv", "uv_da", "mip_level_bias"), (st, da, bias), flags):
                if b:
                    check_finite(name, t)
            if flags[3]:  # a sampled texel was NaN/Inf (texels nobody samples cannot change a result)
                n_bad = int((~torch.isfinite(flat_c)).sum())
                if n_bad:  # (0: finite texels whose blend overflowed, a legitimate Inf)
                    raise ValueError(f"tex: expected finite texels, got {n_bad} NaN/Inf entries in the texture "
                                     "(or in the mip levels built from it)")
        ctx.save_for_backward(flat_c, meta, face, st_c, da_c, bias_c)
        ctx.modes = (filt, bmode)
        return out

    @staticmethod
    def backward(ctx, g_out):
        flat, meta, face, st, da, bias = ctx.saved_tensors
        C = flat.shape[2]
        _, bwd = _kernels(ti_real(flat.dtype), C, current_arch() == "cpu")
        # the kernel writes every pixel of g_st, g_da and g_bias: only the scattered g_tex needs zeros
        g_tex, g_st = torch.zeros_like(flat), torch.empty_like(st)
        g_da = None if da is None else torch.empty_like(da)
        g_bias = None if bias is None else torch.empty_like(bias)
        _, _, g_da_f, g_bias_f = _flat_args(None, st, g_da, g_bias)
        bwd(flat, meta, *_flat_args(face, st, da, bias), st.shape[1] * st.shape[2], *ctx.modes, da is not None,
            bias is not None, g_out.detach().contiguous().view(-1, C), g_tex, g_st.view(-1, 2), g_da_f, g_bias_f)
        return g_tex, None, None, g_st, g_da, g_bias, None, None


def _flat_args(face, st, da, bias):
    """Flat per-pixel kernel views ``face [P]``, ``st [P, 2]``, ``da [P, 4]``, ``bias [P]``; a
    1-element dummy stands in for each absent (None) one."""
    if face is None:
        face = torch.zeros(1, dtype=torch.int32, device=st.device)
    da = st.new_zeros(1, 4) if da is None else da.view(-1, 4)
    bias = st.new_zeros(1) if bias is None else bias.view(-1)
    return face.view(-1), st.view(-1, 2), da, bias


def texture(tex, uv: torch.Tensor, uv_da: Optional[torch.Tensor] = None, mip_level_bias: Optional[torch.Tensor] = None,
            mip: Optional[MipStack] = None, filter_mode: str = "auto", boundary_mode: str = "wrap",
            max_mip_level: Optional[int] = None) -> torch.Tensor:
    """Sample a texture at per-pixel coordinates.

    Args:
        tex: ``[N, Ht, Wt, C]`` 2-D texture or ``[N, 6, S, S, C]`` cube map (``boundary_mode='cube'``);
            float32/float64; ``N = 1`` broadcasts over the batch of ``uv``.
        uv: ``[N, H, W, 2]`` texture coordinates (s, t), or ``[N, H, W, 3]`` directions for cube maps.
        uv_da: ``[N, H, W, 4]`` (ds/dX, ds/dY, dt/dX, dt/dY), or ``[N, H, W, 6]`` for cube maps
            (dx/dX, dx/dY, dy/dX, dy/dY, dz/dX, dz/dY): the pixel footprint that selects the mip level.
        mip_level_bias: ``[N, H, W]`` added to the level of detail. Both are used in the texture's
            dtype and must be finite (``ValueError`` otherwise, as for ``uv``).
        mip: a :class:`MipStack` from :func:`texture_construct_mip` (``tex`` is then ignored
            except for validation and may be ``None``).
        filter_mode: ``'nearest'``, ``'linear'``, ``'linear-mipmap-nearest'``, ``'linear-mipmap-linear'``
            or ``'auto'`` (trilinear when ``uv_da`` or ``mip_level_bias`` is given, else linear).
        boundary_mode: ``'wrap'``, ``'clamp'``, ``'zero'`` or ``'cube'``.
        max_mip_level: highest mip level used.

    Returns:
        ``[N, H, W, C]`` filtered values, dtype of the texture.

    Gradients flow to ``tex`` (all filters), ``uv`` (all but nearest), and to ``uv_da`` and
    ``mip_level_bias`` with ``'linear-mipmap-linear'``.
    """
    ensure_init()
    check_device(tex=tex, uv=uv, uv_da=uv_da, mip_level_bias=mip_level_bias)
    check_choice("filter_mode", filter_mode, FILTERS)
    check_choice("boundary_mode", boundary_mode, BOUNDARIES)
    cube = boundary_mode == "cube"
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if (uv_da is not None or mip_level_bias is not None) else "linear"
    filt = FILTERS.index(filter_mode)
    # 2-D inputs: shape and dtype here, NaN/Inf inside the lookup kernel, which reads them anyway
    # (see _texture_kernels.fwd); cube-map inputs feed torch code first and get the full check here
    check_in = check_float if cube else functools.partial(check_tensor, dtypes=FLOATS)
    check_in("uv", uv, ndim=4, last=3 if cube else 2, expected=f"[N, H, W, {3 if cube else 2}]")
    if mip is None:
        tex5 = _check_tex(tex, cube)
        levels = [tex5] if filt < 2 else _build_levels(tex5, max_mip_level)
        stack = MipStack(levels, cube)
    else:
        if not isinstance(mip, MipStack) or mip.cube != cube:
            raise TypeError(f"mip: expected a MipStack built with cube_mode={cube}")
        stack = mip if max_mip_level is None else MipStack(mip.levels[: max_mip_level + 1], cube)
    lvl0 = stack.levels[0]
    N = uv.shape[0]
    if lvl0.shape[0] not in (1, N):
        raise ValueError(f"tex: expected batch 1 or {N} (as uv), got {lvl0.shape[0]}")
    if uv.dtype != lvl0.dtype:
        raise TypeError(f"uv: expected dtype {lvl0.dtype} (same as tex), got {uv.dtype}")
    check_device(tex=lvl0, uv=uv, uv_da=uv_da, mip_level_bias=mip_level_bias)
    if cube:
        face, st = cube_face_coords(uv)
    else:
        face, st = None, uv  # 2-D: the kernel is compiled for face 0 and needs no face tensor
    # the level of detail is only read by the mipmapped filters; the kernel computes it from the
    # (s, t) footprint and the bias, and differentiates it by hand
    da = bias = None
    if filt >= 2:
        if uv_da is not None:
            k = 6 if cube else 4
            check_in("uv_da", uv_da, ndim=4, last=k, expected=f"[N, H, W, {k}]")
            if uv_da.shape[:3] != uv.shape[:3]:
                raise ValueError(f"uv_da: expected shape {shape_str([*uv.shape[:3], k])}, got {shape_str(uv_da.shape)}")
            da = uv_da.to(uv.dtype)  # no-op for the same dtype
            if cube:
                # chain rule through the face projection, d(s,t)/dX = d(s,t)/dd · dd/dX, in torch:
                # autograd carries the kernel's dL/d(da) back to the directions and their footprint
                da = (_st_jacobian(uv) @ da.reshape(*da.shape[:3], 3, 2)).reshape(*da.shape[:3], 4)
        if mip_level_bias is not None:
            check_in("mip_level_bias", mip_level_bias, ndim=3, expected=f"{shape_str(uv.shape[:3])}")
            if mip_level_bias.shape != uv.shape[:3]:
                raise ValueError(f"mip_level_bias: expected shape {shape_str(uv.shape[:3])}, got {shape_str(mip_level_bias.shape)}")
            bias = mip_level_bias.to(uv.dtype)
    flat, meta = stack.packed()
    return _Sample.apply(flat, meta, face, st, da, bias, filt, BOUNDARIES.index(boundary_mode))


def _st_jacobian(d: torch.Tensor) -> torch.Tensor:
    """d(s, t)/d(direction) ``[..., 2, 3]`` of the cube face projection (analytic, differentiable)."""
    x, y, z, is_x, is_y, ma, sc, tc = _cube_frame(d)
    zero = torch.zeros_like(x)
    # s = (sc/ma + 1)/2 with sc, tc, ma linear in d: ds/dd = (dsc·ma − sc·dma)/(2 ma²)
    sgn = lambda v: torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v))
    e = lambda i: torch.stack([zero + (i == 0), zero + (i == 1), zero + (i == 2)], -1)
    dma = torch.where(is_x[..., None], sgn(x)[..., None] * e(0), torch.where(is_y[..., None], sgn(y)[..., None] * e(1),
                                                                             sgn(z)[..., None] * e(2)))
    dsc = torch.where(is_x[..., None], -sgn(x)[..., None] * e(2),
                      torch.where(is_y[..., None], e(0), sgn(z)[..., None] * e(0)))
    dtc = torch.where(is_x[..., None], -e(1), torch.where(is_y[..., None], sgn(y)[..., None] * e(2), -e(1)))
    m = ma[..., None]
    ds = (dsc * m - sc[..., None] * dma) / (2 * m * m)
    dt = (dtc * m - tc[..., None] * dma) / (2 * m * m)
    return torch.stack([ds, dt], -2)

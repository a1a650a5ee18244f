"""texture(): filtered texture lookups (nearest, bilinear, mipmapped), 2-D and cube maps.

Work is split where each part is simplest to read and to differentiate:

* **torch** (differentiable by autograd): the mip pyramid (2×2 box filter per level), the cube-map
  face projection of a direction, and the level of detail from the screen-space footprint;
* **Taichi** (forward + hand-written adjoint): the filtered lookup itself, given per pixel a face,
  coordinates (s, t) ∈ [0, 1]² on it and a continuous mip level. Its adjoint scatters weights to
  texels (atomic adds) and returns dL/ds, dL/dt, dL/dlevel, which autograd carries back to
  ``uv``, ``uv_da`` and ``mip_level_bias``.

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

import taichi as ti
import torch
import torch.nn.functional as F

from taichi_dr._checks import FLOATS, check_choice, check_float, check_same_device, check_tensor, shape_str
from taichi_dr.runtime import ensure_init, ti_real

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


def cube_face_coords(d: torch.Tensor):
    """OpenGL cube-map projection of directions ``[..., 3]``: face ``[...]`` int32 (+x, −x, +y, −y,
    +z, −z) and face coordinates ``[..., 2]`` in [0, 1] (differentiable w.r.t. ``d``)."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    ax, ay, az = x.abs(), y.abs(), z.abs()
    is_x = (ax >= ay) & (ax >= az)
    is_y = ~is_x & (ay >= az)
    face = torch.where(is_x, torch.where(x >= 0, 0, 1), torch.where(is_y, torch.where(y >= 0, 2, 3),
                                                                      torch.where(z >= 0, 4, 5)))
    ma = torch.where(is_x, ax, torch.where(is_y, ay, az)).clamp(min=1e-20)
    sc = torch.where(is_x, torch.where(x >= 0, -z, z), torch.where(is_y, x, torch.where(z >= 0, x, -x)))
    tc = torch.where(is_x, -y, torch.where(is_y, torch.where(y >= 0, z, -z), -y))
    st = torch.stack([(sc / ma + 1) * 0.5, (tc / ma + 1) * 0.5], -1)
    return face.to(torch.int32), st


@functools.lru_cache(maxsize=None)
def _kernels(real):
    nd = ti.types.ndarray
    vec2 = ti.types.vector(2, real)

    @ti.func
    def cube_dir(f, sc, tc):
        # inverse of the face projection with |major axis| = 1
        d = ti.Vector([1.0, -tc, -sc], real)
        if f == 1:
            d = ti.Vector([-1.0, -tc, sc], real)
        elif f == 2:
            d = ti.Vector([sc, 1.0, tc], real)
        elif f == 3:
            d = ti.Vector([sc, -1.0, -tc], real)
        elif f == 4:
            d = ti.Vector([sc, -tc, 1.0], real)
        elif f == 5:
            d = ti.Vector([-sc, -tc, -1.0], real)
        return d

    @ti.func
    def cube_project(d):
        ax, ay, az = ti.abs(d[0]), ti.abs(d[1]), ti.abs(d[2])
        f, ma, sc, tc = 0, ax, -d[2], -d[1]
        if ax >= ay and ax >= az:
            if d[0] < 0:
                f, sc = 1, d[2]
        elif ay >= az:
            f, ma, sc, tc = 2, ay, d[0], d[2]
            if d[1] < 0:
                f, tc = 3, -d[2]
        else:
            f, ma, sc, tc = 4, az, d[0], -d[1]
            if d[2] < 0:
                f, sc = 5, -d[0]
        return f, (sc / ma + 1.0) * 0.5, (tc / ma + 1.0) * 0.5

    @ti.func
    def texel(meta: ti.template(), k, f, i, j, bmode: ti.template()):
        """Address of texel (i, j) of face f, level k after the boundary rule, or -1 (zero)."""
        H, W = meta[k, 1], meta[k, 2]
        addr = -1
        if ti.static(bmode == 0):  # wrap; callers pre-wrap the base tap (wrap_base), so one step suffices
            i = ti.select(i >= W, i - W, i)
            j = ti.select(j >= H, j - H, j)
            addr = meta[k, 0] + (f * H + j) * W + i
        elif ti.static(bmode == 1):  # clamp to edge texels
            i, j = ti.min(ti.max(i, 0), W - 1), ti.min(ti.max(j, 0), H - 1)
            addr = meta[k, 0] + (f * H + j) * W + i
        elif ti.static(bmode == 2):  # zero outside
            if 0 <= i < W and 0 <= j < H:
                addr = meta[k, 0] + (f * H + j) * W + i
        else:  # cube: re-project taps beyond the face through their direction
            if not (0 <= i < W and 0 <= j < H):
                d = cube_dir(f, 2.0 * (i + 0.5) / W - 1.0, 2.0 * (j + 0.5) / H - 1.0)
                f2, s2, t2 = cube_project(d)
                f = f2
                i = ti.min(ti.max(ti.cast(ti.floor(s2 * W), ti.i32), 0), W - 1)
                j = ti.min(ti.max(ti.cast(ti.floor(t2 * H), ti.i32), 0), H - 1)
            addr = meta[k, 0] + (f * H + j) * W + i
        return addr

    @ti.func
    def wrap_base(i, n, bmode: ti.template()):
        """For wrap mode, bring the base tap i into [0, n) so that taps i and i + 1 need no modulo.

        A per-tap integer modulo (two divisions) made wrapped lookups 3× slower than clamped ones.
        """
        if ti.static(bmode == 0):
            if i < 0 or i >= n:
                # floor(i / n) from a float division (an integer modulo costs two divisions),
                # then one correction step for a quotient rounded the wrong way
                i -= ti.cast(ti.floor(ti.cast(i, ti.f32) / ti.cast(n, ti.f32)), ti.i32) * n
                i = ti.select(i < 0, i + n, ti.select(i >= n, i - n, i))
        return i

    @ti.func
    def setup(lev: ti.template(), p, filt: ti.template(), nlev):
        """Levels to blend (k0, k1) and the blend weight of k1 for pixel p."""
        L = ti.cast(0.0, real)
        if ti.static(filt >= 2):
            L = ti.min(ti.max(lev[p], 0.0), ti.cast(nlev - 1, real))
        k0 = ti.cast(ti.floor(L), ti.i32)
        frac = L - k0
        if ti.static(filt == 2):  # mipmap-nearest
            k0 = ti.cast(ti.floor(L + 0.5), ti.i32)
            frac = 0.0
        k0 = ti.min(k0, nlev - 1)
        k1 = ti.min(k0 + 1, nlev - 1)
        return k0, k1, frac

    @ti.kernel
    def fwd(tex: nd(dtype=real, ndim=3), meta: nd(dtype=ti.i32, ndim=2), face: nd(dtype=ti.i32, ndim=1),
            st: nd(dtype=vec2, ndim=1), lev: nd(dtype=real, ndim=1), hw: ti.i32, filt: ti.template(),
            bmode: ti.template(), C: ti.template(), out: nd(dtype=real, ndim=2)):
        # filter, boundary mode and channel count are compile-time constants: one small
        # specialised kernel per combination, channels accumulated in registers. Images come as
        # flat [P, ·] views (P = N·H·W pixels, hw = H·W): a plain range-for, no index division.
        nlev = meta.shape[0]
        for p in range(face.shape[0]):
            nt = ti.raw_div(p, hw) if tex.shape[0] > 1 else 0
            k0, k1, frac = setup(lev, p, filt, nlev)
            f = face[p]
            s_t = st[p]
            acc = ti.Vector.zero(real, C)
            for li in ti.static(range(2 if filt == 3 else 1)):
                k = k0 if li == 0 else k1
                wl = (1.0 - frac) if li == 0 else frac
                H, W = meta[k, 1], meta[k, 2]
                px, py = s_t[0] * W - 0.5, s_t[1] * H - 0.5
                if ti.static(filt == 0):  # nearest: the texel containing the sample
                    a = texel(meta, k, f, wrap_base(ti.cast(ti.floor(px + 0.5), ti.i32), W, bmode),
                              wrap_base(ti.cast(ti.floor(py + 0.5), ti.i32), H, bmode), bmode)
                    if a >= 0:
                        for c in ti.static(range(C)):
                            acc[c] += tex[nt, a, c]
                else:
                    x0, y0 = ti.cast(ti.floor(px), ti.i32), ti.cast(ti.floor(py), ti.i32)
                    fx, fy = px - x0, py - y0
                    x0, y0 = wrap_base(x0, W, bmode), wrap_base(y0, H, bmode)
                    for dy, dx in ti.static(ti.ndrange(2, 2)):
                        w = wl * (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
                        a = texel(meta, k, f, x0 + dx, y0 + dy, bmode)
                        if a >= 0:
                            for c in ti.static(range(C)):
                                acc[c] += w * tex[nt, a, c]
            for c in ti.static(range(C)):
                out[p, c] = acc[c]

    @ti.kernel
    def bwd(tex: nd(dtype=real, ndim=3), meta: nd(dtype=ti.i32, ndim=2), face: nd(dtype=ti.i32, ndim=1),
            st: nd(dtype=vec2, ndim=1), lev: nd(dtype=real, ndim=1), hw: ti.i32, filt: ti.template(),
            bmode: ti.template(), C: ti.template(), g_out: nd(dtype=real, ndim=2), g_tex: nd(dtype=real, ndim=3),
            g_st: nd(dtype=vec2, ndim=1), g_lev: nd(dtype=real, ndim=1)):
        nlev = meta.shape[0]
        for p in range(face.shape[0]):
            nt = ti.raw_div(p, hw) if tex.shape[0] > 1 else 0
            k0, k1, frac = setup(lev, p, filt, nlev)
            f = face[p]
            s_t = st[p]
            g = ti.Vector.zero(real, C)
            for c in ti.static(range(C)):
                g[c] = g_out[p, c]
            gs, gt, gl = ti.cast(0.0, real), ti.cast(0.0, real), ti.cast(0.0, real)
            for li in ti.static(range(2 if filt == 3 else 1)):
                k = k0 if li == 0 else k1
                wl = (1.0 - frac) if li == 0 else frac
                dwl = -1.0 if li == 0 else 1.0  # d wl / d level
                H, W = meta[k, 1], meta[k, 2]
                px, py = s_t[0] * W - 0.5, s_t[1] * H - 0.5
                if ti.static(filt == 0):
                    a = texel(meta, k, f, wrap_base(ti.cast(ti.floor(px + 0.5), ti.i32), W, bmode),
                              wrap_base(ti.cast(ti.floor(py + 0.5), ti.i32), H, bmode), bmode)
                    if a >= 0:
                        for c in ti.static(range(C)):
                            g_tex[nt, a, c] += g[c]
                else:
                    x0, y0 = ti.cast(ti.floor(px), ti.i32), ti.cast(ti.floor(py), ti.i32)
                    fx, fy = px - x0, py - y0
                    x0, y0 = wrap_base(x0, W, bmode), wrap_base(y0, H, bmode)
                    for dy, dx in ti.static(ti.ndrange(2, 2)):
                        wx = fx if dx else 1.0 - fx
                        wy = fy if dy else 1.0 - fy
                        a = texel(meta, k, f, x0 + dx, y0 + dy, bmode)
                        if a >= 0:
                            tg = ti.cast(0.0, real)  # Σ_c g_c · texel_c
                            for c in ti.static(range(C)):
                                if wl > 0:
                                    g_tex[nt, a, c] += wl * wx * wy * g[c]
                                tg += g[c] * tex[nt, a, c]
                            # bilinear weights move with the sample: d fx / d s = W, d fy / d t = H
                            gs += wl * (1.0 if dx else -1.0) * wy * W * tg
                            gt += wl * wx * (1.0 if dy else -1.0) * H * tg
                            gl += dwl * wx * wy * tg
            g_st[p] = ti.Vector([gs, gt], real)
            # the level only matters for trilinear filtering inside the clamp range
            if ti.static(filt == 3):
                L = lev[p]
                if L > 0 and L < nlev - 1:
                    g_lev[p] = gl

    return fwd, bwd


class _Sample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, meta, face, st, lev, filt, bmode):
        fwd, _ = _kernels(ti_real(flat.dtype))
        flat_c, st_c, lev_c = flat.detach().contiguous(), st.detach().contiguous(), lev.detach().contiguous()
        C = flat.shape[2]
        hw = face.shape[1] * face.shape[2]
        out = torch.empty((*face.shape, C), dtype=flat.dtype, device=flat.device)
        fwd(flat_c, meta, face.view(-1), st_c.view(-1, 2), lev_c.view(-1), hw, filt, bmode, C, out.view(-1, C))
        ctx.save_for_backward(flat_c, meta, face, st_c, lev_c)
        ctx.modes = (filt, bmode)
        return out

    @staticmethod
    def backward(ctx, g_out):
        flat, meta, face, st, lev = ctx.saved_tensors
        _, bwd = _kernels(ti_real(flat.dtype))
        C = flat.shape[2]
        g_tex, g_st, g_lev = torch.zeros_like(flat), torch.zeros_like(st), torch.zeros_like(lev)
        bwd(flat, meta, face.view(-1), st.view(-1, 2), lev.view(-1), face.shape[1] * face.shape[2], *ctx.modes, C,
            g_out.detach().contiguous().view(-1, C), g_tex, g_st.view(-1, 2), g_lev.view(-1))
        return g_tex, None, None, g_st, g_lev, None, None


def _lod(jac: torch.Tensor) -> torch.Tensor:
    """½·log2 of the largest eigenvalue of JᵀJ for J ``[..., 2, 2]`` (rows s, t; columns X, Y)."""
    a = (jac[..., 0, 0] ** 2 + jac[..., 1, 0] ** 2)
    b = (jac[..., 0, 1] ** 2 + jac[..., 1, 1] ** 2)
    c = jac[..., 0, 0] * jac[..., 0, 1] + jac[..., 1, 0] * jac[..., 1, 1]
    lam = 0.5 * (a + b) + torch.sqrt(0.25 * (a - b) ** 2 + c * c + 1e-30)
    return 0.5 * torch.log2(lam.clamp(min=1e-30))


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
        mip_level_bias: ``[N, H, W]`` added to the level of detail.
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
    check_choice("filter_mode", filter_mode, FILTERS)
    check_choice("boundary_mode", boundary_mode, BOUNDARIES)
    cube = boundary_mode == "cube"
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if (uv_da is not None or mip_level_bias is not None) else "linear"
    filt = FILTERS.index(filter_mode)
    check_float("uv", uv, ndim=4, last=3 if cube else 2, expected=f"[N, H, W, {3 if cube else 2}]")
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
    check_same_device(tex=lvl0, uv=uv, uv_da=uv_da, mip_level_bias=mip_level_bias)
    if cube:
        face, st = cube_face_coords(uv)
    else:
        face, st = torch.zeros(uv.shape[:3], dtype=torch.int32, device=uv.device), uv
    # the level of detail is only read by the mipmapped filters (a 1-element dummy otherwise)
    level = torch.zeros(uv.shape[:3] if filt >= 2 else (1, 1, 1), dtype=uv.dtype, device=uv.device)
    if filt >= 2:
        if uv_da is not None:
            k = 6 if cube else 4
            check_float("uv_da", uv_da, ndim=4, last=k, expected=f"[N, H, W, {k}]")
            if uv_da.shape[:3] != uv.shape[:3]:
                raise ValueError(f"uv_da: expected shape {shape_str([*uv.shape[:3], k])}, got {shape_str(uv_da.shape)}")
            Ht, Wt = lvl0.shape[2], lvl0.shape[3]
            if cube:
                # chain rule through the face projection: d(s,t)/dX = d(s,t)/dd · dd/dX
                jac = _st_jacobian(uv) @ uv_da.reshape(*uv_da.shape[:3], 3, 2)  # [..., 2, 2]
            else:
                jac = uv_da.reshape(*uv_da.shape[:3], 2, 2)
            scale = torch.tensor([Wt, Ht], dtype=uv.dtype, device=uv.device).view(1, 1, 1, 2, 1)
            level = _lod(jac * scale)
        if mip_level_bias is not None:
            check_float("mip_level_bias", mip_level_bias, ndim=3, expected=f"{shape_str(uv.shape[:3])}")
            if mip_level_bias.shape != uv.shape[:3]:
                raise ValueError(f"mip_level_bias: expected shape {shape_str(uv.shape[:3])}, got {shape_str(mip_level_bias.shape)}")
            level = level + mip_level_bias
    flat, meta = stack.packed()
    return _Sample.apply(flat, meta, face.contiguous(), st.contiguous(), level.contiguous(), filt,
                         BOUNDARIES.index(boundary_mode))


def _st_jacobian(d: torch.Tensor) -> torch.Tensor:
    """d(s, t)/d(direction) ``[..., 2, 3]`` of the cube face projection (analytic, differentiable)."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    ax, ay, az = x.abs(), y.abs(), z.abs()
    is_x = (ax >= ay) & (ax >= az)
    is_y = ~is_x & (ay >= az)
    zero = torch.zeros_like(x)
    # s = (sc/ma + 1)/2 with sc, tc, ma linear in d: ds/dd = (dsc·ma − sc·dma)/(2 ma²)
    ma = torch.where(is_x, ax, torch.where(is_y, ay, az)).clamp(min=1e-20)
    sgn = lambda v: torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v))
    e = lambda i: torch.stack([zero + (i == 0), zero + (i == 1), zero + (i == 2)], -1)
    dma = torch.where(is_x[..., None], sgn(x)[..., None] * e(0), torch.where(is_y[..., None], sgn(y)[..., None] * e(1),
                                                                             sgn(z)[..., None] * e(2)))
    sc = torch.where(is_x, torch.where(x >= 0, -z, z), torch.where(is_y, x, torch.where(z >= 0, x, -x)))
    tc = torch.where(is_x, -y, torch.where(is_y, torch.where(y >= 0, z, -z), -y))
    dsc = torch.where(is_x[..., None], -sgn(x)[..., None] * e(2),
                      torch.where(is_y[..., None], e(0), sgn(z)[..., None] * e(0)))
    dtc = torch.where(is_x[..., None], -e(1), torch.where(is_y[..., None], sgn(y)[..., None] * e(2), -e(1)))
    m = ma[..., None]
    ds = (dsc * m - sc[..., None] * dma) / (2 * m * m)
    dt = (dtc * m - tc[..., None] * dma) / (2 * m * m)
    return torch.stack([ds, dt], -2)

"""texture(): filtered texture lookups (nearest, bilinear, mipmapped), 2-D and cube maps.

Work is split where each part is simplest to read and to differentiate:

* **torch** (differentiable by autograd): the mip pyramid (2×2 box filter per level) and, for
  cube maps, the face projection of a direction and the chain rule of the pixel footprint through
  it (d(s, t)/dX = d(s, t)/d(direction) · d(direction)/dX);
* **Taichi** (forward + hand-written adjoint): per pixel, the level of detail from the (s, t)
  footprint and the bias, then the filtered lookup at coordinates (s, t) ∈ [0, 1]² on a face.
  The adjoint scatters weights to texels (atomic adds) and returns dL/ds, dL/dt, dL/d(footprint)
  and dL/dbias; autograd carries them on to ``uv``, ``uv_da`` and ``mip_level_bias``. Doing the
  level of detail in the kernel spares ~10 full-image torch temporaries per call.

2-D inputs are checked for NaN/Inf inside the kernel (see ``fwd``), cube-map inputs in torch.

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
import math
from typing import List, Optional

import taichi as ti
import torch
import torch.nn.functional as F

from taichi_dr._checks import (FLOATS, check_choice, check_finite, check_float, check_same_device, check_tensor,
                               shape_str)
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["texture", "texture_construct_mip", "MipStack", "cube_face_coords"]

FILTERS = ("nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear", "auto")
BOUNDARIES = ("wrap", "clamp", "zero", "cube")
# level = ½·log2 λ = (½ / ln 2)·ln λ; wrapped as real(...) in kernels: a bare Python float there
# becomes an f32 constant even in f64 kernels
_HALF_INV_LN2 = 0.5 / math.log(2.0)


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
def _kernels(real, C: int):
    nd = ti.types.ndarray
    vec2 = ti.types.vector(2, real)
    vecC = ti.types.vector(C, real)  # one texel / pixel: loaded and stored as a whole
    meta_t = ti.types.vector(3, ti.i32)  # per level: (offset, H, W)
    vec4 = ti.types.vector(4, real)

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
    def texel(m, f, i, j, bmode: ti.template()):
        """Address of texel (i, j) of face f of the level m = (offset, H, W) after the boundary
        rule, or -1 (zero)."""
        H, W = m[1], m[2]
        addr = -1
        if ti.static(bmode == 0):  # wrap; callers pre-wrap the base tap (wrap_base), so one step suffices
            i = ti.select(i >= W, i - W, i)
            j = ti.select(j >= H, j - H, j)
            addr = m[0] + (f * H + j) * W + i
        elif ti.static(bmode == 1):  # clamp to edge texels
            i, j = ti.min(ti.max(i, 0), W - 1), ti.min(ti.max(j, 0), H - 1)
            addr = m[0] + (f * H + j) * W + i
        elif ti.static(bmode == 2):  # zero outside
            if 0 <= i < W and 0 <= j < H:
                addr = m[0] + (f * H + j) * W + i
        else:  # cube: re-project taps beyond the face through their direction
            if not (0 <= i < W and 0 <= j < H):
                d = cube_dir(f, 2.0 * (i + 0.5) / W - 1.0, 2.0 * (j + 0.5) / H - 1.0)
                f2, s2, t2 = cube_project(d)
                f = f2
                i = ti.min(ti.max(ti.cast(ti.floor(s2 * W), ti.i32), 0), W - 1)
                j = ti.min(ti.max(ti.cast(ti.floor(t2 * H), ti.i32), 0), H - 1)
            addr = m[0] + (f * H + j) * W + i
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
                # the f32 quotient is exact enough below 2^24; beyond (|s·W| that large, or past
                # the int32 range) the texel is meaningless anyway: just keep the address valid
                i = ti.min(ti.max(i, 0), n - 1)
        return i

    @ti.func
    def nearest_tap(m, f, s_t, bmode: ti.template()):
        """Address of the texel containing sample s_t on level m, or -1 (zero)."""
        px, py = s_t[0] * m[2] - 0.5, s_t[1] * m[1] - 0.5
        return texel(m, f, wrap_base(ti.cast(ti.floor(px + 0.5), ti.i32), m[2], bmode),
                     wrap_base(ti.cast(ti.floor(py + 0.5), ti.i32), m[1], bmode), bmode)

    @ti.func
    def bilinear_taps(m, f, s_t, bmode: ti.template()):
        """Addresses of the 2×2 texels around sample s_t on level m, (x0 + dx, y0 + dy) at index
        q = 2·dy + dx (-1 = zero), and the sample's position (fx, fy) ∈ [0, 1]² between them."""
        px, py = s_t[0] * m[2] - 0.5, s_t[1] * m[1] - 0.5
        fpx, fpy = ti.floor(px), ti.floor(py)
        # the weights come from the float floor: in [0, 1] even where the int cast overflows
        x0, y0 = wrap_base(ti.cast(fpx, ti.i32), m[2], bmode), wrap_base(ti.cast(fpy, ti.i32), m[1], bmode)
        a = ti.Vector([texel(m, f, x0 + (q & 1), y0 + (q >> 1), bmode) for q in ti.static(range(4))])
        return a, px - fpx, py - fpy

    @ti.func
    def nonfinite(x):
        """1 if a component of vector x is NaN or ±Inf (all exponent bits set), else 0. Tested on
        the bits: under ti.init(fast_math=True) the compiler may assume finite floats and fold
        x != x away."""
        bad = 0
        for i in ti.static(range(x.n)):
            if ti.static(real == ti.f64):
                e = ti.i64(0x7FF0000000000000)
                bad |= ti.cast((ti.bit_cast(x[i], ti.i64) & e) == e, ti.i32)
            else:
                e = ti.i32(0x7F800000)
                bad |= ti.cast((ti.bit_cast(x[i], ti.i32) & e) == e, ti.i32)
        return bad

    @ti.func
    def footprint(da: ti.template(), p, W0, H0):
        """J = d(texel x, y)/d(pixel X, Y) at pixel p, flattened (J00, J01, J10, J11): the
        (s, t) footprint (ds/dX, ds/dY, dt/dX, dt/dY) with its rows scaled to level-0 texels."""
        j = da[p]
        return ti.Vector([j[0] * W0, j[1] * W0, j[2] * H0, j[3] * H0], real)

    @ti.func
    def lam_max(J):
        """Largest eigenvalue λ of JᵀJ = [[a, c], [c, b]] (a, b: squared column lengths):
        λ = ½(a + b) + r with r = sqrt(¼(a − b)² + c²) (+ 1e-30, so r > 0 and dr is finite)."""
        a = J[0] * J[0] + J[2] * J[2]
        b = J[1] * J[1] + J[3] * J[3]
        c = J[0] * J[1] + J[2] * J[3]
        r = ti.sqrt(0.25 * (a - b) * (a - b) + c * c + real(1e-30))
        return a, b, c, r, 0.5 * (a + b) + r

    @ti.func
    def level(da: ti.template(), bias: ti.template(), p, W0, H0, has_da: ti.template(), has_bias: ti.template()):
        """Level of detail of pixel p before clamping: ½·log2 λ (the longer axis of the footprint
        in texels, as a power of two) plus the bias; 0 without footprint or bias."""
        L = ti.cast(0.0, real)
        if ti.static(has_da):
            _, _, _, _, lam = lam_max(footprint(da, p, W0, H0))
            L = real(_HALF_INV_LN2) * ti.log(ti.max(lam, real(1e-30)))
        if ti.static(has_bias):
            L += bias[p]
        return L

    @ti.func
    def level_adjoint(da: ti.template(), p, W0, H0, gL):
        """Gradient w.r.t. the footprint da[p] given gL, the gradient w.r.t. the level of pixel p
        (the adjoint of footprint → lam_max → level)."""
        J = footprint(da, p, W0, H0)
        a, b, c, r, lam = lam_max(J)
        g_lam = ti.cast(0.0, real)
        if lam > real(1e-30):  # where the log's argument was clamped the level is constant
            g_lam = gL * real(_HALF_INV_LN2) / lam
        # dλ/da = ½ + ¼(a − b)/r, dλ/db = ½ − ¼(a − b)/r, dλ/dc = c/r
        ga = g_lam * (0.5 + 0.25 * (a - b) / r)
        gb = g_lam * (0.5 - 0.25 * (a - b) / r)
        gc = g_lam * c / r
        # a = J00² + J10², b = J01² + J11², c = J00·J01 + J10·J11; then the row scales W0, H0
        return ti.Vector([(2.0 * ga * J[0] + gc * J[1]) * W0, (2.0 * gb * J[1] + gc * J[0]) * W0,
                          (2.0 * ga * J[2] + gc * J[3]) * H0, (2.0 * gb * J[3] + gc * J[2]) * H0], real)

    @ti.func
    def setup(L, filt: ti.template(), nlev):
        """Levels to blend (k0, k1) and the blend weight of k1 for a level of detail L."""
        Lc = ti.cast(0.0, real)
        if ti.static(filt >= 2):
            Lc = ti.min(ti.max(L, 0.0), ti.cast(nlev - 1, real))
        k0 = ti.cast(ti.floor(Lc), ti.i32)
        frac = Lc - k0
        if ti.static(filt == 2):  # mipmap-nearest
            k0 = ti.cast(ti.floor(Lc + 0.5), ti.i32)
            frac = 0.0
        k0 = ti.min(k0, nlev - 1)
        k1 = ti.min(k0 + 1, nlev - 1)
        return k0, k1, frac

    @ti.kernel
    def fwd(tex: nd(dtype=vecC, ndim=2), meta: nd(dtype=meta_t, ndim=1), face: nd(dtype=ti.i32, ndim=1),
            st: nd(dtype=vec2, ndim=1), da: nd(dtype=vec4, ndim=1), bias: nd(dtype=real, ndim=1), hw: ti.i32,
            filt: ti.template(), bmode: ti.template(), has_da: ti.template(),
            has_bias: ti.template(), out: nd(dtype=vecC, ndim=1), bad: nd(dtype=ti.i32, ndim=1)):
        # filter, boundary mode, channel count and which level inputs exist are compile-time
        # constants: one small specialised kernel per combination. Texels and output pixels are
        # C-vectors (one load / store each, channels summed in registers); absent inputs (face for
        # 2-D textures, footprint, bias) are 1-element dummies never read. Images come as flat
        # [P, ·] views (P = N·H·W pixels, hw = H·W): a plain range-for, no index division.
        # 2-D inputs come straight from the caller and are checked for NaN/Inf here, where they
        # are read anyway (bad[0..2] flag uv, uv_da, mip_level_bias; the wrapper then raises): a
        # torch reduction beforehand costs a pass per input, and its OpenMP workers keep spinning
        # afterwards, slowing this kernel down by a third. Cube-map inputs are checked in torch.
        nlev = meta.shape[0]
        H0, W0 = ti.cast(meta[0][1], real), ti.cast(meta[0][2], real)
        for p in range(out.shape[0]):
            nt = ti.raw_div(p, hw) if tex.shape[0] > 1 else 0
            L = ti.cast(0.0, real)
            if ti.static(filt >= 2):
                L = level(da, bias, p, W0, H0, has_da, has_bias)
            f = 0
            if ti.static(bmode == 3):
                f = face[p]
            s_t = st[p]
            if ti.static(bmode != 3):
                b_st, b_da, b_bias = nonfinite(s_t), 0, 0
                if ti.static(has_da):
                    b_da = nonfinite(da[p])
                if ti.static(has_bias):
                    b_bias = nonfinite(ti.Vector([bias[p]], real))
                if b_st | b_da | b_bias:
                    # flag the input; sample a harmless point (a NaN texel index is no address)
                    bad[0] |= b_st
                    bad[1] |= b_da
                    bad[2] |= b_bias
                    s_t, L = ti.Vector.zero(real, 2), ti.cast(0.0, real)
            k0, k1, frac = setup(L, filt, nlev)
            acc = ti.Vector.zero(real, C)
            for li in ti.static(range(2 if filt == 3 else 1)):  # levels k0, k1
                m = meta[k0 if li == 0 else k1]
                wl = (1.0 - frac) if li == 0 else frac
                if ti.static(filt == 0):
                    a = nearest_tap(m, f, s_t, bmode)
                    if a >= 0:
                        acc += tex[nt, a]
                else:
                    a, fx, fy = bilinear_taps(m, f, s_t, bmode)
                    for q in ti.static(range(4)):
                        w = wl * (fx if q & 1 else 1.0 - fx) * (fy if q >> 1 else 1.0 - fy)
                        if a[q] >= 0:
                            acc += w * tex[nt, a[q]]
            out[p] = acc

    @ti.kernel
    def bwd(tex: nd(dtype=vecC, ndim=2), meta: nd(dtype=meta_t, ndim=1), face: nd(dtype=ti.i32, ndim=1),
            st: nd(dtype=vec2, ndim=1), da: nd(dtype=vec4, ndim=1), bias: nd(dtype=real, ndim=1), hw: ti.i32,
            filt: ti.template(), bmode: ti.template(), has_da: ti.template(),
            has_bias: ti.template(), g_out: nd(dtype=vecC, ndim=1), g_tex: nd(dtype=vecC, ndim=2),
            g_st: nd(dtype=vec2, ndim=1), g_da: nd(dtype=vec4, ndim=1), g_bias: nd(dtype=real, ndim=1)):
        # every pixel writes its g_st (and g_da, g_bias when present), so those need no zeroing
        nlev = meta.shape[0]
        H0, W0 = ti.cast(meta[0][1], real), ti.cast(meta[0][2], real)
        for p in range(g_out.shape[0]):
            nt = ti.raw_div(p, hw) if tex.shape[0] > 1 else 0
            L = ti.cast(0.0, real)
            if ti.static(filt >= 2):
                L = level(da, bias, p, W0, H0, has_da, has_bias)
            k0, k1, frac = setup(L, filt, nlev)
            f = 0
            if ti.static(bmode == 3):
                f = face[p]
            s_t = st[p]
            g = g_out[p]
            gs, gt, gl = ti.cast(0.0, real), ti.cast(0.0, real), ti.cast(0.0, real)
            for li in ti.static(range(2 if filt == 3 else 1)):
                m = meta[k0 if li == 0 else k1]
                wl = (1.0 - frac) if li == 0 else frac
                dwl = -1.0 if li == 0 else 1.0  # d wl / d level
                if ti.static(filt == 0):
                    a = nearest_tap(m, f, s_t, bmode)
                    if a >= 0:
                        g_tex[nt, a] += g
                else:
                    a, fx, fy = bilinear_taps(m, f, s_t, bmode)
                    for q in ti.static(range(4)):
                        dx, dy = q & 1, q >> 1
                        wx = fx if dx else 1.0 - fx
                        wy = fy if dy else 1.0 - fy
                        if a[q] >= 0:
                            if wl > 0:
                                g_tex[nt, a[q]] += wl * wx * wy * g
                            tg = g.dot(tex[nt, a[q]])  # Σ_c g_c · texel_c
                            # bilinear weights move with the sample: d fx / d s = W, d fy / d t = H
                            gs += wl * (1.0 if dx else -1.0) * wy * m[2] * tg
                            gt += wl * wx * (1.0 if dy else -1.0) * m[1] * tg
                            gl += dwl * wx * wy * tg
            g_st[p] = ti.Vector([gs, gt], real)
            # the level only matters for trilinear filtering inside the clamp range
            if ti.static(filt != 3):
                gl = 0.0
            else:
                if not (L > 0 and L < nlev - 1):
                    gl = 0.0
            if ti.static(has_bias):
                g_bias[p] = gl  # dlevel/dbias = 1
            if ti.static(has_da):
                g_da[p] = level_adjoint(da, p, W0, H0, gl)

    return fwd, bwd


class _Sample(torch.autograd.Function):
    """The Taichi lookup as an autograd node. ``face`` (cube maps only), ``da`` (the ``[N, H, W, 4]``
    (s, t) footprint) and ``bias`` (``[N, H, W]``) may be None: the kernel is then compiled without
    them and gets 1-element dummies."""

    @staticmethod
    def forward(ctx, flat, meta, face, st, da, bias, filt, bmode):
        N, H, W = st.shape[:3]
        C = flat.shape[2]
        fwd, _ = _kernels(ti_real(flat.dtype), C)
        # .contiguous() returns the tensor itself when it already is (the usual case): no copy
        flat_c, st_c = flat.detach().contiguous(), st.detach().contiguous()
        da_c = None if da is None else da.detach().contiguous()
        bias_c = None if bias is None else bias.detach().contiguous()
        out = torch.empty((N, H, W, C), dtype=flat.dtype, device=flat.device)
        bad = torch.zeros(3, dtype=torch.int32, device=flat.device)
        fwd(flat_c, meta, *_flat_args(face, st_c, da_c, bias_c), H * W, filt, bmode, da is not None,
            bias is not None, out.view(-1, C), bad)
        if bad.any():  # NaN/Inf in a 2-D input: the same error as a check before the lookup
            for name, t, b in zip(("uv", "uv_da", "mip_level_bias"), (st, da, bias), bad.tolist()):
                if b:
                    check_finite(name, t)
        ctx.save_for_backward(flat_c, meta, face, st_c, da_c, bias_c)
        ctx.modes = (filt, bmode)
        return out

    @staticmethod
    def backward(ctx, g_out):
        flat, meta, face, st, da, bias = ctx.saved_tensors
        C = flat.shape[2]
        _, bwd = _kernels(ti_real(flat.dtype), C)
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
    check_choice("filter_mode", filter_mode, FILTERS)
    check_choice("boundary_mode", boundary_mode, BOUNDARIES)
    cube = boundary_mode == "cube"
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if (uv_da is not None or mip_level_bias is not None) else "linear"
    filt = FILTERS.index(filter_mode)
    # 2-D inputs: shape and dtype here, NaN/Inf inside the lookup kernel, which reads them anyway
    # (see fwd); cube-map inputs feed torch code first and get the full check here
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
    check_same_device(tex=lvl0, uv=uv, uv_da=uv_da, mip_level_bias=mip_level_bias)
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

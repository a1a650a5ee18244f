"""Taichi kernels of texture(): per-pixel level of detail and filtered lookup (forward) and its
hand-written adjoint (backward).

See the docstring of :mod:`taichi_dr.render.texture` for what runs in torch and what here, and for
the conventions. In short: texel (i, j) of a W×H level has its centre at s = (i + ½)/W, so a
coordinate maps to the continuous texel position x = s·W − ½ and bilinear filtering blends the 4
texels around x; the level of detail is ½·log2 of the largest eigenvalue of JᵀJ (J the 2×2
Jacobian of texel position w.r.t. pixel position) plus the bias; a cube-map tap that falls off a
face is re-projected through its 3-D direction onto the neighbouring face.

Why a hand-written adjoint: texel addresses depend on the data and the lookup loops over levels,
which Taichi's reverse-mode autodiff does not handle (see docs/09_taichi_autodiff.md). ``bwd``
recomputes the taps of ``fwd`` and scatters weighted output gradients to them (atomic adds; on the
CPU one thread with plain adds, see ``bwd``), and returns dL/ds, dL/dt, and through the level of
detail dL/d(footprint) and dL/dbias.
"""
import functools
import math

import taichi as ti

from taichi_dr.render._pixel_loops import batch_of

__all__ = ["cube_dir_func", "kernels"]

# level = ½·log2 λ = (½ / ln 2)·ln λ; wrapped as real(...) in kernels: a bare Python float there
# becomes an f32 constant even in f64 kernels
_HALF_INV_LN2 = 0.5 / math.log(2.0)


@functools.lru_cache(maxsize=None)
def cube_dir_func(real):
    """``cube_dir(f, sc, tc)`` as a Taichi function of float type ``real``: the direction (|major
    axis| = 1) of face ``f`` at face coordinates ``sc, tc`` in [-1, 1], the inverse of the face
    projection. Shared by the texture and the shading kernels (one cube-face convention)."""

    @ti.func
    def cube_dir(f, sc, tc):
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

    return cube_dir


@functools.lru_cache(maxsize=None)
def kernels(real, C: int, serial_bwd: bool = False):
    """The texture sampling kernels ``(fwd, bwd)`` for the Taichi float type ``real`` and ``C`` channels.

    Both take the packed mip stack (``tex [N_tex, Σ texels, C]`` and per-level ``meta`` rows
    (offset, H, W)), flat per-pixel views (``face [P]``, ``st [P, 2]``, ``da [P, 4]``,
    ``bias [P]``; 1-element dummies when absent) and compile-time switches: ``filt`` is the index
    in ``texture.FILTERS`` (0 nearest, 1 linear, 2 linear-mipmap-nearest, 3 linear-mipmap-linear),
    ``bmode`` the index in ``texture.BOUNDARIES`` (0 wrap, 1 clamp, 2 zero, 3 cube).
    ``serial_bwd`` (the CPU's choice, see ``bwd``) runs the adjoint on one thread with plain adds.
    """
    SERIAL = serial_bwd
    nd = ti.types.ndarray
    vec2 = ti.types.vector(2, real)
    vecC = ti.types.vector(C, real)  # one texel / pixel: loaded and stored as a whole
    meta_t = ti.types.vector(3, ti.i32)  # per level: (offset, H, W)
    vec4 = ti.types.vector(4, real)

    cube_dir = cube_dir_func(real)

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
        # are read anyway (bad[0..2] flag uv, uv_da, mip_level_bias, bad[3] a sampled non-finite texel;
        # the wrapper then raises): a
        # torch reduction beforehand costs a pass per input, and its OpenMP workers keep spinning
        # afterwards, slowing this kernel down by a third. Cube-map inputs are checked in torch.
        nlev = meta.shape[0]
        H0, W0 = ti.cast(meta[0][1], real), ti.cast(meta[0][2], real)
        for p in range(out.shape[0]):
            nt = batch_of(p, hw, tex.shape[0])
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
            # the inputs are finite by now, so a non-finite result means a NaN/Inf texel was
            # sampled: flagged (bad[3]) for the wrapper to reject, at the cost of a bit test
            if nonfinite(acc):  # a plain store, rarely: an atomic OR on every pixel made 2 threads contend
                bad[3] = 1
            out[p] = acc

    @ti.func
    def scatter(g_tex: ti.template(), nt, a, v):
        """g_tex[nt, a] += v: a plain add in the serial (CPU) adjoint, an atomic one in parallel."""
        if ti.static(SERIAL):
            g_tex[nt, a] = g_tex[nt, a] + v
        else:
            g_tex[nt, a] += v

    @ti.kernel
    def bwd(tex: nd(dtype=vecC, ndim=2), meta: nd(dtype=meta_t, ndim=1), face: nd(dtype=ti.i32, ndim=1),
            st: nd(dtype=vec2, ndim=1), da: nd(dtype=vec4, ndim=1), bias: nd(dtype=real, ndim=1), hw: ti.i32,
            filt: ti.template(), bmode: ti.template(), has_da: ti.template(),
            has_bias: ti.template(), g_out: nd(dtype=vecC, ndim=1), g_tex: nd(dtype=vecC, ndim=2),
            g_st: nd(dtype=vec2, ndim=1), g_da: nd(dtype=vec4, ndim=1), g_bias: nd(dtype=real, ndim=1)):
        # every pixel writes its g_st (and g_da, g_bias when present), so those need no zeroing
        nlev = meta.shape[0]
        H0, W0 = ti.cast(meta[0][1], real), ti.cast(meta[0][2], real)
        # CPU: one thread and plain read-add-writes. x86 has no float atomic add (each is a
        # compare-and-swap loop, ~20 cycles even without contention, 8·C per trilinear pixel), so the
        # serial scatter is faster than two threads of atomics (measured: docs/04_texture_shading.md); a
        # GPU keeps the parallel loop and its native atomics
        ti.loop_config(serialize=SERIAL)
        for p in range(g_out.shape[0]):
            nt = batch_of(p, hw, tex.shape[0])
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
                        scatter(g_tex, nt, a, g)
                else:
                    a, fx, fy = bilinear_taps(m, f, s_t, bmode)
                    for q in ti.static(range(4)):
                        dx, dy = q & 1, q >> 1
                        wx = fx if dx else 1.0 - fx
                        wy = fy if dy else 1.0 - fy
                        if a[q] >= 0:
                            if wl > 0:
                                scatter(g_tex, nt, a[q], wl * wx * wy * g)
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

"""Taichi functions shared by the fused shading kernels: vector helpers, the Smith Λ term, the
cube-face projection and the bilinear lookups in padded cube maps, the BRDF table taps.

The kernels themselves live next to their adjoints, one module per light type:
:mod:`taichi_dr.render._analytic_kernels` (directional / point light) and
:mod:`taichi_dr.render._env_kernels` (split-sum environment light, prefilter).

**Padded cube maps.** The environment kernels read cube maps whose faces carry a one-texel
border: face f of a level of face size S is stored as (S + 2)² texels, row j + 1, column i + 1
holding texel (i, j) for i, j ∈ [−1, S], and the border texels are copies of the texels that a
bilinear tap falling off the face re-projects to through its direction (the seamless-filtering
convention of :mod:`taichi_dr.render.texture`). Those addresses depend only on S, so the border
is one cached gather, done outside the kernels (``EnvironmentLight``); a lookup is then four
plain taps of one face, with no branch — the re-projection used to be recomputed per tap, per
pixel. A lookup here equals ``texture(..., filter_mode='linear', boundary_mode='cube')``.
"""
import functools
from typing import NamedTuple

import taichi as ti

__all__ = ["shading_funcs", "ShadingFuncs", "EPS", "MIN_ROUGHNESS"]

EPS = 1e-4  # clamp of the cosines, as in nvdiffrec
MIN_ROUGHNESS = 0.08


class ShadingFuncs(NamedTuple):
    """The shared ``ti.func`` s for one float type (see each function's docstring)."""

    nrmz: object
    nrmz_adj: object
    clamp_g: object
    lam: object
    cube_st: object
    cube_taps: object
    cube_lookup: object
    cube_lookup_adj: object
    lut_lookup: object


@functools.lru_cache(maxsize=None)
def shading_funcs(real) -> ShadingFuncs:
    """The shared Taichi functions for the float type ``real`` (ti.f32 or ti.f64).

    Constants are written real(c): a bare Python float is an f32 constant even in f64 kernels.
    """

    @ti.func
    def nrmz(x):
        """safe_normalize: x / sqrt(max(x·x, 1e-20)) (one division, three products: divisions are
        the slowest arithmetic of these kernels)."""
        return x * (1.0 / ti.sqrt(ti.max(x.dot(x), real(1e-20))))

    @ti.func
    def nrmz_adj(x, g):
        """Adjoint of nrmz at x for the output gradient g (below the clamp nrmz is x·1e10)."""
        s2 = ti.max(x.dot(x), real(1e-20))
        il = 1.0 / ti.sqrt(s2)
        return g * il - x * ti.select(x.dot(x) >= real(1e-20), g.dot(x) * il * il * il, real(0.0))

    @ti.func
    def clamp_g(x, lo, hi):
        """clamp(x, lo, hi) and its derivative (1 inside, boundaries included, as torch)."""
        return ti.min(ti.max(x, lo), hi), ti.select(x >= lo and x <= hi, real(1.0), real(0.0))

    @ti.func
    def lam(a2, c):
        """Smith Λ(c) = ½(√(1 + α² tan²θ) − 1) and dΛ/dα², dΛ/dc."""
        t = (1.0 - c * c) / (c * c)
        s = ti.sqrt(1.0 + a2 * t)
        return 0.5 * (s - 1.0), 0.25 * t / s, 0.25 * a2 / s * (-2.0 / (c * c * c))

    @ti.func
    def cube_st(d):
        """Face of direction d, face coordinates (s, t) ∈ [0, 1] and ds/dd, dt/dd ([3] each):
        s = (sc/ma + 1)/2 with ma = e_ma·d, sc = e_sc·d, tc = e_tc·d linear in d on a face.

        Without branches: the face of a random direction is unpredictable, and a mispredicted
        branch costs more than computing all three axes' cases with selects (the products by
        0 and ±1 are exact, so the values equal the per-face formulas). A kernel that ignores
        the derivatives does not compute them: the compiler drops unused values."""
        ax, ay, az = ti.abs(d[0]), ti.abs(d[1]), ti.abs(d[2])
        isx = ax >= ay and ax >= az
        isy = not isx and ay >= az
        neg = ti.select(isx, d[0] < 0, ti.select(isy, d[1] < 0, d[2] < 0))
        f = ti.select(isx, 0, ti.select(isy, 2, 4)) + ti.select(neg, 1, 0)
        wx, wy = ti.select(isx, real(1.0), real(0.0)), ti.select(isy, real(1.0), real(0.0))
        wz = 1.0 - wx - wy
        sg = ti.select(neg, real(-1.0), real(1.0))
        # OpenGL faces: +x (sc, tc) = (−z, −y), −x (z, −y), +y (x, z), −y (x, −z), +z (x, −y), −z (−x, −y)
        ema = ti.Vector([wx * sg, wy * sg, wz * sg], real)
        esc = ti.Vector([wy + wz * sg, 0.0, -wx * sg], real)
        etc = ti.Vector([0.0, -(wx + wz), wy * sg], real)
        ma, sc, tc = ema.dot(d), esc.dot(d), etc.dot(d)
        im = 1.0 / ti.max(ma, real(1e-20))
        im2 = 0.5 * im
        # s = (sc/ma + 1)/2: ds/dd = (e_sc·ma − e_ma·sc)/(2 ma²)
        return (f, (sc * im + 1.0) * 0.5, (tc * im + 1.0) * 0.5, (esc - ema * (sc * im)) * im2,
                (etc - ema * (tc * im)) * im2)

    @ti.func
    def cube_taps(m, f, s, t):
        """Bilinear footprint at (s, t) on face f of the padded level m = (offset, S): the address
        of the top-left tap (the others are +1, +S + 2, +S + 3), the row stride S + 2, the
        fractions (fx, fy) and S as a float. s, t ∈ [0, 1] put the taps in [−1, S]; the clamp
        only keeps a NaN direction inside the map."""
        S = m[1]
        Sr = ti.cast(S, real)
        px, py = s * Sr - 0.5, t * Sr - 0.5
        fpx, fpy = ti.floor(px), ti.floor(py)
        x0 = ti.min(ti.max(ti.cast(fpx, ti.i32), -1), S - 1)
        y0 = ti.min(ti.max(ti.cast(fpy, ti.i32), -1), S - 1)
        Sp = S + 2
        return m[0] + (f * Sp + y0 + 1) * Sp + x0 + 1, Sp, px - fpx, py - fpy, Sr

    @ti.func
    def cube_lookup(env: ti.template(), m, f, s, t):
        """Bilinear value [3] at (s, t) on face f of the padded level m (four plain taps)."""
        a, Sp, fx, fy, _ = cube_taps(m, f, s, t)
        val = ti.Vector.zero(real, 3)
        for q in ti.static(range(4)):
            wx = fx if q & 1 else 1.0 - fx
            wy = fy if q >> 1 else 1.0 - fy
            val += (wx * wy) * env[a + (q >> 1) * Sp + (q & 1)]
        return val

    @ti.func
    def cube_lookup_adj(env: ti.template(), g_env: ti.template(), b, m, f, s, t, g, wl,
                        private: ti.template()):
        """The bilinear value [3] at (s, t) (as cube_lookup), and its adjoint for the output
        gradient wl·g: scatter wl·g·(tap weight) into row b of g_env (a plain add if the row is
        ``private`` to the calling iteration, else an atomic add), and return wl·d(g·value)/d(s, t)."""
        a, Sp, fx, fy, Sr = cube_taps(m, f, s, t)
        val = ti.Vector.zero(real, 3)
        gs, gt = ti.cast(0.0, real), ti.cast(0.0, real)
        for q in ti.static(range(4)):
            wx = fx if q & 1 else 1.0 - fx
            wy = fy if q >> 1 else 1.0 - fy
            aq = a + (q >> 1) * Sp + (q & 1)
            tex = env[aq]
            val += (wx * wy) * tex
            tg = wl * g.dot(tex)
            gs += (1.0 if q & 1 else -1.0) * wy * Sr * tg  # d fx / d s = S
            gt += wx * (1.0 if q >> 1 else -1.0) * Sr * tg
        if wl != 0:  # (a level blended with weight 0 reads nothing: no gradient to scatter)
            for q in ti.static(range(4)):
                wx = fx if q & 1 else 1.0 - fx
                wy = fy if q >> 1 else 1.0 - fy
                aq = a + (q >> 1) * Sp + (q & 1)
                if ti.static(private):  # row b belongs to this iteration alone: no atomic
                    g_env[b, aq] = g_env[b, aq] + (wl * wx * wy) * g
                else:
                    g_env[b, aq] += (wl * wx * wy) * g
        return val, gs, gt

    @ti.func
    def lut_lookup(lut: ti.template(), n_lut, u, v):
        """Bilinear, clamped lookup (A, B) of the BRDF table (row v = roughness, column u = n·v),
        and d(A, B)/du, d(A, B)/dv ([2] each)."""
        px, py = u * n_lut - 0.5, v * n_lut - 0.5
        fpx, fpy = ti.floor(px), ti.floor(py)
        x0, y0 = ti.cast(fpx, ti.i32), ti.cast(fpy, ti.i32)
        fx, fy = px - fpx, py - fpy
        ab = ti.Vector.zero(real, 2)
        dab_u, dab_v = ti.Vector.zero(real, 2), ti.Vector.zero(real, 2)
        for q in ti.static(range(4)):
            i = ti.min(ti.max(x0 + (q & 1), 0), n_lut - 1)
            j = ti.min(ti.max(y0 + (q >> 1), 0), n_lut - 1)
            wx = fx if q & 1 else 1.0 - fx
            wy = fy if q >> 1 else 1.0 - fy
            e = lut[j * n_lut + i]
            ab += (wx * wy) * e
            dab_u += ((1.0 if q & 1 else -1.0) * wy * n_lut) * e
            dab_v += (wx * (1.0 if q >> 1 else -1.0) * n_lut) * e
        return ab, dab_u, dab_v

    return ShadingFuncs(nrmz, nrmz_adj, clamp_g, lam, cube_st, cube_taps, cube_lookup, cube_lookup_adj, lut_lookup)

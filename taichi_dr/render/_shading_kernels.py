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
    cube_scatter: object
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
        branch costs more than computing all three axes' cases with selects. ma, sc, tc are
        selected components (sign flips are exact), not dot products with 0/±1 weights: without
        fast-math the compiler may not drop a product by 0 (the dot products were ~15 % of the
        forward's float operations). A kernel that ignores the derivatives does not compute them."""
        ax, ay, az = ti.abs(d[0]), ti.abs(d[1]), ti.abs(d[2])
        isx = ax >= ay and ax >= az
        isy = not isx and ay >= az
        neg = ti.select(isx, d[0] < 0, ti.select(isy, d[1] < 0, d[2] < 0))
        f = ti.select(isx, 0, ti.select(isy, 2, 4)) + ti.select(neg, 1, 0)
        one, zero = real(1.0), real(0.0)
        sg = ti.select(neg, -one, one)
        # OpenGL faces (sc, tc): +x (−z, −y) −x (z, −y) +y (x, z) −y (x, −z) +z (x, −y) −z (−x, −y)
        ma = ti.select(isx, ax, ti.select(isy, ay, az))
        sc = ti.select(isx, -sg * d[2], ti.select(isy, d[0], sg * d[0]))
        tc = ti.select(isy, sg * d[2], -d[1])
        im = 1.0 / ti.max(ma, real(1e-20))
        im2 = 0.5 * im
        # s = (sc/ma + 1)/2 with ma = e_ma·d, sc = e_sc·d: ds/dd = (e_sc − e_ma·sc/ma)/(2 ma)
        ema = ti.Vector([ti.select(isx, sg, zero), ti.select(isy, sg, zero), ti.select(isx or isy, zero, sg)])
        esc = ti.Vector([ti.select(isx, zero, ti.select(isy, one, sg)), zero, ti.select(isx, -sg, zero)])
        etc = ti.Vector([zero, ti.select(isy, zero, -one), ti.select(isy, sg, zero)])
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
        gx, gy = 1.0 - fx, 1.0 - fy
        # (starting from the first tap, not from 0: without fast-math 0 + x is an addition)
        return (gx * gy) * env[a] + (fx * gy) * env[a + 1] + (gx * fy) * env[a + Sp] + (fx * fy) * env[a + Sp + 1]

    @ti.func
    def cube_lookup_adj(env: ti.template(), m, f, s, t, g, wl):
        """The bilinear value [3] at (s, t) (as cube_lookup) and, for the output gradient wl·g,
        wl·d(g·value)/d(s, t) and the footprint (a, Sp, fx, fy) and gradient gw = wl·g that
        :func:`cube_scatter` adds to the texels."""
        a, Sp, fx, fy, Sr = cube_taps(m, f, s, t)
        gx, gy = 1.0 - fx, 1.0 - fy
        t0, t1, t2, t3 = env[a], env[a + 1], env[a + Sp], env[a + Sp + 1]
        val = (gx * gy) * t0 + (fx * gy) * t1 + (gx * fy) * t2 + (fx * fy) * t3
        # d(gw·value)/d(s, t) from the four taps' gw·tex, in closed form (d fx/d s = S)
        gw = g * wl
        d0, d1, d2, d3 = gw.dot(t0), gw.dot(t1), gw.dot(t2), gw.dot(t3)
        gs = Sr * (gy * (d1 - d0) + fy * (d3 - d2))
        gt = Sr * (gx * (d2 - d0) + fx * (d3 - d1))
        return val, gs, gt, a, Sp, fx, fy, gw

    @ti.func
    def cube_scatter(g_env: ti.template(), b, a, Sp, fx, fy, gw, private: ti.template()):
        """Adjoint of the four taps of cube_lookup_adj: add gw·(tap weight) to the texels at
        offset b of the flat ``[B·R]`` g_env (the caller's row; a plain add if that row is
        ``private`` to the calling iteration, else an atomic add). Callers scatter after their
        last read: the compiler must assume that a store may change any array, and reloads
        every array pointer and table entry it reads after one."""
        for q in ti.static(range(4)):
            wq = (fx if q & 1 else 1.0 - fx) * (fy if q >> 1 else 1.0 - fy)
            aq = b + a + (q >> 1) * Sp + (q & 1)
            if ti.static(private):  # the row belongs to this iteration alone: no atomic
                g_env[aq] = g_env[aq] + wq * gw
            else:
                g_env[aq] += wq * gw

    @ti.func
    def lut_lookup(lut: ti.template(), n_lut, u, v):
        """Bilinear, clamped lookup (A, B) of the BRDF table (row v = roughness, column u = n·v),
        and d(A, B)/du, d(A, B)/dv ([2] each)."""
        px, py = u * n_lut - 0.5, v * n_lut - 0.5
        fpx, fpy = ti.floor(px), ti.floor(py)
        x0, y0 = ti.cast(fpx, ti.i32), ti.cast(fpy, ti.i32)
        fx, fy = px - fpx, py - fpy
        i0, i1 = ti.min(ti.max(x0, 0), n_lut - 1), ti.min(ti.max(x0 + 1, 0), n_lut - 1)
        j0, j1 = ti.min(ti.max(y0, 0), n_lut - 1) * n_lut, ti.min(ti.max(y0 + 1, 0), n_lut - 1) * n_lut
        e0, e1, e2, e3 = lut[j0 + i0], lut[j0 + i1], lut[j1 + i0], lut[j1 + i1]
        gx, gy = 1.0 - fx, 1.0 - fy
        ab = (gx * gy) * e0 + (fx * gy) * e1 + (gx * fy) * e2 + (fx * fy) * e3
        # the derivatives in closed form (d fx/du = n): a third of the products of a per-tap sum
        dab_u = n_lut * (gy * (e1 - e0) + fy * (e3 - e2))
        dab_v = n_lut * (gx * (e2 - e0) + fx * (e3 - e1))
        return ab, dab_u, dab_v

    return ShadingFuncs(nrmz, nrmz_adj, clamp_g, lam, cube_st, cube_taps, cube_lookup, cube_lookup_adj, cube_scatter,
                        lut_lookup)

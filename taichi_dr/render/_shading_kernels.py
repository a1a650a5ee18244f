"""Taichi kernels of the fused per-pixel shading (forward) and their hand-written adjoints (backward).

One launch shades every pixel of a batch for one light type, writing linear radiance:

* ``analytic_fwd`` / ``analytic_bwd``: a directional or point light (+ an ambient term) on the
  Lambert + GGX material of :mod:`taichi_dr.render.shading` (D, height-correlated Smith G,
  Schlick F; α = max(r, 0.08)², cosines clamped to [1e-4, 1 − 1e-4]);
* ``env_fwd`` / ``env_bwd``: split-sum image-based light. Diffuse = the irradiance cube map at n;
  specular = ONE trilinear lookup at the reflected direction in the chain of prefiltered maps
  (the level is a piecewise-linear function of roughness, so "level k" holds the lobe of the k-th
  roughness knot), times F0·A + B from the BRDF table (bilinear, clamped, row = roughness,
  column = n·v);
* ``spmv``: y = W·x for a CSR matrix, the prefilter (GGX lobes, cosine lobe) of the learnable
  environment map; its adjoint is the same kernel with the transposed matrix.

Why hand-written adjoints: the environment lookups read data-dependent texel addresses and the
backward scatters into the maps with atomic adds; Taichi's autodiff does not handle either. Each
``*_bwd`` recomputes the forward of its pixel and walks it backwards, step by step, in the order
of the comments of the forward. Light parameters (a direction, colour, ambient: a few numbers
shared by all pixels) are summed per chunk of ``CHUNK`` pixels in registers and added once per
chunk, so that a million pixels do not contend for three addresses.

Texel and cube conventions are those of :mod:`taichi_dr.render.texture` (texel centre at
(i + ½)/S, OpenGL faces, bilinear taps that fall off a face re-projected through their direction),
so a lookup here equals ``texture(..., filter_mode='linear', boundary_mode='cube')``.
"""
import functools
import math
from typing import NamedTuple

import taichi as ti

from taichi_dr.render._texture_kernels import cube_dir_func

__all__ = ["kernels", "ShadingKernels", "CHUNK"]

CHUNK = 64  # pixels per parallel iteration of the backward kernels (one light-gradient add each)
EPS = 1e-4  # clamp of the cosines, as in nvdiffrec
MIN_ROUGHNESS = 0.08


class ShadingKernels(NamedTuple):
    """The kernels for one float type (see the module docstring)."""

    analytic_fwd: object
    analytic_bwd: object
    env_fwd: object
    env_bwd: object
    spmv: object


@functools.lru_cache(maxsize=None)
def kernels(real) -> ShadingKernels:
    """The shading kernels for the Taichi float type ``real`` (ti.f32 or ti.f64).

    Per-pixel arrays are flat ``[P]`` vec3 views of ``[N, H, W, 3]`` tensors (P = N·H·W,
    ``hw`` = H·W picks the camera of a pixel); ``ks`` is (occlusion, roughness, metallic).
    With ``has_ks`` False the material is pure Lambert (no specular lobe, no occlusion) and
    ``ks`` is a 1-element dummy.
    """
    nd = ti.types.ndarray
    vec3 = ti.types.vector(3, real)
    vec2 = ti.types.vector(2, real)
    meta_t = ti.types.vector(2, ti.i32)  # per cube level: (offset in texels, face size S)
    # constants are written real(c): a bare Python float is an f32 constant even in f64 kernels

    # ------------------------------------------------------------------ small shared pieces
    @ti.func
    def nrmz(x):
        """safe_normalize: x / sqrt(max(x·x, 1e-20))."""
        return x / ti.sqrt(ti.max(x.dot(x), real(1e-20)))

    @ti.func
    def nrmz_adj(x, g):
        """Adjoint of nrmz at x for the output gradient g."""
        s2 = x.dot(x)
        out = g / ti.sqrt(real(1e-20))
        if s2 >= real(1e-20):
            il = 1.0 / ti.sqrt(s2)
            out = g * il - x * (g.dot(x) * il * il * il)
        return out

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

    # ------------------------------------------------------------------ cube maps
    @ti.func
    def e3(x, y, z):
        return ti.Vector([x, y, z], real)

    @ti.func
    def cube_st(d):
        """Face of direction d, face coordinates (s, t) ∈ [0, 1] and ds/dd, dt/dd ([3] each):
        s = (sc/ma + 1)/2 with ma, sc, tc = e·d linear in d on a face."""
        ax, ay, az = ti.abs(d[0]), ti.abs(d[1]), ti.abs(d[2])
        f, ma, sc, tc = 0, ax, -d[2], -d[1]
        esc, etc, ema = e3(0.0, 0.0, -1.0), e3(0.0, -1.0, 0.0), e3(1.0, 0.0, 0.0)
        if ax >= ay and ax >= az:
            if d[0] < 0:
                f, sc = 1, d[2]
                esc, ema = e3(0.0, 0.0, 1.0), e3(-1.0, 0.0, 0.0)
        elif ay >= az:
            f, ma, sc, tc = 2, ay, d[0], d[2]
            esc, etc, ema = e3(1.0, 0.0, 0.0), e3(0.0, 0.0, 1.0), e3(0.0, 1.0, 0.0)
            if d[1] < 0:
                f, tc = 3, -d[2]
                etc, ema = e3(0.0, 0.0, -1.0), e3(0.0, -1.0, 0.0)
        else:
            f, ma, sc, tc = 4, az, d[0], -d[1]
            esc, etc, ema = e3(1.0, 0.0, 0.0), e3(0.0, -1.0, 0.0), e3(0.0, 0.0, 1.0)
            if d[2] < 0:
                f, sc = 5, -d[0]
                esc, ema = e3(-1.0, 0.0, 0.0), e3(0.0, 0.0, -1.0)
        ma = ti.max(ma, real(1e-20))
        im2 = 0.5 / (ma * ma)
        return f, (sc / ma + 1.0) * 0.5, (tc / ma + 1.0) * 0.5, (esc * ma - ema * sc) * im2, (etc * ma - ema * tc) * im2

    cube_dir = cube_dir_func(real)  # inverse of the face projection (|major axis| = 1)

    @ti.func
    def cube_texel(m, f, i, j):
        """Address of texel (i, j) of face f of the level m = (offset, S); a tap off the face is
        re-projected through its direction onto the neighbouring face."""
        S = m[1]
        if not (0 <= i < S and 0 <= j < S):
            d = cube_dir(f, 2.0 * (i + 0.5) / S - 1.0, 2.0 * (j + 0.5) / S - 1.0)
            f2, s2, t2, _, _ = cube_st(d)
            f = f2
            i = ti.min(ti.max(ti.cast(ti.floor(s2 * S), ti.i32), 0), S - 1)
            j = ti.min(ti.max(ti.cast(ti.floor(t2 * S), ti.i32), 0), S - 1)
        return m[0] + (f * S + j) * S + i

    @ti.func
    def cube_lookup(env: ti.template(), g_env: ti.template(), b, m, f, s, t, g, wl, adj: ti.template(),
                    private: ti.template()):
        """Bilinear value [3] at (s, t) on face f of the level m = (offset, S). With ``adj``, also
        scatter wl·g to the 4 taps (into row b of g_env, without atomics if ``private``) and
        return wl·d(g·value)/d(s, t). The taps run in a loop, not
        unrolled: the re-projection code is then compiled once per call site (unrolled 4× per
        lookup, the backward kernel took minutes to compile)."""
        Sr = ti.cast(m[1], real)
        px, py = s * Sr - 0.5, t * Sr - 0.5
        fpx, fpy = ti.floor(px), ti.floor(py)
        x0, y0 = ti.cast(fpx, ti.i32), ti.cast(fpy, ti.i32)
        fx, fy = px - fpx, py - fpy
        val = ti.Vector.zero(real, 3)
        gs, gt = ti.cast(0.0, real), ti.cast(0.0, real)
        for q in range(4):
            dx, dy = q & 1, q >> 1
            wx = ti.select(dx == 1, fx, 1.0 - fx)
            wy = ti.select(dy == 1, fy, 1.0 - fy)
            a = cube_texel(m, f, x0 + dx, y0 + dy)
            tex = env[a]
            val += wx * wy * tex
            if ti.static(adj):
                if wl != 0:
                    if ti.static(private):  # copy b belongs to this iteration alone: no atomic
                        g_env[b, a] = g_env[b, a] + (wl * wx * wy) * g
                    else:
                        g_env[b, a] += (wl * wx * wy) * g
                tg = wl * g.dot(tex)
                gs += ti.select(dx == 1, 1.0, -1.0) * wy * Sr * tg  # d fx / d s = S
                gt += wx * ti.select(dy == 1, 1.0, -1.0) * Sr * tg
        return val, gs, gt

    @ti.func
    def bilin_w(q, fx, fy):
        return (fx if q & 1 else 1.0 - fx) * (fy if q >> 1 else 1.0 - fy)

    # ------------------------------------------------------------------ BRDF table (2-D, clamped)
    @ti.func
    def lut_taps(n_lut, u, v):
        px, py = u * n_lut - 0.5, v * n_lut - 0.5
        fpx, fpy = ti.floor(px), ti.floor(py)
        x0, y0 = ti.cast(fpx, ti.i32), ti.cast(fpy, ti.i32)
        a = ti.Vector([0, 0, 0, 0])
        for q in ti.static(range(4)):
            i = ti.min(ti.max(x0 + (q & 1), 0), n_lut - 1)
            j = ti.min(ti.max(y0 + (q >> 1), 0), n_lut - 1)
            a[q] = j * n_lut + i
        return a, px - fpx, py - fpy

    # ------------------------------------------------------------------ analytic lights
    @ti.func
    def analytic_eval(P, Nn, kd, ks, C, L, col, amb, point: ti.template(), has_ks: ti.template()):
        """Radiance [3] of one pixel; also returns what the adjoint re-uses."""
        o, r, m = ti.cast(0.0, real), ti.cast(MIN_ROUGHNESS, real), ti.cast(0.0, real)
        if ti.static(has_ks):
            o, r, m = ks[0], ks[1], ks[2]
        lraw = L
        inv = ti.cast(1.0, real)
        if ti.static(point):
            lraw = L - P
            inv = 1.0 / ti.max(lraw.dot(lraw), real(1e-8))  # 1/d², d clamped ≥ 1e-4
        l = nrmz(lraw)
        nl = Nn.dot(l)
        bsdf = kd * ((1.0 - m) / real(math.pi) * ti.max(nl, 0.0))  # Lambert
        if ti.static(has_ks):
            if nl > 0:
                v = nrmz(C - P)
                h = nrmz(v + l)
                cl, _ = clamp_g(nl, real(EPS), real(1 - EPS))
                cv, _ = clamp_g(Nn.dot(v), real(EPS), real(1 - EPS))
                ch, _ = clamp_g(Nn.dot(h), real(EPS), real(1 - EPS))
                cd, _ = clamp_g(v.dot(h), real(EPS), real(1 - EPS))
                rc = ti.max(r, real(MIN_ROUGHNESS))
                a2 = rc * rc * rc * rc  # α² with α = r²
                dd = ch * ch * (a2 - 1.0) + 1.0
                D = a2 / (real(math.pi) * dd * dd)
                ll, _, _ = lam(a2, cl)
                lv, _, _ = lam(a2, cv)
                G = 1.0 / (1.0 + ll + lv)
                q5 = (1.0 - cd) ** 5
                f0 = real(0.04) * (1.0 - m) + kd * m
                bsdf += (f0 * (1.0 - q5) + q5) * (D * G / (4.0 * cv))
        return bsdf * col * inv + amb * kd * ((1.0 - m) * (1.0 - o))

    @ti.kernel
    def analytic_fwd(pos: nd(dtype=vec3, ndim=1), nrm: nd(dtype=vec3, ndim=1), kd: nd(dtype=vec3, ndim=1),
                     ks: nd(dtype=vec3, ndim=1), campos: nd(dtype=vec3, ndim=1), hw: ti.i32,
                     light: nd(dtype=vec3, ndim=1), point: ti.template(), has_ks: ti.template(),
                     out: nd(dtype=vec3, ndim=1)):
        # light = (direction towards the light | position, colour, ambient)
        for p in range(out.shape[0]):
            L, col, amb = light[0], light[1], light[2]
            k = ti.Vector.zero(real, 3)
            if ti.static(has_ks):
                k = ks[p]
            out[p] = analytic_eval(pos[p], nrm[p], kd[p], k, campos[ti.raw_div(p, hw)], L, col, amb, point, has_ks)

    @ti.kernel
    def analytic_bwd(pos: nd(dtype=vec3, ndim=1), nrm: nd(dtype=vec3, ndim=1), kd: nd(dtype=vec3, ndim=1),
                     ks: nd(dtype=vec3, ndim=1), campos: nd(dtype=vec3, ndim=1), hw: ti.i32,
                     light: nd(dtype=vec3, ndim=1), point: ti.template(), has_ks: ti.template(),
                     g_out: nd(dtype=vec3, ndim=1), g_pos: nd(dtype=vec3, ndim=1), g_nrm: nd(dtype=vec3, ndim=1),
                     g_kd: nd(dtype=vec3, ndim=1), g_ks: nd(dtype=vec3, ndim=1), g_light: nd(dtype=vec3, ndim=1)):
        # writes every pixel of g_pos, g_nrm, g_kd (and g_ks); adds into g_light (zeroed by the caller)
        P_all = g_out.shape[0]
        for c in range((P_all + CHUNK - 1) // CHUNK):
            # (loaded per iteration: f64 vector loads in the serial prologue of a CUDA kernel failed
            # with a misaligned address)
            Lp, col, amb = light[0], light[1], light[2]
            gL, gcol, gamb = ti.Vector.zero(real, 3), ti.Vector.zero(real, 3), ti.Vector.zero(real, 3)
            for p in range(c * CHUNK, ti.min(c * CHUNK + CHUNK, P_all)):
                P, Nn, kdp, C, g = pos[p], nrm[p], kd[p], campos[ti.raw_div(p, hw)], g_out[p]
                o, r, m = ti.cast(0.0, real), ti.cast(MIN_ROUGHNESS, real), ti.cast(0.0, real)
                if ti.static(has_ks):
                    k = ks[p]
                    o, r, m = k[0], k[1], k[2]
                lraw = Lp
                inv = ti.cast(1.0, real)
                d2raw = ti.cast(0.0, real)
                if ti.static(point):
                    lraw = Lp - P
                    d2raw = lraw.dot(lraw)
                    inv = 1.0 / ti.max(d2raw, real(1e-8))
                l = nrmz(lraw)
                nl = Nn.dot(l)
                mnl = ti.max(nl, 0.0)
                # recompute the BSDF value (for the colour and 1/d² gradients) on the way
                bsdf = kdp * ((1.0 - m) / real(math.pi) * mnl)
                # out = bsdf·col·inv + amb·kd·(1 − m)(1 − o)
                g_b = g * col * inv
                gcol += g * bsdf * inv  # the specular part is added below
                gamb += g * kdp * ((1.0 - m) * (1.0 - o))
                gkd = g * amb * ((1.0 - m) * (1.0 - o))
                g_m = -(g * amb * kdp).sum() * (1.0 - o)
                g_o = -(g * amb * kdp).sum() * (1.0 - m)
                g_r = ti.cast(0.0, real)
                # Lambert: kd(1 − m)/π·max(n·l, 0)
                gkd += g_b * ((1.0 - m) / real(math.pi) * mnl)
                g_m -= (g_b * kdp).sum() / real(math.pi) * mnl
                g_nl = ti.select(nl > 0, (g_b * kdp).sum() * (1.0 - m) / real(math.pi), real(0.0))
                g_N = ti.Vector.zero(real, 3)
                g_l = ti.Vector.zero(real, 3)
                g_Praw = ti.Vector.zero(real, 3)  # gradient w.r.t. P through the view direction
                if ti.static(has_ks):
                    if nl > 0:
                        vraw = C - P
                        v = nrmz(vraw)
                        hraw = v + l
                        h = nrmz(hraw)
                        cl, dcl = clamp_g(nl, real(EPS), real(1 - EPS))
                        cv, dcv = clamp_g(Nn.dot(v), real(EPS), real(1 - EPS))
                        ch, dch = clamp_g(Nn.dot(h), real(EPS), real(1 - EPS))
                        cd, dcd = clamp_g(v.dot(h), real(EPS), real(1 - EPS))
                        rc = ti.max(r, real(MIN_ROUGHNESS))
                        a2 = rc * rc * rc * rc
                        dd = ch * ch * (a2 - 1.0) + 1.0
                        D = a2 / (real(math.pi) * dd * dd)
                        ll, ll_a, ll_c = lam(a2, cl)
                        lv, lv_a, lv_c = lam(a2, cv)
                        G = 1.0 / (1.0 + ll + lv)
                        q5 = (1.0 - cd) ** 5
                        f0 = real(0.04) * (1.0 - m) + kdp * m
                        F = f0 * (1.0 - q5) + q5
                        K = D * G / (4.0 * cv)
                        gcol += g * F * K * inv
                        bsdf += F * K
                        # spec = F·K with K = D·G/(4 cv)
                        g_F = g_b * K
                        g_K = (g_b * F).sum()
                        g_f0 = g_F * (1.0 - q5)
                        g_cd = -5.0 * (1.0 - cd) ** 4 * (g_F * (1.0 - f0)).sum()
                        gkd += g_f0 * m
                        g_m += (g_f0 * (kdp - real(0.04))).sum()
                        g_D = g_K * G / (4.0 * cv)
                        g_G = g_K * D / (4.0 * cv)
                        g_cv = -g_K * K / cv
                        g_lam = -G * G * g_G  # G = 1/(1 + Λl + Λv)
                        g_a2 = g_lam * (ll_a + lv_a)
                        g_cl = g_lam * ll_c
                        g_cv += g_lam * lv_c
                        # D = α²/(π dd²), dd = ch²(α² − 1) + 1
                        g_a2 += g_D * (1.0 / (real(math.pi) * dd * dd) - 2.0 * D / dd * ch * ch)
                        g_ch = g_D * (-2.0 * D / dd) * 2.0 * ch * (a2 - 1.0)
                        g_r = ti.select(r >= real(MIN_ROUGHNESS), g_a2 * 4.0 * rc * rc * rc, real(0.0))
                        # through the clamps to the raw cosines n·l, n·v, n·h, v·h
                        g_nl += g_cl * dcl
                        g_nv = g_cv * dcv
                        g_nh = g_ch * dch
                        g_vh = g_cd * dcd
                        g_N += g_nv * v + g_nh * h
                        g_v = g_nv * Nn + g_vh * h
                        g_h = g_nh * Nn + g_vh * v
                        g_hraw = nrmz_adj(hraw, g_h)
                        g_v += g_hraw
                        g_l += g_hraw
                        g_Praw = -nrmz_adj(vraw, g_v)
                g_N += g_nl * l
                g_l += g_nl * Nn
                g_lraw = nrmz_adj(lraw, g_l)
                if ti.static(point):
                    g_inv = (g * bsdf * col).sum()
                    if d2raw >= real(1e-8):  # inv = 1/max(|lraw|², 1e-8)
                        g_lraw += lraw * (-2.0 * g_inv * inv * inv)
                    g_Praw -= g_lraw
                gL += g_lraw
                g_pos[p] = g_Praw
                g_nrm[p] = g_N
                g_kd[p] = gkd
                if ti.static(has_ks):
                    g_ks[p] = ti.Vector([g_o, g_r, g_m], real)
            g_light[0] += gL
            g_light[1] += gcol
            g_light[2] += gamb

    # ------------------------------------------------------------------ split-sum environment light
    @ti.func
    def env_level(knots: ti.template(), r):
        """Level idx, blend t of level idx + 1, and dt/dr: piecewise linear in roughness between
        the knots (the roughness of each prefiltered level), clamped to the first and last."""
        K = knots.shape[0]
        lo_k, hi_k = knots[0], knots[K - 1]
        rc, drc = clamp_g(r, lo_k, hi_k)
        idx = 0
        for k in range(1, K - 1):
            if knots[k] <= rc:
                idx = k
        a, b = knots[idx], knots[idx + 1]
        return idx, (rc - a) / (b - a), drc / (b - a)

    @ti.func
    def env_setup(P, Nn, C):
        vraw = C - P
        v = nrmz(vraw)
        nv = Nn.dot(v)
        rr = 2.0 * nv * Nn - v
        return vraw, v, nv, rr, nrmz(rr)

    @ti.kernel
    def env_fwd(pos: nd(dtype=vec3, ndim=1), nrm: nd(dtype=vec3, ndim=1), kd: nd(dtype=vec3, ndim=1),
                ks: nd(dtype=vec3, ndim=1), campos: nd(dtype=vec3, ndim=1), hw: ti.i32,
                env: nd(dtype=vec3, ndim=1), meta: nd(dtype=meta_t, ndim=1), knots: nd(dtype=real, ndim=1),
                lut: nd(dtype=vec2, ndim=1), n_lut: ti.i32, has_ks: ti.template(), out: nd(dtype=vec3, ndim=1)):
        # env: packed cube maps, meta[k] = (offset, S): the K prefiltered specular levels, then the
        # irradiance map (meta[K])
        K = knots.shape[0]
        for p in range(out.shape[0]):
            P, Nn, kdp = pos[p], nrm[p], kd[p]
            fi, si, ti_, _, _ = cube_st(Nn)
            irr, _, _ = cube_lookup(env, env, 0, meta[K], fi, si, ti_, kdp, real(0.0), False, False)
            if ti.static(not has_ks):
                out[p] = irr * kdp
            else:
                k = ks[p]
                o, r, m = k[0], k[1], k[2]
                _, _, nv, _, rf = env_setup(P, Nn, campos[ti.raw_div(p, hw)])
                idx, t, _ = env_level(knots, r)
                f, s, tt, _, _ = cube_st(rf)
                spec = ti.Vector.zero(real, 3)
                for li in range(2):  # ONE trilinear lookup: levels idx and idx + 1, blended by t
                    v, _, _ = cube_lookup(env, env, 0, meta[idx + li], f, s, tt, kdp, real(0.0), False, False)
                    spec += ti.select(li == 0, 1.0 - t, t) * v
                u, _ = clamp_g(nv, real(1e-4), real(1.0))
                w, _ = clamp_g(r, real(0.0), real(1.0))
                a, fx, fy = lut_taps(n_lut, u, w)
                ab = ti.Vector.zero(real, 2)
                for q in ti.static(range(4)):
                    ab += bilin_w(q, fx, fy) * lut[a[q]]
                f0 = real(0.04) * (1.0 - m) + kdp * m
                out[p] = (irr * kdp * (1.0 - m) + spec * (f0 * ab[0] + ab[1])) * (1.0 - o)

    @ti.kernel
    def env_bwd(pos: nd(dtype=vec3, ndim=1), nrm: nd(dtype=vec3, ndim=1), kd: nd(dtype=vec3, ndim=1),
                ks: nd(dtype=vec3, ndim=1), campos: nd(dtype=vec3, ndim=1), hw: ti.i32,
                env: nd(dtype=vec3, ndim=1), meta: nd(dtype=meta_t, ndim=1), knots: nd(dtype=real, ndim=1),
                lut: nd(dtype=vec2, ndim=1), n_lut: ti.i32, has_ks: ti.template(), g_out: nd(dtype=vec3, ndim=1),
                g_pos: nd(dtype=vec3, ndim=1), g_nrm: nd(dtype=vec3, ndim=1), g_kd: nd(dtype=vec3, ndim=1),
                g_ks: nd(dtype=vec3, ndim=1), g_env: nd(dtype=vec3, ndim=2), private: ti.template()):
        # writes every pixel of g_pos, g_nrm, g_kd (g_ks); scatters into g_env [B, R] (zeroed by the
        # caller, who sums the B rows). The maps are small (a few thousand texels) and every pixel
        # adds to 12 of their texels: on CPUs, atomic adds from all threads onto them cost more than
        # the rest of the kernel. So with ``private`` (CPU) iteration b shades a contiguous block of
        # pixels and owns row b (plain adds); else (GPU: hardware atomics) one pixel per iteration
        # and one row.
        K = knots.shape[0]
        P_all = g_out.shape[0]
        B = g_env.shape[0]
        blk = 1
        if ti.static(private):
            blk = (P_all + B - 1) // B
            ti.loop_config(block_dim=1)  # one task per block (the CPU backend groups ≥ 512 otherwise)
        for it in range((P_all + blk - 1) // blk):
            cb = 0
            if ti.static(private):
                cb = it
            for p in range(it * blk, ti.min(it * blk + blk, P_all)):
                P, Nn, kdp, g = pos[p], nrm[p], kd[p], g_out[p]
                fi, si, ti_, dsi, dti = cube_st(Nn)
                if ti.static(not has_ks):
                    # out = irr·kd
                    irr, gs, gt = cube_lookup(env, g_env, cb, meta[K], fi, si, ti_, g * kdp, real(1.0), True, private)
                    g_kd[p] = g * irr
                    g_nrm[p] = gs * dsi + gt * dti
                    g_pos[p] = ti.Vector.zero(real, 3)
                else:
                    k = ks[p]
                    o, r, m = k[0], k[1], k[2]
                    vraw, v, nv, rr, rf = env_setup(P, Nn, campos[ti.raw_div(p, hw)])
                    irr, _, _ = cube_lookup(env, env, 0, meta[K], fi, si, ti_, g, real(0.0), False, False)
                    idx, t, dt_dr = env_level(knots, r)
                    f, s, tt, ds, dtt = cube_st(rf)
                    spec = ti.Vector.zero(real, 3)
                    for li in range(2):
                        sv, _, _ = cube_lookup(env, env, 0, meta[idx + li], f, s, tt, g, real(0.0), False, False)
                        spec += ti.select(li == 0, 1.0 - t, t) * sv
                    u, du = clamp_g(nv, real(1e-4), real(1.0))
                    w, dw = clamp_g(r, real(0.0), real(1.0))
                    a, fx, fy = lut_taps(n_lut, u, w)
                    ab = ti.Vector.zero(real, 2)
                    for q in ti.static(range(4)):
                        ab += bilin_w(q, fx, fy) * lut[a[q]]
                    f0 = real(0.04) * (1.0 - m) + kdp * m
                    refl = f0 * ab[0] + ab[1]
                    # out = (irr·kd(1 − m) + spec·refl)(1 − o)
                    g_o = -(g * (irr * kdp * (1.0 - m) + spec * refl)).sum()
                    g1 = g * (1.0 - o)
                    gkd = g1 * irr * (1.0 - m)
                    g_m = -(g1 * irr * kdp).sum()
                    g_irr = g1 * kdp * (1.0 - m)
                    _, gsi, gti = cube_lookup(env, g_env, cb, meta[K], fi, si, ti_, g_irr, real(1.0), True, private)
                    g_N = gsi * dsi + gti * dti
                    # refl = f0·A + B, f0 = 0.04(1 − m) + kd·m
                    g_refl = g1 * spec
                    g_A = (g_refl * f0).sum()
                    g_B = g_refl.sum()
                    g_f0 = g_refl * ab[0]
                    gkd += g_f0 * m
                    g_m += (g_f0 * (kdp - real(0.04))).sum()
                    # spec = (1 − t)·s0 + t·s1 at the reflected direction: scatter to both levels,
                    # g_t = g_spec·(s1 − s0), and the (s, t) gradient of both
                    g_spec = g1 * refl
                    g_t = ti.cast(0.0, real)
                    g_s, g_tt = ti.cast(0.0, real), ti.cast(0.0, real)
                    for li in range(2):
                        sv, gs_, gt_ = cube_lookup(env, g_env, cb, meta[idx + li], f, s, tt, g_spec,
                                                   ti.select(li == 0, 1.0 - t, t), True, private)
                        g_t += ti.select(li == 0, -1.0, 1.0) * g_spec.dot(sv)
                        g_s += gs_
                        g_tt += gt_
                    g_rf = g_s * ds + g_tt * dtt
                    g_r = g_t * dt_dr
                    # (A, B) = lut(u = clamp(n·v), w = clamp(r)), bilinear
                    gu, gw = ti.cast(0.0, real), ti.cast(0.0, real)
                    for q in ti.static(range(4)):
                        wx = fx if q & 1 else 1.0 - fx
                        wy = fy if q >> 1 else 1.0 - fy
                        tg = g_A * lut[a[q]][0] + g_B * lut[a[q]][1]
                        gu += (1.0 if q & 1 else -1.0) * wy * n_lut * tg
                        gw += wx * (1.0 if q >> 1 else -1.0) * n_lut * tg
                    g_nv = gu * du
                    g_r += gw * dw
                    # rf = nrmz(rr), rr = 2(n·v)n − v, nv = n·v, v = nrmz(C − P)
                    g_rr = nrmz_adj(rr, g_rf)
                    g_nv += 2.0 * g_rr.dot(Nn)
                    g_N += 2.0 * nv * g_rr + g_nv * v
                    g_v = -g_rr + g_nv * Nn
                    g_pos[p] = -nrmz_adj(vraw, g_v)
                    g_nrm[p] = g_N
                    g_kd[p] = gkd
                    g_ks[p] = ti.Vector([g_o, g_r, g_m], real)

    # ------------------------------------------------------------------ prefilter: y = W·x (CSR)
    @ti.kernel
    def spmv(rowptr: nd(dtype=ti.i32, ndim=1), col: nd(dtype=ti.i32, ndim=1), val: nd(dtype=real, ndim=1),
             x: nd(dtype=vec3, ndim=1), y: nd(dtype=vec3, ndim=1)):
        # one output row per iteration, a gather: no atomics (the adjoint runs the transposed matrix)
        for i in range(y.shape[0]):
            acc = ti.Vector.zero(real, 3)
            for k in range(rowptr[i], rowptr[i + 1]):
                acc += val[k] * x[col[k]]
            y[i] = acc

    return ShadingKernels(analytic_fwd, analytic_bwd, env_fwd, env_bwd, spmv)

"""Taichi kernels of a directional or point light (+ an ambient term) on the Lambert + GGX material
of :mod:`taichi_dr.render.shading`: ``fwd`` writes the linear radiance of every pixel of a batch
in one launch, ``bwd`` is its hand-written adjoint.

Material: D (GGX), height-correlated Smith G, Schlick F; α = max(r, 0.08)², cosines clamped to
[1e-4, 1 − 1e-4]. ``bwd`` recomputes the forward of its pixel and walks it backwards, step by
step, in the order of the comments of the forward. The light's parameters (a direction or
position, colour, ambient: a few numbers shared by all pixels) are summed per chunk of ``CHUNK``
pixels in registers and added once per chunk, so that a million pixels do not contend for three
addresses.
"""
import functools
import math
from typing import NamedTuple

import taichi as ti

from taichi_dr.render._shading_kernels import EPS, MIN_ROUGHNESS, shading_funcs

__all__ = ["kernels", "AnalyticKernels", "CHUNK"]

CHUNK = 64  # pixels per parallel iteration of the backward (one light-gradient add each)


class AnalyticKernels(NamedTuple):
    """The kernels for one float type (see the module docstring)."""

    fwd: object
    bwd: object


@functools.lru_cache(maxsize=None)
def kernels(real) -> AnalyticKernels:
    """The analytic-light kernels for the Taichi float type ``real`` (ti.f32 or ti.f64).

    Per-pixel arrays are flat ``[P]`` vec3 views of ``[N, H, W, 3]`` tensors (P = N·H·W,
    ``hw`` = H·W picks the camera of a pixel); ``ks`` is (occlusion, roughness, metallic).
    With ``has_ks`` False the material is pure Lambert (no specular lobe, no occlusion) and
    ``ks`` is a 1-element dummy. ``light`` = ``[3]`` vec3 rows (direction towards the light |
    position, colour, ambient).
    """
    nd = ti.types.ndarray
    vec3 = ti.types.vector(3, real)
    nrmz, nrmz_adj, clamp_g, lam = shading_funcs(real)[:4]

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
                if g[0] == 0 and g[1] == 0 and g[2] == 0:
                    # every gradient of the pixel is 0 (a background pixel of a masked render):
                    # skip the work, which is most of the image in a reconstruction
                    z = ti.Vector.zero(real, 3)
                    g_pos[p], g_nrm[p], g_kd[p] = z, z, z
                    if ti.static(has_ks):
                        g_ks[p] = z
                    continue
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

    return AnalyticKernels(analytic_fwd, analytic_bwd)

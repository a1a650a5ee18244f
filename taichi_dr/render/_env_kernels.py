"""Taichi kernels of the split-sum environment light: ``fwd`` shades every pixel of a batch in one
launch, ``bwd`` is its hand-written adjoint, ``spmv`` applies the prefilter of the learnable map.

Per pixel: diffuse = the irradiance cube map at n; specular = ONE trilinear lookup at the
reflected direction in the chain of prefiltered maps (the level is a piecewise-linear function of
roughness, so "level k" holds the lobe of the k-th roughness knot), times F0·A + B from the BRDF
table (bilinear, clamped, row = roughness, column = n·v). The maps are padded (see
:mod:`taichi_dr.render._shading_kernels`): every lookup is four plain taps of one face.

Why a hand-written adjoint: the lookups read data-dependent texel addresses and the backward
scatters into the maps; Taichi's autodiff handles neither. ``bwd`` recomputes the forward of its
pixel and walks it backwards in the order of the comments of ``fwd``. None of the gradients that
reach a lookup depends on the looked-up values, so each of the three lookups reads its texels
once and returns its value and d/d(s, t) together; the texel gradients are scattered at the end
of the pixel (see ``cube_scatter``).

What the CPU time goes to (session 7, 4 × 512² random pixels, ablations): the forward is ~600
scalar operations per pixel (~250 float operations, ~100 loads, the rest index arithmetic), no
single hot spot; the backward is the
recomputed forward (~45 %), the adjoint arithmetic (~35 %) and the 12 texel scatters (~20 %).
Saving the forward's per-pixel intermediates for the backward would trade ~50 bytes per pixel
each way (an estimate, not built) for only the part of the recomputation that is not texel
reads (the scatters and d/d(s, t) need the texels again), so the backward recomputes.
"""
import functools
from typing import NamedTuple

import taichi as ti

from taichi_dr.render._shading_kernels import shading_funcs

__all__ = ["kernels", "EnvKernels"]


class EnvKernels(NamedTuple):
    """The kernels for one float type (see the module docstring)."""

    fwd: object
    bwd: object
    spmv: object


@functools.lru_cache(maxsize=None)
def kernels(real) -> EnvKernels:
    """The environment-light kernels for the Taichi float type ``real`` (ti.f32 or ti.f64).

    Per-pixel arrays are flat ``[P]`` vec3 views of ``[N, H, W, 3]`` tensors (P = N·H·W, ``hw`` =
    H·W picks the camera of a pixel); ``ks`` is (occlusion, roughness, metallic). With ``has_ks``
    False the material is pure Lambert (irradiance·kd) and ``ks`` is a 1-element dummy. ``env``:
    the padded maps packed ``[R, 3]``, ``meta[k]`` = (offset, face size S) of the K prefiltered
    specular levels, then of the irradiance map (``meta[K]``); ``knots`` ``[K]`` the roughness of
    each level; ``lut`` the ``n_lut × n_lut`` BRDF table, flat.
    """
    nd = ti.types.ndarray
    vec3 = ti.types.vector(3, real)
    vec2 = ti.types.vector(2, real)
    meta_t = ti.types.vector(2, ti.i32)  # per cube level: (offset in texels, face size S)
    (nrmz, nrmz_adj, clamp_g, _, cube_st, _, cube_lookup, cube_lookup_adj, cube_scatter,
     lut_lookup) = shading_funcs(real)

    @ti.func
    def env_level(knots: ti.template(), r):
        """Level idx, blend t of level idx + 1, and dt/dr: piecewise linear in roughness between
        the knots (the roughness of each prefiltered level), clamped to the first and last."""
        K = knots.shape[0]
        lo_k, hi_k = knots[0], knots[K - 1]
        rc, drc = clamp_g(r, lo_k, hi_k)
        idx = 0
        for k in range(1, K - 1):  # a select, not a branch: random roughness would mispredict it
            idx = ti.select(knots[k] <= rc, k, idx)
        a, b = knots[idx], knots[idx + 1]
        return idx, (rc - a) / (b - a), drc / (b - a)

    @ti.func
    def env_setup(P, Nn, C):
        """v = normalize(C − P), n·v and the reflected direction rr = 2(n·v)n − v, not normalised:
        the face coordinates s = sc/ma, t = tc/ma do not change when rr is scaled, so normalising
        it (a square root and a division, and its adjoint in ``bwd``) would change nothing."""
        vraw = C - P
        v = nrmz(vraw)
        nv = Nn.dot(v)
        return vraw, v, nv, 2.0 * nv * Nn - v

    @ti.kernel
    def env_fwd(pos: nd(dtype=vec3, ndim=1), nrm: nd(dtype=vec3, ndim=1), kd: nd(dtype=vec3, ndim=1),
                ks: nd(dtype=vec3, ndim=1), campos: nd(dtype=vec3, ndim=1), hw: ti.i32,
                env: nd(dtype=vec3, ndim=1), meta: nd(dtype=meta_t, ndim=1), knots: nd(dtype=real, ndim=1),
                lut: nd(dtype=vec2, ndim=1), n_lut: ti.i32, has_ks: ti.template(), out: nd(dtype=vec3, ndim=1),
                blk: ti.template()):
        # ``blk`` pixels of one view per iteration: the view's camera is read once per block
        # instead of dividing every pixel index by H·W (an integer division costs as much as a
        # few dozen multiplications on a CPU); blk = 1 on GPUs (one pixel per thread)
        K = knots.shape[0]
        nb = (hw + blk - 1) // blk
        for it in range(campos.shape[0] * nb):
            n = ti.raw_div(it, nb)
            C = campos[n]
            p0 = n * hw + (it - n * nb) * blk
            for p in range(p0, ti.min(p0 + blk, n * hw + hw)):
                Nn, kdp = nrm[p], kd[p]
                fi, si, ti_, _, _ = cube_st(Nn)
                irr = cube_lookup(env, meta[K], fi, si, ti_)
                if ti.static(not has_ks):
                    out[p] = irr * kdp
                else:
                    k = ks[p]
                    o, r, m = k[0], k[1], k[2]
                    _, _, nv, rr = env_setup(pos[p], Nn, C)
                    idx, t, _ = env_level(knots, r)
                    f, s, tt, _, _ = cube_st(rr)
                    # ONE trilinear lookup: levels idx and idx + 1 at the reflected direction, blended by t
                    spec = ((1.0 - t) * cube_lookup(env, meta[idx], f, s, tt)
                            + t * cube_lookup(env, meta[idx + 1], f, s, tt))
                    u, _ = clamp_g(nv, real(1e-4), real(1.0))
                    w, _ = clamp_g(r, real(0.0), real(1.0))
                    ab = lut_lookup(lut, n_lut, u, w)[0]
                    f0 = real(0.04) * (1.0 - m) + kdp * m
                    out[p] = (irr * kdp * (1.0 - m) + spec * (f0 * ab[0] + ab[1])) * (1.0 - o)

    @ti.kernel
    def env_bwd(pos: nd(dtype=vec3, ndim=1), nrm: nd(dtype=vec3, ndim=1), kd: nd(dtype=vec3, ndim=1),
                ks: nd(dtype=vec3, ndim=1), campos: nd(dtype=vec3, ndim=1), hw: ti.i32,
                env: nd(dtype=vec3, ndim=1), meta: nd(dtype=meta_t, ndim=1), knots: nd(dtype=real, ndim=1),
                lut: nd(dtype=vec2, ndim=1), n_lut: ti.i32, has_ks: ti.template(), g_out: nd(dtype=vec3, ndim=1),
                g_pos: nd(dtype=vec3, ndim=1), g_nrm: nd(dtype=vec3, ndim=1), g_kd: nd(dtype=vec3, ndim=1),
                g_ks: nd(dtype=vec3, ndim=1), g_env: nd(dtype=vec3, ndim=1), private: ti.template()):
        # writes every pixel of g_pos, g_nrm, g_kd (g_ks); scatters into g_env: B rows of R texels,
        # flat [B·R] (zeroed by the caller, who sums the rows). The maps are small (a few thousand
        # texels) and every pixel adds to 12 of their texels: on CPUs, atomic adds from all threads
        # onto them cost more than the rest of the kernel. So with ``private`` (CPU) iteration b
        # shades a contiguous block of pixels and owns row b (plain adds); else (GPU: hardware
        # atomics) one pixel per iteration and one row.
        K = knots.shape[0]
        P_all = g_out.shape[0]
        R = env.shape[0]
        B = g_env.shape[0] // R
        blk = 1
        if ti.static(private):
            blk = ti.max((P_all + B - 1) // B, 1)  # ≥ 1: an empty batch must not divide by 0
            ti.loop_config(block_dim=1)  # one task per block (the CPU backend groups ≥ 512 otherwise)
        for it in range((P_all + blk - 1) // blk):
            cb = 0
            if ti.static(private):
                cb = it * R  # offset of the iteration's own row
            # the camera of the block's first pixel, then the next one at each view boundary
            # (no integer division per pixel)
            n = ti.raw_div(it * blk, hw)
            C, nxt = campos[n], n * hw + hw
            for p in range(it * blk, ti.min(it * blk + blk, P_all)):
                if p == nxt:
                    n += 1
                    C, nxt = campos[n], nxt + hw
                Nn, kdp, g = nrm[p], kd[p], g_out[p]
                if g[0] == 0 and g[1] == 0 and g[2] == 0:
                    # every gradient of the pixel is 0 (a background pixel of a masked render):
                    # skip the work, which is most of the image in a reconstruction
                    z = ti.Vector.zero(real, 3)
                    g_pos[p], g_nrm[p], g_kd[p] = z, z, z
                    if ti.static(has_ks):
                        g_ks[p] = z
                    continue
                if ti.static(not has_ks):
                    # out = irr·kd
                    fi, si, ti_, dsi, dti = cube_st(Nn)
                    irr, gs, gt, a, Sp, fx, fy, gw = cube_lookup_adj(env, meta[K], fi, si, ti_, g * kdp, real(1.0))
                    cube_scatter(g_env, cb, a, Sp, fx, fy, gw, private)
                    g_kd[p] = g * irr
                    g_nrm[p] = gs * dsi + gt * dti
                    g_pos[p] = ti.Vector.zero(real, 3)
                else:
                    k = ks[p]
                    o, r, m = k[0], k[1], k[2]
                    vraw, v, nv, rr = env_setup(pos[p], Nn, C)
                    u, du = clamp_g(nv, real(1e-4), real(1.0))
                    w, dw = clamp_g(r, real(0.0), real(1.0))
                    ab, dab_u, dab_w = lut_lookup(lut, n_lut, u, w)
                    f0 = real(0.04) * (1.0 - m) + kdp * m
                    refl = f0 * ab[0] + ab[1]
                    # out = (irr·kd(1 − m) + spec·refl)(1 − o). The lookups' output gradients
                    # g1·kd(1 − m) and g1·refl need none of the looked-up values, so each lookup
                    # runs once, and what uses its value follows it (fewer values live at once).
                    g1 = g * (1.0 - o)
                    # diffuse: irr(n)·kd(1 − m)
                    fi, si, ti_, dsi, dti = cube_st(Nn)
                    irr, gsi, gti, ai, Spi, fxi, fyi, gwi = cube_lookup_adj(env, meta[K], fi, si, ti_,
                                                                            g1 * kdp * (1.0 - m), real(1.0))
                    g_N = gsi * dsi + gti * dti
                    gkd = g1 * irr * (1.0 - m)
                    g_m = -(g1 * irr * kdp).sum()
                    g_o = -(g * irr * kdp).sum() * (1.0 - m)
                    # specular: spec = (1 − t)·s0 + t·s1 at the reflected direction (levels idx,
                    # idx + 1): scatter to both levels, g_t = g_spec·(s1 − s0), and the (s, t)
                    # gradient of both
                    idx, t, dt_dr = env_level(knots, r)
                    f, s, tt, ds, dtt = cube_st(rr)
                    g_spec = g1 * refl
                    s0, gs0, gt0, a0, Sp0, fx0, fy0, gw0 = cube_lookup_adj(env, meta[idx], f, s, tt, g_spec, 1.0 - t)
                    s1, gs1, gt1, a1, Sp1, fx1, fy1, gw1 = cube_lookup_adj(env, meta[idx + 1], f, s, tt, g_spec, t)
                    g_rr = (gs0 + gs1) * ds + (gt0 + gt1) * dtt  # d(s, t)/d rr of the unnormalised rr
                    g_r = g_spec.dot(s1 - s0) * dt_dr
                    spec = (1.0 - t) * s0 + t * s1
                    g_o -= (g * spec * refl).sum()
                    # refl = f0·A + B, f0 = 0.04(1 − m) + kd·m
                    g_refl = g1 * spec
                    g_A = (g_refl * f0).sum()
                    g_B = g_refl.sum()
                    g_f0 = g_refl * ab[0]
                    gkd += g_f0 * m
                    g_m += (g_f0 * (kdp - real(0.04))).sum()
                    # (A, B) = lut(u = clamp(n·v), w = clamp(r)), bilinear
                    g_nv = (g_A * dab_u[0] + g_B * dab_u[1]) * du
                    g_r += (g_A * dab_w[0] + g_B * dab_w[1]) * dw
                    # rr = 2(n·v)n − v, nv = n·v, v = nrmz(C − P)
                    g_nv += 2.0 * g_rr.dot(Nn)
                    g_N += 2.0 * nv * g_rr + g_nv * v
                    g_v = -g_rr + g_nv * Nn
                    g_pos[p] = -nrmz_adj(vraw, g_v)
                    g_nrm[p] = g_N
                    g_kd[p] = gkd
                    g_ks[p] = ti.Vector([g_o, g_r, g_m], real)
                    # the texels' gradients last (see cube_scatter); a level blended with weight
                    # 0 gets nothing
                    cube_scatter(g_env, cb, ai, Spi, fxi, fyi, gwi, private)
                    if t != 1:
                        cube_scatter(g_env, cb, a0, Sp0, fx0, fy0, gw0, private)
                    if t != 0:
                        cube_scatter(g_env, cb, a1, Sp1, fx1, fy1, gw1, private)

    # ------------------------------------------------------------------ prefilter: y = W·x (CSR)
    @ti.kernel
    def spmv(rowptr: nd(dtype=ti.i32, ndim=1), col: nd(dtype=ti.i32, ndim=1), val: nd(dtype=real, ndim=1),
             x: nd(dtype=vec3, ndim=1), y: nd(dtype=vec3, ndim=1), cpu: ti.template()):
        # one output row per iteration, a gather: no atomics (the adjoint runs the transposed matrix)
        if ti.static(cpu):
            # rows of the wide lobes hold 30× the weights of the sharpest level's rows; the CPU
            # backend's default tasks (≥ 512 rows) would leave one thread with most of them
            ti.loop_config(block_dim=16)
        for i in range(y.shape[0]):
            acc = ti.Vector.zero(real, 3)
            for k in range(rowptr[i], rowptr[i + 1]):
                acc += val[k] * x[col[k]]
            y[i] = acc

    return EnvKernels(env_fwd, env_bwd, spmv)

"""Taichi kernels of antialias(): silhouette bits per triangle, the pixel-pair blend (forward) and
its hand-written adjoint (backward).

See the docstring of :mod:`taichi_dr.render.antialias` for the method.
"""
import functools
from types import SimpleNamespace

import taichi as ti

from taichi_dr.render._pixel_loops import segment

__all__ = ["kernels"]


@functools.lru_cache(maxsize=None)
def kernels(real, seg: int):
    """Namespace ``(forward, backward)`` of the antialias kernels for the Taichi float type ``real``
    and ``seg``-pixel row pieces (``_pixel_loops.row_piece()``)."""
    nd = ti.types.ndarray
    vec4 = ti.types.vector(4, real)
    vec3i = ti.types.vector(3, ti.i32)

    @ti.func
    def vertex(pos: ti.template(), pn, vi):
        # clamped address (the identity for a valid index): the forward kernel runs before the
        # wrapper has read its check of tri's range (one host sync per op), so a bad index in tri
        # (or in a wing built from it) must not address memory; the wrapper then raises
        return pos[pn, ti.min(ti.max(vi, 0), pos.shape[1] - 1)]

    @ti.func
    def project(pos: ti.template(), pn, vi, H, W):
        """Pixel coordinates (X, Y) of vertex vi of image pn (pixel centres at integer + 1/2)."""
        q = vertex(pos, pn, vi)
        return (q[0] / q[3] + 1.0) * (0.5 * W), (q[1] / q[3] + 1.0) * (0.5 * H)

    @ti.func
    def silhouette_bits(pos: ti.template(), tri: ti.template(), wing: ti.template(), pn, t):
        # Step 3 of the module docstring, once per (position set, triangle) instead of once per
        # pixel pair: bit k says whether edge k of t (opposite vertex k) is a silhouette, i.e. the
        # wing vertex lies on the same side of the edge as t's own third vertex (the surface folds
        # away behind the edge) or there is no neighbour. Interior triangles of a dense mesh get 0,
        # which lets the pixel-pair pass skip them after one load.
        # Sides are compared without projecting: for homogeneous points (x, y, w) the screen-space
        # orientation of (a, b, c) is sign(det[a; b; c]) · sign(w_a w_b w_c), and w_a w_b is shared
        # by both tests, so "same side" is sign(det[a; b; k]·w_k) == sign(det[a; b; o]·w_o).
        ids = tri[t]
        wg = wing[t]
        bits = 0
        for k in ti.static(range(3)):
            a, b = vertex(pos, pn, ids[(k + 1) % 3]), vertex(pos, pn, ids[(k + 2) % 3])
            # cross product of a and b in (x, y, w): det[a; b; c] = (a × b) · c
            nx, ny, nw = a[1] * b[3] - a[3] * b[1], a[3] * b[0] - a[0] * b[3], a[0] * b[1] - a[1] * b[0]
            own = vertex(pos, pn, ids[k])
            other = own
            if wg[k] >= 0:
                other = vertex(pos, pn, wg[k])
            side_t = (nx * own[0] + ny * own[1] + nw * own[3]) * own[3]
            side_o = (nx * other[0] + ny * other[1] + nw * other[3]) * other[3]
            if (side_t > 0) == (side_o > 0):
                bits |= 1 << k
        return bits

    @ti.func
    def _pair(rast: ti.template(), pos: ti.template(), tri: ti.template(), sil: ti.template(),
              pn, n, x, y, axis):
        """Analyse pixel pair P0 = (x, y), P1 = P0 + unit(axis). See the module docstring."""
        H, W = rast.shape[1], rast.shape[2]
        x1 = x + (1 - axis)
        y1 = y + axis
        valid = 0
        alpha = ti.cast(0.0, real)
        t = -1
        kb = 0
        s = ti.cast(1.0, real)
        # rotated, home-centred coordinates of the chosen edge's end points (for the backward pass)
        xa, ya, xb, yb, xc = ti.cast(0.0, real), ti.cast(0.0, real), ti.cast(0.0, real), ti.cast(0.0, real), ti.cast(0.0, real)
        if x1 < W and y1 < H:
            r0, r1 = rast[n, y, x], rast[n, y1, x1]
            id0, id1 = ti.cast(r0[3], ti.i32), ti.cast(r1[3], ti.i32)
            T = tri.shape[0]
            # ids outside [0, T] (reported by ``forward``) never index anything
            if id0 != id1 and id0 >= 0 and id1 >= 0 and id0 <= T and id1 <= T:
                home0 = 1
                if id0 == 0:
                    home0 = 0
                elif id1 != 0 and r1[2] < r0[2]:
                    home0 = 0
                t = ti.select(home0 == 1, id0, id1) - 1
                bits = sil[pn * tri.shape[0] + t]
                if bits != 0:  # only triangles with a silhouette edge can blend
                    hx, hy = x, y
                    if home0 == 0:
                        hx, hy = x1, y1
                        s = -1.0
                    # projected vertices relative to the home pixel centre, pair direction along "x"
                    P = ti.Matrix.zero(real, 3, 2)
                    ids = tri[t]
                    for k in ti.static(range(3)):
                        X, Y = project(pos, pn, ids[k], H, W)
                        X, Y = X - (hx + 0.5), Y - (hy + 0.5)
                        P[k, 0] = ti.select(axis == 0, X, Y)
                        P[k, 1] = ti.select(axis == 0, Y, X)
                    best = ti.cast(-1e30, real)
                    for k in ti.static(range(3)):  # edge k joins vertices k+1 and k+2
                        a, b = (k + 1) % 3, (k + 2) % 3
                        if (P[a, 1] < 0) != (P[b, 1] < 0):
                            c = (P[a, 0] * P[b, 1] - P[b, 0] * P[a, 1]) / (P[b, 1] - P[a, 1])
                            if s * c > best:
                                best = s * c
                                kb = k
                    if best > -1e29 and (bits >> kb) & 1 == 1:
                        a, b = (kb + 1) % 3, (kb + 2) % 3
                        xa, ya, xb, yb = P[a, 0], P[a, 1], P[b, 0], P[b, 1]
                        xc = s * best
                        steep = ti.abs(yb - ya) >= ti.abs(xb - xa)
                        d = best
                        if steep and d > -1.0 / 16.0 and d < 1.0 + 1.0 / 16.0:
                            valid = 1
                            alpha = s * (0.5 - ti.min(ti.max(d, 0.0), 1.0))
                            if d < 0.0 or d > 1.0:
                                valid = 2  # clamped: contributes to the image, not to the gradient
        return valid, alpha, t, kb, xa, ya, xb, yb, xc, x1, y1

    @ti.kernel
    def forward(color: nd(dtype=real, ndim=4), rast: nd(dtype=vec4, ndim=3), pos: nd(dtype=vec4, ndim=2),
                tri: nd(dtype=vec3i, ndim=1), wing: nd(dtype=vec3i, ndim=1), per_instance: ti.i32,
                sil: nd(dtype=ti.i32, ndim=1), out: nd(dtype=real, ndim=4), bad: nd(dtype=ti.i32, ndim=1)):
        # Two passes in one launch (a kernel runs its top-level loops one after the other);
        # ``out`` arrives as a copy of ``color``.
        H, W = rast.shape[1], rast.shape[2]
        T = tri.shape[0]
        nseg = (W + seg - 1) // seg
        # 1. silhouette bits of every (position set, triangle): sil[pn·T + t]
        for j in range(pos.shape[0] * T):
            pn = ti.raw_div(j, T)
            sil[j] = silhouette_bits(pos, tri, wing, pn, j - pn * T)
        # 2. the pixel pairs: one parallel iteration per seg-pixel piece of a row; pairs
        # (x, y)-(x+1, y) and (x, y)-(x, y+1) inside. A pair may write into row y+1, owned by
        # another thread -> atomics
        for it in range(rast.shape[0] * H * nseg):
            n, y, xs, xe = segment(it, nseg, H, W, seg)
            for i in range(2 * xs, 2 * xe):
                x, axis = i >> 1, i & 1
                if axis == 0:
                    # rast's ids must be 0 or triangle ids (NaN fails both comparisons); checked
                    # here, where each pixel is read anyway, instead of in a pass before the launch
                    d = rast[n, y, x][3]
                    if not (d >= 0 and d <= T):
                        bad[0] = 1
                valid, alpha, t, kb, xa, ya, xb, yb, xc, x1, y1 = _pair(rast, pos, tri, sil, n * per_instance, n, x, y, axis)
                if valid > 0:
                    tx, ty = ti.select(alpha > 0, x, x1), ti.select(alpha > 0, y, y1)
                    for c in range(color.shape[3]):
                        ti.atomic_add(out[n, ty, tx, c], alpha * (color[n, y1, x1, c] - color[n, y, x, c]))

    @ti.kernel
    def backward(color: nd(dtype=real, ndim=4), rast: nd(dtype=vec4, ndim=3), pos: nd(dtype=vec4, ndim=2),
                 tri: nd(dtype=vec3i, ndim=1), sil: nd(dtype=ti.i32, ndim=1), per_instance: ti.i32,
                 g_out: nd(dtype=real, ndim=4), boost: real,
                 g_color: nd(dtype=real, ndim=4), g_pos: nd(dtype=real, ndim=3)):
        H, W = rast.shape[1], rast.shape[2]
        nseg = (W + seg - 1) // seg
        for it in range(rast.shape[0] * H * nseg):
            n, y, xs, xe = segment(it, nseg, H, W, seg)
            pn = n * per_instance
            for i in range(2 * xs, 2 * xe):
                x, axis = i >> 1, i & 1
                valid, alpha, t, kb, xa, ya, xb, yb, xc, x1, y1 = _pair(rast, pos, tri, sil, pn, n, x, y, axis)
                if valid > 0:
                    tx, ty = ti.select(alpha > 0, x, x1), ti.select(alpha > 0, y, y1)
                    D = ti.cast(0.0, real)  # dL/dalpha
                    for c in range(color.shape[3]):
                        g = g_out[n, ty, tx, c]
                        g_color[n, y, x, c] -= alpha * g
                        g_color[n, y1, x1, c] += alpha * g
                        D += g * (color[n, y1, x1, c] - color[n, y, x, c])
                    if valid == 1:
                        # alpha = s/2 - x_c  =>  dL/dx_c = -D; chain through x_c(xa, ya, xb, yb)
                        gxc = -D * boost
                        inv = 1.0 / (yb - ya)
                        g_xa, g_xb = gxc * yb * inv, -gxc * ya * inv
                        g_ya, g_yb = gxc * (xc - xb) * inv, gxc * (xa - xc) * inv
                        ids = tri[t]
                        for e in ti.static(range(2)):
                            vi = ids[(kb + 1 + e) % 3]
                            gr_x = g_xa if e == 0 else g_xb  # along the pair axis
                            gr_y = g_ya if e == 0 else g_yb  # across it
                            gX = ti.select(axis == 0, gr_x, gr_y)  # back to pixel X, Y
                            gY = ti.select(axis == 0, gr_y, gr_x)
                            q = pos[pn, vi]
                            # X = (x/w + 1)·W/2  ->  dX/dx = W/(2w),  dX/dw = -W·x/(2w²)
                            gx = gX * 0.5 * W / q[3]
                            gy = gY * 0.5 * H / q[3]
                            g_pos[pn, vi, 0] += gx
                            g_pos[pn, vi, 1] += gy
                            g_pos[pn, vi, 3] += -(gx * q[0] + gy * q[1]) / q[3]

    return SimpleNamespace(forward=forward, backward=backward)

"""antialias(): analytic edge antialiasing, the source of silhouette (visibility) gradients.

Rasterization is piecewise constant in the vertex positions: moving a vertex by a hair changes
which pixels a triangle covers only at the moment a pixel centre is crossed, so the gradient of
the image w.r.t. the silhouette is zero almost everywhere. nvdiffrast's antialiasing (Laine et
al. 2020) replaces that step by a ramp that depends continuously on the geometry:

1. For every pair of neighbouring pixels (right and up) whose triangle ids differ, pick the
   triangle T that is in front (the covered pixel, or the nearer of the two). Its pixel is
   "home"; the other is the neighbour.
2. Walk from the home pixel centre towards the neighbour's: the edge of T we leave through is
   found by intersecting T's edges with that axis; d ∈ [0, 1] is where it crosses, in pixels.
3. That edge is a *silhouette* only if the triangle across it (the "wing", found with a
   topology table from edge -> opposite vertices) folds away behind it, or does not exist; an
   interior edge between two front-facing triangles is not a discontinuity of the surface.
4. The crossing splits the pixel pair: the home pixel really shows T only on a (½ + d) part of
   its width, so it takes (½ − d) of the neighbour's colour if d < ½; otherwise the neighbour
   takes (d − ½) of T's colour. With α = s·(½ − d) (s = ±1 for home = first/second pixel):
       out[P0] += α·(c1 − c0)  if α > 0,   out[P1] += α·(c1 − c0)  otherwise.
5. Because d is a smooth function of the edge's projected end points, the image now has a
   gradient w.r.t. x, y, w of those two vertices:  dL/dx_c = −Σ_ch g·(c1 − c0), with
   x_c = (x_a y_b − x_b y_a)/(y_b − y_a) in coordinates centred on the home pixel.

Only edges more perpendicular than 45° to the pair direction are handled by that pair (flatter
edges are the other direction's job), and crossings beyond the pixel pair are ignored.

Step 3 depends only on the triangle, so ``silhouettes`` evaluates it once per triangle (a bit
per edge); the pixel-pair pass then skips every pair whose front triangle has no silhouette edge
after a single load — on a dense mesh nearly all of them. The forward and backward kernels
share one ``ti.func`` (``_pair``) that redoes steps 1, 2 and 4 for a pixel pair; the backward pass is hand-written (atomic scatter to the two edge vertices), because
the forward kernel accumulates into ``out`` with atomics, which Taichi's autodiff can't reverse.
"""
import functools
from typing import Optional

import taichi as ti
import torch

from taichi_dr._checks import (FLOATS, as_index32, check_float, check_index, check_same_device, check_tensor,
                               raise_bad_rast, shape_str)
from taichi_dr.render._raster_kernels import SEG, segment
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["antialias", "antialias_construct_topology_hash", "TopologyHash"]


class TopologyHash:
    """Edge topology of a triangle mesh: for each triangle edge, the vertex opposite to it in the
    neighbouring triangle (the "wing"), or -1 on a boundary edge.

    Attributes:
        tri: ``[T, 3]`` int32 triangles the table was built for.
        wing: ``[T, 3]`` int32; ``wing[t, k]`` belongs to the edge opposite ``tri[t, k]``.
    """

    def __init__(self, tri: torch.Tensor, wing: torch.Tensor):
        self.tri, self.wing = tri, wing

    def __repr__(self) -> str:
        return f"TopologyHash(triangles={self.tri.shape[0]}, boundary_edges={int((self.wing < 0).sum())})"


def antialias_construct_topology_hash(tri: torch.Tensor) -> TopologyHash:
    """Build the edge -> opposite-vertex table used by :func:`antialias` (reuse it across calls).

    Args:
        tri: ``[T, 3]`` int32 (int64 accepted) triangle vertex indices.

    Returns:
        A :class:`TopologyHash`.
    """
    from taichi_dr._checks import INTS

    check_tensor("tri", tri, ndim=2, last=3, dtypes=INTS, expected="[T, 3]")
    t64 = tri.to(torch.int64)
    T = t64.shape[0]
    wing = torch.full((T, 3), -1, dtype=torch.int64, device=tri.device)
    if T:
        # half-edge k of triangle t is the edge opposite vertex k: (v[k+1], v[k+2])
        a = torch.stack([t64[:, 1], t64[:, 2], t64[:, 0]], 1).reshape(-1)
        b = torch.stack([t64[:, 2], t64[:, 0], t64[:, 1]], 1).reshape(-1)
        opp = t64.reshape(-1)
        base = int(t64.max()) + 1
        key = torch.minimum(a, b) * base + torch.maximum(a, b)
        order = torch.argsort(key, stable=True)
        ks = key[order]
        same = torch.nonzero(ks[1:] == ks[:-1]).squeeze(1)
        # pair consecutive half-edges with the same key (exactly two for a manifold edge)
        flat = wing.reshape(-1)
        flat[order[same]] = opp[order[same + 1]]
        flat[order[same + 1]] = opp[order[same]]
    return TopologyHash(tri.to(torch.int32).contiguous(), wing.to(torch.int32).contiguous())


@functools.lru_cache(maxsize=None)
def _kernels(real):
    nd = ti.types.ndarray
    vec4 = ti.types.vector(4, real)
    vec3i = ti.types.vector(3, ti.i32)

    @ti.func
    def project(pos: ti.template(), pn, vi, H, W):
        """Pixel coordinates (X, Y) of vertex vi of image pn (pixel centres at integer + 1/2)."""
        q = pos[pn, vi]
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
            a, b = pos[pn, ids[(k + 1) % 3]], pos[pn, ids[(k + 2) % 3]]
            # cross product of a and b in (x, y, w): det[a; b; c] = (a × b) · c
            nx, ny, nw = a[1] * b[3] - a[3] * b[1], a[3] * b[0] - a[0] * b[3], a[0] * b[1] - a[1] * b[0]
            own = pos[pn, ids[k]]
            other = own
            if wg[k] >= 0:
                other = pos[pn, wg[k]]
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
        nseg = (W + SEG - 1) // SEG
        # 1. silhouette bits of every (position set, triangle): sil[pn·T + t]
        for j in range(pos.shape[0] * T):
            pn = ti.raw_div(j, T)
            sil[j] = silhouette_bits(pos, tri, wing, pn, j - pn * T)
        # 2. the pixel pairs: one parallel iteration per SEG-pixel piece of a row; pairs
        # (x, y)-(x+1, y) and (x, y)-(x, y+1) inside. A pair may write into row y+1, owned by
        # another thread -> atomics
        for it in range(rast.shape[0] * H * nseg):
            n, y, xs, xe = segment(it, nseg, H, W)
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
        nseg = (W + SEG - 1) // SEG
        for it in range(rast.shape[0] * H * nseg):
            n, y, xs, xe = segment(it, nseg, H, W)
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

    return forward, backward


class _Antialias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, color, rast, pos3, tri, wing, per_instance, boost):
        fwd, _ = _kernels(ti_real(color.dtype))
        color_c, rast_c, pos_c = color.detach().contiguous(), rast.detach().contiguous(), pos3.detach().contiguous()
        sil = torch.empty(pos_c.shape[0] * tri.shape[0], dtype=torch.int32, device=color.device)
        out = color_c.clone()  # the kernel adds the blends (a torch copy is ~10x faster than a Taichi loop)
        bad = torch.zeros(1, dtype=torch.int32, device=color.device)
        fwd(color_c, rast_c, pos_c, tri, wing, per_instance, sil, out, bad)
        if bad.item():
            raise_bad_rast("rast", rast_c, tri.shape[0])
        ctx.save_for_backward(color_c, rast_c, pos_c, tri, sil)
        ctx.per_instance, ctx.boost = per_instance, boost
        return out

    @staticmethod
    def backward(ctx, g_out):
        color, rast, pos3, tri, sil = ctx.saved_tensors
        _, bwd = _kernels(ti_real(color.dtype))
        g_out = g_out.contiguous()
        g_color = g_out.clone()  # identity part: out = color + blends
        g_pos = torch.zeros_like(pos3)
        bwd(color, rast, pos3, tri, sil, ctx.per_instance, g_out, float(ctx.boost), g_color, g_pos)
        return g_color, None, g_pos, None, None, None, None


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology_hash: Optional[TopologyHash] = None, pos_gradient_boost: float = 1.0) -> torch.Tensor:
    """Antialias silhouette edges analytically, making the image differentiable w.r.t. them.

    Args:
        color: ``[N, H, W, C]`` float32/float64 image to antialias (e.g. shaded colours).
        rast: ``[N, H, W, 4]`` output of :func:`rasterize` for the same geometry.
        pos: clip-space positions given to :func:`rasterize`: ``[N, V, 4]``, or ``[V, 4]`` (range
            mode, or shared by all images).
        tri: ``[T, 3]`` int32 (int64 accepted) triangles given to :func:`rasterize`.
        topology_hash: from :func:`antialias_construct_topology_hash` (built on the fly if ``None``).
        pos_gradient_boost: factor applied to the gradient w.r.t. ``pos``.

    Returns:
        ``[N, H, W, C]`` antialiased image, same dtype as ``color``.

    Gradients flow to ``color`` and to x, y, w of the two vertices of every silhouette edge.
    """
    ensure_init()
    check_float("color", color, ndim=4, expected="[N, H, W, C]")
    check_tensor("rast", rast, ndim=4, last=4, dtypes=FLOATS, expected="[N, H, W, 4]")
    if rast.shape[:3] != color.shape[:3]:
        raise ValueError(f"rast: expected shape [{', '.join(map(str, color.shape[:3]))}, 4] to match color, "
                         f"got {shape_str(rast.shape)}")
    check_float("pos", pos, ndim=(2, 3), last=4, expected="[N, V, 4] or [V, 4]")
    for name, t in (("rast", rast), ("pos", pos)):
        if t.dtype != color.dtype:
            raise TypeError(f"{name}: expected dtype {color.dtype} (same as color), got {t.dtype}")
    N = color.shape[0]
    if pos.dim() == 3 and pos.shape[0] != N:
        raise ValueError(f"pos: expected shape [{N}, V, 4] to match color's batch, got {shape_str(pos.shape)}")
    V = pos.shape[-2]
    check_index("tri", tri, V, expected="[T, 3]")
    check_same_device(color=color, rast=rast, pos=pos, tri=tri)
    if topology_hash is None:
        topology_hash = antialias_construct_topology_hash(tri)
    elif not isinstance(topology_hash, TopologyHash) or topology_hash.tri.shape != tri.shape:
        raise ValueError(f"topology_hash: expected a TopologyHash built for tri of shape {shape_str(tri.shape)}")
    pos3, per_instance = (pos, 1) if pos.dim() == 3 else (pos.unsqueeze(0), 0)
    return _Antialias.apply(color, rast, pos3, as_index32(tri), topology_hash.wing.to(pos.device),
                            per_instance, float(pos_gradient_boost))

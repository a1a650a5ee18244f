"""Taichi kernels of rasterize(): triangle setup + near-plane clipping, tile jobs, coverage with a
consistent fill rule into a packed 64-bit z-buffer, and the flat per-pixel resolve.

See the docstring of :mod:`taichi_dr.render.rasterize` for the pipeline and the math.
"""
import functools

import taichi as ti

__all__ = ["TILE", "EMPTY", "kernels"]

TILE = 16  # tile side in pixels for the coverage jobs
EMPTY = (1 << 63) - 1  # z-buffer clear value: larger than any packed fragment key


@functools.lru_cache(maxsize=None)
def kernels(real):
    """(setup, coverage, resolve, expand) kernels for the Taichi float type ``real``."""
    nd = ti.types.ndarray
    vec4 = ti.types.vector(4, real)
    vec3 = ti.types.vector(3, real)

    @ti.func
    def load(pos: ti.template(), pn, tri: ti.template(), t):
        i0, i1, i2 = tri[t, 0], tri[t, 1], tri[t, 2]
        p0 = vec4(pos[pn, i0, 0], pos[pn, i0, 1], pos[pn, i0, 2], pos[pn, i0, 3])
        p1 = vec4(pos[pn, i1, 0], pos[pn, i1, 1], pos[pn, i1, 2], pos[pn, i1, 3])
        p2 = vec4(pos[pn, i2, 0], pos[pn, i2, 1], pos[pn, i2, 2], pos[pn, i2, 3])
        return p0, p1, p2, i0, i1, i2

    @ti.func
    def key_of(a, b):
        # Vertex key: an original vertex v is (v, v); the near-plane crossing of edge (a, b) is
        # (min, max). Keys give every clipped vertex an identity shared by both triangles of an edge.
        lo, hi = ti.min(a, b), ti.max(a, b)
        return (ti.cast(lo, ti.i64) << 32) | ti.cast(hi, ti.i64)

    @ti.func
    def crossing(pa, pb, ia, ib):
        # Near-plane crossing of edge (a, b), computed from the lower index so that both triangles
        # sharing the edge get bitwise the same point. d = z + w is the signed distance to z = -w.
        lo = ti.select(ia < ib, pa, pb)
        hi = ti.select(ia < ib, pb, pa)
        return crossing_ordered(lo, hi)

    @ti.func
    def crossing_ordered(pa, pb):
        da, db = pa[2] + pa[3], pb[2] + pb[3]
        t = da / (da - db)
        return pa + t * (pb - pa)

    @ti.func
    def pick(i, a, b, c):
        return ti.select(i == 0, a, ti.select(i == 1, b, c))

    @ti.func
    def clip_near(p0, p1, p2, i0, i1, i2):
        """Clip against z >= -w. Returns up to 4 polygon vertices (rows x, y, z, w), keys, count."""
        P = ti.Matrix.zero(real, 4, 4)
        K = ti.Vector.zero(ti.i64, 4)
        n = 0
        in0, in1, in2 = int(p0[2] + p0[3] >= 0), int(p1[2] + p1[3] >= 0), int(p2[2] + p2[3] >= 0)
        count = in0 + in1 + in2
        # r = the lone inside vertex (count 1) or the lone outside vertex (count 2); we walk the
        # triangle a -> b -> c starting there, which keeps the winding order.
        lone = 1 if count == 1 else 0
        r = 0 if in0 == lone else (1 if in1 == lone else 2)
        if count == 3:
            r = 0
        pa, pb, pc = pick(r, p0, p1, p2), pick((r + 1) % 3, p0, p1, p2), pick((r + 2) % 3, p0, p1, p2)
        ia, ib, ic = pick(r, i0, i1, i2), pick((r + 1) % 3, i0, i1, i2), pick((r + 2) % 3, i0, i1, i2)
        if count == 3:
            n = 3
            for c in ti.static(range(4)):
                P[0, c], P[1, c], P[2, c] = pa[c], pb[c], pc[c]
            K[0], K[1], K[2] = key_of(ia, ia), key_of(ib, ib), key_of(ic, ic)
        elif count == 1:  # a inside: triangle (a, ab, ca)
            n = 3
            xab, xca = crossing(pa, pb, ia, ib), crossing(pc, pa, ic, ia)
            for c in ti.static(range(4)):
                P[0, c], P[1, c], P[2, c] = pa[c], xab[c], xca[c]
            K[0], K[1], K[2] = key_of(ia, ia), key_of(ia, ib), key_of(ic, ia)
        elif count == 2:  # a outside: quad (ab, b, c, ca)
            n = 4
            xab, xca = crossing(pa, pb, ia, ib), crossing(pc, pa, ic, ia)
            for c in ti.static(range(4)):
                P[0, c], P[1, c], P[2, c], P[3, c] = xab[c], pb[c], pc[c], xca[c]
            K[0], K[1], K[2], K[3] = key_of(ia, ib), key_of(ib, ib), key_of(ic, ic), key_of(ic, ia)
        return P, K, n

    @ti.func
    def to_pixels(P, W: ti.i32, H: ti.i32):
        # NDC -> pixel coordinates; pixel (x, y) has its centre at (x + 1/2, y + 1/2).
        S = ti.Matrix.zero(real, 4, 3)  # rows: X, Y, z/w
        for r in ti.static(range(4)):
            w = P[r, 3]
            if w > 0:
                S[r, 0] = (P[r, 0] / w + 1.0) * (0.5 * W)
                S[r, 1] = (P[r, 1] / w + 1.0) * (0.5 * H)
                S[r, 2] = P[r, 2] / w
        return S

    @ti.func
    def wpos(P, n):
        ok = 1
        for r in ti.static(range(4)):
            if r < n and P[r, 3] <= 0:
                ok = 0
        return ok

    @ti.kernel
    def setup(pos: nd(dtype=real, ndim=3), tri: nd(dtype=ti.i32, ndim=2), work_n: nd(dtype=ti.i32, ndim=1),
              work_t: nd(dtype=ti.i32, ndim=1), per_instance: ti.i32, W: ti.i32, H: ti.i32,
              tiles: nd(dtype=ti.i32, ndim=2), counts: nd(dtype=ti.i64, ndim=1),
              poly: nd(dtype=real, ndim=3), keys: nd(dtype=ti.i64, ndim=2)):
        for k in work_t:
            pn = work_n[k] * per_instance
            p0, p1, p2, i0, i1, i2 = load(pos, pn, tri, work_t[k])
            P, K, n = clip_near(p0, p1, p2, i0, i1, i2)
            counts[k] = 0
            if n > 0 and wpos(P, n) == 1:
                S = to_pixels(P, W, H)
                lo = ti.Vector([S[0, 0], S[0, 1]])
                hi = lo
                for r in ti.static(range(1, 4)):
                    if r < n:
                        lo = ti.min(lo, ti.Vector([S[r, 0], S[r, 1]]))
                        hi = ti.max(hi, ti.Vector([S[r, 0], S[r, 1]]))
                # pixels whose centres x + 1/2 lie in [lo, hi]
                x0 = ti.max(ti.cast(ti.ceil(lo[0] - 0.5), ti.i32), 0)
                y0 = ti.max(ti.cast(ti.ceil(lo[1] - 0.5), ti.i32), 0)
                x1 = ti.min(ti.cast(ti.floor(ti.min(hi[0], 1e9) - 0.5), ti.i32), W - 1)
                y1 = ti.min(ti.cast(ti.floor(ti.min(hi[1], 1e9) - 0.5), ti.i32), H - 1)
                if lo[0] < W and lo[1] < H and x0 <= x1 and y0 <= y1:
                    tx0, ty0 = x0 // TILE, y0 // TILE
                    ntx = x1 // TILE - tx0 + 1
                    nty = y1 // TILE - ty0 + 1
                    tiles[k, 0] = tx0
                    tiles[k, 1] = ty0
                    tiles[k, 2] = ntx
                    tiles[k, 3] = x0
                    tiles[k, 4] = y0
                    tiles[k, 5] = x1
                    tiles[k, 6] = y1
                    tiles[k, 7] = n
                    counts[k] = ti.cast(ntx * nty, ti.i64)
                    # keep the clipped polygon in pixels so tile jobs do not redo clipping
                    for r in ti.static(range(4)):
                        keys[k, r] = K[r]
                        for c in ti.static(range(3)):
                            poly[k, r, c] = S[r, c]

    @ti.func
    def edge_value(S, K, a, b, px, py):
        """Edge function of the triangle's directed edge a -> b at (px, py), evaluated canonically.

        Returns (value, tie): value > 0 left of a -> b; tie is the sign the value would have if the
        sample were nudged by (ε, ε²), used only when value == 0.
        """
        sw = K[a] > K[b]
        ax, ay = ti.select(sw, S[b, 0], S[a, 0]), ti.select(sw, S[b, 1], S[a, 1])
        bx, by = ti.select(sw, S[a, 0], S[b, 0]), ti.select(sw, S[a, 1], S[b, 1])
        flip = ti.select(sw, -1.0, 1.0)
        dx, dy = bx - ax, by - ay
        e = dx * (py - ay) - dy * (px - ax)
        tie = ti.select(dy == 0, dx, -dy)
        return flip * e, flip * tie

    @ti.func
    def inside(S, K, r0, r1, r2, sgn, px, py):
        e0, t0 = edge_value(S, K, r1, r2, px, py)  # edge opposite r0
        e1, t1 = edge_value(S, K, r2, r0, px, py)
        e2, t2 = edge_value(S, K, r0, r1, px, py)
        ok = 1
        if sgn * e0 < 0 or (e0 == 0 and sgn * t0 <= 0):
            ok = 0
        if sgn * e1 < 0 or (e1 == 0 and sgn * t1 <= 0):
            ok = 0
        if sgn * e2 < 0 or (e2 == 0 and sgn * t2 <= 0):
            ok = 0
        return ok, e0, e1, e2

    @ti.kernel
    def coverage(pos: nd(dtype=real, ndim=3), tri: nd(dtype=ti.i32, ndim=2), work_n: nd(dtype=ti.i32, ndim=1),
                 work_t: nd(dtype=ti.i32, ndim=1), per_instance: ti.i32, W: ti.i32, H: ti.i32,
                 tiles: nd(dtype=ti.i32, ndim=2), job_k: nd(dtype=ti.i32, ndim=1), job_local: nd(dtype=ti.i32, ndim=1),
                 poly: nd(dtype=real, ndim=3), keys: nd(dtype=ti.i64, ndim=2),
                 zbuf: nd(dtype=ti.i64, ndim=3)):
        for j in job_k:
            k = job_k[j]
            n_img = work_n[k]
            t = work_t[k]
            n = tiles[k, 7]
            S = ti.Matrix.zero(real, 4, 3)
            K = ti.Vector.zero(ti.i64, 4)
            for r in ti.static(range(4)):
                K[r] = keys[k, r]
                for c in ti.static(range(3)):
                    S[r, c] = poly[k, r, c]
            local = job_local[j]
            tx = tiles[k, 0] + local % tiles[k, 2]
            ty = tiles[k, 1] + local // tiles[k, 2]
            for sub in ti.static(range(2)):  # fan of the clipped polygon: (0,1,2) and (0,2,3)
                r1, r2 = 1 + sub, 2 + sub
                if r2 < n:
                    area = (S[r1, 0] - S[0, 0]) * (S[r2, 1] - S[0, 1]) - (S[r1, 1] - S[0, 1]) * (S[r2, 0] - S[0, 0])
                    if area != 0:
                        sgn = 1.0 if area > 0 else -1.0
                        # only the part of the tile inside the triangle's pixel bounding box
                        xa, xb = ti.max(tx * TILE, tiles[k, 3]), ti.min(tx * TILE + TILE - 1, tiles[k, 5])
                        ya, yb = ti.max(ty * TILE, tiles[k, 4]), ti.min(ty * TILE + TILE - 1, tiles[k, 6])
                        for y, x in ti.ndrange((ya, yb + 1), (xa, xb + 1)):
                            if True:
                                px, py = x + 0.5, y + 0.5
                                ok, e0, e1, e2 = inside(S, K, 0, r1, r2, sgn, ti.cast(px, real), ti.cast(py, real))
                                if ok == 1:
                                    # z/w is affine in screen space: interpolate with 2-D barycentrics
                                    zw = (e0 * S[0, 2] + e1 * S[r1, 2] + e2 * S[r2, 2]) / (e0 + e1 + e2)
                                    if zw <= 1.0:
                                        d01 = ti.min(ti.max((zw + 1.0) * 0.5, 0.0), 1.0)
                                        hi = ti.cast(ti.bit_cast(ti.cast(d01, ti.f32), ti.i32), ti.i64)
                                        key = (hi << 32) | ti.cast(t, ti.i64)
                                        ti.atomic_min(zbuf[n_img, y, x], key)

    @ti.kernel
    def resolve(pos: nd(dtype=real, ndim=3), tri: nd(dtype=ti.i32, ndim=2), zbuf: nd(dtype=ti.i64, ndim=3),
                per_instance: ti.i32, rast: nd(dtype=real, ndim=4), db: nd(dtype=real, ndim=4)):
        # Flat: one parallel loop, every output written exactly once -> Taichi AD is valid here.
        for n, y, x in zbuf:
            key = zbuf[n, y, x]
            H, W = zbuf.shape[1], zbuf.shape[2]
            if key == ti.i64(EMPTY):
                for c in ti.static(range(4)):
                    rast[n, y, x, c] = 0.0
                    db[n, y, x, c] = 0.0
            else:
                t = ti.cast(key & ti.i64(0xFFFFFFFF), ti.i32)
                pn = n * per_instance
                i0, i1, i2 = tri[t, 0], tri[t, 1], tri[t, 2]
                # pixel centre in NDC; cast first so that the f64 path really is f64 (float
                # literals alone would be f32 under default_fp)
                X = ti.cast(2 * x + 1, real) / ti.cast(W, real) - 1.0
                Y = ti.cast(2 * y + 1, real) / ti.cast(H, real) - 1.0
                w0, w1, w2 = pos[pn, i0, 3], pos[pn, i1, 3], pos[pn, i2, 3]
                q0x, q0y = pos[pn, i0, 0] - X * w0, pos[pn, i0, 1] - Y * w0
                q1x, q1y = pos[pn, i1, 0] - X * w1, pos[pn, i1, 1] - Y * w1
                q2x, q2y = pos[pn, i2, 0] - X * w2, pos[pn, i2, 1] - Y * w2
                a0 = q1x * q2y - q1y * q2x
                a1 = q2x * q0y - q2y * q0x
                a2 = q0x * q1y - q0y * q1x
                A = a0 + a1 + a2
                iA = 1.0 / A
                u, v = a0 * iA, a1 * iA
                zw = (pos[pn, i0, 2] * a0 + pos[pn, i1, 2] * a1 + pos[pn, i2, 2] * a2) / (w0 * a0 + w1 * a1 + w2 * a2)
                # d a_k / dX and d a_k / dY (NDC): d q_k / dX = (-w_k, 0), d q_k / dY = (0, -w_k)
                a0x, a0y = w2 * q1y - w1 * q2y, w1 * q2x - w2 * q1x
                a1x, a1y = w0 * q2y - w2 * q0y, w2 * q0x - w0 * q2x
                a2x, a2y = w1 * q0y - w0 * q1y, w0 * q1x - w1 * q0x
                Ax, Ay = a0x + a1x + a2x, a0y + a1y + a2y
                sx, sy = ti.cast(2.0, real) / W, ti.cast(2.0, real) / H  # NDC units per pixel
                db[n, y, x, 0] = (a0x - u * Ax) * iA * sx
                db[n, y, x, 1] = (a0y - u * Ay) * iA * sy
                db[n, y, x, 2] = (a1x - v * Ax) * iA * sx
                db[n, y, x, 3] = (a1y - v * Ay) * iA * sy
                rast[n, y, x, 0] = u
                rast[n, y, x, 1] = v
                rast[n, y, x, 2] = ti.min(ti.max(zw, -1.0), 1.0)
                rast[n, y, x, 3] = ti.cast(t + 1, real)

    @ti.kernel
    def expand(counts: nd(dtype=ti.i64, ndim=1), cursor: nd(dtype=ti.i32, ndim=1),
               job_k: nd(dtype=ti.i32, ndim=1), job_local: nd(dtype=ti.i32, ndim=1)):
        # One (triangle, tile) job per tile of each triangle's bounding box. Slots are taken with an
        # atomic cursor: the job order varies between runs, the z-buffer result does not (atomic_min).
        for k in counts:
            c = ti.cast(counts[k], ti.i32)
            if c > 0:
                base = ti.atomic_add(cursor[0], c)
                for i in range(c):
                    job_k[base + i] = k
                    job_local[base + i] = i

    return setup, coverage, resolve, expand

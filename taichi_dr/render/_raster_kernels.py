"""Taichi kernels of rasterize(): triangle setup + near-plane clipping, coverage with a consistent
fill rule into a packed 64-bit z-buffer, and the per-pixel resolve (forward and backward).

See the docstring of :mod:`taichi_dr.render.rasterize` for the pipeline and the math.

Performance notes (measured on Taichi 1.7.4's CPU backend, they hold for CUDA too):

* Loops are ``for i in range(n)`` over flat indices. A struct-for over an ndarray (``for n, y, x
  in a``) or an ``ndrange`` decomposes the linear index with signed integer floor divisions in
  every iteration, which made a trivial 512² kernel 6× slower than the same range-for.
* Per-pixel kernels that need (n, y, x) run one parallel iteration per row piece
  (:mod:`taichi_dr.render._pixel_loops`: 64 pixels on the CPU, 1 on a GPU) with an inner loop over
  x. Such kernels are not flat, so
  Taichi's autodiff must not be used on them: the backward of the resolve is written by hand
  (``resolve_bwd``), and a flat twin (``resolve_flat``) exists only so that ``resolve_flat.grad``
  can provide the rarely needed gradient of ``rast_db`` (``grad_db=True`` with a loss on it).
* Drawing small triangles is bound by cache misses when the mesh order jumps around the screen
  (perf on the 81,920-triangle icosphere: ~40 % of the setup kernel's time on the z-buffer load
  before the ``atomic_min``, ~25 % on vertex loads). On the CPU such meshes are binned by tile
  (``rasterize._order_is_scattered`` decides from a sample; ``sort_bins``, ``cover_binned``):
  ~40 % less time.
"""
import functools
from types import SimpleNamespace

import taichi as ti

from taichi_dr.render._pixel_loops import segment

__all__ = ["TILE", "EMPTY", "kernels"]

TILE = 16  # tile side in pixels for the coverage jobs of large triangles
EMPTY = (1 << 63) - 1  # z-buffer clear value: larger than any packed fragment key


@functools.lru_cache(maxsize=None)
def kernels(real, seg: int):
    """Namespace of the rasterizer kernels for the Taichi float type ``real`` and ``seg``-pixel row
    pieces (``_pixel_loops.row_piece()``) in the per-pixel kernels."""
    nd = ti.types.ndarray
    vec4 = ti.types.vector(4, real)
    vec3i = ti.types.vector(3, ti.i32)
    vec6 = ti.types.vector(6, real)

    @ti.func
    def load_ids(pos: ti.template(), pn, ids):
        # Clamped addresses (the identity for valid indices): the setup kernel runs before the
        # wrapper has read its check of tri's range (one host sync per op, after the launch), so a
        # bad index must not address memory; the wrapper then raises.
        last = pos.shape[1] - 1
        a, b, c = ti.min(ti.max(ids[0], 0), last), ti.min(ti.max(ids[1], 0), last), ti.min(ti.max(ids[2], 0), last)
        return pos[pn, a], pos[pn, b], pos[pn, c], ids[0], ids[1], ids[2]

    @ti.func
    def load(pos: ti.template(), pn, tri: ti.template(), t):
        return load_ids(pos, pn, tri[t])

    @ti.func
    def work_item(work_n: ti.template(), work_t: ti.template(), n_inst, k):
        # work item k -> (image, triangle). Instanced mode (n_inst = T triangles per image): k = n·T + t,
        # one division instead of two index arrays; range mode (n_inst = 0): read from the lists.
        n, t = 0, 0
        if n_inst > 0:
            n = ti.raw_div(k, n_inst)
            t = k - n * n_inst
        else:
            n, t = work_n[k], work_t[k]
        return n, t

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
        da, db = lo[2] + lo[3], hi[2] + hi[3]
        t = da / (da - db)
        return lo + t * (hi - lo)

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

    @ti.func
    def edge_setup(S, K, a, b):
        """Canonical form of the directed edge a -> b: (ax, ay, dx, dy, flip, flip·tie).

        Both triangles sharing an edge evaluate it from the endpoint with the smaller key, so they
        compute bitwise the same edge value at every sample; ``flip`` restores the direction. The
        tie sign is the sign the value would take if the sample were nudged by (ε, ε²), used
        only when the value is exactly 0.
        """
        sw = K[a] > K[b]
        ax, ay = ti.select(sw, S[b, 0], S[a, 0]), ti.select(sw, S[b, 1], S[a, 1])
        bx, by = ti.select(sw, S[a, 0], S[b, 0]), ti.select(sw, S[a, 1], S[b, 1])
        flip = ti.select(sw, -1.0, 1.0)
        dx, dy = bx - ax, by - ay
        tie = ti.select(dy == 0, dx, -dy)
        return vec6(ax, ay, dx, dy, flip, flip * tie)

    @ti.func
    def edge_eval(E, px, py):
        return E[4] * (E[2] * (py - E[1]) - E[3] * (px - E[0]))

    @ti.func
    def rejects(sgn, e, E):
        # outside, or exactly on the edge with the nudge pointing outside
        return sgn * e < 0 or (e == 0 and sgn * E[5] <= 0)

    @ti.func
    def key_floor(S, r1, r2, area):
        """A z-buffer key that no fragment of the fan triangle (0, r1, r2) can go below (0: none known).

        A covered pixel's z/w is Σ w_k z_k, w_k = e_k / e_0(vertex 0) >= 0, and Σ w_k is 1 up to the
        rounding of the edge functions: each is off by at most ~8ε·wx·wy (wx, wy: the triangle's
        width and height in pixels, which bound |dx|, |dy| and the sample's offsets), so Σ w_k is
        within rel = 64ε·(wx + 1)(wy + 1)/|area| of 1 (twice the worst case), and then
        z/w >= z_min − rel·|z_min| − 8ε·max|z|. Slivers (rel >= 1/4) and non-finite input get none.
        """
        eps = ti.cast(1.2e-7, real)  # float32's; larger than float64's, so conservative on both paths
        za, zb, zc = S[0, 2], S[r1, 2], S[r2, 2]
        zmin = ti.min(za, ti.min(zb, zc))
        zabs = ti.max(ti.abs(za), ti.max(ti.abs(zb), ti.abs(zc)))
        wx = ti.max(S[0, 0], ti.max(S[r1, 0], S[r2, 0])) - ti.min(S[0, 0], ti.min(S[r1, 0], S[r2, 0]))
        wy = ti.max(S[0, 1], ti.max(S[r1, 1], S[r2, 1])) - ti.min(S[0, 1], ti.min(S[r1, 1], S[r2, 1]))
        rel = 64.0 * eps * (wx + 1.0) * (wy + 1.0) / ti.abs(area)
        key = ti.i64(0)
        if rel < 0.25 and zabs < 1e30:
            # (z/w + 1)/2, clamping, the cast to float32 and its bits are all monotonic: this is a
            # lower bound of the key written below
            d01 = ti.min(ti.max((zmin - rel * ti.abs(zmin) - 8.0 * eps * zabs + 1.0) * 0.5, 0.0), 1.0)
            key = ti.cast(ti.bit_cast(ti.cast(d01, ti.f32), ti.i32), ti.i64) << 32
        return key

    @ti.func
    def cover(S, K, n, t, n_img, xa, xb, ya, yb, zbuf: ti.template(), early: ti.template()):
        """Depth-test the pixel centres of [xa, xb] × [ya, yb] against the clipped polygon (S, K, n)
        of triangle t (a fan (0,1,2), (0,2,3)); keep the nearest fragment with a 64-bit atomic_min.

        ``early``: for a triangle facing away (clockwise), first compare each pixel's stored key
        with ``key_floor`` and skip the edge tests where a nearer fragment is already stored: its
        atomic_min would change nothing, so the z-buffer is the same, and ``cover_binned`` draws
        such triangles after all others, when a back face hidden by the front costs a load per pixel.
        """
        for sub in ti.static(range(2)):
            r1, r2 = 1 + sub, 2 + sub
            if r2 < n:
                area = (S[r1, 0] - S[0, 0]) * (S[r2, 1] - S[0, 1]) - (S[r1, 1] - S[0, 1]) * (S[r2, 0] - S[0, 0])
                if area != 0:
                    sgn = 1.0 if area > 0 else -1.0
                    E0 = edge_setup(S, K, r1, r2)  # edge opposite polygon vertex 0
                    E1 = edge_setup(S, K, r2, 0)
                    E2 = edge_setup(S, K, 0, r1)
                    # e0 + e1 + e2 is the same at every sample (twice the signed area; the edge
                    # functions' gradients cancel), and at vertex 0 only e0 is non-zero: one
                    # division per triangle instead of one per pixel
                    inv_sum = 1.0 / edge_eval(E0, S[0, 0], S[0, 1])
                    floor = ti.i64(0)
                    if ti.static(early):
                        if area < 0:
                            floor = key_floor(S, r1, r2, area)
                    for y in range(ya, yb + 1):
                        py = ti.cast(y, real) + 0.5
                        entered = 0
                        for x in range(xa, xb + 1):
                            hidden = 0
                            if ti.static(early):
                                if floor > 0:  # (no load for front faces and triangles without a bound)
                                    if zbuf[n_img, y, x] < floor:
                                        hidden = 1
                            if hidden == 0:
                                px = ti.cast(x, real) + 0.5
                                e0, e1, e2 = edge_eval(E0, px, py), edge_eval(E1, px, py), edge_eval(E2, px, py)
                                if rejects(sgn, e0, E0) or rejects(sgn, e1, E1) or rejects(sgn, e2, E2):
                                    # Each edge value is monotonic in px even in floating point (a
                                    # chain of monotonic roundings), so a row's covered pixels form
                                    # one run: once we have left it, the rest of the row is outside
                                    # (a skipped hidden pixel is neither in nor out).
                                    if entered == 1:
                                        break
                                else:
                                    entered = 1
                                    # z/w is affine in screen space: interpolate with 2-D barycentrics
                                    zw = (e0 * S[0, 2] + e1 * S[r1, 2] + e2 * S[r2, 2]) * inv_sum
                                    if zw <= 1.0:
                                        # key = (depth bits << 32) | triangle: nearest wins, ties -> lower index
                                        d01 = ti.min(ti.max((zw + 1.0) * 0.5, 0.0), 1.0)
                                        hi = ti.cast(ti.bit_cast(ti.cast(d01, ti.f32), ti.i32), ti.i64)
                                        ti.atomic_min(zbuf[n_img, y, x], (hi << 32) | ti.cast(t, ti.i64))

    @ti.func
    def prepare(pos: ti.template(), pn, ids, W, H):
        """Clip the triangle with vertex indices ``ids`` of position set pn and project it to pixels.

        Returns (S, K, n, ok, x0, x1, y0, y1): the polygon's pixel coordinates and z/w (rows),
        vertex keys and vertex count; ok = 1 when it has pixel centres on screen, which are
        [x0, x1] × [y0, y1].
        """
        p0, p1, p2, i0, i1, i2 = load_ids(pos, pn, ids)
        S = ti.Matrix.zero(real, 4, 3)
        K = ti.Vector.zero(ti.i64, 4)
        n, visible, ok = 3, 0, 0
        x0, x1, y0, y1 = 0, -1, 0, -1
        if p0[2] + p0[3] >= 0 and p1[2] + p1[3] >= 0 and p2[2] + p2[3] >= 0:
            # common case, nothing to clip: skip the clipper's selects and shuffles
            if p0[3] > 0 and p1[3] > 0 and p2[3] > 0:
                visible = 1
                for r in ti.static(range(3)):
                    q = pick(r, p0, p1, p2)
                    S[r, 0] = (q[0] / q[3] + 1.0) * (0.5 * W)
                    S[r, 1] = (q[1] / q[3] + 1.0) * (0.5 * H)
                    S[r, 2] = q[2] / q[3]
                K[0], K[1], K[2] = key_of(i0, i0), key_of(i1, i1), key_of(i2, i2)
        else:
            P, Kc, nc = clip_near(p0, p1, p2, i0, i1, i2)
            n, K = nc, Kc
            if n > 0 and wpos(P, n) == 1:
                visible = 1
                S = to_pixels(P, W, H)
        if visible == 1:
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
                ok = 1
        return S, K, n, ok, x0, x1, y0, y1

    @ti.kernel
    def setup(pos: nd(dtype=vec4, ndim=2), tri: nd(dtype=vec3i, ndim=1), work_n: nd(dtype=ti.i32, ndim=1),
              work_t: nd(dtype=ti.i32, ndim=1), n_work: ti.i32, n_inst: ti.i32, per_instance: ti.i32, W: ti.i32,
              H: ti.i32, tiles: nd(dtype=ti.i32, ndim=2), counts: nd(dtype=ti.i64, ndim=1),
              poly: nd(dtype=real, ndim=3), keys: nd(dtype=ti.i64, ndim=2), zbuf: nd(dtype=ti.i64, ndim=3),
              bin_small: ti.i32, binned: nd(dtype=ti.i32, ndim=1), bin_of: nd(dtype=ti.i32, ndim=1),
              slot: nd(dtype=ti.i32, ndim=1), bin_count: nd(dtype=ti.i32, ndim=1), totals: nd(dtype=ti.i64, ndim=1)):
        # One thread per (image, triangle) work item: clip, project, then by size:
        # * Small (bounding box of at most one tile's worth of pixels, i.e. nearly every triangle
        #   of a dense mesh): drawn right here, or with ``bin_small`` (the CPU with a mesh order
        #   that jumps around the screen, see ``rasterize._order_is_scattered``) binned by the
        #   16×16 tile of its bounding box's corner for ``cover_binned``: appended to a list (binned: work item,
        #   bin_of: bin, slot: its place in the bin; totals[1] counts them), back faces in bins
        #   after all front faces (bin_count holds 2·N·tiles bins; totals[2] counts back faces).
        # * Large: its clipped polygon is stored and the 16×16 tiles it needs are counted as
        #   separate jobs (totals[0]: their total, so the host skips the job list when there are none).
        ntx_img, nty_img = (W + TILE - 1) // TILE, (H + TILE - 1) // TILE
        for k in range(n_work):
            n_img, t = work_item(work_n, work_t, n_inst, k)
            counts[k] = 0
            S, K, n, ok, x0, x1, y0, y1 = prepare(pos, n_img * per_instance, tri[t], W, H)
            if ok == 1:
                if (x1 - x0 + 1) * (y1 - y0 + 1) <= TILE * TILE:
                    if bin_small == 0:
                        cover(S, K, n, t, n_img, x0, x1, y0, y1, zbuf, False)
                    else:
                        # triangles facing away (the signed area of cover()'s first fan
                        # triangle, computed the same way, is negative) go to the second set
                        area = (S[1, 0] - S[0, 0]) * (S[2, 1] - S[0, 1]) - (S[1, 1] - S[0, 1]) * (S[2, 0] - S[0, 0])
                        bb = (n_img * nty_img + ti.raw_div(y0, TILE)) * ntx_img + ti.raw_div(x0, TILE)
                        if n == 3 and area < 0:
                            bb += bin_count.shape[0] // 2
                            ti.atomic_add(totals[2], 1)
                        j = ti.atomic_add(totals[1], ti.i64(1))
                        binned[j] = k
                        bin_of[j] = bb
                        slot[j] = ti.atomic_add(bin_count[bb], 1)
                else:
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
                    ti.atomic_add(totals[0], counts[k])
                    # keep the clipped polygon in pixels so tile jobs do not redo clipping
                    for r in ti.static(range(4)):
                        keys[k, r] = K[r]
                        for c2 in ti.static(range(3)):
                            poly[k, r, c2] = S[r, c2]

    @ti.kernel
    def sort_bins(binned: nd(dtype=ti.i32, ndim=1), bin_of: nd(dtype=ti.i32, ndim=1), slot: nd(dtype=ti.i32, ndim=1),
                  n_binned: ti.i32, bin_start: nd(dtype=ti.i32, ndim=1), tri: nd(dtype=vec3i, ndim=1),
                  work_n: nd(dtype=ti.i32, ndim=1), work_t: nd(dtype=ti.i32, ndim=1), n_inst: ti.i32,
                  order: nd(dtype=ti.i32, ndim=1), order_tri: nd(dtype=vec3i, ndim=1)):
        # Counting sort of the binned triangles (bin_start = exclusive prefix sum of the counts):
        # their work item and vertex indices, read here in about mesh order, so that
        # ``cover_binned`` reads them in tile order sequentially.
        for j in range(n_binned):
            k = binned[j]
            dst = bin_start[bin_of[j]] + slot[j]
            order[dst] = k
            _, t = work_item(work_n, work_t, n_inst, k)
            order_tri[dst] = tri[t]

    @ti.kernel
    def cover_binned(pos: nd(dtype=vec4, ndim=2), work_n: nd(dtype=ti.i32, ndim=1), work_t: nd(dtype=ti.i32, ndim=1),
                     n_inst: ti.i32, per_instance: ti.i32, W: ti.i32, H: ti.i32, order: nd(dtype=ti.i32, ndim=1),
                     order_tri: nd(dtype=vec3i, ndim=1), start: ti.i32, end: ti.i32, zbuf: nd(dtype=ti.i64, ndim=3)):
        # The small triangles in tile order: consecutive ones touch the same few z-buffer cache
        # lines and share vertices, where mesh order (e.g. a subdivided icosphere's) jumps across
        # the screen and missed the caches on most z-buffer and vertex loads (the setup is redone:
        # cheaper than storing and reloading it). Entries [start, end): the host draws the front
        # faces, then in a second launch the back faces, with the early depth test (most are
        # behind the front faces drawn before). The order never changes the result (atomic_min).
        for i in range(end - start):
            j = start + i
            n_img, t = work_item(work_n, work_t, n_inst, order[j])
            S, K, n, ok, x0, x1, y0, y1 = prepare(pos, n_img * per_instance, order_tri[j], W, H)
            cover(S, K, n, t, n_img, x0, x1, y0, y1, zbuf, True)

    @ti.kernel
    def expand(counts: nd(dtype=ti.i64, ndim=1), offsets: nd(dtype=ti.i64, ndim=1),
               job_k: nd(dtype=ti.i32, ndim=1), job_local: nd(dtype=ti.i32, ndim=1)):
        # (triangle, tile) job list of the large triangles; offsets = inclusive prefix sum of counts
        for k in range(counts.shape[0]):
            c = ti.cast(counts[k], ti.i32)
            base = ti.cast(offsets[k], ti.i32) - c
            for i in range(c):
                job_k[base + i] = k
                job_local[base + i] = i

    @ti.kernel
    def coverage(work_n: nd(dtype=ti.i32, ndim=1), work_t: nd(dtype=ti.i32, ndim=1), n_inst: ti.i32,
                 tiles: nd(dtype=ti.i32, ndim=2), job_k: nd(dtype=ti.i32, ndim=1), job_local: nd(dtype=ti.i32, ndim=1),
                 poly: nd(dtype=real, ndim=3), keys: nd(dtype=ti.i64, ndim=2), zbuf: nd(dtype=ti.i64, ndim=3)):
        # One thread per (large triangle, tile) job: a triangle covering the whole screen is split
        # over all threads instead of serialising on one.
        for j in range(job_k.shape[0]):
            k = job_k[j]
            S = ti.Matrix.zero(real, 4, 3)
            K = ti.Vector.zero(ti.i64, 4)
            for r in ti.static(range(4)):
                K[r] = keys[k, r]
                for c in ti.static(range(3)):
                    S[r, c] = poly[k, r, c]
            local = job_local[j]
            ty_off = ti.raw_div(local, tiles[k, 2])
            tx = tiles[k, 0] + local - ty_off * tiles[k, 2]
            ty = tiles[k, 1] + ty_off
            # only the part of the tile inside the triangle's pixel bounding box
            xa, xb = ti.max(tx * TILE, tiles[k, 3]), ti.min(tx * TILE + TILE - 1, tiles[k, 5])
            ya, yb = ti.max(ty * TILE, tiles[k, 4]), ti.min(ty * TILE + TILE - 1, tiles[k, 6])
            n_img, t = work_item(work_n, work_t, n_inst, k)
            cover(S, K, tiles[k, 7], t, n_img, xa, xb, ya, yb, zbuf, False)

    @ti.func
    def bary(p0, p1, p2, X, Y):
        """nvdiffrast's perspective-correct barycentrics at NDC point (X, Y): q_k and a_k."""
        q0x, q0y = p0[0] - X * p0[3], p0[1] - Y * p0[3]
        q1x, q1y = p1[0] - X * p1[3], p1[1] - Y * p1[3]
        q2x, q2y = p2[0] - X * p2[3], p2[1] - Y * p2[3]
        a0 = q1x * q2y - q1y * q2x
        a1 = q2x * q0y - q2y * q0x
        a2 = q0x * q1y - q0y * q1x
        return q0x, q0y, q1x, q1y, q2x, q2y, a0, a1, a2

    @ti.func
    def row_consts(y, H, W):
        """Per-row constants of ``resolve_px``: pixel-centre Y in NDC (cast first so that the f64
        path really is f64) and the NDC units per pixel along x and y."""
        return (ti.cast(2 * y + 1, real) / ti.cast(H, real) - 1.0, ti.cast(2.0, real) / W,
                ti.cast(2.0, real) / H)

    @ti.func
    def resolve_px(pos: ti.template(), tri: ti.template(), zbuf: ti.template(), per_instance,
                   rast: ti.template(), db: ti.template(), n, y, x, p, Y, sx, sy):
        """Write rast[p] = (u, v, z/w, id + 1) and db[p] for pixel (n, y, x) (flat index p);
        (Y, sx, sy) = ``row_consts(y, H, W)``, computed once per row piece by the callers."""
        key = zbuf[n, y, x]
        W = zbuf.shape[2]
        if key == ti.i64(EMPTY):
            rast[p] = vec4(0.0)
            db[p] = vec4(0.0)
        else:
            t = ti.cast(key & ti.i64(0xFFFFFFFF), ti.i32)
            p0, p1, p2, _, _, _ = load(pos, n * per_instance, tri, t)
            # pixel centre in NDC; cast first so that the f64 path really is f64
            X = ti.cast(2 * x + 1, real) / ti.cast(W, real) - 1.0
            w0, w1, w2 = p0[3], p1[3], p2[3]
            q0x, q0y, q1x, q1y, q2x, q2y, a0, a1, a2 = bary(p0, p1, p2, X, Y)
            A = a0 + a1 + a2
            iA = 1.0 / A
            u, v = a0 * iA, a1 * iA
            zw = (p0[2] * a0 + p1[2] * a1 + p2[2] * a2) / (w0 * a0 + w1 * a1 + w2 * a2)
            # d a_k / dX and d a_k / dY (NDC): d q_k / dX = (-w_k, 0), d q_k / dY = (0, -w_k)
            a0x, a0y = w2 * q1y - w1 * q2y, w1 * q2x - w2 * q1x
            a1x, a1y = w0 * q2y - w2 * q0y, w2 * q0x - w0 * q2x
            a2x, a2y = w1 * q0y - w0 * q1y, w0 * q1x - w1 * q0x
            Ax, Ay = a0x + a1x + a2x, a0y + a1y + a2y
            db[p] = vec4((a0x - u * Ax) * iA * sx, (a0y - u * Ay) * iA * sy,
                         (a1x - v * Ax) * iA * sx, (a1y - v * Ay) * iA * sy)
            rast[p] = vec4(u, v, ti.min(ti.max(zw, -1.0), 1.0), ti.cast(t + 1, real))

    @ti.kernel
    def resolve(pos: nd(dtype=vec4, ndim=2), tri: nd(dtype=vec3i, ndim=1), zbuf: nd(dtype=ti.i64, ndim=3),
                per_instance: ti.i32, rast: nd(dtype=vec4, ndim=1), db: nd(dtype=vec4, ndim=1)):
        # one parallel iteration per seg-pixel piece of a row (see _pixel_loops); rast/db: [N·H·W] vec4 views
        H, W = zbuf.shape[1], zbuf.shape[2]
        nseg = (W + seg - 1) // seg
        for it in range(zbuf.shape[0] * H * nseg):
            n, y, xa, xb = segment(it, nseg, H, W, seg)
            Y, sx, sy = row_consts(y, H, W)
            for x in range(xa, xb):
                resolve_px(pos, tri, zbuf, per_instance, rast, db, n, y, x, (n * H + y) * W + x, Y, sx, sy)

    @ti.kernel
    def resolve_flat(pos: nd(dtype=vec4, ndim=2), tri: nd(dtype=vec3i, ndim=1), zbuf: nd(dtype=ti.i64, ndim=3),
                     per_instance: ti.i32, rast: nd(dtype=vec4, ndim=1), db: nd(dtype=vec4, ndim=1)):
        # Flat twin of ``resolve`` (one parallel loop, each output written once): Taichi's autodiff
        # of it, ``resolve_flat.grad``, is the exact backward including the rast_db outputs.
        for p in range(zbuf.shape[0] * zbuf.shape[1] * zbuf.shape[2]):
            H, W = zbuf.shape[1], zbuf.shape[2]
            row = ti.raw_div(p, W)
            n = ti.raw_div(row, H)
            y = row - n * H
            Y, sx, sy = row_consts(y, H, W)
            resolve_px(pos, tri, zbuf, per_instance, rast, db, n, y, p - row * W, p, Y, sx, sy)

    @ti.kernel
    def resolve_bwd(pos: nd(dtype=vec4, ndim=2), tri: nd(dtype=vec3i, ndim=1), zbuf: nd(dtype=ti.i64, ndim=3),
                    per_instance: ti.i32, g_rast: nd(dtype=vec4, ndim=1), g_pos: nd(dtype=real, ndim=3)):
        # Hand-written adjoint of (u, v) = (a0, a1)/A, A = a0 + a1 + a2:
        #   dL/da_j = [gu·(δ_j0 − u) + gv·(δ_j1 − v)] / A,
        # then a0 = q1 × q2 (cyclic) and q_k = (x_k − X·w_k, y_k − Y·w_k) give
        #   dL/dx_k = dL/dq_kx,  dL/dy_k = dL/dq_ky,  dL/dw_k = −X·dL/dq_kx − Y·dL/dq_ky.
        # The scatter to the vertices needs atomics; a run of pixels showing the same triangle is
        # summed in registers first and flushed (9 atomic adds) when the triangle changes.
        H, W = zbuf.shape[1], zbuf.shape[2]
        nseg = (W + seg - 1) // seg
        for it in range(zbuf.shape[0] * H * nseg):
            n, y, xs, xe = segment(it, nseg, H, W, seg)
            pn = n * per_instance
            Y = ti.cast(2 * y + 1, real) / ti.cast(H, real) - 1.0
            cur = -1
            acc = ti.Matrix.zero(real, 3, 3)  # run sums of (dL/dx_k, dL/dy_k, dL/dw_k)
            for x in range(xs, xe + 1):  # one step past the end flushes the last run
                t = -1
                g = vec4(0.0)
                if x < xe:
                    key = zbuf[n, y, x]
                    g = g_rast[(n * H + y) * W + x]
                    if key != ti.i64(EMPTY) and (g[0] != 0 or g[1] != 0):
                        t = ti.cast(key & ti.i64(0xFFFFFFFF), ti.i32)
                # flush on a change of triangle (background pixels in between keep the run open)
                if (t >= 0 and t != cur) or x == xe:
                    if cur >= 0:
                        ids = tri[cur]
                        for k in ti.static(range(3)):
                            vi = ids[k]
                            g_pos[pn, vi, 0] += acc[k, 0]
                            g_pos[pn, vi, 1] += acc[k, 1]
                            g_pos[pn, vi, 3] += acc[k, 2]
                    cur = t
                    acc = ti.Matrix.zero(real, 3, 3)
                if t >= 0:
                    p0, p1, p2, _, _, _ = load(pos, pn, tri, t)
                    X = ti.cast(2 * x + 1, real) / ti.cast(W, real) - 1.0
                    q0x, q0y, q1x, q1y, q2x, q2y, a0, a1, a2 = bary(p0, p1, p2, X, Y)
                    iA = 1.0 / (a0 + a1 + a2)
                    gu, gv = g[0], g[1]
                    base = -(gu * a0 + gv * a1) * iA * iA
                    g0, g1, g2 = base + gu * iA, base + gv * iA, base
                    # a0 = q1x q2y − q1y q2x;  a1 = q2x q0y − q2y q0x;  a2 = q0x q1y − q0y q1x
                    gq = ti.Matrix([[g1 * -q2y + g2 * q1y, g1 * q2x - g2 * q1x],
                                    [g0 * q2y - g2 * q0y, -g0 * q2x + g2 * q0x],
                                    [-g0 * q1y + g1 * q0y, g0 * q1x - g1 * q0x]], real)
                    for k in ti.static(range(3)):
                        acc[k, 0] += gq[k, 0]
                        acc[k, 1] += gq[k, 1]
                        acc[k, 2] += -X * gq[k, 0] - Y * gq[k, 1]

    return SimpleNamespace(setup=setup, sort_bins=sort_bins, cover_binned=cover_binned, expand=expand,
                           coverage=coverage, resolve=resolve, resolve_flat=resolve_flat, resolve_bwd=resolve_bwd)

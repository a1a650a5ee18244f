"""Taichi kernels of interpolate(): per-pixel attribute interpolation and its screen-space
derivatives (forward), and their hand-written adjoints.

See the docstring of :mod:`taichi_dr.render.interpolate` for the maths.
"""
import functools
from types import SimpleNamespace

import taichi as ti

from taichi_dr.render._pixel_loops import batch_of, segment

__all__ = ["kernels"]


@functools.lru_cache(maxsize=None)
def kernels(real, seg: int):
    """Namespace of the interpolate kernels for the Taichi float type ``real`` and ``seg``-pixel row
    pieces (``_pixel_loops.row_piece()``) in ``interp_bwd``."""
    nd = ti.types.ndarray
    vec4 = ti.types.vector(4, real)
    vec3i = ti.types.vector(3, ti.i32)

    # All kernels take the images as flat [P, ·] views (P = N·H·W pixels) and loop over pixels
    # with a plain range-for; the channel loops are ordinary loops, so the kernels are not flat
    # and their adjoints are written by hand below (they are short: the op is linear in attr
    # and in (u, v)).

    @ti.func
    def corners(attr: ti.template(), tri: ti.template(), na, tid, c):
        return attr[na, tri[tid, 0], c], attr[na, tri[tid, 1], c], attr[na, tri[tid, 2], c]

    @ti.kernel
    def interp(attr: nd(dtype=real, ndim=3), rast: nd(dtype=vec4, ndim=1), tri: nd(dtype=vec3i, ndim=1),
               hw: ti.i32, A: ti.template(), out: nd(dtype=real, ndim=2), bad: nd(dtype=ti.i32, ndim=1)):
        # A = channel count when small (loops unrolled at compile time), 0 = any count
        for p in range(rast.shape[0]):
            r = rast[p]
            tid = ti.cast(r[3], ti.i32) - 1  # 0 = background
            # rast is checked here, as it is read: an id outside [0, T] or a non-finite u, v is
            # reported and its pixel left empty, never used as an index. NaN fails every comparison,
            # and x − x is 0 exactly when x is finite (Inf − Inf = NaN; fast math is off).
            if not (r[3] >= 0 and r[3] <= tri.shape[0] and r[0] - r[0] == 0 and r[1] - r[1] == 0):
                bad[0] = 1
                tid = -1
            if tid >= 0:
                na = batch_of(p, hw, attr.shape[0])
                # clamped addresses (the identity for valid indices): tri's range check is read by
                # the wrapper after this launch (its one host sync), so a bad index must not address memory
                ids = ti.min(ti.max(tri[tid], 0), attr.shape[1] - 1)
                w = ti.Vector([r[0], r[1], 1.0 - r[0] - r[1]], real)
                if ti.static(A > 0):
                    for c in ti.static(range(A)):
                        out[p, c] = w[0] * attr[na, ids[0], c] + w[1] * attr[na, ids[1], c] + w[2] * attr[na, ids[2], c]
                else:
                    for c in range(out.shape[1]):
                        out[p, c] = w[0] * attr[na, ids[0], c] + w[1] * attr[na, ids[1], c] + w[2] * attr[na, ids[2], c]
            else:
                for c in range(out.shape[1]):
                    out[p, c] = 0.0

    @ti.kernel
    def interp_da(attr: nd(dtype=real, ndim=3), rast: nd(dtype=real, ndim=2), db: nd(dtype=real, ndim=2),
                  tri: nd(dtype=ti.i32, ndim=2), which: nd(dtype=ti.i32, ndim=1), hw: ti.i32,
                  out_da: nd(dtype=real, ndim=2)):
        # out_da[p, 2k + d] = d(attr[which[k]]) / d(X if d == 0 else Y)
        #                   = (a0 − a2)·du/dd + (a1 − a2)·dv/dd,  rast_db = (du/dX, du/dY, dv/dX, dv/dY)
        for p in range(rast.shape[0]):
            tid = ti.cast(rast[p, 3], ti.i32) - 1
            na = batch_of(p, hw, attr.shape[0])
            for k in range(which.shape[0]):
                for d in ti.static(range(2)):
                    val = ti.cast(0.0, real)
                    if tid >= 0:
                        a0, a1, a2 = corners(attr, tri, na, tid, which[k])
                        val = (a0 - a2) * db[p, d] + (a1 - a2) * db[p, 2 + d]
                    out_da[p, 2 * k + d] = val

    @ti.kernel
    def interp_bwd(attr: nd(dtype=real, ndim=3), rast: nd(dtype=vec4, ndim=1), tri: nd(dtype=ti.i32, ndim=2),
                   H: ti.i32, W: ti.i32, A: ti.template(), g_out: nd(dtype=real, ndim=2),
                   g_attr: nd(dtype=real, ndim=3), g_rast: nd(dtype=vec4, ndim=1), want_attr: ti.template()):
        # out = u·a0 + v·a1 + (1 − u − v)·a2  =>  dL/da0 += u·g, dL/da1 += v·g, dL/da2 += (1−u−v)·g,
        # dL/du = Σ_c g·(a0 − a2), dL/dv = Σ_c g·(a1 − a2).
        # The scatter to shared vertices needs atomic adds, the costliest part. Neighbouring pixels
        # usually show the same triangle, so each thread walks a row piece and sums a run of
        # pixels of one triangle in registers, flushing 3·A atomics only when the triangle changes.
        # Without want_attr (constant attributes, e.g. UV coordinates) only dL/d(u, v) is computed.
        nseg = (W + seg - 1) // seg
        for it in range(ti.raw_div(rast.shape[0], H * W) * H * nseg):
            n, y, xs, xe = segment(it, nseg, H, W, seg)
            na = n if attr.shape[0] > 1 else 0
            cur = -1
            acc = ti.Matrix.zero(real, 3, A)  # run sums of dL/da_k per corner k and channel
            cor = ti.Matrix.zero(real, 3, A)  # the run triangle's corner attributes
            for x in range(xs, xe + 1):  # one step past the end flushes the last run
                p = (n * H + y) * W + x
                tid = -1
                if x < xe:
                    tid = ti.cast(rast[p][3], ti.i32) - 1
                if tid != cur:
                    if ti.static(want_attr):
                        if cur >= 0:
                            for k in ti.static(range(3)):
                                for c in ti.static(range(A)):
                                    g_attr[na, tri[cur, k], c] += acc[k, c]
                    cur = tid
                    acc = ti.Matrix.zero(real, 3, A)
                    if tid >= 0:
                        for k in ti.static(range(3)):
                            for c in ti.static(range(A)):
                                cor[k, c] = attr[na, tri[tid, k], c]
                if x < xe:
                    r = rast[p]
                    gu, gv = ti.cast(0.0, real), ti.cast(0.0, real)
                    if tid >= 0:
                        w = ti.Vector([r[0], r[1], 1.0 - r[0] - r[1]], real)
                        for c in ti.static(range(A)):
                            g = g_out[p, c]
                            gu += g * (cor[0, c] - cor[2, c])
                            gv += g * (cor[1, c] - cor[2, c])
                            if ti.static(want_attr):
                                for k in ti.static(range(3)):
                                    acc[k, c] += w[k] * g
                    g_rast[p] = vec4(gu, gv, 0.0, 0.0)  # depth and triangle id: no gradient

    @ti.kernel
    def interp_bwd_wide(attr: nd(dtype=real, ndim=3), rast: nd(dtype=vec4, ndim=1), tri: nd(dtype=ti.i32, ndim=2),
                        hw: ti.i32, g_out: nd(dtype=real, ndim=2), g_attr: nd(dtype=real, ndim=3),
                        g_rast: nd(dtype=vec4, ndim=1)):
        # same adjoint for many channels (A > 8): one pixel per iteration, atomics per pixel
        for p in range(rast.shape[0]):
            r = rast[p]
            tid = ti.cast(r[3], ti.i32) - 1
            gu, gv = ti.cast(0.0, real), ti.cast(0.0, real)
            if tid >= 0:
                na = batch_of(p, hw, attr.shape[0])
                u, v = r[0], r[1]
                i0, i1, i2 = tri[tid, 0], tri[tid, 1], tri[tid, 2]
                for c in range(g_out.shape[1]):
                    g = g_out[p, c]
                    if g != 0:
                        a0, a1, a2 = attr[na, i0, c], attr[na, i1, c], attr[na, i2, c]
                        gu += g * (a0 - a2)
                        gv += g * (a1 - a2)
                        g_attr[na, i0, c] += u * g
                        g_attr[na, i1, c] += v * g
                        g_attr[na, i2, c] += (1.0 - u - v) * g
            g_rast[p] = vec4(gu, gv, 0.0, 0.0)

    @ti.kernel
    def interp_da_bwd(attr: nd(dtype=real, ndim=3), rast: nd(dtype=real, ndim=2), db: nd(dtype=real, ndim=2),
                      tri: nd(dtype=ti.i32, ndim=2), which: nd(dtype=ti.i32, ndim=1), hw: ti.i32,
                      g_da: nd(dtype=real, ndim=2), g_attr: nd(dtype=real, ndim=3), g_db: nd(dtype=real, ndim=2)):
        # da_d = (a0 − a2)·db_d + (a1 − a2)·db_{2+d} is bilinear in attr and rast_db (not in u, v)
        for p in range(rast.shape[0]):
            tid = ti.cast(rast[p, 3], ti.i32) - 1
            gdb = ti.Vector.zero(real, 4)
            if tid >= 0:
                na = batch_of(p, hw, attr.shape[0])
                i0, i1, i2 = tri[tid, 0], tri[tid, 1], tri[tid, 2]
                for k in range(which.shape[0]):
                    c = which[k]
                    a0, a1, a2 = attr[na, i0, c], attr[na, i1, c], attr[na, i2, c]
                    for d in ti.static(range(2)):
                        g = g_da[p, 2 * k + d]
                        gdb[d] += g * (a0 - a2)
                        gdb[2 + d] += g * (a1 - a2)
                        g_attr[na, i0, c] += g * db[p, d]
                        g_attr[na, i1, c] += g * db[p, 2 + d]
                        g_attr[na, i2, c] -= g * (db[p, d] + db[p, 2 + d])
            for j in ti.static(range(4)):
                g_db[p, j] = gdb[j]

    return SimpleNamespace(interp=interp, interp_da=interp_da, interp_bwd=interp_bwd, interp_bwd_wide=interp_bwd_wide,
                           interp_da_bwd=interp_da_bwd)

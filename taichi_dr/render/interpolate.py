"""interpolate(): vertex attributes at every pixel, and their screen-space derivatives.

For a pixel covered by triangle (i0, i1, i2) with perspective-correct barycentrics (u, v) from
:func:`rasterize`, an attribute a is

    a(X, Y) = u·a_i0 + v·a_i1 + (1 − u − v)·a_i2,

and, by the chain rule through (u, v), its derivative along the pixel axes is

    da/dX = (a_i0 − a_i2)·du/dX + (a_i1 − a_i2)·dv/dX    (same for Y),

which is what texture sampling needs to pick a mip level (the footprint of a pixel in uv space).

The op is linear in the attributes and in (u, v), so the backward is short and written by hand
(``interp_bwd``, ``interp_da_bwd``): dL/da_ik = w_k·g scattered to the three vertices with
atomic adds (vertices are shared by many pixels), dL/du = Σ_c g·(a0 − a2), dL/dv = Σ_c g·(a1 − a2),
and for the derivatives dL/d(rast_db) = g·(a0 − a2), g·(a1 − a2). ``tests/test_raster_pipeline.py`` and
``taichi-dr gradcheck`` check them against finite differences in float64.
"""
import functools
from typing import List, Optional, Sequence, Tuple, Union

import taichi as ti
import torch

from taichi_dr._checks import (FLOATS, as_index32, check_float, check_index, check_same_device, check_tensor,
                               raise_bad_rast, shape_str)
from taichi_dr.render._raster_kernels import SEG, segment
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["interpolate"]


@functools.lru_cache(maxsize=None)
def _kernels(real):
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
                na = ti.raw_div(p, hw) if attr.shape[0] > 1 else 0
                ids = tri[tid]
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
            na = ti.raw_div(p, hw) if attr.shape[0] > 1 else 0
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
                   g_attr: nd(dtype=real, ndim=3), g_rast: nd(dtype=vec4, ndim=1)):
        # out = u·a0 + v·a1 + (1 − u − v)·a2  =>  dL/da0 += u·g, dL/da1 += v·g, dL/da2 += (1−u−v)·g,
        # dL/du = Σ_c g·(a0 − a2), dL/dv = Σ_c g·(a1 − a2).
        # The scatter to shared vertices needs atomic adds, the costliest part. Neighbouring pixels
        # usually show the same triangle, so each thread walks a row piece and sums a run of
        # pixels of one triangle in registers, flushing 3·A atomics only when the triangle changes.
        nseg = (W + SEG - 1) // SEG
        for it in range(ti.raw_div(rast.shape[0], H * W) * H * nseg):
            n, y, xs, xe = segment(it, nseg, H, W)
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
                na = ti.raw_div(p, hw) if attr.shape[0] > 1 else 0
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
                na = ti.raw_div(p, hw) if attr.shape[0] > 1 else 0
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

    return interp, interp_da, interp_bwd, interp_bwd_wide, interp_da_bwd


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr3, rast, tri, db, which):
        ctx.set_materialize_grads(False)
        interp, interp_da = _kernels(ti_real(attr3.dtype))[:2]
        N, H, W = rast.shape[:3]
        attr3, rast_c = attr3.detach().contiguous(), rast.detach().contiguous()
        A = attr3.shape[2]
        out = torch.empty((N, H, W, A), dtype=attr3.dtype, device=attr3.device)
        bad = torch.zeros(1, dtype=torch.int32, device=attr3.device)
        interp(attr3, rast_c.view(-1, 4), tri, H * W, A if A <= 8 else 0, out.view(-1, A), bad)
        if bad.item():
            raise_bad_rast("rast", rast_c, tri.shape[0])
        out_da = torch.zeros((N, H, W, 2 * which.numel()), dtype=attr3.dtype, device=attr3.device)
        if which.numel():
            db = db.detach().contiguous()
            interp_da(attr3, rast_c.view(-1, 4), db.view(-1, 4), tri, which, H * W, out_da.view(-1, 2 * which.numel()))
        ctx.save_for_backward(attr3, rast_c, tri, db, which)
        return out, out_da

    @staticmethod
    def backward(ctx, g_out, g_da):
        attr3, rast, tri, db, which = ctx.saved_tensors
        _, _, interp_bwd, interp_bwd_wide, interp_da_bwd = _kernels(ti_real(attr3.dtype))
        N, H, W = rast.shape[:3]
        A = attr3.shape[2]
        g_attr = torch.zeros_like(attr3)
        g_rast = None
        if g_out is not None:
            g_rast = torch.empty_like(rast)
            g2 = g_out.contiguous().view(N * H * W, A)
            if A <= 8:  # channels unrolled at compile time (one kernel per channel count)
                interp_bwd(attr3, rast.view(-1, 4), tri, H, W, A, g2, g_attr, g_rast.view(-1, 4))
            else:
                interp_bwd_wide(attr3, rast.view(-1, 4), tri, H * W, g2, g_attr, g_rast.view(-1, 4))
        g_db = None
        if which.numel() and g_da is not None:
            g_db = torch.empty_like(db)
            interp_da_bwd(attr3, rast.view(-1, 4), db.view(-1, 4), tri, which, H * W,
                          g_da.contiguous().view(N * H * W, -1), g_attr, g_db.view(-1, 4))
        return g_attr, g_rast, None, g_db, None


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db: Optional[torch.Tensor] = None,
                diff_attrs: Union[None, str, Sequence[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Interpolate vertex attributes over the rasterized triangles.

    Args:
        attr: ``[V, A]`` or ``[N, V, A]`` float32/float64 attributes (``N = 1`` broadcasts).
        rast: ``[N, H, W, 4]`` output of :func:`rasterize` (same float dtype as ``attr``).
        tri: ``[T, 3]`` int32 (int64 accepted) triangle vertex indices.
        rast_db: ``[N, H, W, 4]`` barycentric derivatives from :func:`rasterize`; needed when
            ``diff_attrs`` is given.
        diff_attrs: ``'all'`` or a list of attribute indices whose screen-space derivatives to return.

    Returns:
        out: ``[N, H, W, A]`` interpolated attributes, zeros on background pixels.
        out_da: ``[N, H, W, 2·len(diff_attrs)]`` pairs (dA/dX, dA/dY) in pixels per attribute, or an
            empty ``[N, H, W, 0]`` tensor when ``diff_attrs`` is ``None``.

    Gradients flow to ``attr``, to (u, v) of ``rast`` and to ``rast_db``.
    """
    ensure_init()
    check_float("attr", attr, ndim=(2, 3), expected="[V, A] or [N, V, A]")
    check_tensor("rast", rast, ndim=4, last=4, dtypes=FLOATS, expected="[N, H, W, 4]")
    if rast.dtype != attr.dtype:
        raise TypeError(f"rast: expected dtype {attr.dtype} (same as attr), got {rast.dtype}")
    attr3 = attr if attr.dim() == 3 else attr.unsqueeze(0)
    N = rast.shape[0]
    if attr3.shape[0] not in (1, N):
        raise ValueError(f"attr: expected shape [1 or {N}, V, A] to match rast's batch {N}, got {shape_str(attr.shape)}")
    V, A = attr3.shape[1], attr3.shape[2]
    check_index("tri", tri, V, expected="[T, 3]")
    check_same_device(attr=attr, rast=rast, tri=tri, rast_db=rast_db)
    tri32 = as_index32(tri)
    if diff_attrs is None:
        which: List[int] = []
    elif isinstance(diff_attrs, str):
        if diff_attrs != "all":
            raise ValueError(f"diff_attrs: expected 'all' or a list of indices, got {diff_attrs!r}")
        which = list(range(A))
    else:
        which = [int(i) for i in diff_attrs]
        bad = [i for i in which if not 0 <= i < A]
        if bad:
            raise ValueError(f"diff_attrs: expected indices in [0, {A}), got {bad}")
    if which:
        if rast_db is None:
            raise ValueError("rast_db: required when diff_attrs is given (pass the second output of rasterize)")
        check_float("rast_db", rast_db, ndim=4, last=4, expected=f"{shape_str(rast.shape)}")
        if rast_db.shape != rast.shape:
            raise ValueError(f"rast_db: expected shape {shape_str(rast.shape)}, got {shape_str(rast_db.shape)}")
        db = rast_db
    else:
        db = torch.zeros((1, 1, 1, 4), dtype=attr.dtype, device=attr.device)
    which_t = torch.tensor(which, dtype=torch.int32, device=attr.device)
    return _Interpolate.apply(attr3, rast, tri32, db, which_t)

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

import torch

from taichi_dr._checks import (FLOATS, INTS, as_index32, check_device, check_tensor, deferred_checks, raise_bad_rast,
                               shape_str, verify_deferred)
from taichi_dr.render._interpolate_kernels import kernels
from taichi_dr.render._pixel_loops import row_piece
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["interpolate"]


def _kernels(real):
    return kernels(real, row_piece())


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr3, rast, tri, db, which, checks, verify):
        ctx.set_materialize_grads(False)
        k = _kernels(ti_real(attr3.dtype))
        N, H, W = rast.shape[:3]
        attr3, rast_c = attr3.detach().contiguous(), rast.detach().contiguous()
        A = attr3.shape[2]
        out = torch.empty((N, H, W, A), dtype=attr3.dtype, device=attr3.device)
        bad = torch.zeros(1, dtype=torch.int32, device=attr3.device)
        k.interp(attr3, rast_c.view(-1, 4), tri, H * W, A if A <= 8 else 0, out.view(-1, A), bad)
        # the op's one host sync: the kernel's check of rast and the deferred input checks
        vals = torch.cat([bad.to(torch.int64), checks]).tolist()
        verify(vals[1:])
        if vals[0]:
            raise_bad_rast("rast", rast_c, tri.shape[0])
        out_da = torch.zeros((N, H, W, 2 * which.numel()), dtype=attr3.dtype, device=attr3.device)
        if which.numel():
            db = db.detach().contiguous()
            k.interp_da(attr3, rast_c.view(-1, 4), db.view(-1, 4), tri, which, H * W, out_da.view(-1, 2 * which.numel()))
        ctx.save_for_backward(attr3, rast_c, tri, db, which)
        return out, out_da

    @staticmethod
    def backward(ctx, g_out, g_da):
        attr3, rast, tri, db, which = ctx.saved_tensors
        k = _kernels(ti_real(attr3.dtype))
        N, H, W = rast.shape[:3]
        A = attr3.shape[2]
        # constant attributes (UV coordinates, tangents) and a rast_db without gradient (the mip
        # level's footprint) need no scatter: the texture pass interpolates both every step
        want_attr, want_db = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        da_bwd = bool(which.numel()) and g_da is not None and (want_attr or want_db)
        # (the kernels below write g_attr unless told not to: a 1-element dummy only when none does)
        g_attr = torch.zeros_like(attr3) if want_attr or A > 8 or da_bwd else attr3.new_zeros(1, 1, 1)
        g_rast = None
        if g_out is not None:
            g_rast = torch.empty_like(rast)
            g2 = g_out.contiguous().view(N * H * W, A)
            if A <= 8:  # channels unrolled at compile time (one kernel per channel count)
                k.interp_bwd(attr3, rast.view(-1, 4), tri, H, W, A, g2, g_attr, g_rast.view(-1, 4), want_attr)
            else:
                k.interp_bwd_wide(attr3, rast.view(-1, 4), tri, H * W, g2, g_attr, g_rast.view(-1, 4))
        g_db = None
        if da_bwd:
            g_db = torch.empty_like(db)
            k.interp_da_bwd(attr3, rast.view(-1, 4), db.view(-1, 4), tri, which, H * W,
                          g_da.contiguous().view(N * H * W, -1), g_attr, g_db.view(-1, 4))
        return g_attr if want_attr else None, g_rast, None, g_db, None, None, None


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
    check_device(attr=attr, rast=rast, tri=tri, rast_db=rast_db)
    check_tensor("attr", attr, ndim=(2, 3), dtypes=FLOATS, expected="[V, A] or [N, V, A]")
    check_tensor("rast", rast, ndim=4, last=4, dtypes=FLOATS, expected="[N, H, W, 4]")
    if rast.dtype != attr.dtype:
        raise TypeError(f"rast: expected dtype {attr.dtype} (same as attr), got {rast.dtype}")
    attr3 = attr if attr.dim() == 3 else attr.unsqueeze(0)
    N = rast.shape[0]
    if attr3.shape[0] not in (1, N):
        raise ValueError(f"attr: expected shape [1 or {N}, V, A] to match rast's batch {N}, got {shape_str(attr.shape)}")
    V, A = attr3.shape[1], attr3.shape[2]
    check_tensor("tri", tri, ndim=2, last=3, dtypes=INTS, expected="[T, 3]")
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
        check_tensor("rast_db", rast_db, ndim=4, last=4, dtypes=FLOATS, expected=f"{shape_str(rast.shape)}")
        if rast_db.shape != rast.shape:
            raise ValueError(f"rast_db: expected shape {shape_str(rast.shape)}, got {shape_str(rast_db.shape)}")
        db = rast_db
    else:
        db = torch.zeros((1, 1, 1, 4), dtype=attr.dtype, device=attr.device)
    # no host -> device copy when there is nothing to send (on a GPU a copy from pageable memory waits)
    which_t = (torch.tensor(which, dtype=torch.int32, device=attr.device) if which
               else torch.empty(0, dtype=torch.int32, device=attr.device))
    # attr (and rast_db) finite, tri in [0, V): computed on the device, read after the first kernel
    finite = [("attr", attr)] + ([("rast_db", rast_db)] if which else [])
    checks = deferred_checks([t for _, t in finite], tri)
    verify = functools.partial(verify_deferred, finite=finite, index=("tri", tri, V))
    return _Interpolate.apply(attr3, rast, tri32, db, which_t, checks, verify)

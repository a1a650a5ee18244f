"""interpolate(): vertex attributes at every pixel, and their screen-space derivatives.

For a pixel covered by triangle (i0, i1, i2) with perspective-correct barycentrics (u, v) from
:func:`rasterize`, an attribute a is

    a(X, Y) = u·a_i0 + v·a_i1 + (1 − u − v)·a_i2,

and, by the chain rule through (u, v), its derivative along the pixel axes is

    da/dX = (a_i0 − a_i2)·du/dX + (a_i1 − a_i2)·dv/dX    (same for Y),

which is what texture sampling needs to pick a mip level (the footprint of a pixel in uv space).

Both kernels are *flat*: one parallel loop over the output elements (pixel × channel), nothing
but scalar loads and arithmetic, each output written once. Taichi's reverse-mode autodiff is
exact for such kernels, so their ``.grad`` versions are the backward pass; the scatter of
gradients to shared vertices becomes atomic adds automatically.
"""
import functools
from typing import List, Optional, Sequence, Tuple, Union

import taichi as ti
import torch

from taichi_dr._checks import as_index32, check_float, check_index, check_same_device, shape_str
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["interpolate"]


@functools.lru_cache(maxsize=None)
def _kernels(real):
    nd = ti.types.ndarray

    @ti.kernel
    def interp(attr: nd(dtype=real, ndim=3), rast: nd(dtype=real, ndim=4), tri: nd(dtype=ti.i32, ndim=2),
               out: nd(dtype=real, ndim=4)):
        for n, y, x, c in out:
            tid = ti.cast(rast[n, y, x, 3], ti.i32) - 1  # 0 = background
            na = n if attr.shape[0] > 1 else 0
            if tid >= 0:
                u, v = rast[n, y, x, 0], rast[n, y, x, 1]
                a0 = attr[na, tri[tid, 0], c]
                a1 = attr[na, tri[tid, 1], c]
                a2 = attr[na, tri[tid, 2], c]
                out[n, y, x, c] = u * a0 + v * a1 + (1.0 - u - v) * a2
            else:
                out[n, y, x, c] = 0.0

    @ti.kernel
    def interp_da(attr: nd(dtype=real, ndim=3), rast: nd(dtype=real, ndim=4), db: nd(dtype=real, ndim=4),
                  tri: nd(dtype=ti.i32, ndim=2), which: nd(dtype=ti.i32, ndim=1), out_da: nd(dtype=real, ndim=4)):
        # out_da[..., 2k + d] = d(attr[which[k]]) / d(X if d == 0 else Y)
        for n, y, x, j in out_da:
            tid = ti.cast(rast[n, y, x, 3], ti.i32) - 1
            na = n if attr.shape[0] > 1 else 0
            if tid >= 0:
                c, d = which[j // 2], j % 2
                a0 = attr[na, tri[tid, 0], c]
                a1 = attr[na, tri[tid, 1], c]
                a2 = attr[na, tri[tid, 2], c]
                # rast_db = (du/dX, du/dY, dv/dX, dv/dY)
                out_da[n, y, x, j] = (a0 - a2) * db[n, y, x, d] + (a1 - a2) * db[n, y, x, 2 + d]
            else:
                out_da[n, y, x, j] = 0.0

    return interp, interp_da


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """Fresh detached leaf with a zeroed adjoint buffer (Taichi accumulates into ``.grad``)."""
    leaf = t.detach().contiguous().clone().requires_grad_(True)
    leaf.grad = torch.zeros_like(leaf)
    return leaf


def _seeded(shape, dtype, device, g: Optional[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=dtype, device=device).requires_grad_(True)
    # the .grad kernel zeroes the output seed in place, so hand it a copy
    out.grad = torch.zeros(shape, dtype=dtype, device=device) if g is None else g.detach().contiguous().clone()
    return out


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr3, rast, tri, db, which):
        interp, interp_da = _kernels(ti_real(attr3.dtype))
        N, H, W = rast.shape[:3]
        attr3, rast_c = attr3.detach().contiguous(), rast.detach().contiguous()
        out = torch.empty((N, H, W, attr3.shape[2]), dtype=attr3.dtype, device=attr3.device)
        interp(attr3, rast_c, tri, out)
        out_da = torch.zeros((N, H, W, 2 * which.numel()), dtype=attr3.dtype, device=attr3.device)
        if which.numel():
            interp_da(attr3, rast_c, db.detach().contiguous(), tri, which, out_da)
        ctx.save_for_backward(attr3, rast_c, tri, db, which)
        return out, out_da

    @staticmethod
    def backward(ctx, g_out, g_da):
        attr3, rast, tri, db, which = ctx.saved_tensors
        interp, interp_da = _kernels(ti_real(attr3.dtype))
        a, r = _leaf(attr3), _leaf(rast)
        interp.grad(a, r, tri, _seeded((*rast.shape[:3], attr3.shape[2]), attr3.dtype, attr3.device, g_out))
        g_db = None
        if which.numel():
            d = _leaf(db)
            interp_da.grad(a, r, d, tri, which,
                           _seeded((*rast.shape[:3], 2 * which.numel()), attr3.dtype, attr3.device, g_da))
            g_db = d.grad
        g_rast = r.grad
        g_rast[..., 2:] = 0  # depth and triangle id are not differentiable
        return a.grad, g_rast, None, g_db, None


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
    check_float("rast", rast, ndim=4, last=4, expected="[N, H, W, 4]")
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
    if rast.numel():
        max_id = int(rast[..., 3].max())
        if max_id > tri.shape[0]:
            raise ValueError(f"rast: triangle ids up to {max_id} but tri has only {tri.shape[0]} triangles")
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

"""rasterize(): which triangle covers each pixel, and where (perspective-correct barycentrics).

The op runs in a few Taichi kernels, following nvdiffrast's split between visibility (not
differentiable) and barycentrics (differentiable):

1. ``setup`` (one thread per triangle): clip the triangle against the near plane ``z = -w``
   (Sutherland–Hodgman on a triangle gives at most a quad = 2 triangles) and project it to
   pixels. A triangle whose pixel bounding box holds at most 16×16 pixels — nearly every
   triangle of a dense mesh — is rasterized: test the pixel centres with edge functions and keep
   the nearest fragment per pixel with one 64-bit ``atomic_min`` on the key
   ``(depth bits << 32) | triangle index``. Ties in depth go to the smaller triangle index:
   deterministic whatever the thread (or triangle) order.
   On the CPU the drawing order matters for the caches. When the mesh order is local on screen
   (``_order_is_scattered``, a sampled estimate), ``setup`` draws each small triangle at once.
   When it jumps around (a subdivided icosphere's does, and most z-buffer and vertex loads then
   missed the caches), ``setup`` bins them by the 16×16 tile of their bounding box's corner,
   ``sort_bins`` (a counting sort) lists them tile by tile, and ``cover_binned`` draws the front
   faces, then the faces turned away (clockwise on screen: the far half of a closed mesh). Those
   first compare each pixel's stored key with a lower bound of their own depth (``key_floor``:
   with a margin for the rounding of the edge functions) and skip the edge tests where a nearer
   fragment is already there: the same z-buffer for less work. On a GPU every triangle is drawn
   at once by its thread.
2. Larger triangles store their clipped polygon and count the 16×16 tiles they touch;
   ``expand`` turns the counts (prefix sum) into a (triangle, tile) job list and ``coverage``
   runs one thread per job with the same test, so a triangle covering the whole screen is split
   over all threads instead of serialising on one.
3. ``resolve`` (per pixel): recompute (u, v, z/w) and their screen derivatives from the winning
   triangle's *original* clip-space vertices with nvdiffrast's formula

       q_k = (x_k − X·w_k, y_k − Y·w_k),  a0 = q1×q2, a1 = q2×q0, a2 = q0×q1,  A = a0+a1+a2,
       u = a0/A,  v = a1/A,  z/w = Σ z_k a_k / Σ w_k a_k,

   which is perspective-correct (the a_k are the 2-D barycentrics divided by w_k, up to scale)
   and independent of clipping, so clipped triangles still report barycentrics of the original
   vertices. Its backward ``resolve_bwd`` is the hand-written adjoint of (u, v) (an atomic
   scatter to x, y, w of the three vertices); when a loss also depends on ``rast_db`` (with
   ``grad_db=True``) the backward is Taichi's autodiff of ``resolve_flat``, a *flat* twin of the
   resolve (one parallel loop, each output written once, the case where Taichi AD is exact).
   Both are checked against finite differences and against torch autograd through a pure-torch
   reference rasterizer in ``tests/test_rasterize.py`` (``tests/reference_raster.py``).

Precision: depth in the z-buffer key is the float32 bit pattern of (z/w + 1)/2 even on the f64
path, so fragments closer than ~1e-7 in z/w tie and the smaller triangle index wins; everything
written to ``rast``/``rast_db`` is computed in the input precision (pixel centres included).

Fill rule. Two triangles sharing an edge must not both claim a pixel centre lying exactly on it.
We evaluate every edge function in a *canonical* direction (from the endpoint with the smaller
vertex key to the larger), so both triangles compute bitwise the same number, then break exact
zeros as if the sample were nudged by an infinitesimal (ε, ε²): the canonical edge's tie sign is
``−dy`` (or ``dx`` when ``dy == 0``). A consistent nudge means every pixel centre on a shared edge
or vertex of a mesh belongs to exactly one triangle (the top-left rule of GPUs is the same idea).
"""
import functools
from typing import Optional, Tuple

import torch

from taichi_dr._checks import (FLOATS, INTS, as_index32, check_device, check_resolution, check_tensor, deferred_checks,
                               verify_deferred)
from taichi_dr.render._pixel_loops import row_piece
from taichi_dr.render._raster_kernels import EMPTY as _EMPTY
from taichi_dr.render._raster_kernels import TILE
from taichi_dr.render._raster_kernels import kernels
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["rasterize"]


def _kernels(real):
    return kernels(real, row_piece())


def _order_is_scattered(pos: torch.Tensor, tri: torch.Tensor, work, per_instance: int, H: int, W: int) -> bool:
    """Whether consecutive triangles of the work list tend to lie in different 16×16 tiles.

    A heuristic that only picks the drawing order on the CPU (the result is the same either
    way): 16 windows of 8 consecutive work items spread over the list; more than half of their
    7·16 steps move the first vertex to another tile. Tiny torch ops on the calling thread (a
    Taichi launch would wake the kernel threads, which costs more on a loaded machine).
    """
    work_n, work_t, K, n_inst = work
    idx = (torch.arange(16) * max(K - 8, 0) // 15)[:, None] + torch.arange(8)
    idx = idx.clamp_(max=K - 1).to(pos.device)
    if n_inst > 0:
        n, t = idx // n_inst, idx % n_inst
    else:
        n, t = work_n[idx].long(), work_t[idx].long()
    q = pos[n * per_instance, tri[t, 0].long().clamp(0, pos.shape[1] - 1)].double()  # [16, 8, 4]
    X = (q[..., 0] / q[..., 3] + 1.0) * (0.5 * W / TILE)
    Y = (q[..., 1] / q[..., 3] + 1.0) * (0.5 * H / TILE)
    ok = (q[..., 3] > 0) & (X.abs() < 1e6) & (Y.abs() < 1e6)  # NaN fails too
    X, Y = torch.where(ok, X, 0.0).floor().long(), torch.where(ok, Y, 0.0).floor().long()
    tile = torch.where(ok, (n * (H // TILE + 2) + Y) * (W // TILE + 2) + X, -2)
    return int((tile[:, 1:] != tile[:, :-1]).sum()) * 2 > 7 * 16


def _visibility(pos: torch.Tensor, tri: torch.Tensor, work, per_instance: int, N: int,
                H: int, W: int, checks: torch.Tensor, verify) -> torch.Tensor:
    """Nearest-triangle z-buffer [N, H, W] int64 of packed keys (not differentiable).

    ``checks`` (``deferred_checks`` of the inputs) is read together with the job counts, the
    op's one host synchronisation; ``verify`` raises from it before anything uses the result.
    (On the CPU ``_order_is_scattered`` reads a few positions first: no queue to drain there.)
    """
    k = _kernels(ti_real(pos.dtype))
    dev = pos.device
    zbuf = torch.full((N, H, W), _EMPTY, dtype=torch.int64, device=dev)
    work_n, work_t, K, n_inst = work
    if K == 0:
        verify(checks.tolist())
        return zbuf
    tiles = torch.empty((K, 8), dtype=torch.int32, device=dev)  # tile x0, y0, count x; pixel bbox; n
    poly = torch.empty((K, 4, 3), dtype=pos.dtype, device=dev)  # clipped polygon: pixel X, Y, z/w
    keys = torch.empty((K, 4), dtype=torch.int64, device=dev)  # its vertex keys (fill-rule order)
    counts = torch.empty(K, dtype=torch.int64, device=dev)  # tile jobs per large triangle
    # binned small triangles (only the first totals[1] entries are written: no page is touched
    # when the mesh order is local and nothing is binned): work item, bin (16×16 tile), place in it
    binned = torch.empty(K, dtype=torch.int32, device=dev)
    bin_of = torch.empty(K, dtype=torch.int32, device=dev)
    slot = torch.empty(K, dtype=torch.int32, device=dev)
    nbins = 2 * N * ((H + TILE - 1) // TILE) * ((W + TILE - 1) // TILE)  # front faces, then back faces
    bin_count = torch.zeros(nbins, dtype=torch.int32, device=dev)
    totals = torch.zeros(3, dtype=torch.int64, device=dev)  # tile jobs, binned triangles, binned back faces
    # CPU: bin the small triangles when the mesh order jumps around the screen
    bin_small = int(row_piece() > 1 and K >= 256 and _order_is_scattered(pos, tri, work, per_instance, H, W))
    k.setup(pos, tri, work_n, work_t, K, n_inst, per_instance, W, H, tiles, counts, poly, keys, zbuf, bin_small, binned,
            bin_of, slot, bin_count, totals)
    vals = torch.cat([totals, checks]).tolist()  # the one host sync: job counts and input checks
    verify(vals[3:])
    total, n_small, n_back = vals[0], vals[1], vals[2]
    if n_small > 0:  # small triangles, in tile order
        order = torch.empty(n_small, dtype=torch.int32, device=dev)  # work items
        order_tri = torch.empty((n_small, 3), dtype=torch.int32, device=dev)  # and their vertex indices
        bin_start = (torch.cumsum(bin_count, 0, dtype=torch.int32) - bin_count).contiguous()
        k.sort_bins(binned, bin_of, slot, n_small, bin_start, tri, work_n, work_t, n_inst, order, order_tri)
        n_front = n_small - n_back  # front faces first, then (a second launch) the back faces
        for a, b in ((0, n_front), (n_front, n_small)):
            if b > a:
                k.cover_binned(pos, work_n, work_t, n_inst, per_instance, W, H, order, order_tri, a, b, zbuf)
    if total > 0:  # large triangles: one job per (triangle, 16×16 tile)
        if total >= 2**31:
            raise ValueError(f"resolution: {H}x{W} with {K} triangles needs {total} tile jobs (limit 2^31)")
        offsets = torch.cumsum(counts, 0)
        job_k = torch.empty(total, dtype=torch.int32, device=dev)
        job_local = torch.empty(total, dtype=torch.int32, device=dev)
        k.expand(counts, offsets, job_k, job_local)
        k.coverage(work_n, work_t, n_inst, tiles, job_k, job_local, poly, keys, zbuf)
    return zbuf


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pos4, tri, work, per_instance, N, H, W, grad_db, checks, verify):
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: skip their backward work
        pos4 = pos4.detach().contiguous()
        zbuf = _visibility(pos4, tri, work, per_instance, N, H, W, checks, verify)
        rast = torch.empty((N, H, W, 4), dtype=pos4.dtype, device=pos4.device)
        db = torch.empty_like(rast)
        _kernels(ti_real(pos4.dtype)).resolve(pos4, tri, zbuf, per_instance, rast.view(-1, 4), db.view(-1, 4))
        ctx.save_for_backward(pos4, tri, zbuf)
        ctx.per_instance, ctx.grad_db = per_instance, grad_db
        ctx.mark_non_differentiable(db) if not grad_db else None
        return rast, db

    @staticmethod
    def backward(ctx, g_rast, g_db):
        pos4, tri, zbuf = ctx.saved_tensors
        k = _kernels(ti_real(pos4.dtype))
        if not ctx.grad_db:
            g_db = None
        if g_rast is None and g_db is None:
            return (None,) * 10
        if g_db is None:
            # the common case: only (u, v) carry gradient -> hand-written adjoint, no AD tape
            g_pos = torch.zeros_like(pos4)
            k.resolve_bwd(pos4, tri, zbuf, ctx.per_instance, g_rast.contiguous().view(-1, 4), g_pos)
        else:
            # "detach + fresh leaf" pattern: Taichi writes adjoints into .grad of the tensors it is given.
            p = pos4.clone().requires_grad_(True)
            p.grad = torch.zeros_like(p)
            M = zbuf.numel()
            r = torch.zeros((M, 4), dtype=pos4.dtype, device=pos4.device).requires_grad_(True)
            r.grad = torch.zeros_like(r) if g_rast is None else g_rast.reshape(M, 4).clone()
            r.grad[:, 2:] = 0  # z/w and the triangle id carry no gradient (visibility comes from antialias)
            d = torch.zeros_like(r).requires_grad_(True)
            d.grad = g_db.reshape(M, 4).clone()
            k.resolve_flat.grad(p, tri, zbuf, ctx.per_instance, r, d)
            g_pos = p.grad
        g_pos[..., 2] = 0  # z never receives gradient (nvdiffrast convention)
        return (g_pos,) + (None,) * 9


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution: Tuple[int, int],
              ranges: Optional[torch.Tensor] = None, grad_db: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rasterize triangles: coverage, perspective-correct barycentrics, depth and triangle ids.

    Args:
        pos: clip-space vertex positions (x, y, z, w), float32 or float64. ``[N, V, 4]`` (instanced
            mode: one image per row) or ``[V, 4]`` together with ``ranges``.
        tri: ``[T, 3]`` int32 (int64 accepted) vertex indices per triangle.
        resolution: ``(H, W)`` output size in pixels.
        ranges: ``[N, 2]`` int32 (start, count) into ``tri`` per image (range mode), or ``None``.
        grad_db: whether gradients flowing into ``rast_db`` are propagated to ``pos``.

    Returns:
        rast: ``[N, H, W, 4]`` (u, v, z/w, triangle_id + 1), same dtype as ``pos``; background zeros;
            ``u`` is the barycentric weight of the triangle's vertex 0, ``v`` of vertex 1.
            Row 0 is the bottom row of the image.
        rast_db: ``[N, H, W, 4]`` (du/dX, du/dY, dv/dX, dv/dY) in pixels.

    Gradients flow from ``u, v`` (and ``rast_db`` when ``grad_db``) to x, y, w of ``pos``; depth and
    ids are piecewise constant in ``pos`` (visibility gradients come from :func:`antialias`).
    """
    ensure_init()
    check_device(pos=pos, tri=tri)  # (ranges may live anywhere: it is read on the host)
    H, W = check_resolution("resolution", resolution)
    check_tensor("pos", pos, ndim=(2, 3), last=4, dtypes=FLOATS, expected="[N, V, 4] or [V, 4] (with ranges)")
    V = pos.shape[-2]
    check_tensor("tri", tri, ndim=2, last=3, dtypes=INTS, expected="[T, 3]")
    # pos finite and tri in [0, V): computed on the device now, read with the first kernel's result
    checks = deferred_checks([pos], tri)
    verify = functools.partial(verify_deferred, finite=[("pos", pos)], index=("tri", tri, V))
    T = tri.shape[0]
    dev = pos.device
    if ranges is None:
        if pos.dim() != 3:
            raise ValueError(f"pos: expected shape [N, V, 4] when ranges is None, got {list(pos.shape)}")
        N = pos.shape[0]
        # work item k = n·T + t: the kernels derive (n, t) from k, no index lists needed
        unused = torch.zeros(1, dtype=torch.int32, device=dev)
        work = (unused, unused, N * T, T)
        pos3, per_instance = pos, 1
    else:
        if pos.dim() != 2:
            raise ValueError(f"pos: expected shape [V, 4] in range mode, got {list(pos.shape)}")
        check_tensor("ranges", ranges, ndim=2, last=2, dtypes=(torch.int32, torch.int64), expected="[N, 2]")
        rg = ranges.to("cpu", torch.int64)
        if rg.numel() and (int(rg.min()) < 0 or int((rg[:, 0] + rg[:, 1]).max()) > T):
            raise ValueError(f"ranges: expected (start, count) within [0, {T}] triangles, got {rg.tolist()}")
        N = rg.shape[0]
        work_n = torch.repeat_interleave(torch.arange(N, dtype=torch.int32), rg[:, 1]).to(dev)
        work_t = torch.cat([torch.arange(s, s + c, dtype=torch.int32) for s, c in rg.tolist()]
                           or [torch.zeros(0, dtype=torch.int32)]).to(dev)
        work = (work_n.contiguous(), work_t.contiguous(), work_t.numel(), 0)  # explicit (image, triangle) lists
        pos3, per_instance = pos.unsqueeze(0), 0
    rast, db = _Rasterize.apply(pos3, as_index32(tri), work, per_instance, N, H, W, bool(grad_db), checks, verify)
    return rast, db

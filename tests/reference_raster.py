"""A slow, obvious pure-torch rasterizer: the independent reference for ``taichi_dr.rasterize``.

No clipping, no edge functions, no z-buffer tricks: for every (pixel, triangle) pair we intersect
the pixel's viewing ray with the triangle's plane in clip space and read off everything there.

The ray through pixel centre (X, Y) (NDC) is the set of clip-space points with x = X·w, y = Y·w.
With q_k = (x_k − X·w_k, y_k − Y·w_k) a point Σ b_k P_k (Σ b_k = 1) lies on it iff Σ b_k q_k = 0,
whose solution is b_k = a_k / A with a0 = q1×q2, a1 = q2×q0, a2 = q0×q1, A = Σ a_k. So:

* the pixel centre is inside the triangle iff all b_k ≥ 0,
* the hit point is p = Σ b_k P_k; it is visible iff −w_p ≤ z_p ≤ w_p (between the near and the
  far plane; this is exactly what clipping against z = −w and z = w achieves),
* its depth is z_p / w_p and (u, v) = (b_0, b_1) are already perspective-correct.

The nearest visible triangle wins. ``margins`` reports, per pixel, how far the decision was from a
tie (smallest |b_k| of the winner and depth gap to the runner-up), so tests can skip pixel centres
that lie (numerically) on an edge, where two correct rasterizers may legitimately differ.
Screen derivatives (rast_db) come from autograd with respect to the pixel position itself.
"""
from typing import Optional, Tuple

import torch

__all__ = ["reference_rasterize"]


def _one_image(pos: torch.Tensor, tri: torch.Tensor, H: int, W: int, tri_ids: torch.Tensor):
    dt = pos.dtype
    # pixel centres in pixel units (differentiable, for rast_db), then NDC
    px = (torch.arange(W, dtype=dt) + 0.5).repeat(H).requires_grad_(True)
    py = (torch.arange(H, dtype=dt) + 0.5).repeat_interleave(W).requires_grad_(True)
    X = (2 * px / W - 1)[:, None]  # [P, 1]
    Y = (2 * py / H - 1)[:, None]
    P = pos[tri[tri_ids].long()]  # [T, 3, 4]
    x, y, z, w = (P[..., c][None] for c in range(4))  # each [1, T, 3]
    qx = x - X[..., None] * w  # [P, T, 3]
    qy = y - Y[..., None] * w
    a0 = qx[..., 1] * qy[..., 2] - qy[..., 1] * qx[..., 2]
    a1 = qx[..., 2] * qy[..., 0] - qy[..., 2] * qx[..., 0]
    a2 = qx[..., 0] * qy[..., 1] - qy[..., 0] * qx[..., 1]
    A = a0 + a1 + a2
    b = torch.stack([a0, a1, a2], -1) / A[..., None]  # [P, T, 3]
    zp = (b * z).sum(-1)
    wp = (b * w).sum(-1)
    inside = (b >= 0).all(-1) & (A != 0)
    visible = inside & (zp >= -wp) & (zp <= wp) & (wp > 0)
    depth = torch.where(visible, zp / torch.where(visible, wp, torch.ones_like(wp)), torch.full_like(zp, float("inf")))
    d_sorted, order = depth.detach().sort(dim=1)
    best = order[:, 0]
    hit = torch.isfinite(d_sorted[:, 0])
    rows = torch.arange(best.shape[0])
    u, v = b[rows, best, 0], b[rows, best, 1]
    zw = depth[rows, best]
    # du/dX etc. with respect to the pixel position (in pixels), keeping the graph to pos
    ones = torch.ones_like(u)
    du = torch.autograd.grad(u, (px, py), ones, create_graph=True, retain_graph=True)
    dv = torch.autograd.grad(v, (px, py), ones, create_graph=True, retain_graph=True)
    zero = torch.zeros_like(u)
    ids = (tri_ids[best] + 1).to(dt)
    rast = torch.stack([torch.where(hit, u, zero), torch.where(hit, v, zero),
                        torch.where(hit, zw, zero), torch.where(hit, ids, zero)], -1)
    db = torch.stack([torch.where(hit, g, zero) for g in (du[0], du[1], dv[0], dv[1])], -1)
    # how safe each pixel's decision is: distance to an edge (barycentric) and to a depth tie
    edge_margin = torch.where(hit, b.detach()[rows, best].abs().min(-1).values, torch.full_like(u, float("inf")))
    if depth.shape[1] > 1:
        gap = d_sorted[:, 1] - d_sorted[:, 0]
        gap = torch.where(torch.isnan(gap), torch.full_like(gap, float("inf")), gap)
    else:
        gap = torch.full_like(u, float("inf"))
    # any triangle whose centre test is near a tie (could flip coverage) also makes the pixel unsafe
    near_edge = ((b.detach().abs().min(-1).values < 1e-9) & (b.detach() >= -1e-9).all(-1)).any(1)
    near_depth = ((zp.detach() + wp.detach()).abs() < 1e-9 * wp.detach().abs().clamp_min(1)).any(1)
    safe = (edge_margin > 1e-9) & (gap > 1e-6) & ~near_edge & ~near_depth
    return rast.reshape(H, W, 4), db.reshape(H, W, 4), safe.reshape(H, W)


def reference_rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution: Tuple[int, int],
                        ranges: Optional[torch.Tensor] = None):
    """Same contract as ``taichi_dr.rasterize`` (no clipping code at all), plus a ``safe`` mask.

    Returns:
        rast [N, H, W, 4], rast_db [N, H, W, 4] (differentiable w.r.t. ``pos`` through torch
        autograd) and safe [N, H, W] bool: pixels whose coverage / depth decision is not a near-tie.
    """
    H, W = resolution
    tri = tri.long()
    outs = []
    if ranges is None:
        for n in range(pos.shape[0]):
            outs.append(_one_image(pos[n], tri, H, W, torch.arange(tri.shape[0])))
    else:
        for s, c in ranges.tolist():
            outs.append(_one_image(pos, tri, H, W, torch.arange(s, s + c)))
    return tuple(torch.stack(o) for o in zip(*outs))

"""Photo-consistency carving of the visual hull: concavities that no silhouette shows.

The visual hull (:func:`~taichi_dr.recon.model.visual_hull`) is the largest shape with the right
silhouettes, so it fills every concavity that no view sees in profile (the dish of a bowl, the
inside of a cup). The DMTet pass cannot dig them out: its SDF moves a fraction of a cell per step
(docs/08) and, with a per-pixel material field, the image loss is as well served by painting the
concavity's shading onto the filled surface as by moving it.

Classic space carving (Kutulakos & Seitz 2000) uses the colours instead. On a diffuse (Lambertian)
surface a point has the same colour in every view that sees it. A grid point on the surface of the
current shape is projected into every training view that sees it (depth test against the current
shape's own raster, which can only over-occlude because the shape contains the object, and the
point's outward normal facing the camera). If two views disagree about its colour it is not on the
object: it is removed, and the sweep is repeated on the new surface until nothing changes.

Robust to texture and to the grid: each view contributes the *range* of colours within the
point's projected footprint (one grid cell + 1 px around its projection; any background pixel in
the window makes the range unbounded), and a point is removed only when the ranges of two views
miss each other in some channel by more than ``tol``. A point of the true surface lies within one
cell of its projection in every view, so its ranges always share its true colour (up to noise):
the carving stops at the object. The footprint is the safety margin: once a point of the object is
carved the shape no longer contains it, visibility goes wrong and the error cascades (half a cell
did that on two of five test scenes, docs/08). It assumes diffuse surfaces: a highlight moves with
the view, so on a glossy object the ranges miss each other on the object itself and the sweeps
would eat it layer by layer. The silhouettes catch that: the object lies inside the shape, so the
shape must keep covering the masks. Once it uncovers more of them than the hull did (beyond
``max_lost``, quantisation), the colours are not trusted and the whole carving is undone (Mitsuba
glossy bowl: 9,220 points carved in 27 sweeps and Chamfer 1.1e-2 before, 4.8e-3 without;
docs/08). A highlight inside the object fools the ranges too where the texture is sharp: it fills
a window in the one or two views near a light's mirror direction and disagrees with the rest, and
nothing uncovers a mask pixel. A highlight only adds light, in few views; a filled concavity shows
wrong colours in many. So each point's test leaves out its brightest fifth of views
(``bright_share``; glossy textured Bob: 85 points carved, 53 inside the object → 24 and 11).
The carving only sets the starting shape, which the DMTet and refinement passes then fit to the
images.
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from taichi_dr.camera import nearest_pixel, transform_pos
from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.render.interpolate import interpolate
from taichi_dr.render.rasterize import rasterize

__all__ = ["photo_carve", "colour_ranges"]

_BIG = 1e6  # an unbounded colour range (a background pixel in the footprint)


@torch.no_grad()
def colour_ranges(images: torch.Tensor, radius: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel min and max colour over the ``(2·radius + 1)²`` window: ``(lo, hi)`` ``[N, H, W, 3]``.

    Args:
        images: ``[N, H, W, 4]`` linear RGB with straight alpha; pixels with alpha < 0.5 make the
            range of every window that contains them unbounded.
        radius: window half size in pixels (≥ 0).
    """
    if images.dim() != 4 or images.shape[-1] != 4:
        raise ValueError(f"images: expected [N, H, W, 4] RGBA, got {list(images.shape)}")
    rgb, bg = images[..., :3].float(), images[..., 3:].float() < 0.5
    hi = torch.where(bg, torch.full_like(rgb, _BIG), rgb).permute(0, 3, 1, 2)
    lo = torch.where(bg, torch.full_like(rgb, -_BIG), rgb).permute(0, 3, 1, 2)
    k = 2 * radius + 1
    hi = F.max_pool2d(hi, k, stride=1, padding=radius)
    lo = -F.max_pool2d(-lo, k, stride=1, padding=radius)
    return lo.permute(0, 2, 3, 1).contiguous(), hi.permute(0, 2, 3, 1).contiguous()


def _lattice_sdf(inside: torch.Tensor, resolution: int) -> torch.Tensor:
    from taichi_dr.recon.model import hull_sdf  # model imports this module

    return hull_sdf(inside.float(), resolution)


@torch.no_grad()
def photo_carve(inside: torch.Tensor, grid: TetGrid, images: torch.Tensor, mvp: torch.Tensor,
                campos: torch.Tensor, tol: float = 0.01, min_cos: float = 0.2, footprint: float = 1.0,
                max_sweeps: int = 32, chunk: int = 4, max_lost: float = 1e-3, bright_share: float = 0.2
                ) -> Tuple[torch.Tensor, Dict[str, int]]:
    """Remove grid points of ``inside`` that the training views see in inconsistent colours.

    Args:
        inside: ``[V]`` bool occupancy of the grid's lattice points (e.g. the visual hull).
        grid: the :class:`TetGrid` (``V = (resolution + 1)³`` lattice points).
        images: ``[N, H, W, 4]`` linear RGB, straight alpha (training views, rows bottom-up).
        mvp: ``[N, 4, 4]``; campos: ``[N, 3]`` camera centres.
        tol: colour ranges (linear RGB) of two views must miss each other by more than this.
        min_cos: a view counts only where the point's outward normal faces it (cos ≥ this).
        footprint: window half size in grid cells (projected at the object's centre).
        max_sweeps: at most this many layers are carved.
        max_lost: when the carved shape leaves this share of the mask pixels (all views)
            uncovered beyond what the uncarved shape did, a sweep carved into the object: every
            sweep is undone and ``inside`` returned (measured: the Mitsuba bowl's carving uncovers
            4e-4 (quantisation at the rim), a glossy bowl's 5e-3 in its fifth sweep; its first four
            had already dented it: Chamfer 5.5e-3 keeping them, 4.8e-3 without carving).

    Returns:
        ``(inside' [V] bool, report)``: ``carved_points``, ``carve_sweeps``, the window half
        size ``carve_window_px`` and ``carve_undone`` (1 when the carving was undone).
    """
    n = grid.resolution + 1
    if inside.shape != (n ** 3,) or inside.dtype != torch.bool:
        raise ValueError(f"inside: expected a bool tensor of shape [{n ** 3}], got {inside.dtype} {list(inside.shape)}")
    N, H, W = images.shape[:3]
    pts_all = grid.verts.float()
    cell = grid.scale / grid.resolution
    # the footprint: one grid cell projected at the object's centre
    center = pts_all[inside].mean(0) if bool(inside.any()) else pts_all.mean(0)
    c0 = transform_pos(mvp[:1].float(), center.view(1, 3))[0, 0]
    c1 = transform_pos(mvp[:1].float(), (center + cell * _right(mvp[0])).view(1, 3))[0, 0]
    px = float(((c1[:2] / c1[3] - c0[:2] / c0[3]).cpu() * torch.tensor([W / 2, H / 2])).norm())
    # + 1 px: half a pixel of rounding to the nearest pixel, half a pixel of the renderer's pixel filter
    radius = max(1, int(math.ceil(footprint * px + 1.0)))
    lo_img, hi_img = colour_ranges(images.to(pts_all.device), radius)
    mvp, campos = mvp.to(pts_all.device), campos.to(pts_all.device)
    cur = inside.clone()
    carved_total, sweeps = 0, 0
    base_lost, undone = None, False
    mask = (images[..., 3] > 0.5).to(pts_all.device)  # [N, H, W]: the object covers these pixels
    mask_px = int(mask.sum())
    for sweeps in range(1, max_sweeps + 1):
        sdf = _lattice_sdf(cur, grid.resolution)
        verts, faces = marching_tets(pts_all, sdf, grid)
        if faces.shape[0] == 0:
            break
        outside = (~cur).float().view(1, 1, n, n, n)
        near_out = F.max_pool3d(outside, 3, stride=1, padding=1).view(-1) > 0
        cand = torch.nonzero(cur & near_out)[:, 0]
        if cand.numel() == 0:
            break
        p = pts_all[cand]
        # outward normal: gradient of the (smooth) lattice SDF by central differences
        s = sdf.view(n, n, n)
        g = torch.stack(torch.gradient(s), -1).view(-1, 3)[cand]
        nrm = F.normalize(g, dim=1)
        dev = p.device  # every tensor of the sweep lives with the grid (the Taichi arch's device)
        # per point and view: the window's colour range, and whether the view sees the point
        lo_pv = torch.zeros((cand.numel(), N, 3), device=dev)
        hi_pv = torch.zeros((cand.numel(), N, 3), device=dev)
        seen = torch.zeros((cand.numel(), N), dtype=torch.bool, device=dev)
        lost = 0  # mask pixels the current shape no longer covers
        for s0 in range(0, N, chunk):
            m = mvp[s0:s0 + chunk].float()
            clip = transform_pos(m, verts.float())
            rast, _ = rasterize(clip, faces, (H, W), grad_db=False)
            pos, _ = interpolate(verts.float(), rast, faces)  # [n, H, W, 3] world position per pixel
            lost += int((mask[s0:s0 + m.shape[0]] & (rast[..., 3] <= 0)).sum())
            for j in range(m.shape[0]):
                v = s0 + j
                iyc, ixc, ok = nearest_pixel(m[j], p, (H, W))
                covered = rast[j, iyc, ixc, 3] > 0
                to_cam = campos[v].float() - p
                d_pt = to_cam.norm(dim=1)
                d_map = (campos[v].float() - pos[j, iyc, ixc]).norm(dim=1)
                ok &= covered & (d_pt <= d_map + 1.5 * cell)
                ok &= (nrm * to_cam).sum(1) >= min_cos * d_pt
                lo_pv[:, v] = lo_img[v, iyc, ixc]
                hi_pv[:, v] = hi_img[v, iyc, ixc]
                seen[:, v] = ok
        views, lo_max, hi_min = _robust_agreement(lo_pv, hi_pv, seen, bright_share)
        # the shape must still cover the masks: the object lies inside it. Once it uncovers more than
        # max_lost of the mask pixels the hull covered, a sweep carved the object: the colours are
        # not the same from every view (highlights of a glossy surface), so no sweep is trusted
        if base_lost is None:
            base_lost = lost
        elif lost > base_lost + max_lost * mask_px:
            cur, carved_total, undone = inside.clone(), 0, True
            break
        gap = (lo_max - hi_min).max(1)[0]
        carve = (views >= 2) & (gap > tol)
        k = int(carve.sum())
        if k == 0:
            break
        cur[cand[carve]] = False
        carved_total += k
    return cur, {"carved_points": carved_total, "carve_sweeps": sweeps, "carve_window_px": radius,
                 "carve_undone": int(undone)}


def _robust_agreement(lo: torch.Tensor, hi: torch.Tensor, seen: torch.Tensor, bright_share: float
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per point, the views that count and the bounds of their common colour.

    Args:
        lo, hi: ``[P, N, 3]`` colour range of each point's window in each view.
        seen: ``[P, N]`` bool, the views that see the point.
        bright_share: of the ``n`` views seeing a point, its ``floor(bright_share · n)`` brightest
            (by the mean of the window's lower bound: what is surely there) do not count.

    Returns:
        ``(views [P] int64, lo_max [P, 3], hi_min [P, 3])``: the counted views, the largest lower
        and the smallest upper bound over them (the ranges miss each other where lo_max > hi_min).
    """
    n = seen.sum(1)
    drop = torch.floor(n.double() * bright_share).long()
    key = torch.where(seen, lo.mean(2), torch.full_like(lo[..., 0], -math.inf))
    rank = torch.argsort(torch.argsort(key, dim=1, descending=True), dim=1)  # 0 = brightest
    keep = seen & (rank >= drop.unsqueeze(1))
    lo_max = torch.where(keep.unsqueeze(2), lo, torch.full_like(lo, -_BIG)).amax(1)
    hi_min = torch.where(keep.unsqueeze(2), hi, torch.full_like(hi, _BIG)).amin(1)
    return keep.sum(1), lo_max, hi_min


def _right(mvp: torch.Tensor) -> torch.Tensor:
    """A unit world direction that moves along the image x axis of camera ``mvp`` [4, 4]."""
    r = mvp[0, :3].float()
    return r / r.norm().clamp(min=1e-12)

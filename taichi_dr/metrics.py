"""Quality metrics: PSNR, SSIM, mask IoU, Chamfer distance, normal consistency, error on unseen surface."""
from typing import Callable, Dict, Optional, Tuple

import torch

from taichi_dr._checks import check_index, check_tensor, FLOATS, shape_str

__all__ = ["psnr", "ssim", "mask_iou", "sample_surface", "chamfer_distance", "normal_consistency",
           "unseen_error"]


def psnr(pred: torch.Tensor, target: torch.Tensor, max_val: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, max_val] (any equal shapes)."""
    if pred.shape != target.shape:
        raise ValueError(f"target: expected shape {shape_str(pred.shape)} (same as pred), got {shape_str(target.shape)}")
    mse = float(torch.mean((pred.double() - target.double()) ** 2))
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(max_val ** 2 / mse)).item()


def ssim(pred: torch.Tensor, target: torch.Tensor, max_val: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) of ``[H, W, C]`` images in [0, max_val].

    The standard form: per channel, local means, variances and covariance under an 11×11 Gaussian
    window (σ = 1.5, "valid" positions only), ``((2μxμy + C1)(2σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2))``
    with C1 = (0.01·max)², C2 = (0.03·max)², averaged over positions and channels (1 = identical).
    """
    if pred.shape != target.shape:
        raise ValueError(f"target: expected shape {shape_str(pred.shape)} (same as pred), got {shape_str(target.shape)}")
    if pred.dim() != 3 or min(pred.shape[0], pred.shape[1]) < window:
        raise ValueError(f"pred: expected [H, W, C] with H, W >= {window}, got {shape_str(pred.shape)}")
    x = pred.detach().double().permute(2, 0, 1)  # [C, H, W]
    y = target.detach().double().permute(2, 0, 1)
    k = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).tolist()

    # the five blurred maps of every channel, blurred together by the separable window as sums of shifted
    # slices ("valid" positions only): 2.5x less CPU than conv2d (which has no fast single-channel f64
    # path) and what keeps a 200-view 800² evaluation at minutes
    C = x.shape[0]
    b = torch.cat([x, y, x * x, y * y, x * y])
    Hv, Wv = b.shape[1] - window + 1, b.shape[2] - window + 1
    rows = b[:, 0:Hv] * k[0]
    for i in range(1, window):
        rows.add_(b[:, i:i + Hv], alpha=k[i])
    b = rows[:, :, 0:Wv] * k[0]
    for i in range(1, window):
        b.add_(rows[:, :, i:i + Wv], alpha=k[i])
    mx, my, bxx, byy, bxy = b.split(C)
    vx, vy, cxy = bxx - mx * mx, byy - my * my, bxy - mx * my
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def mask_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of two coverage masks thresholded at ``threshold``."""
    if pred.shape != target.shape:
        raise ValueError(f"target: expected shape {shape_str(pred.shape)} (same as pred), got {shape_str(target.shape)}")
    a, b = pred > threshold, target > threshold
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _face_geometry(verts, faces):
    v = verts.double()[faces.long()]
    n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    return v, n


def sample_surface(verts: torch.Tensor, faces: torch.Tensor, num_samples: int,
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Area-weighted uniform samples on a triangle mesh: points ``[S, 3]`` and unit normals ``[S, 3]``."""
    check_tensor("verts", verts, ndim=2, last=3, dtypes=FLOATS, expected="[V, 3]")
    check_index("faces", faces, verts.shape[0], expected="[F, 3]")
    if faces.shape[0] == 0:
        raise ValueError("faces: expected a non-empty mesh")
    v, n = _face_geometry(verts.detach().cpu(), faces.cpu())
    area = n.norm(dim=1)
    if float(area.sum()) <= 0:
        raise ValueError("faces: all triangles are degenerate (zero area)")
    idx = torch.multinomial(area, num_samples, replacement=True, generator=generator)
    r1 = torch.rand(num_samples, 1, dtype=torch.float64, generator=generator).sqrt()
    r2 = torch.rand(num_samples, 1, dtype=torch.float64, generator=generator)
    tri = v[idx]
    pts = (1 - r1) * tri[:, 0] + r1 * (1 - r2) * tri[:, 1] + r1 * r2 * tri[:, 2]
    return pts, n[idx] / area[idx].clamp(min=1e-30).unsqueeze(1)


def _nearest(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each point of ``a``, the squared distance to and index of its nearest point in ``b``
    (scipy's k-d tree: exact, O(n log n), milliseconds for 10⁵ points)."""
    from scipy.spatial import cKDTree

    d, i = cKDTree(b.double().numpy()).query(a.double().numpy(), k=1)
    return torch.from_numpy(d) ** 2, torch.from_numpy(i).long()


def chamfer_distance(verts_a: torch.Tensor, faces_a: torch.Tensor, verts_b: torch.Tensor, faces_b: torch.Tensor,
                     num_samples: int = 100_000, seed: int = 0) -> float:
    """Chamfer-L2: mean over both directions of the squared distance from area-weighted samples of
    one surface to the nearest sample of the other, ``½(mean_a d² + mean_b d²)``."""
    _, da, _, db, _ = _chamfer_samples(verts_a, faces_a, verts_b, faces_b, num_samples, seed)
    return _symmetric_mean(da, db)


def _symmetric_mean(da: torch.Tensor, db: torch.Tensor) -> float:
    """Chamfer-L2 from the two directions' squared distances ``[S]``: ``½(mean da + mean db)``."""
    return 0.5 * (float(da.mean()) + float(db.mean()))


def _two_way(pa: torch.Tensor, pb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Squared distances ``[S]`` from each sample of ``pa`` to its nearest in ``pb``, and back."""
    return _nearest(pa, pb)[0], _nearest(pb, pa)[0]


def _chamfer_samples(verts_a, faces_a, verts_b, faces_b, num_samples: int, seed: int):
    """:func:`chamfer_distance`'s samples and distances: ``(pa, da, pb, db, generator)`` with
    ``pa``/``pb`` ``[S, 3]`` float64 samples of each surface and ``da``/``db`` ``[S]`` the squared
    distance of each to the other surface's nearest sample (the generator continues the draws)."""
    g = torch.Generator().manual_seed(seed)
    pa, _ = sample_surface(verts_a, faces_a, num_samples, g)
    pb, _ = sample_surface(verts_b, faces_b, num_samples, g)
    da, db = _two_way(pa, pb)
    return pa, da, pb, db, g


def unseen_error(verts: torch.Tensor, faces: torch.Tensor, gt_verts: torch.Tensor, gt_faces: torch.Tensor,
                 gt_views: Callable[[torch.Tensor], torch.Tensor], num_samples: int = 100_000,
                 seed: int = 0) -> Dict[str, float]:
    """How much of a reconstruction's error lies on ground truth that few cameras saw.

    A multi-view reconstruction can only guess surface that no training view shows (the walls of a
    narrow hole, the inside of a deep cup), and surface one or two views see at a slant is barely
    constrained: the silhouettes and the regulariser decide it there. This splits the ground
    truth → reconstruction half of ``chamfer_distance(verts, faces, gt_verts, gt_faces,
    num_samples, seed)`` (the reconstruction's own metric: the same samples and distances) by how
    many views see each ground-truth sample, and also gives the Chamfer of the ground truth against
    a second sampling of itself: the floor of the estimator at this sample count (the nearest
    *sample* lies farther than the nearest *surface* point, by about the sample spacing).

    Args:
        verts, faces: the reconstruction ``[V, 3]`` float, ``[F, 3]`` int.
        gt_verts, gt_faces: the ground truth ``[Vg, 3]`` float, ``[Fg, 3]`` int.
        gt_views: a function of ground-truth surface points ``[S, 3]`` float64 returning ``[S]``
            int, how many training views see each, e.g.
            ``lambda p: points_views(p, gt_verts, gt_faces, mvp, (2 * H, 2 * W))``
            (:func:`~taichi_dr.recon.cleanup.points_views`).
        num_samples: samples per surface; seed: the samples' seed.

    Returns:
        ``{"unseen_area", "unseen_error_share", "few_views_area", "few_views_error_share",
        "chamfer_floor"}``: the fraction of the ground truth's samples (so of its area) no view
        sees, and the fraction of the ground truth → reconstruction mean squared distance that lies
        on them; the same for samples one or two views see; the ground truth's Chamfer-L2 against
        itself.
    """
    if not callable(gt_views):
        raise TypeError(f"gt_views: expected a function of points [S, 3] -> [S] int, got {type(gt_views).__name__}")
    _, _, pg, d, g = _chamfer_samples(verts, faces, gt_verts, gt_faces, num_samples, seed)
    views = gt_views(pg)
    check_tensor("gt_views(points)", views, ndim=1, dtypes=(torch.int32, torch.int64), expected=f"[{num_samples}] int")
    if views.shape[0] != num_samples:
        raise ValueError(f"gt_views(points): expected [{num_samples}] (one per point), got {shape_str(views.shape)}")
    views = views.cpu()
    total = float(d.sum())
    pg2, _ = sample_surface(gt_verts, gt_faces, num_samples, g)
    floor = _symmetric_mean(*_two_way(pg, pg2))
    out = {}
    for name, sel in (("unseen", views == 0), ("few_views", (views >= 1) & (views <= 2))):
        out[f"{name}_area"] = float(sel.double().mean())
        out[f"{name}_error_share"] = float(d[sel].sum()) / total if total > 0 else 0.0
    return {**out, "chamfer_floor": floor}


def normal_consistency(verts_a: torch.Tensor, faces_a: torch.Tensor, verts_b: torch.Tensor, faces_b: torch.Tensor,
                       num_samples: int = 50_000, seed: int = 0) -> float:
    """Mean |cos| between the normals of nearest surface samples, averaged over both directions (1 = perfect)."""
    g = torch.Generator().manual_seed(seed)
    pa, na = sample_surface(verts_a, faces_a, num_samples, g)
    pb, nb = sample_surface(verts_b, faces_b, num_samples, g)
    _, ia = _nearest(pa, pb)
    _, ib = _nearest(pb, pa)
    return 0.5 * (float((na * nb[ia]).sum(1).abs().mean()) + float((nb * na[ib]).sum(1).abs().mean()))

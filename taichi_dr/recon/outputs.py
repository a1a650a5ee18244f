"""Files a reconstruction writes: loss curves, side-by-side renders, a turntable GIF, metrics, and
checkpoints. Every file is written to a temporary name first and renamed into place, so an
interrupted run never leaves a half-written output."""
import json
import os
from typing import Dict, List, Sequence, Union

import numpy as np
import torch

from taichi_dr.camera import bounding_sphere, frame_sphere
from taichi_dr.image import save_png, to_srgb_u8
from taichi_dr.mesh import atomic_write, atomic_write_text

__all__ = ["save_json", "save_loss_plot", "save_side_by_side", "save_turntable", "save_checkpoint",
           "load_checkpoint", "format_metrics"]


def save_json(path: str, data: Dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


_SUMMARY = (("test_psnr", "test PSNR (sRGB, dB)", "{:.2f}"), ("test_mask_iou", "test mask IoU", "{:.4f}"),
            ("chamfer_l2", "Chamfer L2 to ground truth", "{:.3g}"), ("triangles", "triangles", "{:d}"),
            ("vertices", "vertices", "{:d}"), ("iterations", "iterations", "{:d}"), ("seconds", "seconds", "{:.1f}"))


def format_metrics(metrics: Dict) -> str:
    """The headline numbers of a ``metrics.json`` as a two-column text table (absent ones left out)."""
    rows = [(label, fmt.format(metrics[key])) for key, label, fmt in _SUMMARY if key in metrics]
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label:<{width}}  {value:>10}" for label, value in rows)


def save_loss_plot(path: str, history: Dict[str, List[float]]) -> None:
    """One curve per loss term (log scale), x = iteration; the refinement pass is shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    its = history.get("iter", [])
    for key in ("total", "image", "mask", "sdf_reg", "laplacian"):
        vals = history.get(key, [])
        if vals and any(v > 0 for v in vals):
            # a term that is off in one pass (0) is left out of the log plot there, not drawn at 0
            ax.plot(its[:len(vals)], [v if v > 0 else float("nan") for v in vals], label=key, lw=1)
    if history.get("refine_start"):
        ax.axvspan(history["refine_start"][0], max(its) if its else 0, color="0.9", label="mesh refinement")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("taichi_dr reconstruction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def save_side_by_side(path: str, target: torch.Tensor, ours: torch.Tensor, encoded: bool = False) -> None:
    """``[H, W, 3]`` linear target | ours as one sRGB PNG (``encoded``: both are sRGB-encoded already)."""
    save_png(path, np.concatenate([to_srgb_u8(target, encoded), to_srgb_u8(ours, encoded)], 1), compress_level=1)


def save_turntable(path: str, verts: torch.Tensor, faces: torch.Tensor, colors, light, res: int = 192,
                   frames: int = 36, elevation: float = 20.0, up: Union[str, Sequence[float]] = "y") -> None:
    """Render the mesh from ``frames`` azimuths on white and write an animated GIF.

    Every frame shows the mesh's bounding sphere (:func:`~taichi_dr.camera.frame_sphere`), so the
    object is never clipped, whatever its shape. ``colors``: anything
    :func:`~taichi_dr.render.pipeline.render_mesh_views` takes as a material. ``up``: the axis the
    orbit turns about (``"y"``, ``"z"`` or a 3-vector; a reconstruction passes
    :func:`~taichi_dr.camera.rig_up` of its training cameras, so that a Z-up scene turns upright).
    """
    import imageio.v2 as iio2

    from taichi_dr.render.pipeline import render_mesh_views

    v = verts.detach()
    center, radius = bounding_sphere(v)
    imgs = []
    with torch.no_grad():
        for k in range(frames):
            mv, proj, eye = frame_sphere(center, radius, 360.0 * k / frames, elevation, dtype=v.dtype, up=up)
            bg = torch.ones((1, res, res, 3), dtype=v.dtype, device=v.device)
            img = render_mesh_views(v, faces, colors, (proj @ mv)[None].to(v.device), eye[None].to(v.device),
                                    (res, res), light, bg)
            imgs.append(to_srgb_u8(img[0, ..., :3]))
    atomic_write(path, lambda tmp: iio2.mimsave(tmp, imgs, format="GIF", duration=0.08, loop=0))


def save_checkpoint(path: str, state: Dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> Dict:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None

"""Image files: our linear, bottom-up float images <-> 8-bit sRGB PNGs (top row first).

The one place that encodes images for files (the reconstruction's renders and turntable,
``taichi-dr render``, the NeRF dataset writer), so the colour encoding and the row flip cannot drift
apart between them.
"""
import numpy as np
import torch

__all__ = ["to_srgb_u8", "save_png"]


def to_srgb_u8(img_linear: torch.Tensor, encoded: bool = False) -> np.ndarray:
    """Linear ``[H, W, 3]`` (or ``[H, W, 4]`` with alpha) float image, rows bottom-up -> uint8 array
    of the same shape, sRGB-encoded colour (alpha stays linear), top row first (as image files are).

    Values are clamped to [0, 1] and rounded to nearest. ``encoded=True``: the colour is sRGB-encoded
    already (e.g. computed once for a metric), only quantised here.
    """
    from taichi_dr.losses import linear_to_srgb

    if not isinstance(img_linear, torch.Tensor) or img_linear.dim() != 3 or img_linear.shape[-1] not in (3, 4):
        raise ValueError(f"img_linear: expected a [H, W, 3|4] tensor, got "
                         f"{list(img_linear.shape) if isinstance(img_linear, torch.Tensor) else type(img_linear).__name__}")
    img = img_linear.detach().cpu().float()
    out = img[..., :3].clamp(0, 1) if encoded else linear_to_srgb(img[..., :3].clamp(0, 1))
    if img.shape[-1] == 4:
        out = torch.cat([out, img[..., 3:].clamp(0, 1)], -1)
    return np.ascontiguousarray((out.numpy()[::-1] * 255 + 0.5).astype(np.uint8))


def save_png(path: str, img_u8: np.ndarray, compress_level: int = 6) -> None:
    """Write a uint8 ``[H, W, C]`` array as PNG, atomically (temporary file + rename).

    ``compress_level`` (zlib, 0-9): lossless at every level; 1 encodes an 800² frame ~3x faster
    than the default 6 for files ~30 % larger (what many per-view renders want).
    """
    import imageio.v3 as iio

    from taichi_dr.mesh import atomic_write

    atomic_write(path, lambda tmp: iio.imwrite(tmp, np.ascontiguousarray(img_u8), extension=".png",
                                               compress_level=compress_level))

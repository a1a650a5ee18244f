"""NeRF-synthetic datasets: ``transforms_{train,val,test}.json`` + RGBA PNG images.

Layout (as written by Blender's NeRF exporter and read by nvdiffrec):

    root/transforms_train.json   {"camera_angle_x": fovx, "frames": [{"file_path": "./train/r_0",
                                  "transform_matrix": 4x4 camera-to-world}, ...]}
    root/train/r_0.png           RGBA, sRGB colour, alpha = foreground mask

``file_path`` usually has no extension; we try the path as given, then ``.png``. Cameras follow
the OpenGL convention (−Z forward, +Y up), which is ours, so the model-view matrix is
``inv(transform_matrix)``. Images are converted to linear colour and flipped to bottom-up rows.
Any camera radius, field of view and resolution works; ``train_res`` resamples (box filter when
shrinking).
"""
import dataclasses
import json
import math
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from taichi_dr.camera import fovy_from_fovx, perspective, rig_target
from taichi_dr.losses import srgb_to_linear
from taichi_dr.mesh import atomic_write

__all__ = ["NerfDataset", "clip_planes", "load_nerf", "write_nerf_dataset"]

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class NerfDataset:
    """One split of a NeRF-synthetic dataset, in our conventions.

    Attributes:
        images: ``[N, H, W, 4]`` float32, linear RGB + alpha, rows bottom-up.
        c2w: ``[N, 4, 4]`` float32 camera-to-world (OpenGL camera frame).
        mv: ``[N, 4, 4]`` float32 model-view = inv(c2w).
        proj: ``[4, 4]`` float32 perspective projection.
        fovx, fovy: fields of view in radians.
        files: image paths.
    """

    images: torch.Tensor
    c2w: torch.Tensor
    mv: torch.Tensor
    proj: torch.Tensor
    fovx: float
    fovy: float
    files: List[str]
    near: float = 0.1
    far: float = 1000.0

    @property
    def mvp(self) -> torch.Tensor:
        return self.proj.unsqueeze(0) @ self.mv

    @property
    def resolution(self):
        return tuple(self.images.shape[1:3])

    def __len__(self) -> int:
        return self.images.shape[0]


def _read_image(path: str) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"{path}: expected a grey, RGB or RGBA image, got array of shape {list(img.shape)}")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    img = img.astype(np.float32) / scale
    if img.shape[2] == 1:
        img = np.repeat(img, 3, 2)
    if img.shape[2] == 3:
        img = np.concatenate([img, np.ones_like(img[..., :1])], 2)
    return img


def _resolve(root: str, file_path: str) -> str:
    p = os.path.normpath(os.path.join(root, file_path))
    for cand in (p, p + ".png", p + ".PNG", p + ".jpg"):
        if os.path.isfile(cand):
            return cand
    raise ValueError(f"{p}(.png): image file not found (frame file_path {file_path!r})")


def _resize(img: torch.Tensor, res: Sequence[int]) -> torch.Tensor:
    """[H, W, C] -> [h, w, C] with area (box) filtering when shrinking, bilinear when growing."""
    h, w = res
    x = img.permute(2, 0, 1).unsqueeze(0)
    mode = "area" if (h <= img.shape[0] and w <= img.shape[1]) else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=(h, w), mode=mode, **kw)[0].permute(1, 2, 0).contiguous()


def clip_planes(c2w: torch.Tensor) -> Tuple[float, float]:
    """Near and far planes for a camera rig in any unit of length: (0.1, 1000) × a power of ten.

    NeRF-synthetic's cameras stand ~4 from the point they look at, and (0.1, 1000) holds any object
    between them. A scene in millimetres (cameras 4000 away) would lie beyond that far plane, and
    one a thousand times smaller in front of the near plane. So the planes scale with the rig: by
    ``10^round(log10(d / 4))``, ``d`` the median distance from the cameras to the point nearest all
    their optical axes (least squares; the origin when the axes are near parallel). A power of ten
    keeps every rig with ``d`` in [1.3, 12.6] exactly at (0.1, 1000).

    Args:
        c2w: ``[N, 4, 4]`` camera-to-world matrices (OpenGL: the camera looks down its −Z axis).
    """
    c2w = c2w.double()
    o = c2w[:, :3, 3]
    target = rig_target(o, -c2w[:, :3, 2])
    d = float((o - target).norm(dim=1).median())
    if not math.isfinite(d) or d <= 0:
        return 0.1, 1000.0
    scale = 10.0 ** round(math.log10(d / 4.0))
    return 0.1 * scale, 1000.0 * scale


def load_nerf(root: PathLike, split: str = "train", train_res: Optional[Union[int, Sequence[int]]] = None,
              near: Optional[float] = None, far: Optional[float] = None) -> NerfDataset:
    """Load one split of a NeRF-synthetic dataset.

    Args:
        root: dataset folder holding ``transforms_<split>.json``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        train_res: resample every image to this (H, W) (an int means square).
        near, far: clip planes of the projection; None: :func:`clip_planes` of the split's cameras
            (0.1 and 1000 for NeRF-synthetic's, scaled by a power of ten for a rig in other units).

    Raises:
        ValueError: missing/corrupt json or images, wrong matrix shapes, mixed image sizes —
            the message names the file.
    """
    root = os.fspath(root)
    js = os.path.join(root, f"transforms_{split}.json")
    if not os.path.isfile(js):
        raise ValueError(f"{js}: not found (expected a NeRF-synthetic dataset folder with transforms_{split}.json)")
    try:
        with open(js, "r", encoding="utf-8") as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{js}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or "camera_angle_x" not in meta or "frames" not in meta:
        raise ValueError(f"{js}: expected keys 'camera_angle_x' and 'frames'")
    fovx = float(meta["camera_angle_x"])
    if not 0 < fovx < math.pi:
        raise ValueError(f"{js}: camera_angle_x must be in (0, pi) radians, got {fovx}")
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{js}: 'frames' must be a non-empty list")
    images, mats, files = [], [], []
    size = None
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise ValueError(f"{js}: frame {i} needs 'file_path' and 'transform_matrix'")
        m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise ValueError(f"{js}: frame {i} transform_matrix must be a finite 4x4 matrix, got shape {list(m.shape)}")
        path = _resolve(root, fr["file_path"])
        img = _read_image(path)
        if size is None:
            size = img.shape[:2]
        elif img.shape[:2] != size and train_res is None:
            raise ValueError(f"{path}: image size {img.shape[:2]} differs from the first image's {size}; "
                             f"pass train_res to resample all images")
        t = torch.from_numpy(np.ascontiguousarray(img[::-1]))  # bottom-up rows
        if train_res is not None:
            res = (train_res, train_res) if isinstance(train_res, int) else tuple(train_res)
            t = _resize(t, res)
        images.append(t)
        mats.append(m)
        files.append(path)
    imgs = torch.stack(images)
    # sRGB -> linear colour; alpha is linear already. Premultiplied edge pixels keep their colour.
    imgs = torch.cat([srgb_to_linear(imgs[..., :3]), imgs[..., 3:]], -1).float()
    c2w64 = torch.from_numpy(np.stack(mats))
    c2w = c2w64.float()
    if near is None or far is None:
        auto = clip_planes(c2w64)
        near, far = auto[0] if near is None else near, auto[1] if far is None else far
    H, W = imgs.shape[1:3]
    fovy = fovy_from_fovx(fovx, W, H)
    mv = torch.linalg.inv(c2w.double()).float()
    return NerfDataset(imgs, c2w, mv, perspective(fovy, W / H, near, far), fovx, fovy, files, near, far)


def write_nerf_dataset(root: PathLike, split: str, images: torch.Tensor, c2w: torch.Tensor, fovx: float) -> None:
    """Write RGBA linear images ``[N, H, W, 4]`` (bottom-up rows) and poses as a NeRF-synthetic split.

    PNGs are sRGB-encoded 8-bit, written atomically, then the json (so a reader never sees a json
    pointing at missing images).
    """
    import imageio.v3 as iio

    from taichi_dr.image import to_srgb_u8

    root = os.fspath(root)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    frames = []
    for i in range(images.shape[0]):
        px = to_srgb_u8(images[i])  # sRGB colour, linear alpha, top row first
        rel = f"./{split}/r_{i}"
        atomic_write(os.path.join(root, split, f"r_{i}.png"), lambda tmp, px=px: iio.imwrite(tmp, px, extension=".png"))
        frames.append({"file_path": rel, "transform_matrix": c2w[i].double().tolist()})
    text = json.dumps({"camera_angle_x": float(fovx), "frames": frames}, indent=1)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(os.path.join(root, f"transforms_{split}.json"), write)

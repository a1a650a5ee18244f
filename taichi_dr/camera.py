"""Cameras in OpenGL conventions: model-view, projection, orbits, and NeRF/Blender poses.

* Eye space: the camera sits at the origin looking down −Z with +Y up (OpenGL, and also the
  convention of NeRF/Blender camera-to-world matrices, so a NeRF ``transform_matrix`` *is* our
  camera-to-world matrix and the model-view matrix is simply its inverse).
* Clip space: ``clip = P · MV · [x, y, z, 1]ᵀ``; NDC = clip.xyz / clip.w with y up, and our images
  are bottom-up (row 0 = bottom), so no row flip is hidden in the projection. Images read from
  PNG files (top row first) are flipped once, by the loader.
"""
import math
from typing import List, Sequence, Tuple, Union

import torch

from taichi_dr._checks import check_tensor, FLOATS, shape_str

__all__ = ["perspective", "look_at", "orbit_views", "frame_sphere", "bounding_sphere", "nerf_c2w_to_mv",
           "fovy_from_fovx", "transform_pos", "camera_position", "rig_target", "rig_up", "nearest_pixel"]

Number = Union[float, int]


def perspective(fovy: float, aspect: float = 1.0, near: float = 0.1, far: float = 100.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """OpenGL (gluPerspective) projection ``[4, 4]``: eye z ∈ [−near, −far] maps to NDC z ∈ [−1, 1].

    Args:
        fovy: vertical field of view in radians.
        aspect: width / height.
    """
    if not 0 < fovy < math.pi:
        raise ValueError(f"fovy: expected an angle in (0, pi) radians, got {fovy}")
    if not 0 < near < far:
        raise ValueError(f"near, far: expected 0 < near < far, got near={near}, far={far}")
    if not aspect > 0:
        raise ValueError(f"aspect: expected > 0, got {aspect}")
    f = 1.0 / math.tan(fovy / 2)
    return torch.tensor([[f / aspect, 0, 0, 0],
                         [0, f, 0, 0],
                         [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                         [0, 0, -1, 0]], dtype=dtype)


def look_at(eye: Sequence[Number], center: Sequence[Number] = (0, 0, 0), up: Sequence[Number] = (0, 1, 0),
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Model-view matrix ``[4, 4]`` of a camera at ``eye`` looking at ``center``."""
    eye_t = torch.as_tensor(eye, dtype=torch.float64)
    fwd = torch.as_tensor(center, dtype=torch.float64) - eye_t
    if float(fwd.norm()) == 0:
        raise ValueError("eye, center: expected distinct points")
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.as_tensor(up, dtype=torch.float64))
    if float(right.norm()) < 1e-12:
        raise ValueError("up: expected a direction not parallel to the viewing direction")
    right = right / right.norm()
    true_up = torch.linalg.cross(right, fwd)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -fwd, eye_t
    return torch.linalg.inv(c2w).to(dtype)


def camera_position(mv: torch.Tensor) -> torch.Tensor:
    """World-space camera centre(s) of model-view matrices ``[..., 4, 4] -> [..., 3]``."""
    return torch.linalg.inv(mv.double())[..., :3, 3].to(mv.dtype)


def rig_target(campos: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """The point ``[3]`` (float64) nearest all the cameras' optical axes, in the least-squares sense:
    what a rig of cameras looks at, wherever it stands in the world.

    Minimises Σ_i |(I − d_i d_iᵀ)(p − o_i)|² (``o_i`` the centres, ``d_i`` the unit viewing
    directions). Axes that are nearly parallel (a forward-facing rig, a single camera) meet nowhere:
    then the world origin is returned, what a NeRF-synthetic rig looks at.

    Args:
        campos: ``[N, 3]`` camera centres; forward: ``[N, 3]`` viewing directions (any length > 0;
            for a model-view-projection matrix: its row 3, ``mvp[:, 3, :3]``; for a camera-to-world
            matrix: ``-c2w[:, :3, 2]``).
    """
    check_tensor("campos", campos, ndim=2, last=3, dtypes=FLOATS, expected="[N, 3]")
    check_tensor("forward", forward, ndim=2, last=3, dtypes=FLOATS, expected="[N, 3]")
    if forward.shape[0] != campos.shape[0]:
        raise ValueError(f"forward: expected {campos.shape[0]} directions (one per camera), got {forward.shape[0]}")
    o, d = campos.detach().double().cpu(), forward.detach().double().cpu()
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-300)
    off_axis = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # [N, 3, 3]
    a, b = off_axis.sum(0), (off_axis @ o[:, :, None]).sum(0)[:, 0]
    ev = torch.linalg.eigvalsh(a)
    if not bool(torch.isfinite(ev).all()) or ev[0] <= 1e-3 * ev[-1]:
        return torch.zeros(3, dtype=torch.float64)
    return torch.linalg.solve(a, b)


def _up_vector(up: Union[str, Sequence[Number]], name: str = "up_axis") -> Tuple[float, float, float]:
    """``"y"`` / ``"z"`` or any non-zero 3-vector -> a unit up vector (plain floats); errors name ``name``."""
    if isinstance(up, str):
        if up not in ("y", "z"):
            raise ValueError(f"{name}: expected 'y', 'z' or a 3-vector, got {up!r}")
        return (0.0, 1.0, 0.0) if up == "y" else (0.0, 0.0, 1.0)
    u = torch.as_tensor(up, dtype=torch.float64).reshape(-1)
    n = float(u.norm()) if u.numel() == 3 else float("nan")
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"{name}: expected a finite non-zero 3-vector or 'y' / 'z', got {list(u.tolist())}")
    return tuple(float(x) / n for x in u)


def _rotate_y_to(up: Tuple[float, float, float], v: Sequence[float]) -> Tuple[float, float, float]:
    """``v`` turned by the smallest rotation that takes +Y to the unit vector ``up``.

    ``R = I + K + K² / (1 + c)`` with ``K = [e_y × up]×`` and ``c = e_y · up`` (Rodrigues' formula
    without the trigonometry), exact for the axes: +Z up maps ``(x, y, z)`` to ``(x, −z, y)``,
    Blender's Z-up orbit. Straight down (c = −1) is the half turn about X.
    """
    ux, uy, uz = up
    x, y, z = v
    if uy <= -1.0 + 1e-12:
        return x, -y, -z
    k = (uz, 0.0, -ux)  # e_y × up
    kv = (k[1] * z - k[2] * y, k[2] * x - k[0] * z, k[0] * y - k[1] * x)  # K v
    kkv = (k[1] * kv[2] - k[2] * kv[1], k[2] * kv[0] - k[0] * kv[2], k[0] * kv[1] - k[1] * kv[0])  # K² v
    s = 1.0 / (1.0 + uy)
    return x + kv[0] + kkv[0] * s, y + kv[1] + kkv[1] * s, z + kv[2] + kkv[2] * s


def _orbit_direction(azimuth_deg: float, elevation_deg: float, up_axis: Union[str, Sequence[Number]] = "y",
                     name: str = "up_axis"):
    """Unit vector from the orbit centre to the eye, and the up vector (the one orbit convention).

    With +Y up, azimuth 0 puts the eye on +Z (looking down −Z), azimuth 90 on +X; elevation > 0 is
    above. Straight above / below, "up" turns to −Z / +Z so that it never parallels the view. Any
    other up direction (``"z"``: Blender scenes, or a vector) turns that whole orbit by the smallest
    rotation taking +Y to it; for +Z, azimuth 0 puts the eye on −Y, Blender's front view.
    """
    up = _up_vector(up_axis, name)
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    d = (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))
    u = (0.0, 1.0, 0.0) if abs(math.sin(el)) < 0.999 else (0.0, 0.0, -math.copysign(1.0, el))
    return _rotate_y_to(up, d), _rotate_y_to(up, u)


def rig_up(c2w: torch.Tensor, snap_deg: float = 10.0) -> torch.Tensor:
    """The world's up direction ``[3]`` (float64, unit) as a camera rig holds it: the mean of the
    cameras' up axes.

    Photographers and Blender rigs keep the horizon level, so every camera's +Y axis leans towards
    the world's up: the mean is +Y for an OpenGL-style rig, +Z for NeRF-synthetic's Blender scenes.
    What an orbit around the reconstruction (the turntable) should turn about. A mean within
    ``snap_deg`` of a world axis is that axis exactly; cameras whose up axes cancel out (rolled at
    random; mean length < 0.3) give +Y.

    Args:
        c2w: ``[N, 4, 4]`` camera-to-world matrices (OpenGL camera frame: +Y up in the image).
    """
    check_tensor("c2w", c2w, ndim=3, dtypes=FLOATS, expected="[N, 4, 4]")
    if tuple(c2w.shape[1:]) != (4, 4) or c2w.shape[0] == 0:
        raise ValueError(f"c2w: expected shape [N, 4, 4] with N >= 1, got {shape_str(c2w.shape)}")
    m = c2w.detach().double().cpu()[:, :3, 1]
    m = (m / m.norm(dim=1, keepdim=True).clamp_min(1e-300)).mean(0)
    if not bool(torch.isfinite(m).all()) or float(m.norm()) < 0.3:
        return torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    m = m / m.norm()
    k = int(m.abs().argmax())
    if float(m[k].abs()) >= math.cos(math.radians(snap_deg)):
        axis = torch.zeros(3, dtype=torch.float64)
        axis[k] = math.copysign(1.0, float(m[k]))
        return axis
    return m


def bounding_sphere(points: torch.Tensor):
    """``(center [3] list, radius)`` of the sphere around the bounding box of ``points [P, 3]``
    (what :func:`frame_sphere` frames to show a mesh whole)."""
    check_tensor("points", points, ndim=2, last=3, dtypes=FLOATS, expected="[P, 3]")
    if points.shape[0] == 0:
        raise ValueError("points: expected at least one point, got none")
    p = points.detach().double()
    lo, hi = p.min(0)[0], p.max(0)[0]
    return ((lo + hi) / 2).tolist(), max(float((hi - lo).norm()) / 2, 1e-6)


def frame_sphere(center: Sequence[Number], radius: float, azimuth_deg: float = 30.0, elevation_deg: float = 20.0,
                 fovy: float = math.radians(35.0), margin: float = 1.05, aspect: float = 1.0,
                 dtype: torch.dtype = torch.float32, up: Union[str, Sequence[Number]] = "y"):
    """An orbit camera that shows the whole sphere (``center``, ``radius``) in a square image.

    The eye sits on the orbit direction at distance ``margin · radius / sin(fovy / 2)``, where the
    sphere's silhouette cone just fits the field of view, with near/far planes around the sphere.
    Frame an object by its bounding sphere (``center = (lo + hi) / 2``, ``radius = |hi − lo| / 2``)
    and it is never clipped, from any direction.

    Args:
        center: ``[3]`` sphere centre; radius: > 0.
        azimuth_deg, elevation_deg: orbit angles in degrees (see :func:`orbit_views`).
        up: the orbit's up direction: ``"y"``, ``"z"`` or a 3-vector (e.g. :func:`rig_up` of a dataset's
            cameras); the orbit turns about it.
        fovy: vertical field of view in radians; margin: ≥ 1, extra room around the sphere.

    Returns:
        ``(mv [4, 4], proj [4, 4], eye [3])``: model-view, projection, eye position.
    """
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"radius: expected a finite number > 0, got {radius}")
    if not margin >= 1:
        raise ValueError(f"margin: expected >= 1, got {margin}")
    fov_min = min(fovy, 2 * math.atan(math.tan(fovy / 2) * aspect))  # the narrower of the two fields
    d, up = _orbit_direction(azimuth_deg, elevation_deg, up, "up")
    c = torch.as_tensor(center, dtype=torch.float64).reshape(3)
    dist = margin * radius / math.sin(fov_min / 2)
    eye = c + dist * torch.tensor(d, dtype=torch.float64)
    mv = look_at(eye.tolist(), c.tolist(), up, dtype=dtype)
    proj = perspective(fovy, aspect, max(dist - radius, dist * 1e-3) * 0.5, (dist + radius) * 1.5, dtype=dtype)
    return mv, proj, eye.to(dtype)


def orbit_views(n: int, radius: float, elevation_deg: Union[float, Sequence[float]] = 20.0,
                azimuth_offset_deg: float = 0.0, center: Sequence[Number] = (0, 0, 0),
                up_axis: Union[str, Sequence[Number]] = "y", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Camera-to-world matrices ``[n, 4, 4]`` evenly spaced in azimuth around ``center``.

    Args:
        elevation_deg: one elevation for all views or a sequence cycled over the views.
        up_axis: ``"y"`` (OpenGL scenes), ``"z"`` (Blender scenes) or any 3-vector.
    """
    if n < 1:
        raise ValueError(f"n: expected >= 1 views, got {n}")
    elev = [elevation_deg] if isinstance(elevation_deg, (int, float)) else list(elevation_deg)
    mats: List[torch.Tensor] = []
    c = torch.as_tensor(center, dtype=torch.float64)
    for i in range(n):
        d, up = _orbit_direction(azimuth_offset_deg + 360.0 * i / n, elev[i % len(elev)], up_axis)
        eye = c + radius * torch.tensor(d, dtype=torch.float64)
        mats.append(torch.linalg.inv(look_at(eye.tolist(), c.tolist(), up, dtype=torch.float64)))
    return torch.stack(mats).to(dtype)


def nerf_c2w_to_mv(c2w: torch.Tensor) -> torch.Tensor:
    """NeRF/Blender camera-to-world ``[..., 4, 4]`` -> our model-view ``[..., 4, 4]`` (its inverse:
    both use the OpenGL camera frame, −Z forward and +Y up)."""
    check_tensor("c2w", c2w, dtypes=FLOATS)
    if c2w.dim() < 2 or tuple(c2w.shape[-2:]) != (4, 4):
        raise ValueError(f"c2w: expected shape [..., 4, 4], got {shape_str(c2w.shape)}")
    return torch.linalg.inv(c2w.double()).to(c2w.dtype)


def fovy_from_fovx(fovx: float, width: int, height: int) -> float:
    """Vertical field of view from NeRF's ``camera_angle_x`` and the image size (square pixels)."""
    return 2.0 * math.atan(math.tan(fovx / 2.0) * height / width)


def transform_pos(mvp: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """Clip-space positions ``[N, V, 4]`` of ``verts [V, 3]`` under ``mvp [N, 4, 4]`` (or ``[4, 4]``)."""
    check_tensor("verts", verts, ndim=2, last=3, dtypes=FLOATS, expected="[V, 3]")
    mvp = mvp if mvp.dim() == 3 else mvp.unsqueeze(0)
    homo = torch.cat([verts, torch.ones_like(verts[:, :1])], 1)
    return torch.einsum("nij,vj->nvi", mvp.to(verts.dtype), homo).contiguous()


def nearest_pixel(mvp: torch.Tensor, points: torch.Tensor, hw: Tuple[int, int], with_depth: bool = False
                  ) -> Tuple[torch.Tensor, ...]:
    """The pixel whose centre is nearest to each point's projection under one camera.

    Args:
        mvp: ``[4, 4]``; points: ``[P, 3]`` float; hw: ``(H, W)`` image size (rows bottom-up, as
            :func:`~taichi_dr.render.rasterize.rasterize` writes them).
        with_depth: also return each point's clip ``w`` (its depth along the view axis for a
            perspective ``mvp``), from the same projection.

    Returns:
        ``(iy, ix, ok)`` ``[P]``: row and column (int64, clamped into the image) and whether the
        point is in front of the camera and projects inside the image; ``(iy, ix, ok, w)`` with
        ``with_depth`` (``w`` ``[P]``, the points' dtype).
    """
    H, W = hw
    c = transform_pos(mvp, points)[0]
    w = c[:, 3]
    ok = w > 1e-6
    ndc = c[:, :2] / torch.where(ok, w, torch.ones_like(w)).unsqueeze(1)
    ix = ((ndc[:, 0] + 1) * 0.5 * W - 0.5).round().long()
    iy = ((ndc[:, 1] + 1) * 0.5 * H - 0.5).round().long()
    ok &= (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    out = iy.clamp(0, H - 1), ix.clamp(0, W - 1), ok
    return (*out, w) if with_depth else out

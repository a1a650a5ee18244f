"""Cameras: look_at / perspective conventions and the NeRF (OpenGL c2w) conversion."""
import math

import torch

from taichi_dr import look_at, perspective
from taichi_dr.camera import camera_position, nerf_c2w_to_mv, orbit_views


def test_look_at_perspective_and_nerf_conventions():
    mv = look_at((0, 0, 3), (0, 0, 0))
    assert torch.allclose(mv @ torch.tensor([0, 0, 0, 1.0]), torch.tensor([0, 0, -3, 1.0]))
    assert torch.allclose(camera_position(mv[None])[0], torch.tensor([0, 0, 3.0]), atol=1e-6)
    P = perspective(math.radians(90), 1.0, 1.0, 10.0)
    for z, expected in ((-1.0, -1.0), (-10.0, 1.0)):
        c = P @ torch.tensor([0, 0, z, 1.0])
        assert math.isclose(float(c[2] / c[3]), expected, abs_tol=1e-6)
    c2w = orbit_views(5, 4.0, [10.0, 40.0])
    assert torch.allclose(nerf_c2w_to_mv(c2w) @ c2w, torch.eye(4).expand(5, 4, 4), atol=1e-5)
    # +Y up in the image: a point above the target projects to the upper half (bottom-up rows)
    c = P @ look_at((0, 0, 3)) @ torch.tensor([0, 1.0, 0, 1])
    assert float(c[1] / c[3]) > 0

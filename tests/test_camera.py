"""Cameras: look_at / perspective conventions and the NeRF (OpenGL c2w) conversion."""
import math

import pytest
import torch

from taichi_dr import look_at, perspective
from taichi_dr.camera import camera_position, nearest_pixel, nerf_c2w_to_mv, orbit_views, transform_pos


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


@pytest.mark.parametrize("view", [(0, 0), (30, 20), (-30, -20), (135, 60), (250, -75), (0, 90), (10, -90)])
def test_frame_sphere_keeps_the_whole_sphere_in_view(view):
    from taichi_dr.camera import frame_sphere

    center, radius = (0.3, -1.2, 2.0), 0.7
    mv, proj, eye = frame_sphere(center, radius, *view, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g, dtype=torch.float64), dim=1)
    p = torch.tensor(center, dtype=torch.float64) + radius * d  # points on the sphere
    clip = torch.cat([p, torch.ones(4000, 1, dtype=torch.float64)], 1) @ (proj @ mv).T
    ndc = clip[:, :3] / clip[:, 3:]
    assert bool((clip[:, 3] > 0).all())
    assert float(ndc[:, :2].abs().max()) < 1.0  # never clipped at the image border ...
    assert float(ndc[:, :2].abs().max()) > 0.8  # ... and not lost in the middle either
    assert bool((ndc[:, 2].abs() < 1).all())  # between the near and far planes
    torch.testing.assert_close(camera_position(mv[None])[0], eye)


def test_nearest_pixel_matches_the_raster_convention():
    """Pixel (iy, ix) has its centre at NDC ((ix + 0.5)/W·2 − 1, (iy + 0.5)/H·2 − 1), rows bottom-up."""
    mvp = perspective(math.radians(60.0), 1.0, 0.1, 10.0) @ look_at((0, 0, 3), (0, 0, 0))
    H, W = 6, 8
    # points placed exactly on pixel centres on the plane z = 0, one behind the camera, one off-image
    inv = torch.linalg.inv(mvp)
    pts = []
    for iy, ix in ((0, 0), (5, 7), (2, 3)):
        ndc_z = transform_pos(mvp, torch.zeros(1, 3))[0, 0]
        ndc = torch.tensor([(ix + 0.5) / W * 2 - 1, (iy + 0.5) / H * 2 - 1, ndc_z[2] / ndc_z[3], 1.0])
        w = inv @ ndc
        pts.append(w[:3] / w[3])
    pts += [torch.tensor([0.0, 0.0, 5.0]), torch.tensor([50.0, 0.0, 0.0])]
    iy, ix, ok = nearest_pixel(mvp, torch.stack(pts), (H, W))
    assert ok.tolist() == [True, True, True, False, False]
    assert iy[:3].tolist() == [0, 5, 2] and ix[:3].tolist() == [0, 7, 3]
    assert (iy >= 0).all() and (iy < H).all() and (ix >= 0).all() and (ix < W).all()  # clamped
    # with_depth: the same pixels plus the points' clip w (their depth along the view axis: 3 on z = 0)
    *same, w = nearest_pixel(mvp, torch.stack(pts), (H, W), with_depth=True)
    assert all(torch.equal(a, b) for a, b in zip(same, (iy, ix, ok)))
    torch.testing.assert_close(w, transform_pos(mvp, torch.stack(pts))[0, :, 3])
    torch.testing.assert_close(w[:3], torch.full((3,), 3.0), atol=1e-4, rtol=0)


def test_rig_target_is_the_point_the_cameras_look_at():
    """Cameras aimed at a point anywhere in the world give that point (least squares over the axes);
    near-parallel axes meet nowhere and give the origin; bad shapes are a ValueError naming the argument."""
    from taichi_dr.camera import orbit_views, rig_target

    c2w = orbit_views(8, 4.0, elevation_deg=[30.0, -10.0], center=(12.0, -3.0, 7.5), dtype=torch.float64)
    t = rig_target(c2w[:, :3, 3], -c2w[:, :3, 2])
    assert t.dtype == torch.float64 and torch.allclose(t, torch.tensor([12.0, -3.0, 7.5], dtype=torch.float64),
                                                       atol=1e-9)
    mvp = perspective(0.7, dtype=torch.float64).unsqueeze(0) @ torch.linalg.inv(c2w)
    assert torch.allclose(rig_target(c2w[:, :3, 3], mvp[:, 3, :3]), t, atol=1e-9)  # row 3 of mvp: forward
    # two axes that miss each other by 0.2: the midpoint of their shortest segment
    campos = torch.tensor([[-4.0, 0.1, 0.0], [0.0, -0.1, 4.0]], dtype=torch.float64)
    forward = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(rig_target(campos, forward), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    parallel = torch.tensor([[0.0, 0.0, -1.0]] * 3, dtype=torch.float64)
    assert torch.equal(rig_target(campos.new_tensor([[0, 0, 4.0], [1, 0, 4], [2, 1, 4]]), parallel),
                       torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="forward"):
        rig_target(campos, forward[:1])
    with pytest.raises(ValueError, match="campos"):
        rig_target(campos[:, :2], forward)


def test_orbits_turn_about_any_up_axis_and_rig_up_finds_it():
    """A Z-up orbit is the Y-up one turned by (x, y, z) -> (x, -z, y) (Blender's front view at azimuth 0);
    any up vector turns it the least way; ``rig_up`` reads the world's up from a rig's cameras."""
    from taichi_dr.camera import frame_sphere, rig_up

    y_up = orbit_views(6, 4.0, [-30.0, 15.0, 89.99], dtype=torch.float64)
    z_up = orbit_views(6, 4.0, [-30.0, 15.0, 89.99], up_axis="z", dtype=torch.float64)
    turn = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(z_up[:, :3, :4], turn @ y_up[:, :3, :4], atol=1e-12, rtol=0)
    assert torch.allclose(z_up[0, :3, 3], torch.tensor([0.0, -4 * math.cos(math.radians(30)), -2.0],
                                                       dtype=torch.float64))  # in front (−Y), below
    # a tilted up vector: every eye's height along it is its elevation, and the image's up leans with it
    up = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64), dim=0)
    tilted = orbit_views(6, 4.0, [-30.0, 15.0, 50.0], up_axis=up.tolist(), dtype=torch.float64)
    heights = tilted[:, :3, 3] @ up / 4.0
    torch.testing.assert_close(heights, torch.sin(torch.deg2rad(torch.tensor([-30.0, 15, 50] * 2, dtype=torch.float64))))
    assert bool((tilted[:, :3, 1] @ up > 0).all())
    # rig_up: the mean camera up, snapped to an axis within 10°; cancelling ups give +Y
    y_up, z_up = (orbit_views(6, 4.0, [-30.0, 15.0, 50.0], up_axis=a, dtype=torch.float64) for a in "yz")
    assert torch.equal(rig_up(y_up), torch.tensor([0.0, 1, 0], dtype=torch.float64))
    assert torch.equal(rig_up(z_up), torch.tensor([0.0, 0, 1], dtype=torch.float64))
    assert torch.equal(rig_up(orbit_views(5, 4.0, 20.0, up_axis=(0, -1, 0))), torch.tensor([0.0, -1, 0],
                                                                                        dtype=torch.float64))
    torch.testing.assert_close(rig_up(tilted), up)
    rolled = orbit_views(6, 4.0, 20.0, up_axis="z", dtype=torch.float64)
    rolled[1::2, :3, :2] *= -1  # every other camera upside down (rolled half a turn): no common up
    assert torch.equal(rig_up(rolled), torch.tensor([0.0, 1, 0], dtype=torch.float64))
    # a frame_sphere about +Z keeps the eye's height along Z at its elevation
    _, _, eye = frame_sphere((0.0, 0.0, 0.0), 1.0, 70.0, 25.0, up="z", dtype=torch.float64)
    assert math.isclose(float(eye[2] / eye.norm()), math.sin(math.radians(25.0)), rel_tol=1e-12)
    with pytest.raises(ValueError, match="c2w"):
        rig_up(z_up[:, :3])
    with pytest.raises(ValueError, match="^up: .*3-vector"):
        frame_sphere((0.0, 0.0, 0.0), 1.0, up=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="^up: expected 'y', 'z'"):
        frame_sphere((0.0, 0.0, 0.0), 1.0, up="x")
    with pytest.raises(ValueError, match="up_axis"):
        orbit_views(3, 4.0, up_axis="x")

"""Metrics (PSNR, mask IoU, Chamfer) and the OBJ round trip used by the reconstruction outputs."""
import math

import pytest
import torch

from taichi_dr import Mesh, chamfer_distance, load_obj, mask_iou, psnr, save_obj


def test_metrics_and_obj_roundtrip(tmp_path):
    a = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(a, a) == float("inf") and math.isclose(psnr(a, a + 0.1), 20.0, rel_tol=1e-4)
    assert mask_iou(torch.ones(4, 4), torch.cat([torch.ones(2, 4), torch.zeros(2, 4)])) == 0.5
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=torch.int32)
    assert chamfer_distance(v, f, v, f, num_samples=2000) < 1e-3
    assert chamfer_distance(v, f, v + 0.1, f, num_samples=2000) > 5e-3
    m = Mesh(v, f, colors=torch.rand(4, 3), uvs=torch.rand(4, 2), uv_faces=f.clone(), texture=torch.rand(8, 8, 3))
    save_obj(tmp_path / "m.obj", m)
    r = load_obj(tmp_path / "m.obj")
    assert torch.allclose(r.verts, v) and torch.equal(r.faces, f) and torch.allclose(r.colors, m.colors, atol=1e-4)
    assert torch.equal(r.uv_faces, f) and torch.allclose(r.texture, m.texture, atol=1 / 255)
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\n")
    with pytest.raises(ValueError, match="bad.obj:3"):
        load_obj(tmp_path / "bad.obj")
    (tmp_path / "quad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\n")
    assert load_obj(tmp_path / "quad.obj").faces.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_unseen_error_splits_the_chamfer_by_what_the_cameras_saw():
    from taichi_dr.bench.raster import uv_sphere
    from taichi_dr.metrics import unseen_error

    v, f = uv_sphere(4000)
    v = v.double()
    upper = lambda p: (p[:, 1] > 0).long() * 3  # noqa: E731  (three cameras saw the upper half, y > 0)
    wrong_below = torch.where(v[:, 1:2] < -0.05, v * 0.95, v)  # the error lies on unseen surface
    r = unseen_error(wrong_below, f, v, f, upper, num_samples=20_000)
    assert abs(r["unseen_area"] - 0.5) < 0.03 and r["unseen_error_share"] > 0.9
    assert r["few_views_area"] == 0 and r["few_views_error_share"] == 0
    one_below = unseen_error(wrong_below, f, v, f, lambda p: (p[:, 1] < 0).long() + 3 * (p[:, 1] > 0).long(),
                             num_samples=20_000)  # one camera saw the lower half
    assert one_below["unseen_area"] == 0 and one_below["few_views_error_share"] > 0.9
    wrong_above = torch.where(v[:, 1:2] > 0.05, v * 0.95, v)  # ... or on seen surface
    assert unseen_error(wrong_above, f, v, f, upper, num_samples=20_000)["unseen_error_share"] < 0.1
    # the estimator's floor: the nearest of n samples lies ~1/sqrt(n) away, so the floor falls as 1/n
    coarse = unseen_error(v, f, v, f, upper, num_samples=5_000)["chamfer_floor"]
    fine = unseen_error(v, f, v, f, upper, num_samples=20_000)["chamfer_floor"]
    assert 0 < fine < coarse / 2.5
    # the perfect mesh's Chamfer is the floor (same samples, same estimator)
    assert abs(chamfer_distance(v, f, v, f, num_samples=20_000) - fine) < 0.3 * fine
    with pytest.raises(TypeError, match="gt_views"):
        unseen_error(v, f, v, f, torch.ones(f.shape[0], dtype=torch.int64))
    with pytest.raises(TypeError, match="gt_views"):
        unseen_error(v, f, v, f, lambda p: p[:, 1], num_samples=100)  # not a count
    with pytest.raises(ValueError, match="gt_views"):
        unseen_error(v, f, v, f, lambda p: (p[1:, 1] > 0).long(), num_samples=100)  # one short


def test_points_views_is_a_depth_test_independent_of_the_tessellation():
    from taichi_dr.bench.raster import uv_sphere
    from taichi_dr.camera import look_at, perspective
    from taichi_dr.metrics import sample_surface
    from taichi_dr.recon.cleanup import face_pixels, points_views

    # a camera on the axis d, 4 units away, sees the cap p·d > 1/4 (tangent rays touch the sphere
    # there); within about a pixel of the outline (p·d ~ 0.1-0.4 here, at 32²) points go either way
    # (the last camera looks almost straight down: its pixel size must not come from P·MV[1, 1])
    for n_tris, d in ((2000, (0.0, 0.0, 1.0)), (200_000, (0.0, 0.0, 1.0)), (2000, (0.0, 0.98, 0.199))):
        mvp = (perspective(0.8, 1.0, 0.1, 10.0) @ look_at(tuple(4 * x for x in d), (0.0, 0.0, 0.0),
                                                           (0.0, 1.0, 0.0)))[None].float()
        v, f = uv_sphere(n_tris)  # faces of ~1 px and far below a pixel at 32²
        p, _ = sample_surface(v, f, 4000, torch.Generator().manual_seed(0))
        seen = points_views(p, v, f, mvp, (32, 32)) > 0
        pd = p.float() @ torch.tensor(d)
        assert bool(seen[pd > 0.4].all()) and float(seen[pd > 0.3].double().mean()) > 0.93
        assert not bool(seen[pd < 0.0].any())
    mvp = (perspective(0.8, 1.0, 0.1, 10.0) @ look_at((0.0, 0.0, 4.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0)))[None].float()
    v, f = uv_sphere(200_000)
    # pixel ownership misses most of the fine sphere's visible faces: why the depth test
    owned = face_pixels(v, f, mvp, [(32, 32)])[0] > 0
    front = v[f.long()].mean(1)[:, 2] > 0.35
    assert float(owned[front].double().mean()) < 0.5
    with pytest.raises(ValueError, match="points"):
        points_views(p[:, :2], v, f, mvp, (32, 32))

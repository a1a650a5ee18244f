"""NeRF loader, cameras, metrics, mesh I/O and the end-to-end reconstruction (fast and slow)."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from taichi_dr import (Mesh, chamfer_distance, load_nerf, load_obj, look_at, mask_iou, perspective, psnr,
                       reconstruct, save_obj, transform_pos)
from taichi_dr.camera import camera_position, nerf_c2w_to_mv, orbit_views
from taichi_dr.demo import make_demo_dataset
from taichi_dr.recon import ReconConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo32"))
    mesh = make_demo_dataset(root, res=32, n_train=12, n_test=4, gt_res=40)
    return root, mesh


def test_loader_reads_our_dataset_and_cameras_round_trip(dataset):
    root, mesh = dataset
    ds = load_nerf(root, "train")
    assert ds.images.shape == (12, 32, 32, 4) and ds.mv.shape == (12, 4, 4)
    # project the ground-truth vertices with the loaded cameras: they land on the rendered mask
    def hit_rate(mvp):
        clip = transform_pos(mvp, mesh.verts)
        px = ((clip[..., :2] / clip[..., 3:] + 1) * 16).long().clamp(0, 31)
        alpha = torch.stack([ds.images[i, px[i, :, 1], px[i, :, 0], 3] for i in range(12)])
        return float((alpha > 0.1).float().mean())
    assert hit_rate(ds.mvp) > 0.9  # thin tube at 32 px: silhouette vertices sit on partial pixels
    flip_y = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))  # a top-down image convention would miss
    assert hit_rate(flip_y @ ds.mvp) < 0.75
    half = load_nerf(root, "test", train_res=16)
    assert half.images.shape == (4, 16, 16, 4)


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


def _copy(root, dst):
    shutil.copytree(root, dst)
    return str(dst)


def test_bad_datasets_give_clear_errors(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(ValueError, match="transforms_train.json"):
        load_nerf(tmp_path / "nothing")
    d = _copy(root, tmp_path / "a")
    os.remove(os.path.join(d, "train", "r_3.png"))
    with pytest.raises(ValueError, match="r_3"):
        load_nerf(d)
    d = _copy(root, tmp_path / "b")
    with open(os.path.join(d, "train", "r_2.png"), "wb") as fh:
        fh.write(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="r_2.png"):
        load_nerf(d)
    d = _copy(root, tmp_path / "c")
    meta = json.load(open(os.path.join(d, "transforms_train.json")))
    meta["frames"][1]["transform_matrix"] = [[1, 0, 0], [0, 1, 0]]
    json.dump(meta, open(os.path.join(d, "transforms_train.json"), "w"))
    with pytest.raises(ValueError, match="frame 1 transform_matrix"):
        load_nerf(d)
    d = _copy(root, tmp_path / "d")
    open(os.path.join(d, "transforms_train.json"), "w").write("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_nerf(d)
    d = _copy(root, tmp_path / "e")
    import imageio.v3 as iio
    iio.imwrite(os.path.join(d, "train", "r_4.png"), np.zeros((20, 20, 4), np.uint8))
    with pytest.raises(ValueError, match="r_4.png: image size"):
        load_nerf(d)


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


def test_fast_end_to_end_reconstruction_and_resume(dataset, tmp_path):
    root, _ = dataset
    cfg = ReconConfig(iters=30, refine_iters=10, grid_res=16, batch=3, checkpoint_every=10, turntable_frames=4,
                      turntable_res=32, chamfer_samples=5000)
    out = str(tmp_path / "run")
    m = reconstruct(root, out, cfg, gt_mesh=os.path.join(root, "gt_mesh.obj"), progress=False)
    for name in ("mesh.obj", "metrics.json", "loss.png", "turntable.gif", "checkpoint.pt", "renders/test_000.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    hist = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["history"]
    first, last = np.mean(hist["total"][:5]), np.mean(hist["total"][25:30])
    assert last < first  # the loss falls
    assert m["test_mask_iou"] > 0.8 and m["iterations"] == 40 and m["triangles"] > 0
    assert json.load(open(os.path.join(out, "metrics.json")))["triangles"] == m["triangles"]

    # an interrupted run continues at the right iteration
    out2 = str(tmp_path / "run2")
    calls = {"n": 0}
    from taichi_dr import recon as recon_mod
    orig = recon_mod._Run.step

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 16:
            raise KeyboardInterrupt
        return orig(self)
    recon_mod._Run.step = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            reconstruct(root, out2, cfg, progress=False)
    finally:
        recon_mod._Run.step = orig
    saved = torch.load(os.path.join(out2, "checkpoint.pt"), weights_only=False)
    assert saved["it"] == 15 and not os.path.exists(os.path.join(out2, "mesh.obj"))
    m2 = reconstruct(root, out2, cfg, resume=True, progress=False)
    assert m2["iterations"] == 40
    assert len(torch.load(os.path.join(out2, "checkpoint.pt"), weights_only=False)["history"]["total"]) == 40


@pytest.mark.slow
def test_demo_reduced_settings_meets_quality(tmp_path):
    from taichi_dr.demo import run_demo
    cfg = ReconConfig(iters=150, refine_iters=80, grid_res=32)
    m = run_demo(str(tmp_path / "demo"), res=96, config=cfg)
    assert m["test_mask_iou"] > 0.95
    assert m["test_psnr"] > 26.0
    assert m["chamfer_l2"] < 4e-4

"""NeRF-synthetic loader: our own dataset read back, cameras round trip, bad datasets -> clear errors."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from taichi_dr import load_nerf, transform_pos
from taichi_dr.recon.demo import make_demo_dataset


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
    assert hit_rate(ds.mvp) > 0.95  # thin tube at 32 px: silhouette vertices sit on partial pixels (0.989)
    flip_y = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))  # a top-down image convention would miss
    assert hit_rate(flip_y @ ds.mvp) < 0.85  # ~1/5 of them (0.80: the knot is nearly symmetric in y)
    half = load_nerf(root, "test", train_res=16)
    assert half.images.shape == (4, 16, 16, 4)


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
    # RGB images load (alpha = 1), but a reconstruction needs masks: one clear error before any work
    d = _copy(root, tmp_path / "f")
    for name in os.listdir(os.path.join(d, "train")):
        path = os.path.join(d, "train", name)
        iio.imwrite(path, np.asarray(iio.imread(path))[..., :3])
    assert bool((load_nerf(d).images[..., 3] == 1).all())
    from taichi_dr import reconstruct
    with pytest.raises(ValueError, match="every training pixel is opaque"):
        reconstruct(d, str(tmp_path / "out"), progress=False)


def test_other_radius_fov_and_non_square_images_round_trip(dataset, tmp_path):
    """A dataset shot from far away with a narrow lens, 56x40 images: the loaded cameras still
    project the object onto its mask (nothing in the loader assumes our demo's rig)."""
    from taichi_dr.camera import fovy_from_fovx, orbit_views, perspective, camera_position
    from taichi_dr.data.nerf import write_nerf_dataset
    from taichi_dr.render.pipeline import SimpleLight, render_mesh_views
    _, mesh = dataset
    verts = mesh.verts * 2.5 + torch.tensor([1.0, -0.5, 0.3])
    H, W, fovx = 40, 56, 0.55
    c2w = orbit_views(5, 12.0, [20.0, -15.0])
    c2w[:, :3, 3] += torch.tensor([1.0, -0.5, 0.3])  # look at the shifted object
    mv = torch.linalg.inv(c2w)
    mvp = perspective(fovy_from_fovx(fovx, W, H), W / H, 0.5, 50.0) @ mv
    imgs = render_mesh_views(verts, mesh.faces, mesh.colors, mvp, camera_position(mv), (H, W), SimpleLight.default())
    write_nerf_dataset(tmp_path, "train", imgs, c2w, fovx)
    ds = load_nerf(tmp_path, "train")
    assert ds.images.shape == (5, H, W, 4)
    assert torch.allclose(ds.images[..., 3], imgs[..., 3], atol=1 / 255 + 1e-6)  # bottom-up rows preserved
    clip = transform_pos(ds.mvp, verts)
    ndc = clip[..., :2] / clip[..., 3:]
    px = ((ndc[..., 0] + 1) * W / 2).long().clamp(0, W - 1), ((ndc[..., 1] + 1) * H / 2).long().clamp(0, H - 1)
    alpha = torch.stack([ds.images[i, px[1][i], px[0][i], 3] for i in range(5)])
    assert float((alpha > 0.1).float().mean()) > 0.9
    rows = [0, 1, 3]  # near/far (the z row) are the loader's own choice
    assert torch.allclose(ds.mvp[:, rows], mvp[:, rows], atol=1e-4)


def test_clip_planes_follow_the_rig_in_any_unit(dataset, tmp_path, scaled_copy):
    """NeRF-synthetic's rig (cameras ~4 from the object) keeps (0.1, 1000); a scene in millimetres
    (cameras 4000 away: beyond that far plane) and one 1000 times smaller (in front of that near
    plane) get the planes scaled by 1000 and 1/1000, and a loaded split uses them."""
    from taichi_dr.camera import look_at
    from taichi_dr.data.nerf import clip_planes

    def rig(dist, target=(0.0, 0.0, 0.0)):
        eyes = [(dist * math.cos(a) + target[0], 0.4 * dist + target[1], dist * math.sin(a) + target[2])
                for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)]
        return torch.stack([torch.linalg.inv(look_at(e, target)) for e in eyes])

    assert clip_planes(rig(4.0)) == (0.1, 1000.0)
    assert clip_planes(rig(4.0, target=(3.0, -2.0, 5.0))) == (0.1, 1000.0)  # looked-at point, not the origin
    near, far = clip_planes(rig(4000.0))
    assert near == pytest.approx(100.0) and far == pytest.approx(1e6)
    near, far = clip_planes(rig(0.004))
    assert near == pytest.approx(1e-4) and far == pytest.approx(1.0)
    parallel = torch.eye(4).repeat(3, 1, 1)  # a forward-facing rig: axes never meet, distances to the origin
    parallel[:, :3, 3] = torch.tensor([[0.0, 0, 4], [1, 0, 4], [2, 0, 4]])
    assert clip_planes(parallel) == (0.1, 1000.0)

    root = dataset[0]
    ds = load_nerf(root, "train")
    assert (ds.near, ds.far) == clip_planes(ds.c2w)
    mm = scaled_copy(root, tmp_path / "mm", 1000.0)
    big = load_nerf(mm, "train")
    assert big.near == pytest.approx(1000 * ds.near) and big.far == pytest.approx(1000 * ds.far)
    # the object projects where it did, and inside the clip volume (|z| <= w)
    pts = torch.tensor([[0.1, 0.2, -0.1], [0.0, 0.0, 0.0]])
    a, b = transform_pos(ds.mvp, pts), transform_pos(big.mvp, 1000 * pts)
    assert torch.allclose(a[..., :2] / a[..., 3:], b[..., :2] / b[..., 3:], atol=1e-4)
    assert bool((b[..., 2].abs() <= b[..., 3]).all())
    assert load_nerf(mm, "train", near=0.5, far=2.0).near == 0.5  # given planes are kept

"""Textured mesh export (OBJ/MTL/PNG, GLB, light) round trips, SSIM, and a fast end-to-end run."""
import json
import math
import os

import numpy as np
import pytest
import torch

from taichi_dr.camera import camera_position, look_at, perspective
from taichi_dr.losses import linear_to_srgb
from taichi_dr.metrics import psnr, ssim
from taichi_dr.recon.export import export_mesh, load_light, load_textured_obj
from taichi_dr.recon.texture_pass import make_textured_material
from taichi_dr.render.pipeline import SimpleLight, render_mesh_views


def _sphere():
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    return torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int32)


def _material(p):
    kd = 0.5 + 0.4 * torch.sin(torch.stack([5 * p[:, 0], 4 * p[:, 1] + 1, 3 * p[:, 2] + 2 * p[:, 0]], 1))
    ks = torch.stack([torch.ones_like(p[:, 0]), 0.6 + 0.2 * p[:, 1], 0.1 + 0.05 * p[:, 2]], 1)
    return torch.cat([kd, ks], 1)


def _views(n=3, res=64):
    proj = perspective(math.radians(40), 1.0, 0.1, 10.0)
    mvs = torch.stack([look_at([2.6 * math.sin(a), 0.5, 2.6 * math.cos(a)], [0, 0, 0]) for a in
                       torch.linspace(0, 4, n).tolist()])
    return proj.unsqueeze(0) @ mvs, camera_position(mvs), (res, res)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    v, f = _sphere()
    faces, mat = make_textured_material(v, f, _material, (64, 64))
    light = SimpleLight.default()
    files = export_mesh(out, v, faces, mat, light)
    return out, v, faces, mat, light, files


def test_export_writes_obj_mtl_textures_glb_and_light(exported):
    out, v, faces, mat, light, files = exported
    for name in ("mesh.obj", "mesh.mtl", "texture_kd.png", "texture_ks.png", "texture_n.png", "mesh.glb", "light.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert set(files.values()) >= {"mesh.obj", "mesh.glb", "texture_kd.png", "texture_ks.png"}
    mtl = open(os.path.join(out, "mesh.mtl")).read()
    assert "map_Kd texture_kd.png" in mtl and "map_Ks texture_ks.png" in mtl


def test_trimesh_loads_obj_and_glb_with_uvs_and_textures(exported):
    import trimesh

    out, v, faces, mat, _, _ = exported
    obj = trimesh.load(os.path.join(out, "mesh.obj"), force="mesh", process=False)
    assert obj.visual.uv is not None and obj.visual.uv.shape[0] == obj.vertices.shape[0]
    assert obj.visual.material.image is not None and obj.visual.material.image.size == (128, 128)
    assert obj.faces.shape[0] == faces.shape[0]
    glb = trimesh.load(os.path.join(out, "mesh.glb"), force="mesh", process=False)
    assert glb.faces.shape[0] == faces.shape[0]
    assert glb.visual.uv is not None and float(glb.visual.uv.min()) >= -1e-6 and float(glb.visual.uv.max()) <= 1 + 1e-6
    m = glb.visual.material
    assert m.baseColorTexture is not None and m.metallicRoughnessTexture is not None and m.normalTexture is not None
    # the GLB holds the same surface: its vertices are the OBJ positions repeated along the seams
    d = torch.cdist(torch.tensor(glb.vertices, dtype=torch.float32), v).min(1)[0]
    assert float(d.max()) < 1e-3  # (trimesh round-trips positions to ~1e-4)
    # and the same kd texels (glTF images are stored top row first, as the PNG)
    kd_png = np.asarray(obj.visual.material.image.convert("RGB"))
    assert np.array_equal(np.asarray(m.baseColorTexture.convert("RGB")), kd_png)


def test_exported_obj_rerenders_like_the_material(exported):
    out, v, faces, mat, light, _ = exported
    v2, f2, mat2 = load_textured_obj(os.path.join(out, "mesh.obj"))
    mvp, campos, res = _views()
    white = torch.ones((mvp.shape[0], res[0], res[1], 3))
    a = render_mesh_views(v, faces, mat, mvp, campos, res, light, white)
    b = render_mesh_views(v2, f2, mat2, mvp, campos, res, load_light(out), white)
    assert psnr(linear_to_srgb(a[..., :3]), linear_to_srgb(b[..., :3])) > 40.0


def test_export_vertex_colours_and_env_light(tmp_path):
    import trimesh

    from taichi_dr.render.light import EnvironmentLight

    v, f = _sphere()
    env = EnvironmentLight(16, init=0.7)
    export_mesh(str(tmp_path), v, f, _material(v)[:, :3], env)
    obj = trimesh.load(str(tmp_path / "mesh.obj"), force="mesh", process=False)
    assert obj.vertices.shape[0] == v.shape[0]
    glb = trimesh.load(str(tmp_path / "mesh.glb"), force="mesh", process=False)
    assert glb.visual.vertex_colors.shape[0] == v.shape[0]
    img = np.load(str(tmp_path / "light.npy"))
    assert img.dtype == np.float32 and np.allclose(img, 0.7, atol=1e-5)
    assert os.path.isfile(str(tmp_path / "light.png"))
    assert torch.allclose(load_light(str(tmp_path)).base, torch.full((6, 32, 32, 3), 0.7), atol=1e-5)


def test_ssim_matches_the_closed_form_and_orders_noise():
    a = torch.full((16, 16, 3), 0.3)
    b = torch.full((16, 16, 3), 0.6)
    c1 = 0.01 ** 2
    assert abs(ssim(a, b) - (2 * 0.3 * 0.6 + c1) / (0.3 ** 2 + 0.6 ** 2 + c1)) < 1e-9
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 48, 3, generator=g)
    small = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    big = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ssim(x, x) == pytest.approx(1.0)
    assert 1.0 > ssim(x, small) > ssim(x, big)
    with pytest.raises(ValueError, match="target"):
        ssim(x, x[:40])


@pytest.mark.slow
def test_fast_end_to_end_textured_run_writes_everything(tmp_path):
    from taichi_dr.data.nerf import load_nerf
    from taichi_dr.recon import ReconConfig, reconstruct
    from taichi_dr.recon.demo import make_demo_dataset

    root = str(tmp_path / "data")
    make_demo_dataset(root, res=32, n_train=12, n_test=3, gt_res=40)
    out = str(tmp_path / "out")
    cfg = ReconConfig(iters=12, refine_iters=6, grid_res=12, batch=2, turntable_frames=2, turntable_res=16)
    m = reconstruct(root, out, cfg, progress=False)
    # the default light is the learnable environment: light.npy (exact) + light.png (preview)
    for name in ("mesh.obj", "mesh.mtl", "texture_kd.png", "texture_ks.png", "texture_n.png", "mesh.glb", "light.npy",
                 "light.png", "config.json", "metrics.json", "renders/test_000.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert len(saved["test_ssim_per_view"]) == 3 and 0 < saved["test_ssim"] <= 1
    # re-rendering the exported files with our renderer reproduces the test PSNR
    test = load_nerf(root, "test")
    v, f, mat = load_textured_obj(os.path.join(out, "mesh.obj"))
    light = load_light(out)
    H, W = test.images.shape[1:3]
    ps = []
    for i in range(len(test)):
        mv = test.mv[i:i + 1]
        pred = render_mesh_views(v, f, mat, test.proj.unsqueeze(0) @ mv, camera_position(mv), (H, W), light,
                                 torch.ones((1, H, W, 3)))[0]
        a = test.images[i, ..., 3:]
        target = test.images[i, ..., :3] * a + (1 - a)
        ps.append(psnr(linear_to_srgb(pred[..., :3]), linear_to_srgb(target)))
    assert abs(sum(ps) / len(ps) - m["test_psnr"]) < 0.5, (sum(ps) / len(ps), m["test_psnr"])

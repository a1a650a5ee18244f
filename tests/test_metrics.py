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

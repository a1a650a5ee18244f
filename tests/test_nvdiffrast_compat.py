"""`import taichi_dr.nvdiffrast as dr`: nvdiffrast's signatures on any device, same results as our ops."""
import pytest
import torch

import taichi_dr as tdr
import taichi_dr.nvdiffrast as dr


def test_nvdiffrast_style_code_runs_unchanged():
    glctx = dr.RasterizeCudaContext()
    pos = torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [-0.8, 0.8, 0, 1]]], dtype=torch.float32)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    col = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float32)
    rast, rast_db = dr.rasterize(glctx, pos, tri, resolution=[64, 64])
    out, _ = dr.interpolate(col, rast, tri)
    out = dr.antialias(out, rast, pos, tri, topology_hash=dr.antialias_construct_topology_hash(tri))
    ref, _ = tdr.rasterize(pos, tri, (64, 64))
    assert torch.equal(rast, ref) and rast_db.shape == (1, 64, 64, 4)
    assert out.shape == (1, 64, 64, 3)
    tex = torch.rand(1, 8, 8, 3)
    mip = dr.texture_construct_mip(tex)
    uv = torch.rand(1, 4, 4, 2)
    assert torch.allclose(dr.texture(tex, uv, mip=mip, filter_mode="linear"), tdr.texture(tex, uv, filter_mode="linear"))


def test_gl_context_and_output_db_flag():
    ctx = dr.RasterizeGLContext(output_db=False)
    pos = torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [-0.8, 0.8, 0, 1]]])
    rast, db = dr.rasterize(ctx, pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), [8, 8])
    assert db.shape[-1] == 0 and rast.shape == (1, 8, 8, 4)
    with pytest.raises(TypeError, match="glctx"):
        dr.rasterize(None, pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), [8, 8])

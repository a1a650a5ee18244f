"""`taichi-dr render MESH.obj --out IMG.png`: writes a shaded picture of the mesh on white."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from taichi_dr import Mesh, save_obj
from taichi_dr.cli import main
from taichi_dr.render.preview import render_mesh

V = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
F = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=torch.int32)


def test_render_cli_writes_png(tmp_path):
    save_obj(tmp_path / "cube.obj", Mesh(V, F))
    out = tmp_path / "cube.png"
    assert main(["render", str(tmp_path / "cube.obj"), "--out", str(out), "--res", "48", "--view", "30,20"]) in (0, None)
    rgb = iio.imread(out)[..., :3].astype(np.int32)
    assert rgb.shape[:2] == (48, 48)
    assert (rgb[0, 0] == 255).all() and (rgb[-1, -1] == 255).all()  # white background in the corners
    centre = rgb[16:32, 16:32]
    assert (centre.max(-1) < 250).all()  # the framed grey cube covers the middle
    assert centre.sum(-1).std() > 3  # shaded, not flat


def test_render_mesh_texture_and_views():
    # a quad facing +z with a pure red texture, seen head-on (azimuth 0 looks down −z)
    v = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    tex = torch.zeros(4, 4, 3)
    tex[..., 0] = 1
    m = Mesh(v, f, uvs=v[:, :2] * 0.5 + 0.5, uv_faces=f, texture=tex)
    img = render_mesh(m, res=32, view=(0, 0), as_float=True)
    c = img[12:20, 12:20]
    assert float(c[..., 0].min()) > 0.2 and float(c[..., 1:].max()) < 0.05
    top = render_mesh(Mesh(V, F), res=24, view=(0, 90))  # straight down: up vector must not degenerate
    assert top.dtype == np.uint8 and top.shape == (24, 24, 3)
    with pytest.raises(ValueError, match="res"):
        render_mesh(m, res=0)


def test_render_about_the_meshes_up_axis(tmp_path):
    """A post standing along +Z (a Blender scene's up) stands upright from every azimuth with
    ``--up z``; about the default +Y the same views show it lying down or end-on."""
    post = Mesh(V * torch.tensor([0.15, 0.15, 1.0]), F)

    def extent(img):  # (height, width) in pixels of what is not white
        ys, xs = np.nonzero(img.min(-1) < 250)
        return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1

    for az in (0.0, 60.0, 135.0):
        h, w = extent(render_mesh(post, res=48, view=(az, 20.0), up="z"))
        assert h > 3 * w, (az, h, w)
    h, w = extent(render_mesh(post, res=48, view=(90.0, 20.0)))
    assert w > 3 * h  # +Y up, seen from +X: lying across the image
    save_obj(tmp_path / "post.obj", post)
    assert main(["render", str(tmp_path / "post.obj"), "--out", str(tmp_path / "p.png"), "--res", "48", "--up", "z"]) \
        in (0, None)
    h, w = extent(iio.imread(tmp_path / "p.png")[..., :3])
    assert h > 3 * w

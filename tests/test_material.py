"""Material field (hash grid + MLP), per-pixel materials in the renderer, UV atlas, baking, texture pass."""
import math
import pickle

import pytest
import torch

from taichi_dr.camera import camera_position, look_at, perspective
from taichi_dr.recon.material import KS_MAX, KS_MIN, HashGridEncoding, MaterialField
from taichi_dr.recon.texture_pass import (TexturedMaterial, bake, dilate, make_textured_material, texture_resolution,
                                          unwrap, uv_tangent_operator, uv_tangents)
from taichi_dr.render.pipeline import SimpleLight, render_mesh_views
from taichi_dr.render.texture import texture


def _sphere(subdiv: int = 2):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdiv, radius=0.8)
    return torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int32)


def _views(n=2, res=48):
    proj = perspective(math.radians(40), 1.0, 0.1, 10.0)
    mvs = torch.stack([look_at([2.6 * math.sin(a), 0.6, 2.6 * math.cos(a)], [0, 0, 0]) for a in
                       torch.linspace(0, 2, n).tolist()])
    return proj.unsqueeze(0) @ mvs, camera_position(mvs), (res, res)


def test_hashgrid_kernel_matches_torch_reference_forward_and_backward():
    enc = HashGridEncoding(levels=6, log2_table=10, base_res=4, max_res=64).double()
    assert bool(enc.dense.any()) and not bool(enc.dense.all())  # both dense and hashed levels are exercised
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(700, 3, dtype=torch.float64) * 1.2 - 0.1  # some outside [0, 1]: clamped
    a, b = enc(x), enc.forward_reference(x)
    assert torch.allclose(a, b, atol=1e-12)
    g = torch.randn_like(a)
    ga, = torch.autograd.grad((a * g).sum(), enc.table)
    gb, = torch.autograd.grad((b * g).sum(), enc.table)
    assert torch.allclose(ga, gb, atol=1e-12)
    assert float(ga.abs().sum()) > 0


def test_hashgrid_gradients_finite_differences_float64():
    enc = HashGridEncoding(levels=3, log2_table=6, base_res=2, max_res=8).double()
    x = torch.rand(20, 3, dtype=torch.float64)
    # the Taichi kernel's hand-written adjoint w.r.t. the table
    assert torch.autograd.gradcheck(lambda t: _enc_with_table(enc, x, t),
                                    (enc.table.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-8)
    # the torch reference is also differentiable in the position (away from cell borders)
    xr = (torch.rand(8, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(enc.forward_reference, (xr,), eps=1e-7, atol=1e-6)


def _enc_with_table(enc, x, table):
    from taichi_dr.recon.material import _HashGridFn

    return _HashGridFn.apply(x, table, enc._meta(), enc.features)


def test_material_field_bounds_and_gradients():
    torch.manual_seed(0)
    f = MaterialField(torch.zeros(3), 1.0, normal=True, levels=4, log2_table=10, max_res=32)
    with torch.no_grad():  # push the pre-activations far out: outputs must still be inside the bounds
        for p in f.net.parameters():
            p.mul_(200.0)
        f.encoding.table.normal_()
    out = f(torch.rand(500, 3) * 4 - 2)
    assert out.shape == (500, 9)
    assert float(out[:, :3].min()) >= 0 and float(out[:, :3].max()) <= 1
    for k in range(3):
        assert float(out[:, 3 + k].min()) >= KS_MIN[k] - 1e-6 and float(out[:, 3 + k].max()) <= KS_MAX[k] + 1e-6
    assert torch.allclose(out[:, 6:].norm(dim=1), torch.ones(500), atol=1e-5)
    f2 = MaterialField(torch.zeros(3), 1.0, levels=4, log2_table=10, max_res=32)
    f2(torch.rand(64, 3)).sum().backward()
    assert float(f2.encoding.table.grad.abs().sum()) > 0 and float(f2.net[0].weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="p"):
        f2(torch.rand(4, 2))
    with pytest.raises(ValueError, match="half"):
        MaterialField(torch.zeros(3), 0.0)


def test_per_pixel_field_equals_per_vertex_colours_for_an_affine_albedo():
    # an affine function of position interpolates exactly: the per-pixel field and per-vertex colours agree
    v, f = _sphere(2)
    A = torch.tensor([[0.2, -0.1, 0.3], [0.1, 0.25, -0.2], [-0.15, 0.1, 0.2]])

    def field(p):
        return (0.5 + p @ A).clamp(0, 1)

    mvp, campos, res = _views()
    light = SimpleLight.default()
    a = render_mesh_views(v, f, field(v), mvp, campos, res, light)
    b = render_mesh_views(v, f, field, mvp, campos, res, light)
    assert float(a[..., 3].sum()) > 100
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(TypeError, match="colors"):
        render_mesh_views(v, f, "red", mvp, campos, res, light)
    with pytest.raises(ValueError, match="colors"):
        render_mesh_views(v, f, lambda p: p[:, :2], mvp, campos, res, light)


def test_xatlas_uvs_cover_every_face_without_overlap():
    v, f = _sphere(2)
    faces2, uvs, uvf = unwrap(v, f, resolution=256)
    assert faces2.shape == f.shape and uvf.shape == f.shape
    # the same triangles (as sets of vertices), every face has UVs in [0, 1] and a positive UV area
    assert sorted(map(tuple, torch.sort(faces2, 1)[0].tolist())) == sorted(map(tuple, torch.sort(f, 1)[0].tolist()))
    assert float(uvs.min()) >= 0 and float(uvs.max()) <= 1
    t = uvs[uvf.long()]
    area = 0.5 * ((t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1]))
    assert float(area.abs().min()) > 0
    # no overlap: the area covered in UV space (rasterized) equals the sum of the triangle areas
    from taichi_dr.render.rasterize import rasterize

    R = 1024
    clip = torch.cat([uvs * 2 - 1, torch.zeros_like(uvs[:, :1]), torch.ones_like(uvs[:, :1])], 1)
    rast, _ = rasterize(clip[None].contiguous(), uvf, (R, R))
    covered = float((rast[..., 3] > 0).float().mean())
    total = float(area.abs().sum())
    assert abs(covered - total) / total < 0.03, (covered, total)
    # and the same test detects an overlap: duplicate half the charts onto the others
    uvf_bad = uvf.clone()
    uvf_bad[: f.shape[0] // 2] = uvf[f.shape[0] // 2: 2 * (f.shape[0] // 2)]
    rast_b, _ = rasterize(clip[None].contiguous(), uvf_bad, (R, R))
    t_b = uvs[uvf_bad.long()]
    area_b = 0.5 * ((t_b[:, 1, 0] - t_b[:, 0, 0]) * (t_b[:, 2, 1] - t_b[:, 0, 1])
                    - (t_b[:, 2, 0] - t_b[:, 0, 0]) * (t_b[:, 1, 1] - t_b[:, 0, 1])).abs().sum()
    assert float((rast_b[..., 3] > 0).float().mean()) < 0.9 * float(area_b)


def _procedural(p):
    kd = 0.5 + 0.4 * torch.sin(torch.stack([3 * p[:, 0], 4 * p[:, 1] + 1, 2 * p[:, 2] + 2 * p[:, 0]], 1))
    ks = torch.stack([torch.ones_like(p[:, 0]), 0.5 + 0.3 * p[:, 1], 0.2 + 0.1 * p[:, 2]], 1)
    return torch.cat([kd, ks], 1)


def test_bake_then_texture_lookup_reproduces_a_procedural_material():
    v, f = _sphere(3)
    faces2, uvs, uvf = unwrap(v, f, resolution=512)
    tex, mask = bake(v, faces2, uvs, uvf, _procedural, 512)
    assert 0.3 < float(mask.float().mean()) < 1.0
    padded = dilate(tex, mask)
    # random surface points: barycentric mix of the triangle's positions and of its uvs
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, f.shape[0], (2000,), generator=g)
    w = torch.rand(2000, 3, generator=g)
    w = w / w.sum(1, keepdim=True)
    p = (v[faces2[k].long()] * w[..., None]).sum(1)
    uv = (uvs[uvf[k].long()] * w[..., None]).sum(1)
    got = texture(padded[None], uv.view(1, 1, -1, 2).contiguous(), filter_mode="linear", boundary_mode="clamp")[0, 0]
    err = (got - _procedural(p)).abs()
    assert float(err.mean()) < 0.01 and float(err.max()) < 0.08, (float(err.mean()), float(err.max()))
    # without the padding, lookups near chart borders read the black outside: the dilation matters
    raw = texture(tex[None], uv.view(1, 1, -1, 2).contiguous(), filter_mode="linear", boundary_mode="clamp")[0, 0]
    assert float((raw - _procedural(p)).abs().max()) > float(err.max())


@pytest.mark.slow
def test_textured_material_renders_like_the_field_and_gets_gradients():
    v, f = _sphere(3)
    field = lambda p: _procedural(p)  # noqa: E731
    faces2, mat = make_textured_material(v, f, field, (100, 100))
    assert isinstance(mat, TexturedMaterial) and mat.tex.shape == (1, 128, 128, 9)
    mvp, campos, res = _views(2, 64)
    light = SimpleLight.default()
    a = render_mesh_views(v, faces2, field, mvp, campos, res, light)
    b = render_mesh_views(v, faces2, mat, mvp, campos, res, light)
    cov = a[..., 3] > 0.99
    assert float((a - b)[cov].abs().mean()) < 0.01
    b[..., :3].sum().backward()
    assert float(mat.tex.grad.abs().sum()) > 0
    with torch.no_grad():
        mat.tex.add_(5.0)
    mat.clamp_()
    assert float(mat.tex[..., :3].max()) <= 1.0 and float(mat.tex[..., 4].max()) <= KS_MAX[1]


def test_normal_map_flat_is_neutral_tilted_changes_shading_and_gets_gradients():
    v, f = _sphere(3)
    faces2, mat = make_textured_material(v, f, _procedural, (100, 100))
    _, mat6 = make_textured_material(v, f, _procedural, (100, 100), normal_map=False)
    mat6.tex.data.copy_(mat.tex.data[..., :6])
    mat6.uvs, mat6.uv_faces = mat.uvs, mat.uv_faces
    mvp, campos, res = _views(2, 64)
    light = SimpleLight.default()
    flat = render_mesh_views(v, faces2, mat, mvp, campos, res, light)
    none = render_mesh_views(v, faces2, mat6, mvp, campos, res, light)
    assert torch.allclose(flat, none, atol=1e-5)
    # tangents are unit and orthogonal enough to the normals to make a frame
    t = mat.tangents(v, faces2)
    assert torch.allclose(t.norm(dim=1), torch.ones(t.shape[0]), atol=1e-5)
    with torch.no_grad():
        mat.tex[..., 6:9] = torch.tensor([0.6, 0.0, 0.8])
    tilted = render_mesh_views(v, faces2, mat, mvp, campos, res, light)
    assert float((tilted - flat)[..., :3].abs().mean()) > 1e-3
    tilted[..., :3].sum().backward()
    assert float(mat.tex.grad[..., 6:9].abs().sum()) > 0


def test_texture_resolution_follows_the_images():
    assert texture_resolution((256, 256)) == 256
    assert texture_resolution((800, 800)) == 1024
    assert texture_resolution((32, 32)) == 128
    with pytest.raises(ValueError, match="image_hw"):
        texture_resolution((0, 0))


def test_hashgrid_parallel_atomic_adjoint_equals_the_serial_cpu_one(monkeypatch):
    """The hash grid's adjoint is serial with plain adds on the CPU, parallel with atomics on a GPU;
    forcing the parallel variant on the CPU must give the same table gradient."""
    import taichi_dr.recon.material as mat_mod

    torch.manual_seed(0)
    enc = HashGridEncoding(levels=4, log2_table=8, base_res=4, max_res=64).double()
    x = torch.rand(500, 3, dtype=torch.float64)
    w = torch.rand(500, enc.out_dim, dtype=torch.float64)
    grads = []
    for arch in ("cpu", "cuda"):
        monkeypatch.setattr(mat_mod, "current_arch", lambda arch=arch: arch)
        enc.table.grad = None
        (enc(x) * w).sum().backward()
        grads.append(enc.table.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_uv_tangent_operator_matches_uv_tangents_and_follows_a_new_atlas():
    v, f = _sphere(2)
    v = v.double()
    faces2, mat = make_textured_material(v.float(), f, _procedural, (100, 100))
    op = uv_tangent_operator(faces2, mat.uvs, mat.uv_faces, v.shape[0], torch.float64)
    a = uv_tangents(v, faces2, mat.uvs, mat.uv_faces)
    assert torch.allclose(uv_tangents(v, faces2, mat.uvs, mat.uv_faces, op), a, atol=1e-12)
    # independent reference: each face's tangent T from its 2×2 UV system (e1, e2) = Δuv · (T, B),
    # weighted by its UV area |det Δuv| and summed per UV corner with a plain loop
    ref = torch.zeros(mat.uvs.shape[0], 3, dtype=torch.float64)
    for k in range(faces2.shape[0]):
        p, t = v[faces2[k].long()], mat.uvs.double()[mat.uv_faces[k].long()]
        duv = torch.stack([t[1] - t[0], t[2] - t[0]])
        tb = torch.linalg.solve(duv, torch.stack([p[1] - p[0], p[2] - p[0]]))
        for c in mat.uv_faces[k].long():
            ref[c] += tb[0] * torch.linalg.det(duv).abs()
    assert torch.allclose(a, ref / ref.norm(dim=1, keepdim=True), atol=1e-9)
    # the material keeps its matrix while nothing changes and rebuilds it for a new atlas
    t1 = mat.tangents(v, faces2)
    op1 = mat._tangent_op[3]
    mat.tangents(v, faces2)
    assert torch.allclose(t1, a, atol=1e-12) and mat._tangent_op[3] is op1
    mat.uv_faces = mat.uv_faces[:, [1, 2, 0]].contiguous()  # the UV corners rotated on every face:
    t2 = mat.tangents(v, faces2)  # a stale matrix would give the old answer
    assert mat._tangent_op[3] is not op1
    assert torch.allclose(t2, uv_tangents(v, faces2, mat.uvs, mat.uv_faces), atol=1e-12)
    with pytest.raises(ValueError, match="uv_faces"):
        uv_tangent_operator(faces2, mat.uvs, mat.uv_faces[:-1], v.shape[0])
    with pytest.raises(ValueError, match="operator"):
        uv_tangents(v.float(), faces2, mat.uvs, mat.uv_faces, op)  # built for float64
    # a checkpoint pickles the material: without the cache, which the copy rebuilds on first use
    copy = pickle.loads(pickle.dumps(mat))
    assert not hasattr(copy, "_tangent_op") and hasattr(mat, "_tangent_op")
    assert torch.allclose(copy.tangents(v, faces2), t2, atol=1e-12)

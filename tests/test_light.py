"""EnvironmentLight (split-sum): BRDF table, filters, the fused kernel against the slow torch reference
(tests/shading_reference.py; values and gradients, float32 and float64), lat-long I/O, bad input.
(Finite-difference checks of every gradient are the cases of taichi_dr/gradcheck/light.py.)"""
import math
import warnings

import pytest
import torch

from taichi_dr import EnvironmentLight
import shading_reference as ref
from taichi_dr.render.light import brdf_lut, cube_directions
from taichi_dr.render.texture import texture
from test_shading import compare, pixels

GEN = torch.Generator().manual_seed(0)


def test_brdf_lut_limits_and_energy():
    lut = brdf_lut()
    assert lut.shape == (32, 32, 2)
    assert torch.allclose(lut[0, -1], torch.tensor([1.0, 0.0]), atol=2e-3)  # smooth, normal incidence: F0
    assert float(lut.sum(-1).max()) <= 1.01  # A + B is the albedo with F0 = 1: at most 1 (+ MC noise)
    assert float(lut[..., 1].min()) >= 0


def test_cube_solid_angles_sum_to_sphere():
    _, om = cube_directions(16, torch.float64)
    assert math.isclose(float(om.sum()), 4 * math.pi, rel_tol=2e-3)


def test_constant_environment_gives_furnace_shading():
    env = EnvironmentLight(16, init=1.0).double()
    n = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(1, 2, 2, 3).contiguous()
    pos = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    cam = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    kd = torch.full((1, 2, 2, 3), 0.5, dtype=torch.float64)
    ks = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64).expand(1, 2, 2, 3)
    # constant radiance 1: irradiance/π = 1 for the diffuse term; prefiltered maps are 1 too
    assert torch.allclose(env.irradiance(), torch.ones(6, 8, 8, 3, dtype=torch.float64), atol=1e-6)
    out = env.shade(pos, n, kd, ks, cam).detach()
    lut = brdf_lut()
    assert float(out.min()) > 0.5 and float(out.max()) < 0.5 + float(lut.sum(-1).max()) + 1e-3


@pytest.mark.slow  # compiles the texture kernels of the reference in both precisions (~10 s on a busy 2-core CPU)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("with_ks", [True, False])
def test_env_kernel_matches_torch_reference(dtype, tol, with_ks):
    pos, n, kd, ks, cam = pixels(dtype)
    env = EnvironmentLight(8)
    base = torch.rand(6, 8, 8, 3, dtype=dtype, generator=torch.Generator().manual_seed(3)) * 2

    def fast(b, *x):
        del env.base
        env.base = b
        return env.shade(*x[:3], x[3] if with_ks else None, cam)
    compare(fast, lambda b, *x: ref.shade_env(b, env.roughness_levels, *x[:3], x[3] if with_ks else None, cam),
            [base, pos, n, kd] + ([ks] if with_ks else []), tol, f"EnvironmentLight with_ks={with_ks}")


def test_env_shades_each_view_with_its_camera_and_empty_batches():
    """A batch of many 2-pixel views (CPU: the backward's pixel blocks span several views, the
    forward's blocks are cut at every view) equals each view shaded alone, values and gradients;
    an empty batch returns an empty image and zero map gradients (it used to divide by zero)."""
    pos, n, kd, ks, cam = pixels(torch.float64, N=40, H=1, W=2, seed=5)
    env = EnvironmentLight(8).double()
    with torch.no_grad():
        env.base.copy_(torch.rand(6, 8, 8, 3, dtype=torch.float64, generator=GEN))
    w = torch.rand(pos.shape, dtype=torch.float64, generator=GEN)
    x = [t.clone().requires_grad_(True) for t in (pos, n, kd, ks)]
    out = env.shade(*x, cam)
    (out * w).sum().backward()
    g_env = env.base.grad.clone()
    env.base.grad = None
    for i in range(pos.shape[0]):
        xi = [t[i:i + 1].clone().requires_grad_(True) for t in (pos, n, kd, ks)]
        oi = env.shade(*xi, cam[i:i + 1])
        (oi * w[i:i + 1]).sum().backward()
        assert torch.allclose(oi.detach(), out.detach()[i:i + 1], rtol=0, atol=1e-13)
        for a, b in zip(xi, x):
            assert torch.allclose(a.grad, b.grad[i:i + 1], rtol=0, atol=1e-12)
    assert torch.allclose(env.base.grad, g_env, rtol=0, atol=1e-11)
    env.base.grad = None
    e = [t[:, :0].clone().requires_grad_(True) for t in (pos, n, kd, ks)]
    out = env.shade(*e, cam)
    assert out.shape == (40, 0, 2, 3)
    out.sum().backward()
    assert env.base.grad is not None and float(env.base.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_maps_look_up_like_texture_at_face_edges_and_corners(dtype):
    """The kernels read cube maps with a one-texel border copied from the neighbouring faces
    (light._pad_index); a lookup there must equal texture(boundary_mode='cube'), which
    re-projects each tap itself. Normals on and next to every cube edge and corner, where
    the border is read."""
    g = torch.Generator().manual_seed(5)
    d = torch.randn(4000, 3, dtype=torch.float64, generator=g)
    a = torch.randint(0, 3, (4000,), generator=g)
    b = (a + 1 + torch.randint(0, 2, (4000,), generator=g)) % 3
    rows = torch.arange(4000)
    # |d_a| = |d_b| (+ a tiny offset either way): exactly on an edge, or just beside it
    eps = torch.tensor([0.0, 1e-6, -1e-6], dtype=torch.float64)[torch.randint(0, 3, (4000,), generator=g)]
    d[rows, b] = d[rows, a].abs() * torch.sign(d[rows, b]) * (1 + eps)
    corners = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)], dtype=torch.float64)
    n = torch.nn.functional.normalize(torch.cat([d, corners]), dim=-1).to(dtype).reshape(1, 8, -1, 3)
    env = EnvironmentLight(8).to(dtype)
    with torch.no_grad():
        env.base.copy_(torch.rand(6, 8, 8, 3, dtype=torch.float64, generator=g))
    ones = torch.ones_like(n)
    got = env.shade(torch.zeros_like(n), n, ones, None, torch.tensor([[0.0, 0.0, 3.0]], dtype=dtype))
    want = texture(env.irradiance().detach()[None], n.contiguous(), filter_mode="linear", boundary_mode="cube")
    assert float((got.detach() - want).abs().max()) <= (1e-6 if dtype == torch.float32 else 1e-13)


def test_prefiltered_maps_match_dense_filters_without_warnings():
    env = EnvironmentLight(16).double()
    with torch.no_grad():
        env.base.copy_(torch.rand(6, 16, 16, 3, dtype=torch.float64, generator=GEN))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "Sparse invariant checks are implicitly disabled"
        spec, irr = env.specular_maps(), env.irradiance()
    want_spec, want_irr = ref.prefiltered(env.base.detach(), env.roughness_levels)
    assert [m.shape[1] for m in spec] == [16, 8, 4, 4, 4]
    for got, want in zip(spec + [irr], want_spec + [want_irr]):
        assert torch.allclose(got, want, atol=1e-12)


def test_latlong_roundtrip_and_files(tmp_path):
    env = EnvironmentLight(16).double()
    d, _ = cube_directions(16, torch.float64)
    with torch.no_grad():  # a smooth environment: brighter towards +y, reddish towards +x
        env.base.copy_(torch.stack([1 + 0.5 * d[..., 0], 1 + 0.3 * d[..., 1], 1 + 0.2 * d[..., 1]], -1))
    lat = env.to_latlong(32)
    env2 = EnvironmentLight(16).double()
    env2.load_latlong(lat)
    assert float((env2.base - env.base).detach().abs().max()) < 0.03
    env.save(str(tmp_path / "env.npy"))
    env3 = EnvironmentLight(16).double()
    env3.load(str(tmp_path / "env.npy"))
    assert float((env3.base - env.base).abs().max()) < 0.05
    with pytest.raises(ValueError, match="no such file"):
        env3.load(str(tmp_path / "missing.npy"))


def test_light_bad_input():
    with pytest.raises(ValueError, match="resolution"):
        EnvironmentLight(12)
    with pytest.raises(ValueError, match="roughness_levels"):
        EnvironmentLight(8, roughness_levels=(0.5,))
    env = EnvironmentLight(8)
    x = torch.zeros(1, 1, 1, 3)
    with pytest.raises(ValueError, match="roughness"):
        env.shade(x, x + torch.tensor([0, 0, 1.0]), x, x - 1, torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"ks: expected shape \[N, H, W, 3\]"):
        env.shade(x, x + torch.tensor([0, 0, 1.0]), x, x[..., :1], torch.ones(1, 3))

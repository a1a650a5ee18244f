"""EnvironmentLight (split-sum): BRDF table, filters, gradients w.r.t. the cube map, lat-long I/O."""
import math

import pytest
import torch

from taichi_dr import EnvironmentLight
from taichi_dr.render.light import brdf_lut, cube_directions

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
    zero = torch.zeros(1, 2, 2, 1, dtype=torch.float64)
    # constant radiance 1: irradiance/π = 1 for the diffuse term; prefiltered maps are 1 too
    assert torch.allclose(env.irradiance(), torch.ones(6, 8, 8, 3, dtype=torch.float64), atol=1e-6)
    out = env.shade(pos, n, kd, zero + 0.5, zero, cam)
    lut = brdf_lut()
    assert float(out.min()) > 0.5 and float(out.max()) < 0.5 + float(lut.sum(-1).max()) + 1e-3


def test_gradcheck_env_light_wrt_cube_map():
    pos = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=GEN) * 0.1
    n = torch.nn.functional.normalize(torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=GEN)
                                      + torch.tensor([0, 0, 2.0], dtype=torch.float64), dim=-1)
    cam = torch.tensor([[0.0, 0.3, 3.0]], dtype=torch.float64)
    kd = torch.rand(1, 2, 3, 3, dtype=torch.float64, generator=GEN)
    r = torch.rand(1, 2, 3, 1, dtype=torch.float64, generator=GEN) * 0.7 + 0.15
    m = torch.rand(1, 2, 3, 1, dtype=torch.float64, generator=GEN)
    env = EnvironmentLight(8).double()

    def shade(base):
        del env.base
        env.base = base
        return env.shade(pos, n, kd, r, m, cam)
    base = torch.rand(6, 8, 8, 3, dtype=torch.float64, generator=GEN)
    assert torch.autograd.gradcheck(shade, (base.requires_grad_(),), eps=1e-6, atol=1e-6, fast_mode=True)


def test_latlong_roundtrip_and_files(tmp_path):
    env = EnvironmentLight(16).double()
    d, _ = cube_directions(16, torch.float64)
    with torch.no_grad():  # a smooth environment: brighter towards +y, reddish towards +x
        env.base.copy_(torch.stack([1 + 0.5 * d[..., 0], 1 + 0.3 * d[..., 1], 1 + 0.2 * d[..., 1]], -1))
    lat = env.to_latlong(32)
    env2 = EnvironmentLight(16).double()
    env2.load_latlong(lat)
    assert float((env2.base - env.base).abs().max()) < 0.03
    env.save(str(tmp_path / "env.npy"))
    env3 = EnvironmentLight(16).double()
    env3.load(str(tmp_path / "env.npy"))
    assert float((env3.base - env.base).abs().max()) < 0.05
    with pytest.raises(ValueError, match="no such file"):
        env3.load(str(tmp_path / "missing.npy"))


def test_light_bad_input():
    with pytest.raises(ValueError, match="resolution"):
        EnvironmentLight(12)
    env = EnvironmentLight(8)
    x = torch.zeros(1, 1, 1, 3)
    with pytest.raises(ValueError, match="roughness"):
        env.shade(x, x + torch.tensor([0, 0, 1.0]), x, -torch.ones(1, 1, 1, 1), x[..., :1], torch.ones(1, 3))

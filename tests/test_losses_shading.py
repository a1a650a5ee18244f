"""Losses, tone mapping, shading functions: formulas at sample points, float64 gradients, bad input."""
import math

import pytest
import torch

from taichi_dr import image_loss, laplacian_loss, lambert, mask_loss, tonemap_srgb, vertex_normals
from taichi_dr.losses import linear_to_srgb, srgb_to_linear
from taichi_dr.render.shading import ggx_bsdf, ggx_specular


def gamma(x):
    return 12.92 * x if x <= 0.0031308 else 1.055 * x ** (1 / 2.4) - 0.055


@pytest.mark.parametrize("x", [0.0, 1e-4, 0.003, 0.0031, 0.01, 0.2, 1.0, 5.0, 100.0])
def test_tonemap_matches_formula(x):
    # includes log(x + 1) <= 0.0031308 (x = 1e-4, 0.003, 0.0031): the linear segment of Γ
    expected = min(max(gamma(math.log(x + 1)), 0.0), 1.0)
    assert math.isclose(float(tonemap_srgb(torch.tensor(x, dtype=torch.float64))), expected, rel_tol=1e-12, abs_tol=1e-15)


def test_srgb_roundtrip_and_loss_values():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-12)
    a, b = torch.rand(2, 4, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(image_loss(a, b)), float((tonemap_srgb(a) - tonemap_srgb(b)).abs().mean()))
    assert math.isclose(float(image_loss(a, b, "mse")), float(((a - b) ** 2).mean()))
    assert math.isclose(float(image_loss(a, b, "relmse")), float(((a - b) ** 2 / (a * a + b * b + 0.1)).mean()))
    assert math.isclose(float(mask_loss(a[..., :1], b[..., :1])), float(((a - b)[..., :1] ** 2).mean()))


def test_gradcheck_losses():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 3, 3, dtype=torch.float64, generator=gen) * 2
    b = torch.rand(2, 3, 3, 3, dtype=torch.float64, generator=gen) * 2
    for kind in ("logl1", "logl2", "mse", "relmse", "smape"):
        assert torch.autograd.gradcheck(lambda p: image_loss(p, b, kind), (a.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda p: mask_loss(p, b), (a.clone().requires_grad_(),))
    v = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4]])
    assert torch.autograd.gradcheck(lambda p: laplacian_loss(p, f), (v.clone().requires_grad_(),))


def sphere_mesh(n=24):
    th, ph = torch.linspace(0.05, math.pi - 0.05, n, dtype=torch.float64), torch.linspace(0, 2 * math.pi, n + 1,
                                                                                            dtype=torch.float64)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    v = torch.stack([T.sin() * P.cos(), T.cos(), T.sin() * P.sin()], -1).reshape(-1, 3)
    i, j = torch.arange(n - 1)[:, None] * n, torch.arange(n)[None]
    a, b = i + j, i + (j + 1) % n
    f = torch.cat([torch.stack([a, a + n, b], -1).reshape(-1, 3), torch.stack([b, a + n, b + n], -1).reshape(-1, 3)])
    return v, f[:, [0, 2, 1]]  # counter-clockwise seen from outside


def test_vertex_normals_of_a_sphere_are_radial_and_differentiable():
    v, f = sphere_mesh()
    n = vertex_normals(v, f)
    inner = slice(24, -24)  # away from the open poles
    assert float((n * v).sum(1)[inner].min()) > 0.995
    tet_v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.3, 1]], dtype=torch.float64)
    tet_f = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    assert torch.autograd.gradcheck(lambda p: vertex_normals(p, tet_f), (tet_v.requires_grad_(),))


def _hemisphere(n=96):
    # midpoint quadrature over the hemisphere around +z
    th = (torch.arange(n, dtype=torch.float64) + 0.5) * (math.pi / 2) / n
    ph = (torch.arange(2 * n, dtype=torch.float64) + 0.5) * (2 * math.pi) / (2 * n)
    T, P = torch.meshgrid(th, ph, indexing="ij")
    d = torch.stack([T.sin() * P.cos(), T.sin() * P.sin(), T.cos()], -1).reshape(-1, 3)
    dw = (T.sin() * (math.pi / 2 / n) * (2 * math.pi / (2 * n))).reshape(-1, 1)
    return d, dw


@pytest.mark.parametrize("rough", [0.1, 0.4, 0.8, 1.0])
@pytest.mark.parametrize("view_deg", [0.0, 45.0, 75.0])
def test_ggx_white_furnace_energy_at_most_one(rough, view_deg):
    d, dw = _hemisphere()
    n = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(d)
    v = torch.tensor([math.sin(math.radians(view_deg)), 0.0, math.cos(math.radians(view_deg))], dtype=torch.float64)
    spec = ggx_specular(n, v.expand_as(d), d, torch.tensor([[rough]], dtype=torch.float64),
                        torch.ones(1, 1, dtype=torch.float64))  # F0 = 1: the worst case
    energy = float((spec * dw).sum())
    assert energy <= 1.0 + 1e-3
    if rough >= 0.4:  # a narrower lobe is not resolved by this quadrature
        assert energy > 0.25  # and it is not trivially zero (single scattering loses energy at high α)


def test_lambert_and_bsdf_gradients_and_bad_roughness():
    gen = torch.Generator().manual_seed(2)
    n = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64, generator=gen) + torch.tensor([0, 0, 3.0]), dim=-1)
    v = torch.nn.functional.normalize(torch.tensor([[0.2, 0.1, 1.0]], dtype=torch.float64), dim=-1).expand(4, 3)
    l = torch.nn.functional.normalize(torch.tensor([[-0.3, 0.2, 1.0]], dtype=torch.float64), dim=-1).expand(4, 3)
    kd = torch.rand(4, 3, dtype=torch.float64, generator=gen)
    r = torch.full((4, 1), 0.5, dtype=torch.float64)
    m = torch.full((4, 1), 0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda nn_: lambert(nn_, l), (n.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda a, b, c, d: ggx_bsdf(a, b, c, d, v, l),
                                    (kd.requires_grad_(), r.requires_grad_(), m.requires_grad_(), n.requires_grad_()))
    with pytest.raises(ValueError, match="roughness"):
        ggx_bsdf(kd, -r, m, n, v, l)


def test_loss_bad_input():
    with pytest.raises(ValueError, match="target: expected shape"):
        image_loss(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="kind"):
        image_loss(torch.zeros(2, 3), torch.zeros(2, 3), "l7")
    with pytest.raises(TypeError, match="pred: expected dtype"):
        image_loss(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3))

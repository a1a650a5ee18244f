"""Shading: sphere normals, white furnace, light helpers against the BSDF formula written out by hand,
float64 gradients, bad input."""
import math

import pytest
import torch

from taichi_dr import (face_normals, ggx_bsdf, ggx_specular, lambert, shade_directional_light, shade_point_light,
                       vertex_normals)

D = torch.float64


def unit(*x):
    return torch.nn.functional.normalize(torch.tensor(x, dtype=D), dim=-1)


def test_ggx_specular_matches_hand_formula_at_one_point():
    n, v, l = unit(0, 0, 1), unit(0.3, 0, 1), unit(-0.2, 0.4, 1)
    r, f0 = 0.5, 0.04
    a2 = (r * r) ** 2
    h = (v + l) / (v + l).norm()
    nh, nl, nv, vh = float(n @ h), float(n @ l), float(n @ v), float(v @ h)
    d = a2 / (math.pi * (nh * nh * (a2 - 1) + 1) ** 2)
    lam = lambda c: 0.5 * (math.sqrt(1 + a2 * (1 - c * c) / (c * c)) - 1)  # noqa: E731
    g = 1 / (1 + lam(nl) + lam(nv))
    f = f0 + (1 - f0) * (1 - vh) ** 5
    expected = f * d * g / (4 * nv)  # = f·D·G/(4 n·l n·v) · n·l
    got = float(ggx_specular(n, v, l, torch.tensor([r], dtype=D), torch.tensor([f0], dtype=D)))
    assert math.isclose(got, expected, rel_tol=1e-10)


def test_light_helpers():
    kd = torch.tensor([[0.6, 0.3, 0.1]], dtype=D)
    r, m = torch.tensor([[0.4]], dtype=D), torch.tensor([[0.2]], dtype=D)
    n = unit(0, 0, 1)[None]
    pos = torch.tensor([[0.0, 0.0, 0.0]], dtype=D)
    cam, light = torch.tensor([[0.5, 0.0, 3.0]], dtype=D), torch.tensor([[0.0, 1.0, 2.0]], dtype=D)
    col = torch.tensor([2.0, 1.0, 0.5], dtype=D)
    ref = ggx_bsdf(kd, r, m, n, unit(0.5, 0, 3)[None], unit(0, 1, 2)[None]) * col / 5.0  # d² = 5
    assert torch.allclose(shade_point_light(kd, r, m, n, pos, cam, light, col), ref, rtol=1e-12)
    ref_dir = ggx_bsdf(kd, r, m, n, unit(0.5, 0, 3)[None], unit(0, 1, 2)[None]) * col
    assert torch.allclose(shade_directional_light(kd, r, m, n, unit(0.5, 0, 3)[None],
                                                  torch.tensor([[0.0, 2.0, 4.0]], dtype=D), col), ref_dir)
    # light below the surface: black (no diffuse, no specular)
    below = shade_directional_light(kd, r, m, n, unit(0.5, 0, 3)[None], unit(0, 0.3, -1)[None], col)
    assert float(below.abs().max()) == 0.0


def test_gradcheck_light_helpers_and_face_normals():
    g = torch.Generator().manual_seed(5)
    kd = torch.rand(3, 3, dtype=D, generator=g).requires_grad_()
    r = torch.full((3, 1), 0.6, dtype=D, requires_grad=True)
    m = torch.full((3, 1), 0.1, dtype=D, requires_grad=True)
    n = torch.nn.functional.normalize(torch.randn(3, 3, dtype=D, generator=g) * 0.2 + torch.tensor([0, 0, 1.0], dtype=D), dim=-1)
    pos = (torch.randn(3, 3, dtype=D, generator=g) * 0.1).requires_grad_()
    cam, light = torch.tensor([0.3, 0.2, 3.0], dtype=D), torch.tensor([-0.5, 1.0, 2.0], dtype=D).requires_grad_()
    col = torch.tensor([1.0, 0.8, 0.6], dtype=D)
    assert torch.autograd.gradcheck(lambda *a: shade_point_light(a[0], a[1], a[2], n, a[3], cam, a[4], col),
                                    (kd, r, m, pos, light))
    v = torch.randn(4, 3, dtype=D, generator=g).requires_grad_()
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert torch.autograd.gradcheck(lambda x: face_normals(x, f), (v,))


def test_shading_bad_input():
    n, v, l = unit(0, 0, 1)[None], unit(0, 0.2, 1)[None], unit(0.2, 0, 1)[None]
    with pytest.raises(ValueError, match="roughness"):
        ggx_specular(n, v, l, torch.tensor([[-0.1]], dtype=D), torch.tensor([[0.04]], dtype=D))
    with pytest.raises(ValueError, match=r"light_dir: expected shape \[\.\.\., 3\]"):
        lambert(n, torch.zeros(1, 2, dtype=D))
    with pytest.raises(ValueError, match="view_dir"):
        ggx_bsdf(torch.ones(1, 3, dtype=D), torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D), n,
                 torch.zeros(1, 4, dtype=D), l)
    with pytest.raises(ValueError, match="kd"):
        ggx_bsdf(torch.ones(1, 2, dtype=D), torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D), n, v, l)


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

"""Shading: the torch BSDF against the formula written out by hand, white furnace, sphere normals,
bad input; the fused directional / point light kernels against the slow torch reference
(tests/shading_reference.py), values and gradients in float32 and float64. (Finite-difference
checks of every gradient are the cases of taichi_dr/gradcheck/shading.py.)"""
import math

import pytest
import torch

import shading_reference as ref
from taichi_dr import (DirectionalLight, PointLight, ggx_bsdf, ggx_specular, lambert, perturb_normal,
                       vertex_normals)
from taichi_dr.render.shading import VertexNormalOperator

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


def test_vertex_normals_of_a_sphere_are_radial():
    v, f = sphere_mesh()
    n = vertex_normals(v, f)
    inner = slice(24, -24)  # away from the open poles
    assert float((n * v).sum(1)[inner].min()) > 0.995


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


def test_bsdf_bad_roughness():
    n = unit(0, 0, 1)[None]
    v, l = unit(0.2, 0.1, 1)[None], unit(-0.3, 0.2, 1)[None]
    with pytest.raises(ValueError, match="roughness"):
        ggx_bsdf(torch.ones(1, 3, dtype=D), -torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D), n, v, l)


# ---------------------------------------------------------------------- fused kernels vs the torch reference
def pixels(dtype, N=2, H=9, W=11, seed=0):
    """Random pixels: all normal directions (some facing away from light or camera), material
    values over their whole range, roughness below the 0.08 floor and above 1 too."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(N, H, W, 3, dtype=dtype, generator=g) * 0.3
    n = torch.nn.functional.normalize(torch.randn(N, H, W, 3, dtype=dtype, generator=g), dim=-1)
    kd = torch.rand(N, H, W, 3, dtype=dtype, generator=g)
    ks = torch.rand(N, H, W, 3, dtype=dtype, generator=g) * torch.tensor([1.0, 1.2, 1.0], dtype=dtype)
    cam = torch.randn(N, 3, dtype=dtype, generator=g) * 0.3 + torch.tensor([0, 0, 3.0], dtype=dtype)
    return pos, n, kd, ks, cam


def value_and_grads(fn, inputs, dtype):
    """fn(*inputs) in ``dtype`` and the gradients of a fixed random projection of it (zero on a
    third of the pixels)."""
    xs = [x.detach().to(dtype).requires_grad_() for x in inputs]
    out = fn(*xs)
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    if g.dim() == 4:
        g[:, :, ::3] = 0  # pixels with no output gradient (the background of a masked render): a path of their own
    grads = torch.autograd.grad((out * g).sum(), xs, allow_unused=True)
    return [out.detach()] + [torch.zeros_like(x) if d is None else d for x, d in zip(xs, grads)]


def compare(fast, slow, inputs, tol, what):
    """Values and gradients of fast(*inputs) against slow(*inputs), in the inputs' dtype.

    float64: max |fast − slow| ≤ tol·max(1, max |slow|). float32: against the exact answer (the
    reference in float64), the kernel's error must stay within that bound or within twice the
    float32 reference's own error: near the cosine clamps the gradients are differences of terms
    ~1e3, which float32 cannot resolve better whoever computes them.
    """
    dtype = inputs[0].dtype
    got = value_and_grads(fast, inputs, dtype)
    want = value_and_grads(slow, inputs, dtype)
    exact = value_and_grads(slow, inputs, torch.float64) if dtype == torch.float32 else want
    for i, (a, b, e) in enumerate(zip(got, want, exact)):
        scale = max(1.0, float(e.abs().max()))
        err = float((a.double() - e).abs().max())
        bound = max(tol * scale, 2.0 * float((b.double() - e).abs().max()))
        part = "value" if i == 0 else f"gradient of input {i - 1}"
        assert err <= bound, f"{what}, {part}: error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("point", [False, True])
@pytest.mark.parametrize("with_ks", [True, False])
def test_analytic_light_kernel_matches_torch_reference(dtype, tol, point, with_ks):
    pos, n, kd, ks, cam = pixels(dtype)
    vec = torch.tensor([0.5, 1.0, 2.0], dtype=dtype)
    col, amb = torch.tensor([1.0, 0.8, 0.6], dtype=dtype), torch.tensor([0.1, 0.2, 0.3], dtype=dtype)
    cls = PointLight if point else DirectionalLight
    inputs = [vec, col, amb, pos, n, kd] + ([ks] if with_ks else [])
    compare(lambda v, c, a, p, nn, kd_, *k: cls(v, c, a).shade(p, nn, kd_, k[0] if k else None, cam),
            lambda v, c, a, p, nn, kd_, *k: ref.shade_analytic(p, nn, kd_, k[0] if k else None, cam, v, c, a, point),
            inputs, tol, f"{cls.__name__} with_ks={with_ks}")


def test_directional_default_is_the_lambert_light_of_the_demo():
    pos, n, kd, _, cam = pixels(torch.float32, N=1)
    light = DirectionalLight.default()
    l = torch.nn.functional.normalize(light.direction, dim=0)
    expected = kd * (0.35 + 0.75 * (n * l).sum(-1, keepdim=True).clamp(min=0))  # ambient + diffuse·cos
    assert torch.allclose(light.shade(pos, n, kd, None, cam), expected, atol=1e-6)


def test_perturb_normal_flat_map_keeps_the_normal_and_follows_the_frame():
    n = unit(0, 0, 1).expand(4, 3)
    t = unit(1, 0, 0).expand(4, 3)
    ts = torch.tensor([[0, 0, 1.0], [1, 0, 1], [0, 1, 1], [0, 0, -1]], dtype=D)
    out = perturb_normal(n, t, ts)
    assert torch.allclose(out[0], unit(0, 0, 1))  # (0, 0, 1) = unperturbed
    assert torch.allclose(out[1], unit(1, 0, 1))  # +x of the map leans towards the tangent
    assert torch.allclose(out[2], unit(0, 1, 1))  # +y towards N × T (OpenGL "up")
    assert torch.allclose(out[3], torch.zeros(3, dtype=D))  # z clamped at 0, no x, y: degenerate -> 0


def test_light_shade_bad_input():
    pos, n, kd, ks, cam = pixels(torch.float32, N=1, H=2, W=2)
    light = DirectionalLight.default()
    with pytest.raises(ValueError, match=r"kd: expected shape \[1, 2, 2, 3\]"):
        light.shade(pos, n, kd[:, :1], ks, cam)
    with pytest.raises(TypeError, match="normal: expected dtype"):
        light.shade(pos, n.double(), kd, ks, cam)
    with pytest.raises(ValueError, match="campos"):
        light.shade(pos, n, kd, ks, cam[0])
    with pytest.raises(ValueError, match="roughness"):
        light.shade(pos, n, kd, ks - 2.0, cam)
    with pytest.raises(ValueError, match="direction"):
        DirectionalLight(torch.zeros(3), torch.ones(3)).shade(pos, n, kd, ks, cam)
    with pytest.raises(ValueError, match="color"):
        PointLight(torch.ones(3), torch.ones(2)).shade(pos, n, kd, ks, cam)


def _mesh_with_odd_faces():
    """A shuffled sphere patch plus a degenerate face (a vertex twice) and an unused vertex."""
    v, f = sphere_mesh()
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(v.shape[0], generator=g)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.shape[0])
    v = torch.cat([v[perm] + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype), torch.zeros(1, 3, dtype=v.dtype)])
    f = torch.cat([inv[f.long()], torch.tensor([[5, 5, 9]])]).to(torch.int32)
    return v, f


def test_vertex_normal_operator_matches_the_scatter_and_its_gradient_is_exact():
    v, f = _mesh_with_odd_faces()
    op = VertexNormalOperator(f, v.shape[0], torch.float64)
    assert torch.allclose(vertex_normals(v, f, op), vertex_normals(v, f), atol=1e-12)
    assert torch.equal(vertex_normals(v, f, op)[-1], torch.tensor([0.0, 0.0, 1.0], dtype=D))  # unused vertex
    # the backward (stored transposes) against the index_add path's autograd, then finite differences
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(4), dtype=D)
    x1, x2 = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
    (vertex_normals(x1, f, op) * w).sum().backward()
    (vertex_normals(x2, f) * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10)
    small = sphere_mesh(6)
    op_small = VertexNormalOperator(small[1], small[0].shape[0], torch.float64)
    x = small[0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: vertex_normals(p, small[1], op_small), (x,), eps=1e-6, atol=1e-7)


def test_vertex_normal_operator_rejects_another_mesh():
    v, f = _mesh_with_odd_faces()
    op = VertexNormalOperator(f, v.shape[0], torch.float64)
    with pytest.raises(ValueError, match="verts"):
        vertex_normals(v[:-1], f, op)  # the unused last vertex dropped: same faces, V - 1
    with pytest.raises(ValueError, match="operator"):
        vertex_normals(v, f[:-1], op)
    with pytest.raises(ValueError, match="verts"):
        vertex_normals(v.float(), f, op)
    with pytest.raises(ValueError, match="faces"):
        VertexNormalOperator(f, 3)

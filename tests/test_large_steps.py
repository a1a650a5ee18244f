"""Smooth-step parametrisation of the refinement pass (taichi_dr/recon/large_steps.py)."""
import numpy as np
import pytest
import torch

from taichi_dr.recon.large_steps import SmoothParametrization, graph_laplacian


def _octahedron():
    v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return v, f


def test_graph_laplacian_is_degree_minus_adjacency():
    _, f = _octahedron()
    L = graph_laplacian(f, 7).toarray()  # vertex 6 has no face: a zero row
    assert np.allclose(L, L.T)
    assert np.allclose(L.sum(axis=1), 0)
    assert np.allclose(np.diag(L)[:6], 4) and L[6, 6] == 0
    assert L[0, 1] == 0 and L[0, 2] == -1  # opposite vertices share no edge; neighbours do


def test_round_trip_and_identity_at_zero_lambda():
    v, f = _octahedron()
    sp = SmoothParametrization(f, 6, lam=5.0)
    assert torch.allclose(sp(sp.to_param(v)), v, atol=1e-12)
    assert torch.equal(SmoothParametrization(f, 6, lam=0.0).to_param(v), v)


def test_solve_matches_a_dense_solve_on_a_larger_mesh():
    """The symmetric-mode factorisation (no pivoting, minimum-degree order) against numpy's dense
    solve, on a subdivided octahedron whose vertex numbering is shuffled (fill depends on it)."""
    from taichi_dr.recon.subdivide import subdivide_midpoint

    v, f = subdivide_midpoint(*_octahedron(), times=4)  # 1,026 vertices
    perm = torch.randperm(v.shape[0], generator=torch.Generator().manual_seed(1))
    f = torch.argsort(perm)[f]
    lam = 20.0  # the refinement's default strength
    sp = SmoothParametrization(f, v.shape[0], lam)
    u = torch.randn(v.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dense = np.eye(v.shape[0]) + lam * graph_laplacian(f, v.shape[0]).toarray()
    assert np.allclose(sp(u).numpy(), np.linalg.solve(dense, u.numpy()), rtol=0, atol=1e-10)


def test_taichi_substitution_matches_superlu_solve():
    """Our Taichi forward / back substitution with SuperLU's factors (the CPU default) against
    SuperLU's own solve, for 1, 3 and 5 right-hand sides and a 1-D one, on a shuffled mesh."""
    from taichi_dr.recon.subdivide import subdivide_midpoint

    v, f = subdivide_midpoint(*_octahedron(), times=4)
    f = torch.argsort(torch.randperm(v.shape[0], generator=torch.Generator().manual_seed(3)))[f]
    ours = SmoothParametrization(f, v.shape[0], 20.0)
    ref = SmoothParametrization(f, v.shape[0], 20.0, solver="superlu")
    assert (ours.solver, ref.solver) == ("taichi", "superlu")
    gen = torch.Generator().manual_seed(4)
    for cols in (1, 3, 5):
        u = torch.randn(v.shape[0], cols, dtype=torch.float64, generator=gen)
        assert torch.allclose(ours(u), ref(u), rtol=0, atol=1e-13)
    b = u[:, 0].numpy()
    assert np.allclose(ours._lu.solve(b), ref._lu.solve(b), rtol=0, atol=1e-13)
    u32 = u.float()  # float32 parameters are solved in float64 and come back as float32
    assert ours(u32).dtype == torch.float32 and torch.allclose(ours(u32), ref(u32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("solver", ["taichi", "superlu"])
def test_solve_gradient_matches_finite_differences(solver):
    v, f = _octahedron()
    sp = SmoothParametrization(f, 6, lam=3.0, solver=solver)
    assert sp.solver == solver
    u = sp.to_param(v).requires_grad_(True)
    w = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda x: (sp(x) * w).sum() + sp(x).pow(2).sum(), (u,), eps=1e-6, atol=1e-7)


def test_smooth_step_spreads_a_one_vertex_gradient():
    """A gradient on one vertex moves its neighbours too (the point of the preconditioner), and a
    step that is constant over the mesh passes unchanged (L has constants in its null space)."""
    v, f = _octahedron()
    sp = SmoothParametrization(f, 6, lam=2.0)
    g = torch.zeros(6, 3, dtype=torch.float64)
    g[4, 2] = 1.0
    dx = sp(g)
    assert dx[4, 2] > 0 and (dx[[0, 1, 2, 3], 2] > 0).all() and dx[4, 2] < 1
    assert torch.allclose(sp(torch.ones(6, 3, dtype=torch.float64)), torch.ones(6, 3, dtype=torch.float64))


def test_bad_input_raises():
    _, f = _octahedron()
    with pytest.raises(ValueError, match="lam"):
        SmoothParametrization(f, 6, lam=-1.0)
    with pytest.raises(ValueError, match="faces"):
        graph_laplacian(f, 4)
    with pytest.raises(ValueError, match="u"):
        SmoothParametrization(f, 6, lam=1.0)(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="solver.*'cholmod'"):
        SmoothParametrization(f, 6, lam=1.0, solver="cholmod")

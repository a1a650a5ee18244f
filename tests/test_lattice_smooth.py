"""LatticeSmoother (smooth steps for DMTet's direct mode): the solve against an independent sparse
reference, its float64 gradient, and what it does inside DMTet."""
import numpy as np
import pytest
import torch
from scipy.sparse import diags, identity, kron
from scipy.sparse.linalg import spsolve

from taichi_dr import DMTet, TetGrid
from taichi_dr.geometry.lattice_smooth import LatticeSmoother


def lattice_laplacian(n: int):
    """The 6-neighbour graph Laplacian of an n³ lattice (x-major), from Kronecker sums of path graphs."""
    adj = diags([np.ones(n - 1), np.ones(n - 1)], [1, -1], shape=(n, n))
    path = diags(np.asarray(adj.sum(axis=1)).ravel()) - adj
    eye = identity(n)
    return (kron(kron(path, eye), eye) + kron(kron(eye, path), eye) + kron(kron(eye, eye), path)).tocsc()


@pytest.mark.parametrize("n,lam", [(1, 3.0), (4, 0.7), (6, 5.0)])
def test_solve_matches_sparse_reference(n, lam):
    u = torch.randn(n ** 3, 3, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    ref = spsolve(identity(n ** 3, format="csc") + lam * lattice_laplacian(n), u.numpy())
    s = LatticeSmoother(n, lam).double()
    np.testing.assert_allclose(s(u).numpy(), ref.reshape(u.shape), atol=1e-12)
    np.testing.assert_allclose(s(u[:, 0]).numpy(), ref.reshape(u.shape)[:, 0], atol=1e-12)
    np.testing.assert_allclose(s.inverse(s(u)).numpy(), u.numpy(), atol=1e-10)


def test_gradient_float64_finite_differences():
    s = LatticeSmoother(4, 1.5).double()
    u = torch.randn(64, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: s(x).sin(), (u,), eps=1e-6, atol=1e-8)


def test_damps_one_vertex_wiggle_keeps_constants():
    n, lam = 9, 1.0
    s = LatticeSmoother(n, lam)
    const = torch.full((n ** 3,), 2.5)
    assert torch.allclose(s(const), const, atol=1e-5)  # the constant mode has eigenvalue 0
    delta = torch.zeros(n ** 3)
    delta[(4 * n + 4) * n + 4] = 1.0
    x = s(delta)
    # total is conserved (L's rows sum to 0); the peak shrinks below 1 / (1 + λ), spread over the neighbours
    assert x.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert 0.05 < x.max().item() < 1.0 / (1.0 + lam)
    assert (x >= -1e-6).all()  # (I + λL)⁻¹ is an M-matrix inverse: non-negative


def test_dmtet_smoothing_fits_the_target_and_moves_smoothly():
    grid = TetGrid.create(6, 2.0)
    m = DMTet(grid=grid, mode="direct", smoothing=2.0)
    target = grid.verts.norm(dim=1) - 0.6
    m.fit_sdf_values(target)
    sdf, offsets = m()
    assert torch.allclose(sdf, target, atol=1e-5) and offsets.abs().max() < 1e-6
    # one vertex's gradient moves the SDF as a smooth bump, not one value
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    i = (3 * 7 + 3) * 7 + 3
    m()[0][i].backward()
    opt.step()
    change = (target - m()[0].detach()).reshape(7, 7, 7)
    assert change[3, 3, 3] > change[3, 3, 4] > change[3, 3, 5] > 0


def test_smoothing_bad_input():
    with pytest.raises(ValueError, match="lam"):
        LatticeSmoother(4, -1.0)
    with pytest.raises(ValueError, match="n: expected"):
        LatticeSmoother(0, 1.0)
    with pytest.raises(ValueError, match=r"x: expected shape \[64\]"):
        LatticeSmoother(4, 1.0)(torch.zeros(10))
    with pytest.raises(ValueError, match="smoothing: needs mode='direct'"):
        DMTet(grid=TetGrid.create(3, 2.0), mode="mlp", smoothing=1.0)

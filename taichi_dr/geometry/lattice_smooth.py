"""Smooth steps for values on a cubic lattice: ``x = (I + λL)⁻¹ u`` by a cosine transform.

Why: DMTet's direct mode gives every grid vertex its own SDF value and offset, and Adam moves each
of them by about the learning rate per step whatever its gradient, so where the gradient is mostly
noise (four random views a step) the values random-walk and the surface grows lumps one cell wide;
the finer the grid, the more vertices a training pixel has to pin down and the lumpier it gets
(docs/08). Nicolet et al.'s "large steps" (the refinement pass, ``recon/large_steps.py``) fix the
same problem on a mesh: optimise ``u = (I + λL) x`` instead of ``x``; a step on ``u`` moves ``x`` by
``(I + λL)⁻¹`` times it, which damps a one-vertex wiggle by ``1 / (1 + 12λ)`` and leaves a bump
many vertices wide (a real correction) almost untouched.

On the tet grid's ``(R+1)³`` lattice, ``L`` is taken as the 6-neighbour graph Laplacian with
reflecting borders. It is separable and diagonalised by the orthonormal DCT-II along each axis (its
eigenvalue for frequencies ``(a, b, c)`` is ``Σ 2 − 2cos(πk/n)``), so the solve is three small dense
transforms, a division and three back: no factorisation, the same on every device, differentiable
by autograd (the operator is symmetric, so its adjoint is itself).
"""
import math

import torch

__all__ = ["LatticeSmoother"]


class LatticeSmoother(torch.nn.Module):
    """``x = (I + λL)⁻¹ u`` for values on an ``n × n × n`` lattice stored x-major (``TetGrid.create``).

    Args:
        n: lattice points per axis (``resolution + 1``).
        lam: ``λ ≥ 0``; a step spreads over about ``√λ`` lattice spacings (``0``: ``x = u``).
    """

    def __init__(self, n: int, lam: float):
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected an int >= 1, got {n!r}")
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam: expected a finite number >= 0, got {lam!r}")
        self.n, self.lam = n, float(lam)
        k = torch.arange(n, dtype=torch.float64)
        j = torch.arange(n, dtype=torch.float64) + 0.5
        dct = torch.cos(math.pi * k[:, None] * j[None, :] / n) * math.sqrt(2.0 / n)
        dct[0] /= math.sqrt(2.0)  # orthonormal DCT-II: row k is the path graph Laplacian's eigenvector k
        mu = 2.0 - 2.0 * torch.cos(math.pi * k / n)
        gain = 1.0 / (1.0 + self.lam * (mu[:, None, None] + mu[None, :, None] + mu[None, None, :]))
        # float64, cast to the input's dtype per call (a float64 check then has float64 transforms); derived
        # from (n, λ), so not in checkpoints
        self.register_buffer("dct", dct, persistent=False)
        self.register_buffer("gain", gain, persistent=False)

    def _transform(self, x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
        """``mat [n, n]`` applied along each of the three lattice axes of ``x [C, n, n, n]``, each as one
        (batched) matrix product on a view: no transposed copies."""
        c, n = x.shape[0], self.n
        x = torch.matmul(mat, x.reshape(c, n, n * n)).reshape(c, n, n, n)  # axis i
        x = torch.matmul(mat, x)  # axis j: mat @ x[c, i] for every (c, i)
        return (x.reshape(-1, n) @ mat.t()).reshape(c, n, n, n)  # axis l

    def _solve(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        n = self.n
        if x.shape[0] != n ** 3 or x.dim() not in (1, 2):
            raise ValueError(f"x: expected shape [{n ** 3}] or [{n ** 3}, C], got {list(x.shape)}")
        y = x.reshape(n ** 3, -1).t().reshape(-1, n, n, n)  # channels first: [C, n, n, n]
        dct = self.dct.to(x.dtype)
        y = self._transform(self._transform(y, dct) * gain.to(x.dtype), dct.t())
        return y.reshape(-1, n ** 3).t().reshape(x.shape)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``x = (I + λL)⁻¹ u`` for ``u [n³]`` or ``[n³, C]`` (float32 or float64), differentiable."""
        return u if self.lam == 0 else self._solve(u, self.gain)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """``u = (I + λL) x``: the parameters that give ``x`` (no gradient needed)."""
        return x if self.lam == 0 else self._solve(x, 1.0 / self.gain)

"""Smooth ("large") steps for the refinement pass: vertex positions through a Laplacian preconditioner.

Why: the refinement pass moves vertices by the image loss's gradient, which reaches a vertex mostly
through the normals of the faces around it. A gradient step on positions then acts like one Jacobi
sweep of a Poisson problem: it fixes one-vertex noise quickly and a bump ten vertices wide hardly at
all, so the wide bulges that a visual hull leaves on flat walls survive a whole pass (measured on the
Mitsuba bowl: Chamfer 2.2e-4 at the start of the pass, 2.2e-4 at its end), while the per-vertex steps
add new one-pixel lumps. Nicolet et al., "Large Steps in Inverse Rendering of Geometry" (SIGGRAPH
Asia 2021) optimise ``u = (I + λL) x`` instead of ``x`` (``L``: the mesh's graph Laplacian): a step on
``u`` moves ``x`` by ``(I + λL)⁻¹`` times it, a smooth field whose wide components are as large as
its narrow ones, i.e. a Sobolev gradient. Their Adam variant divides by one scalar (the largest
second moment of all vertices) so that the step keeps that smoothness; we measured it and kept
Adam's per-coordinate denominator on ``u``: with one denominator, the few vertices with the largest
gradients set every vertex's step and the rest (a thin rod's silhouette) barely moved (docs/08).

Here: :class:`SmoothParametrization`, the sparse factorisation (once per topology) and the
differentiable solve. The factorisation is SuperLU's; on the CPU arch its two triangular factors are
then applied by our own Taichi substitution loops (recon/_trisolve_kernels.py), whose time does not
depend on the vertex numbering as SuperLU's own solve does: 1.8x faster on the box-with-a-hole's
refinement mesh, 0.9-1.4x on three others, 0.7-1.1x on synthetic ones (docs/08 round 34).
"""

from typing import Optional

import numpy as np
import torch
from scipy.sparse import coo_matrix, identity
from scipy.sparse.linalg import splu

from taichi_dr.runtime import ensure_init

__all__ = ["graph_laplacian", "SmoothParametrization", "SOLVERS"]

SOLVERS = ("auto", "superlu", "taichi")


def graph_laplacian(faces: torch.Tensor, num_verts: int):
    """The combinatorial Laplacian ``L = D − A`` of a triangle mesh's edge graph.

    Args:
        faces: ``[F, 3]`` int triangles; num_verts: ``V`` (vertices without a face get a zero row).

    Returns:
        ``scipy.sparse.csc_matrix`` ``[V, V]`` float64, symmetric positive semi-definite.
    """
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    f = faces.detach().cpu().long().numpy()
    if f.size and (f.min() < 0 or f.max() >= num_verts):
        raise ValueError(f"faces: expected indices in [0, {num_verts}), got [{f.min()}, {f.max()}]")
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)  # each undirected edge once
    i, j = np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]]
    adj = coo_matrix((np.ones(len(i)), (i, j)), shape=(num_verts, num_verts)).tocsr()
    deg = np.asarray(adj.sum(axis=1)).ravel()
    return (coo_matrix((deg, (np.arange(num_verts), np.arange(num_verts))), shape=adj.shape) - adj).tocsc()


class _Substitution:
    """``M⁻¹ b`` from SuperLU's factors ``Pr M Pc = L U`` (``Pr``, ``Pc``: the row and column
    permutations), by forward then back substitution in Taichi (recon/_trisolve_kernels.py, CPU arch).

    Built by :meth:`from_lu`: the factors copied out of SuperLU once, as CSR with sorted columns and
    int32 offsets (~12 bytes a non-zero).
    """

    def __init__(self, L, U, perm_r: np.ndarray, perm_c: np.ndarray):
        self.L, self.U, self.perm_r, self.perm_c = L, U, perm_r, perm_c

    @classmethod
    def from_lu(cls, lu) -> Optional["_Substitution"]:
        """The substitution for a ``scipy`` ``SuperLU`` object, or ``None`` where its factors lack the
        layout the loops read: every diagonal entry stored (L's unit one last in its row, U's first
        and non-zero) and fewer than 2^31 non-zeros. ``I + λL`` factorised without pivoting has it."""
        n = lu.shape[0]
        if max(lu.L.nnz, lu.U.nnz) >= 2 ** 31 - 1:
            return None
        L, U = lu.L.tocsr(), lu.U.tocsr()
        r = np.arange(n)
        for m in (L, U):
            m.sort_indices()
            if not np.all(np.diff(m.indptr) > 0):  # an empty row: no diagonal entry
                return None
        if not (np.array_equal(L.indices[L.indptr[1:] - 1], r) and np.array_equal(U.indices[U.indptr[:-1]], r)
                and np.all(U.data[U.indptr[:-1]] != 0)):
            return None
        for m in (L, U):
            m.indptr, m.indices = m.indptr.astype(np.int32), m.indices.astype(np.int32)
        return cls(L, U, lu.perm_r.copy(), lu.perm_c.copy())

    def solve(self, b: np.ndarray) -> np.ndarray:
        from taichi_dr.recon._trisolve_kernels import kernels

        squeeze = b.ndim == 1
        b = b.reshape(b.shape[0], -1)
        # L U (Pc⁻¹ x) = Pr b: Pr b puts b[i] at row perm_r[i]; x = Pc y reads y at perm_c
        y = np.empty(b.shape, dtype=np.float64)
        y[self.perm_r] = b
        lower, upper = kernels(b.shape[1])
        lower(self.L.indptr, self.L.indices, self.L.data, y)
        upper(self.U.indptr, self.U.indices, self.U.data, y)
        x = y[self.perm_c]
        return x.ravel() if squeeze else x


class _Solve(torch.autograd.Function):
    """``x = M⁻¹ u`` with a prefactorised symmetric ``M``; its adjoint is the same solve."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, lu) -> torch.Tensor:
        ctx.lu = lu
        x = lu.solve(u.detach().cpu().double().numpy())
        return torch.from_numpy(x).to(u.device, u.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return torch.from_numpy(ctx.lu.solve(g.detach().cpu().double().numpy())).to(g.device, g.dtype), None


class SmoothParametrization:
    """``x = (I + λL)⁻¹ u``: vertex positions from smooth-step parameters (Nicolet et al. 2021).

    Args:
        faces: ``[F, 3]`` int triangles (the topology is fixed for the object's lifetime).
        num_verts: ``V``.
        lam: ``λ ≥ 0``, the smoothing strength (``0``: ``x = u``). The step ``(I + λL)⁻¹ g`` spreads
            over about ``√λ`` edges.
        solver: who applies the factors: ``"taichi"`` (our substitution loops; needs Taichi on the
            CPU arch), ``"superlu"`` (SuperLU's own solve) or ``"auto"`` (the default: ``"taichi"``
            on the CPU arch, else ``"superlu"``: a serial loop on a GPU is slower than the host's).

    The factorisation (SuperLU in symmetric mode, once) and the solves run on the CPU in float64
    whatever the arch: the systems are as large as the mesh. With three columns a solve costs
    ~0.25-0.3 ms per thousand vertices with ``"taichi"`` and 0.27-0.5 ms with ``"superlu"``, which
    varies with the vertex numbering (refinement meshes of 43-79k vertices; 2 CPU cores;
    ``benchmarks/bench_smooth_solve.py``).

    Attributes:
        solver: the solver in use, ``"taichi"`` or ``"superlu"`` (``"auto"`` resolved).
        matrix: ``I + λL``, ``scipy.sparse.csc_matrix`` ``[V, V]`` float64.
    """

    def __init__(self, faces: torch.Tensor, num_verts: int, lam: float, solver: str = "auto"):
        if not (lam >= 0 and np.isfinite(lam)):
            raise ValueError(f"lam: expected a finite number >= 0, got {lam!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {list(SOLVERS)}, got {solver!r}")
        arch = ensure_init() if solver != "superlu" else None  # SuperLU's own solve needs no Taichi
        if solver == "taichi" and arch != "cpu":
            raise ValueError(f"solver: 'taichi' runs on the CPU arch only, taichi_dr runs on {arch!r}")
        self.lam = float(lam)
        self.matrix = (identity(num_verts, format="csc") + self.lam * graph_laplacian(faces, num_verts)).tocsc()
        # I + λL is symmetric and strictly diagonally dominant (positive definite), so elimination needs no
        # pivoting and a symmetric fill-reducing order (minimum degree on A + Aᵀ) applies: a Cholesky-like
        # factor with ~40 % fewer non-zeros than SuperLU's default (COLAMD with partial pivoting), solves
        # about twice as fast (58k vertices: 20 -> 9.5 ms; two solves per refinement step; docs/08 round 27)
        self._lu = splu(self.matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                        options={"SymmetricMode": True})
        self.solver = "superlu"
        sub = _Substitution.from_lu(self._lu) if solver != "superlu" and arch == "cpu" else None
        if sub is not None:
            self._lu, self.solver = sub, "taichi"  # SuperLU's own copy of the factors is freed
        elif solver == "taichi":
            raise ValueError("solver: 'taichi' needs factors with int32 offsets and a stored diagonal; "
                             f"this matrix's have {self._lu.L.nnz} and {self._lu.U.nnz} non-zeros")

    def to_param(self, verts: torch.Tensor) -> torch.Tensor:
        """``u = (I + λL) x`` for ``verts [V, 3]`` float (no gradient; same dtype and device)."""
        x = verts.detach().cpu().double().numpy()
        return torch.from_numpy(self.matrix @ x).to(verts.device, verts.dtype)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """``x = (I + λL)⁻¹ u`` for ``u [V, 3]`` float, differentiable with respect to ``u``."""
        if u.dim() != 2 or u.shape[0] != self.matrix.shape[0]:
            raise ValueError(f"u: expected shape [{self.matrix.shape[0]}, C], got {list(u.shape)}")
        return _Solve.apply(u, self._lu)

"""Sparse CSR matrices built once per mesh, and their differentiable product with a stored transpose.

Operators that depend only on a mesh's faces (the umbrella Laplacian, the vertex normals' edge and
corner sums, the UV tangents) are built once where the faces stay fixed and then multiplied every
step. torch's own backward of ``csr @ x`` transposes the matrix at every call (~10 ms for a
131k-face mesh on 2 CPU cores, 10x the product); :func:`csr_matmul` takes the transpose built once.
"""
import warnings

import torch

__all__ = ["csr", "csr_transpose", "csr_matmul"]


def csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    """The CSR matrix of ``shape`` with ``vals`` at ``(rows, cols)``; repeated entries are summed."""
    with warnings.catch_warnings():  # torch calls its CSR support "beta"; products are all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape).coalesce().to_sparse_csr()


def csr_transpose(m: torch.Tensor) -> torch.Tensor:
    """``mᵀ`` of a CSR matrix, as CSR."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return m.t().to_sparse_csr()


class _CsrMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        ctx.mt = mt
        return m @ x

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return ctx.mt @ g.contiguous(), None, None


def csr_matmul(m: torch.Tensor, x: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
    """``m @ x`` for a CSR ``m`` ``[R, C]`` and dense ``x`` ``[C, K]``, differentiable in ``x`` with the
    adjoint ``mt @ g`` (``mt`` = :func:`csr_transpose` of ``m``, built once)."""
    return _CsrMatmul.apply(x.contiguous(), m, mt)

"""Finite-difference cases for rasterize (u, v and rast_db w.r.t. clip-space positions)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases", "two_triangles"]


def two_triangles():
    """Two triangles with generic w (perspective) whose 5×6 pixel centres are away from edges."""
    pos = torch.tensor([[[-0.7, -0.6, 0.1, 1.2], [0.8, -0.7, 0.3, 0.9], [-0.6, 0.75, -0.2, 1.1],
                         [0.7, 0.8, 0.0, 1.0]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [1, 3, 2]], dtype=torch.int32)
    return pos, tri


def _build_uv():
    from taichi_dr import rasterize

    pos, tri = two_triangles()
    return (lambda p: rasterize(p, tri, (5, 6))[0][..., :2]), (pos,), 0


def _build_db():
    from taichi_dr import rasterize

    pos, tri = two_triangles()
    return (lambda p: rasterize(p, tri, (5, 6))[1]), (pos,), 0


def cases():
    return [Case("rasterize (u, v)", "pos", _build_uv), Case("rasterize (rast_db)", "pos", _build_db)]

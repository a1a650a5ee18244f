"""Finite-difference cases for antialias (w.r.t. colour and clip-space positions)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]


def _setup():
    from taichi_dr import rasterize

    # edge crossings of this triangle at 9×11 are away from the clamps d = 0 and d = 1
    pos = torch.tensor([[[-0.63, -0.58, 0.1, 1.2], [0.71, -0.67, 0.3, 0.9], [-0.52, 0.66, -0.2, 1.1]]],
                       dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast, _ = rasterize(pos, tri, (9, 11))
    col = torch.rand(1, 9, 11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return pos, tri, rast, col


def _build_color():
    from taichi_dr import antialias

    pos, tri, rast, col = _setup()
    return (lambda c: antialias(c, rast, pos, tri)), (col,), 0


def _build_pos():
    from taichi_dr import antialias

    pos, tri, rast, col = _setup()
    return (lambda p: antialias(col, rast, p, tri)), (pos,), 0


def cases():
    return [Case("antialias", "color", _build_color), Case("antialias", "pos", _build_pos)]

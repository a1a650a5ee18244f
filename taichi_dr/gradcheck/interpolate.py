"""Finite-difference cases for interpolate (w.r.t. attr, the barycentrics and rast_db)."""
import torch

from taichi_dr.gradcheck import Case
from taichi_dr.gradcheck.rasterize import two_triangles

__all__ = ["cases"]


def _setup():
    from taichi_dr import rasterize

    pos, tri = two_triangles()
    rast, db = rasterize(pos, tri, (5, 6))
    attr = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return tri, rast, db, attr


def _fn(tri, rast):
    from taichi_dr import interpolate

    return lambda a, uv, d: interpolate(a, torch.cat([uv, rast[..., 2:]], -1), tri, d, diff_attrs="all")


def _build(index):
    def build():
        tri, rast, db, attr = _setup()
        return _fn(tri, rast), (attr, rast[..., :2].contiguous(), db), index
    return build


def cases():
    return [Case("interpolate", "attr", _build(0)), Case("interpolate", "rast (u, v)", _build(1)),
            Case("interpolate", "rast_db", _build(2))]

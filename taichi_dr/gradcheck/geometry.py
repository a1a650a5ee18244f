"""Finite-difference cases for marching tetrahedra (w.r.t. grid vertices and SDF)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]


def _setup():
    from taichi_dr import TetGrid

    g = TetGrid.create(3, 2.0)
    gen = torch.Generator().manual_seed(0)
    sdf = g.verts.double().norm(dim=1) - 0.6 + 0.02 * torch.randn(g.verts.shape[0], dtype=torch.float64, generator=gen)
    return g, sdf


def _fn(g, lattice):
    from taichi_dr import marching_tets

    def f(verts, sdf):
        # the grid itself takes the lattice path; its arrays take the general one
        mv, faces = marching_tets(verts, sdf, g) if lattice else marching_tets(verts, sdf, g.tets, g.edges, g.tet_edges)
        tv = mv[faces.long()]
        return (tv[:, 0] * torch.linalg.cross(tv[:, 1], tv[:, 2])).sum() / 6, mv  # volume, positions
    return f


def _build(index, lattice=False):
    def build():
        g, sdf = _setup()
        return _fn(g, lattice), (g.verts.double(), sdf), index
    return build


def cases():
    return [Case("marching_tets", "verts", _build(0)), Case("marching_tets", "sdf", _build(1)),
            Case("marching_tets (lattice)", "verts", _build(0, True)),
            Case("marching_tets (lattice)", "sdf", _build(1, True))]

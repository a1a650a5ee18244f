"""Finite-difference cases for the shading functions."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]


def _tet():
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.3, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    return v, f


def _normals():
    from taichi_dr import vertex_normals

    v, f = _tet()
    return (lambda x: vertex_normals(x, f)), (v,), 0


def _bsdf(index):
    def build():
        from taichi_dr import ggx_bsdf

        g = torch.Generator().manual_seed(4)
        n = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64, generator=g)
                                          + torch.tensor([0, 0, 3.0], dtype=torch.float64), dim=-1)
        v = torch.nn.functional.normalize(torch.tensor([[0.2, 0.1, 1.0]], dtype=torch.float64), dim=-1).expand(4, 3)
        l = torch.nn.functional.normalize(torch.tensor([[-0.3, 0.2, 1.0]], dtype=torch.float64), dim=-1).expand(4, 3)
        kd = torch.rand(4, 3, dtype=torch.float64, generator=g)
        r = torch.full((4, 1), 0.5, dtype=torch.float64)
        m = torch.full((4, 1), 0.3, dtype=torch.float64)
        return (lambda a, b, c, d: ggx_bsdf(a, b, c, d, v, l)), (kd, r, m, n), index
    return build


def cases():
    return [Case("vertex_normals", "verts", _normals), Case("ggx_bsdf", "kd", _bsdf(0)),
            Case("ggx_bsdf", "roughness", _bsdf(1)), Case("ggx_bsdf", "metallic", _bsdf(2)),
            Case("ggx_bsdf", "normal", _bsdf(3))]

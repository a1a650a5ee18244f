"""Finite-difference cases for the shading functions (pure torch math, checked in float64)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]

D = torch.float64


def _tet():
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.3, 1]], dtype=D)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    return v, f


def _normals(which):
    def build():
        from taichi_dr import face_normals, vertex_normals

        v, f = _tet()
        fn = vertex_normals if which == "vertex" else face_normals
        return (lambda x: fn(x, f)), (v,), 0
    return build


def _inputs():
    g = torch.Generator().manual_seed(4)
    n = torch.nn.functional.normalize(torch.randn(4, 3, dtype=D, generator=g) + torch.tensor([0, 0, 3.0], dtype=D), dim=-1)
    v = torch.nn.functional.normalize(torch.tensor([[0.2, 0.1, 1.0]], dtype=D), dim=-1).expand(4, 3)
    l = torch.nn.functional.normalize(torch.tensor([[-0.3, 0.2, 1.0]], dtype=D), dim=-1).expand(4, 3)
    kd = torch.rand(4, 3, dtype=D, generator=g)
    r = torch.full((4, 1), 0.5, dtype=D)
    m = torch.full((4, 1), 0.3, dtype=D)
    return kd, r, m, n, v, l


def _bsdf(index):
    def build():
        from taichi_dr import ggx_bsdf

        kd, r, m, n, v, l = _inputs()
        return (lambda a, b, c, d: ggx_bsdf(a, b, c, d, v, l)), (kd, r, m, n), index
    return build


def _lambert():
    from taichi_dr import lambert

    _, _, _, n, _, l = _inputs()
    return (lambda x: lambert(x, l)), (n,), 0


def _point_light(index):
    def build():
        from taichi_dr import shade_point_light

        kd, r, m, n, _, _ = _inputs()
        pos = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(6)) * 0.1
        cam = torch.tensor([0.3, 0.2, 3.0], dtype=D)
        light = torch.tensor([-0.5, 1.0, 2.0], dtype=D)
        col = torch.tensor([1.0, 0.8, 0.6], dtype=D)
        return (lambda p, q: shade_point_light(kd, r, m, n, p, cam, q, col)), (pos, light), index
    return build


def cases():
    return [Case("vertex_normals", "verts", _normals("vertex")), Case("face_normals", "verts", _normals("face")),
            Case("lambert", "normal", _lambert),
            Case("ggx_bsdf", "kd", _bsdf(0)), Case("ggx_bsdf", "roughness", _bsdf(1)),
            Case("ggx_bsdf", "metallic", _bsdf(2)), Case("ggx_bsdf", "normal", _bsdf(3)),
            Case("shade_point_light", "pos", _point_light(0)), Case("shade_point_light", "light_pos", _point_light(1))]

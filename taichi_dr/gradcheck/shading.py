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


def _pixels(seed=6):
    """A 1×2×3 batch of shading inputs: normals around +z, camera and light above (cosines away
    from the clamps), roughness away from the 0.08 floor, one camera."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(1, 2, 3, 3, dtype=D, generator=g) * 0.1
    n = torch.nn.functional.normalize(torch.randn(1, 2, 3, 3, dtype=D, generator=g) * 0.3
                                      + torch.tensor([0, 0, 1.0], dtype=D), dim=-1)
    kd = torch.rand(1, 2, 3, 3, dtype=D, generator=g)
    ks = torch.rand(1, 2, 3, 3, dtype=D, generator=g) * torch.tensor([0.5, 0.5, 0.8], dtype=D) \
        + torch.tensor([0.1, 0.3, 0.1], dtype=D)
    cam = torch.tensor([[0.3, 0.2, 3.0]], dtype=D)
    return pos, n, kd, ks, cam


def _analytic(kind, index, with_ks=True):
    def build():
        from taichi_dr import DirectionalLight, PointLight

        pos, n, kd, ks, cam = _pixels()
        vec = torch.tensor([-0.5, 1.0, 2.0], dtype=D)
        col, amb = torch.tensor([1.0, 0.8, 0.6], dtype=D), torch.tensor([0.2, 0.3, 0.1], dtype=D)
        cls = PointLight if kind == "point" else DirectionalLight
        if with_ks:
            return (lambda p, nn, a, k, v, c, am: cls(v, c, am).shade(p, nn, a, k, cam)), \
                (pos, n, kd, ks, vec, col, amb), index
        return (lambda p, nn, a, v, c, am: cls(v, c, am).shade(p, nn, a, None, cam)), (pos, n, kd, vec, col, amb), index
    return build


def _perturb(index):
    def build():
        from taichi_dr import perturb_normal

        g = torch.Generator().manual_seed(8)
        n = torch.nn.functional.normalize(torch.randn(5, 3, dtype=D, generator=g), dim=-1)
        t = torch.randn(5, 3, dtype=D, generator=g)
        ts = torch.rand(5, 3, dtype=D, generator=g) * 2 - 1 + torch.tensor([0, 0, 1.2], dtype=D)
        return perturb_normal, (n, t, ts), index
    return build


def cases():
    out = [Case("vertex_normals", "verts", _normals("vertex")), Case("face_normals", "verts", _normals("face")),
           Case("lambert", "normal", _lambert),
           Case("ggx_bsdf", "kd", _bsdf(0)), Case("ggx_bsdf", "roughness", _bsdf(1)),
           Case("ggx_bsdf", "metallic", _bsdf(2)), Case("ggx_bsdf", "normal", _bsdf(3))]
    out += [Case("perturb_normal", name, _perturb(i)) for i, name in enumerate(("normal", "tangent", "normal_ts"))]
    # the fused Taichi kernels of DirectionalLight / PointLight.shade (hand-written adjoints)
    for kind, cls, vec in (("directional", "DirectionalLight", "direction"), ("point", "PointLight", "position")):
        names = ("pos", "normal", "kd", "ks", vec, "color", "ambient")
        out += [Case(f"{cls}.shade", name, _analytic(kind, i)) for i, name in enumerate(names)]
        # (pure Lambert: the position only matters for a point light)
        out += [Case(f"{cls}.shade ks=None", name, _analytic(kind, i, False))
                for i, name in enumerate(n for n in names if n != "ks") if name != "pos" or kind == "point"]
    return out

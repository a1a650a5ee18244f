"""Finite-difference cases for EnvironmentLight.shade: the fused split-sum kernel and the prefilter
(w.r.t. the cube map, positions, normals and the material)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]


def _build(index, with_ks=True):
    def build():
        from taichi_dr import EnvironmentLight
        from taichi_dr.gradcheck.shading import _pixels

        pos, n, kd, ks, cam = _pixels(7)
        # roughness kept away from the prefiltered levels' knots (piecewise-linear blend)
        ks[..., 1] = torch.rand(1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 0.1 + 0.35
        base = torch.rand(6, 4, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
        env = EnvironmentLight(4).double()

        def shade(b, p, nn, a, k=None):
            del env.base
            env.base = b
            return env.shade(p, nn, a, k, cam)
        if with_ks:
            return shade, (base, pos, n, kd, ks), index
        return shade, (base, pos, n, kd), index
    return build


def cases():
    names = ("cube map", "pos", "normal", "kd", "ks")
    return ([Case("EnvironmentLight.shade", name, _build(i)) for i, name in enumerate(names)]
            + [Case("EnvironmentLight.shade ks=None", name, _build(i, False))
               for i, name in enumerate(names[:4]) if name != "pos"])

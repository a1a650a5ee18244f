"""Finite-difference cases for EnvironmentLight.shade (w.r.t. the cube map and the material)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]


def _build(index):
    def build():
        from taichi_dr import EnvironmentLight

        g = torch.Generator().manual_seed(7)
        pos = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=g) * 0.1
        n = torch.nn.functional.normalize(torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=g)
                                          + torch.tensor([0, 0, 2.0], dtype=torch.float64), dim=-1)
        cam = torch.tensor([[0.0, 0.3, 3.0]], dtype=torch.float64)
        kd = torch.rand(1, 2, 3, 3, dtype=torch.float64, generator=g)
        # roughness kept away from the prefiltered levels' knots (piecewise-linear blend)
        r = torch.rand(1, 2, 3, 1, dtype=torch.float64, generator=g) * 0.1 + 0.35
        m = torch.rand(1, 2, 3, 1, dtype=torch.float64, generator=g) * 0.8 + 0.1
        base = torch.rand(6, 4, 4, 3, dtype=torch.float64, generator=g)
        env = EnvironmentLight(4).double()

        def shade(b, kd_, r_, m_):
            del env.base
            env.base = b
            return env.shade(pos, n, kd_, r_, m_, cam)
        return shade, (base, kd, r, m), index
    return build


def cases():
    return [Case("EnvironmentLight.shade", name, _build(i), atol=1e-5)
            for i, name in enumerate(("cube map", "kd", "roughness", "metallic"))]

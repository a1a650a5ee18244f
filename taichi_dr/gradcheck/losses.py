"""Finite-difference cases for the losses (pure torch math, checked in float64)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]


def _pair():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(1, 3, 3, 3, dtype=torch.float64, generator=g) * 2,
            torch.rand(1, 3, 3, 3, dtype=torch.float64, generator=g) * 2)


def _image(kind):
    def build():
        from taichi_dr import image_loss

        a, b = _pair()
        return (lambda x: image_loss(x, b, kind)), (a,), 0
    return build


def _tonemap():
    from taichi_dr import tonemap_srgb

    # 1e-4 sits on the linear segment of the sRGB curve (log(1 + x) <= 0.0031308)
    return tonemap_srgb, (torch.tensor([1e-4, 0.05, 0.7, 3.0], dtype=torch.float64),), 0


def _mask():
    from taichi_dr import mask_loss

    a, b = _pair()
    return (lambda x: mask_loss(x, b)), (a,), 0


def _sdf_reg():
    from taichi_dr import sdf_reg_loss

    s = torch.tensor([-1.0, 2.0, 0.5, -0.3, 0.7], dtype=torch.float64)
    e = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3], [3, 4]])
    return (lambda x: sdf_reg_loss(x, e)), (s,), 0


def _laplacian():
    from taichi_dr import laplacian_loss

    v = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    return (lambda x: laplacian_loss(x, f, ref=v * 0.5)), (v,), 0


def cases():
    return [Case("tonemap_srgb", "x", _tonemap)] + [
        Case(f"image_loss ({k})", "pred", _image(k)) for k in ("logl1", "logl2", "mse", "relmse", "smape", "l1")] + [
        Case("mask_loss", "pred_alpha", _mask), Case("sdf_reg_loss", "sdf", _sdf_reg),
        Case("laplacian_loss", "verts", _laplacian)]

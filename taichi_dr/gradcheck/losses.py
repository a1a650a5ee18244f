"""Finite-difference cases for the losses."""
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


def _mask():
    from taichi_dr import mask_loss

    a, b = _pair()
    return (lambda x: mask_loss(x, b)), (a,), 0


def _sdf_reg():
    from taichi_dr import sdf_reg_loss

    s = torch.tensor([-1.0, 2.0, 0.5, -0.3, 0.7], dtype=torch.float64)
    e = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3], [3, 4]])
    return (lambda x: sdf_reg_loss(x, e)), (s,), 0


def cases():
    return [Case("image_loss (logl1)", "pred", _image("logl1")), Case("image_loss (relmse)", "pred", _image("relmse")),
            Case("mask_loss", "pred_alpha", _mask), Case("sdf_reg_loss", "sdf", _sdf_reg)]

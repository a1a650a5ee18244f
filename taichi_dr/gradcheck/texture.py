"""Finite-difference cases for texture() (2-D and cube maps; tex, uv, uv_da, mip_level_bias)."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]


def _inputs():
    g = torch.Generator().manual_seed(3)
    tex = torch.rand(1, 8, 12, 2, dtype=torch.float64, generator=g)
    uv = torch.rand(1, 3, 4, 2, dtype=torch.float64, generator=g) * 1.4 - 0.2  # also outside [0, 1]
    uv_da = torch.rand(1, 3, 4, 4, dtype=torch.float64, generator=g) * 0.3 + 0.05  # level ~1-2: away from ends
    bias = torch.rand(1, 3, 4, dtype=torch.float64, generator=g) * 0.4 + 0.1
    return tex, uv, uv_da, bias


def _build_2d(fm, bm, index):
    def build():
        from taichi_dr import texture

        if fm in ("nearest", "linear"):
            tex, uv, _, _ = _inputs()
            return (lambda t, u: texture(t, u, filter_mode=fm, boundary_mode=bm)), (tex, uv), index
        return (lambda t, u, d, b: texture(t, u, d, b, filter_mode=fm, boundary_mode=bm)), _inputs(), index
    return build


def _build_cube(fm, index):
    def build():
        from taichi_dr import texture

        g = torch.Generator().manual_seed(5)
        cube = torch.rand(1, 6, 4, 4, 3, dtype=torch.float64, generator=g)
        dirs = torch.nn.functional.normalize(torch.randn(1, 3, 4, 3, dtype=torch.float64, generator=g), dim=-1)
        dda = torch.rand(1, 3, 4, 6, dtype=torch.float64, generator=g) * 0.3
        bias = torch.rand(1, 3, 4, dtype=torch.float64, generator=g) * 0.4 - 0.2
        if fm == "linear":
            return (lambda t, u: texture(t, u, filter_mode=fm, boundary_mode="cube")), (cube, dirs), index
        return ((lambda t, u, d, b: texture(t, u, d, b, filter_mode=fm, boundary_mode="cube")),
                (cube, dirs, dda, bias), index)
    return build


def cases():
    out = [Case("texture nearest", "tex", _build_2d("nearest", "wrap", 0))]
    for bm in ("wrap", "clamp", "zero"):
        out += [Case(f"texture linear/{bm}", "tex", _build_2d("linear", bm, 0)),
                Case(f"texture linear/{bm}", "uv", _build_2d("linear", bm, 1))]
    for fm in ("linear-mipmap-nearest", "linear-mipmap-linear"):
        out += [Case(f"texture {fm}", name, _build_2d(fm, "wrap", i))
                for i, name in enumerate(("tex", "uv", "uv_da", "mip_level_bias"))]
    out += [Case("texture cube linear", "tex", _build_cube("linear", 0)),
            Case("texture cube linear", "uv (direction)", _build_cube("linear", 1)),
            Case("texture cube trilinear", "tex", _build_cube("linear-mipmap-linear", 0)),
            Case("texture cube trilinear", "uv (direction)", _build_cube("linear-mipmap-linear", 1)),
            Case("texture cube trilinear", "uv_da", _build_cube("linear-mipmap-linear", 2)),
            Case("texture cube trilinear", "mip_level_bias", _build_cube("linear-mipmap-linear", 3))]
    return out

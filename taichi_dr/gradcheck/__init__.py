"""Finite-difference checks of every differentiable op (``taichi-dr gradcheck``).

Each area of the library contributes a module here with a ``cases()`` function returning
:class:`Case` objects. A case builds a small float64 problem whose pixel centres / SDF values are
away from discontinuities, and names one differentiable input. We compare the autograd gradient of
a random projection ``L = sum(f(x) * g)`` with central finite differences of the same ``L``:

    dL/dx_k ~ (L(x + h e_k) - L(x - h e_k)) / 2h,   h = 1e-6,

which is what ``torch.autograd.gradcheck`` does one output at a time, at a fraction of the cost.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ["Case", "check_case", "all_cases", "run", "format_table"]

_AREAS = ("rasterize", "interpolate", "antialias", "texture", "light", "shading", "losses", "geometry")


@dataclasses.dataclass(frozen=True)
class Case:
    """One finite-difference check.

    Attributes:
        op: public op name, e.g. ``"rasterize"``.
        input: name of the differentiable input checked, e.g. ``"pos"``.
        build: returns ``(fn, inputs, index)``: ``fn(*inputs)`` gives a tensor (or tuple of tensors),
            ``inputs[index]`` is the float64 tensor whose gradient is checked.
        atol: absolute tolerance on the gradient.
        rtol: relative tolerance on the gradient.
    """

    op: str
    input: str
    build: Callable[[], Tuple[Callable, Sequence[torch.Tensor], int]]
    atol: float = 1e-6
    rtol: float = 1e-4


def _scalar(out, cot):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum((o * c).sum() for o, c in zip(outs, cot) if o is not None and o.is_floating_point())


def check_case(case: Case, eps: float = 1e-6) -> Tuple[float, bool, int]:
    """Run one case. Returns (max abs error, passed, number of checked entries)."""
    gen = torch.Generator().manual_seed(0)
    fn, inputs, index = case.build()
    inputs = list(inputs)
    x = inputs[index].detach().clone().to(torch.float64)
    with torch.no_grad():
        out0 = fn(*[x if i == index else t for i, t in enumerate(inputs)])
    outs0 = out0 if isinstance(out0, (tuple, list)) else (out0,)
    cot = [torch.randn(o.shape, generator=gen, dtype=torch.float64) if o is not None else None for o in outs0]

    xg = x.clone().requires_grad_(True)
    loss = _scalar(fn(*[xg if i == index else t for i, t in enumerate(inputs)]), cot)
    (analytic,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if analytic is None:
        analytic = torch.zeros_like(x)
    numeric = torch.zeros_like(x).reshape(-1)
    flat = x.reshape(-1)
    with torch.no_grad():
        for k in range(flat.numel()):
            orig = flat[k].item()
            flat[k] = orig + eps
            lp = _scalar(fn(*[x if i == index else t for i, t in enumerate(inputs)]), cot)
            flat[k] = orig - eps
            lm = _scalar(fn(*[x if i == index else t for i, t in enumerate(inputs)]), cot)
            flat[k] = orig
            numeric[k] = (float(lp) - float(lm)) / (2 * eps)
    numeric = numeric.reshape(x.shape)
    err = (analytic - numeric).abs()
    ok = bool((err <= case.atol + case.rtol * numeric.abs()).all())
    return float(err.max()) if err.numel() else 0.0, ok, x.numel()


def all_cases(areas: Optional[Sequence[str]] = None) -> List[Case]:
    """Collect the cases of every area whose module exists (areas land one by one)."""
    cases: List[Case] = []
    for area in areas or _AREAS:
        try:
            mod = importlib.import_module(f"taichi_dr.gradcheck.{area}")
        except ModuleNotFoundError as e:
            if e.name == f"taichi_dr.gradcheck.{area}":
                continue
            raise
        cases.extend(mod.cases())
    return cases


def format_table(rows: List[Tuple[str, str, int, float, bool]]) -> str:
    head = f"{'op':<28} {'input':<14} {'entries':>7} {'max abs err':>12}  result"
    lines = [head, "-" * len(head)]
    for op, inp, n, err, ok in rows:
        lines.append(f"{op:<28} {inp:<14} {n:>7} {err:>12.3e}  {'pass' if ok else 'FAIL'}")
    return "\n".join(lines)


def run(areas: Optional[Sequence[str]] = None, filter: Optional[str] = None, echo: bool = True) -> bool:
    """Run all cases, print a table, return whether all passed."""
    from taichi_dr.runtime import ensure_init

    ensure_init()
    rows = []
    for case in all_cases(areas):
        if filter and filter not in case.op:
            continue
        err, ok, n = check_case(case)
        rows.append((case.op, case.input, n, err, ok))
        if echo:
            print(f"  {case.op}/{case.input}: {'pass' if ok else 'FAIL'} ({err:.2e})", flush=True)
    if echo:
        print(format_table(rows))
    return all(r[-1] for r in rows)

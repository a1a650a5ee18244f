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

__all__ = ["Case", "check_case", "all_cases", "run", "format_table", "case_id"]

_AREAS = ("rasterize", "interpolate", "antialias", "texture", "light", "shading", "losses", "geometry",
          "pipeline")


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


class _OnDevice(torch.overrides.TorchFunctionMode):
    """Create every tensor of a case on ``device`` (the Taichi arch's: ops reject other devices).

    Like ``torch.set_default_device``, but factory calls drawing from a CPU ``torch.Generator``
    (the cases' fixed seeds) run on the CPU and are then moved, so a case builds bitwise the same
    problem on every arch.
    """

    def __init__(self, device):
        super().__init__()
        from torch.utils._device import _device_constructors

        self.device, self.ctors = torch.device(device), _device_constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.ctors and kwargs.get("device") is None:
            gen = kwargs.get("generator")
            if gen is not None and gen.device.type == "cpu":
                return func(*args, **kwargs).to(self.device)
            kwargs["device"] = self.device
        return func(*args, **kwargs)


def _scalar(out, cot):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum((o * c).sum() for o, c in zip(outs, cot) if o is not None and o.is_floating_point())


def check_case(case: Case, eps: float = 1e-6, max_entries: Optional[int] = None) -> Tuple[float, bool, int]:
    """Run one case on the Taichi arch's device. Returns (max abs error, passed, number of checked entries).

    Args:
        max_entries: finite-difference at most this many entries of the input, drawn at random
            (fixed seed) when it has more; ``None`` = every entry. The analytic gradient is always
            computed whole; each entry costs two forward calls.
    """
    from taichi_dr.runtime import torch_device_for_arch

    device = torch_device_for_arch()
    if device == "cpu":
        return _check_case(case, eps, max_entries)
    with _OnDevice(device):
        return _check_case(case, eps, max_entries)


def _check_case(case: Case, eps: float, max_entries: Optional[int] = None) -> Tuple[float, bool, int]:
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
    entries = torch.arange(flat.numel())
    if max_entries is not None and flat.numel() > max_entries:
        entries = torch.randperm(flat.numel(), generator=gen)[:max_entries].sort()[0]
    with torch.no_grad():
        for k in entries.tolist():
            orig = flat[k].item()
            flat[k] = orig + eps
            lp = _scalar(fn(*[x if i == index else t for i, t in enumerate(inputs)]), cot)
            flat[k] = orig - eps
            lm = _scalar(fn(*[x if i == index else t for i, t in enumerate(inputs)]), cot)
            flat[k] = orig
            numeric[k] = (float(lp) - float(lm)) / (2 * eps)
    analytic, numeric = analytic.reshape(-1)[entries], numeric[entries]
    err = (analytic - numeric).abs()
    ok = bool((err <= case.atol + case.rtol * numeric.abs()).all())
    return float(err.max()) if err.numel() else 0.0, ok, int(entries.numel())


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


_HEAD = f"{'op':<30} {'input':<16} {'entries':>7} {'max abs err':>12}  result"


def _row(op: str, inp: str, n: int, err: float, ok: bool) -> str:
    return f"{op:<30} {inp:<16} {n:>7} {err:>12.3e}  {'pass' if ok else 'FAIL'}"


def format_table(rows: List[Tuple[str, str, int, float, bool]]) -> str:
    """The result table: one line per case, then ``N/M cases passed``."""
    lines = [_HEAD, "-" * len(_HEAD)] + [_row(*r) for r in rows]
    return "\n".join(lines + [_summary(rows)])


def _summary(rows) -> str:
    failed = [f"{op}/{inp}" for op, inp, _, _, ok in rows if not ok]
    line = f"{len(rows) - len(failed)}/{len(rows)} cases passed"
    return line + (f"; FAILED: {', '.join(failed)}" if failed else "")


def case_id(case: Case) -> str:
    """``"op/input"``, e.g. ``"texture linear/wrap/uv"`` (pytest ids, ``--op`` matching)."""
    return f"{case.op}/{case.input}"


def run(areas: Optional[Sequence[str]] = None, filter: Optional[str] = None, echo: bool = True) -> bool:
    """Run all cases (those whose op contains ``filter``), print each result once as a table row
    as it completes, then a ``passed/total`` line; return whether all passed."""
    from taichi_dr.runtime import ensure_init

    ensure_init()
    rows = []
    if echo:
        print(_HEAD + "\n" + "-" * len(_HEAD), flush=True)
    for case in all_cases(areas):
        if filter and filter not in case.op:
            continue
        err, ok, n = check_case(case)
        rows.append((case.op, case.input, n, err, ok))
        if echo:
            print(_row(*rows[-1]), flush=True)  # streamed: a long run shows progress
    if echo:
        print(_summary(rows))
    return all(r[-1] for r in rows)

"""Input validation shared by every public op.

Every check raises ``TypeError`` (wrong type / dtype) or ``ValueError`` (wrong shape, value or
device) with a message that names the argument and gives the expected and the actual value, e.g.
``pos: expected shape [N, V, 4] or [V, 4], got [10, 3]``.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "check_tensor",
    "check_float",
    "check_index",
    "check_finite",
    "raise_bad_rast",
    "check_resolution",
    "check_device",
    "deferred_checks",
    "verify_deferred",
    "check_choice",
    "as_index32",
    "shape_str",
]

FLOATS = (torch.float32, torch.float64)
INTS = (torch.int32, torch.int64)


def shape_str(shape: Iterable) -> str:
    return "[" + ", ".join(str(int(s)) if not isinstance(s, str) else s for s in shape) + "]"


def check_tensor(
    name: str,
    t,
    ndim: Union[int, Sequence[int], None] = None,
    last: Optional[int] = None,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    expected: Optional[str] = None,
) -> torch.Tensor:
    """Check that ``t`` is a torch tensor of the given rank, last dimension and dtype.

    Args:
        name: argument name used in the error message.
        t: the value to check.
        ndim: allowed rank(s).
        last: required size of the last dimension.
        dtypes: allowed dtypes.
        expected: human-readable expected shape, e.g. ``"[N, V, 4] or [V, 4]"``.

    Returns:
        ``t`` unchanged.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    bad_rank = ndims is not None and t.dim() not in ndims
    bad_last = last is not None and (t.dim() == 0 or t.shape[-1] != last)
    if bad_rank or bad_last:
        if expected is None:
            dims = ["..."] if ndims is None else [f"{d}-D" for d in ndims]
            expected = " or ".join(dims) + (f" with last dimension {last}" if last is not None else "")
        raise ValueError(f"{name}: expected shape {expected}, got {shape_str(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {names}, got {str(t.dtype).replace('torch.', '')}")
    return t


def check_float(name: str, t, ndim=None, last=None, expected=None) -> torch.Tensor:
    """``check_tensor`` for float32/float64 data that must also be finite."""
    check_tensor(name, t, ndim, last, FLOATS, expected)
    check_finite(name, t)
    return t


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or Inf.

    A NaN or Inf entry makes the sum NaN or Inf, so a finite sum proves every entry finite with
    one cheap reduction (a full ``isfinite`` pass costs ~10x more on a 512² image). Only a
    non-finite sum, which an overflow of huge finite values can also give, needs the exact test.
    """
    if t.numel() == 0 or bool(torch.isfinite(t.detach().sum())):
        return
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf entries")


def raise_bad_rast(name: str, rast: torch.Tensor, n_tri: int) -> None:
    """Raise the ``ValueError`` for a ``rast`` in which a kernel found a triangle id outside
    ``[0, n_tri]`` or a non-finite (u, v).

    The kernels that read ``rast`` check each pixel as they load it (nearly free, where a separate
    pass over the image before the launch cost ~0.2 ms at 512²) and skip bad pixels; this slow
    path runs only after such a report, to word the message.
    """
    r = rast.detach()
    ids = r[..., 3]
    outside = ~((ids >= 0) & (ids <= n_tri))  # NaN is outside too
    if bool(outside.any()):
        raise ValueError(f"{name}: expected triangle ids (channel 3) in [0, {n_tri}] (tri has {n_tri} triangles), "
                         f"got {int(outside.sum())} pixels outside, e.g. {float(ids[outside][0])}")
    check_finite(f"{name}[..., :2] (u, v)", r[..., :2])
    raise ValueError(f"{name}: invalid values")  # not reached: the kernels test exactly the above


def deferred_checks(finite: Sequence[torch.Tensor] = (), index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The verdicts of :func:`check_finite` on each of ``finite`` and the (min, max) of ``index``,
    computed on the tensors' device without a host synchronisation: an op reads them together with
    its kernels' own flags in one ``.tolist()`` (on a GPU every read of a device value stalls the
    host until the queue drains, so an op does it once). :func:`verify_deferred` raises from them.

    Returns:
        ``[len(finite) + 2]`` (``+ 0`` without ``index``) int64: 1 per all-finite tensor (0 when its
        sum is not finite), then min and max of ``index`` (0, 0 when empty).
    """
    parts = [torch.isfinite(t.detach().sum()).reshape(1).to(torch.int64) for t in finite]
    if index is not None:
        if index.numel():
            lo, hi = torch.aminmax(index.detach())
            parts += [lo.reshape(1).to(torch.int64), hi.reshape(1).to(torch.int64)]
        else:
            parts.append(torch.zeros(2, dtype=torch.int64, device=index.device))
    return torch.cat(parts)


def verify_deferred(values: Sequence[int], finite: Sequence[Tuple[str, torch.Tensor]] = (),
                    index: Optional[Tuple[str, torch.Tensor, int]] = None) -> None:
    """Raise what :func:`check_finite` / :func:`check_index` would have raised, given the host copy of
    :func:`deferred_checks` (same tensors, same order; ``index`` as (name, tensor, count))."""
    for (name, t), ok in zip(finite, values):
        if not ok:
            check_finite(name, t)  # the exact count (or nothing: a finite tensor whose sum overflowed)
    if index is not None:
        name, t, count = index
        lo, hi = values[len(finite)], values[len(finite) + 1]
        if t.numel() and (lo < 0 or hi >= count):
            raise ValueError(f"{name}: expected indices in [0, {count}), got values in [{lo}, {hi}]")


def check_index(name: str, t, count: int, ndim=2, last: Optional[int] = 3, expected=None) -> torch.Tensor:
    """Check an integer index tensor whose entries must lie in ``[0, count)``."""
    check_tensor(name, t, ndim, last, INTS, expected)
    if t.numel():
        lo, hi = (int(v) for v in torch.aminmax(t))  # one pass for both bounds
        if lo < 0 or hi >= count:
            raise ValueError(f"{name}: expected indices in [0, {count}), got values in [{lo}, {hi}]")
    return t


def as_index32(t: torch.Tensor) -> torch.Tensor:
    """Contiguous int32 copy (or view) of an already validated index tensor."""
    return t.to(torch.int32).contiguous()


def check_resolution(name: str, resolution) -> Tuple[int, int]:
    """Validate an (H, W) pair of positive ints."""
    try:
        h, w = resolution
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a pair (height, width) of ints, got {resolution!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: expected positive (height, width), got ({h}, {w})")
    if h > 16384 or w > 16384:
        raise ValueError(f"{name}: expected height and width <= 16384, got ({h}, {w})")
    return h, w


def check_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    """The device contract of every op: each given tensor (``None`` entries are skipped) must live
    where the Taichi arch reads it without a copy — CPU memory for the ``cpu`` and ``vulkan`` archs,
    ``cuda:0`` for ``cuda`` (Taichi's CUDA context opens the first visible device). A tensor
    elsewhere would be copied to and from the device on every launch (or, for a ``.grad`` buffer,
    handed over as a pointer into the wrong memory), so it is refused.

    Args:
        **tensors: argument name -> tensor.

    Returns:
        The expected device.

    Raises:
        ValueError: naming the first argument on another device, its device and the expected one.
    """
    from taichi_dr.runtime import ensure_init, torch_device_for_arch

    arch = ensure_init()
    want = torch.device(torch_device_for_arch())
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != want:
            raise ValueError(f"{name}: expected a tensor on {want} (the memory Taichi's {arch} backend reads "
                             f"without copies), got one on {t.device}; move it with .to({str(want)!r})")
    return want


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value

"""Taichi runtime selection: which backend our kernels run on.

Taichi must be initialised once per process before the first kernel launch. We do it
lazily, on the first op, never at import time, so that ``import taichi_dr`` is cheap and
the user can still pick the backend (``taichi_dr.init(arch="cpu")`` or the environment
variable ``TAICHI_DR_ARCH``) before anything runs.

Arch names:
    ``"cpu"``    Taichi's LLVM CPU backend (x64 / arm64).
    ``"cuda"``   Taichi's CUDA backend. Chosen only when torch sees a CUDA device: asking
                 Taichi to probe for a GPU on a headless machine can crash (see
                 ``shared/reference/taichi.md`` section 4), so we never let it guess.
    ``"vulkan"`` Taichi's Vulkan backend (no float64 on most drivers).
    ``"gpu"``    Alias of ``"cuda"``.
    ``"auto"``   CUDA when torch reports a CUDA device, else CPU (the default).
"""
from __future__ import annotations

import os
import threading
from typing import Optional

__all__ = ["init", "is_initialized", "current_arch", "ensure_init", "ti_real", "torch_device_for_arch"]

# Taichi otherwise starts a thread that phones home on every ti.init.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")

_VALID = ("auto", "cpu", "cuda", "gpu", "vulkan")
_lock = threading.Lock()
_state = {"arch": None}  # the one piece of process state: which arch Taichi was initialised with


def _resolve(arch: Optional[str]) -> str:
    if arch is None:
        arch = os.environ.get("TAICHI_DR_ARCH", "auto")
    if not isinstance(arch, str):
        raise TypeError(f"arch: expected a string in {_VALID}, got {type(arch).__name__}")
    arch = arch.strip().lower()
    if arch not in _VALID:
        raise ValueError(f"arch: expected one of {_VALID}, got {arch!r}")
    if arch == "gpu":
        arch = "cuda"
    if arch == "auto":
        import torch

        arch = "cuda" if torch.cuda.is_available() else "cpu"
    return arch


def init(arch: Optional[str] = None, **ti_kwargs) -> str:
    """Initialise Taichi for taichi_dr (idempotent).

    Args:
        arch: ``"cpu"``, ``"cuda"`` (alias ``"gpu"``), ``"vulkan"`` or ``"auto"``. ``None`` reads
            ``TAICHI_DR_ARCH`` and falls back to ``"auto"`` (CUDA when present, else CPU).
        **ti_kwargs: extra keyword arguments for ``ti.init`` (e.g. ``cpu_max_num_threads``).

    Returns:
        The arch name actually in use (``"cpu"``, ``"cuda"`` or ``"vulkan"``).

    Raises:
        ValueError: unknown arch name, or a different arch than the one already initialised.
    """
    wanted = _resolve(arch)
    with _lock:
        if _state["arch"] is not None:
            if arch is not None and wanted != _state["arch"]:
                raise ValueError(
                    f"arch: taichi_dr is already initialised with {_state['arch']!r}; "
                    f"cannot switch to {wanted!r} in the same process"
                )
            return _state["arch"]
        import taichi as ti

        ti_arch = {"cpu": ti.cpu, "cuda": ti.cuda, "vulkan": ti.vulkan}[wanted]
        # Taichi's own TI_ARCH overrides the argument in 1.7.4 and aborts on "cpu": drop it.
        os.environ.pop("TI_ARCH", None)
        kwargs = dict(
            arch=ti_arch,
            default_fp=ti.f32,
            default_ip=ti.i32,
            # Exact sqrt/div in both precisions: float64 finite-difference checks must be honest
            # on every backend (CUDA's fast math uses approximate sqrt even for f64).
            fast_math=False,
            offline_cache=True,
            log_level=ti.WARN,
        )
        kwargs.update(ti_kwargs)
        ti.init(**kwargs)
        actual = ti.lang.impl.current_cfg().arch
        name = "cuda" if actual == ti.cuda else "vulkan" if actual == ti.vulkan else "cpu"
        _state["arch"] = name
        return name


def ensure_init() -> str:
    """Initialise with the default arch if nobody did yet; return the arch in use."""
    if _state["arch"] is None:
        return init(None)
    return _state["arch"]


def is_initialized() -> bool:
    """Whether taichi_dr has initialised Taichi in this process."""
    return _state["arch"] is not None


def current_arch() -> Optional[str]:
    """The arch name in use, or ``None`` before the first op."""
    return _state["arch"]


def torch_device_for_arch() -> str:
    """The torch device type whose memory Taichi kernels read without a host copy."""
    return "cuda" if ensure_init() == "cuda" else "cpu"


def ti_real(dtype):
    """Taichi float type matching a torch float dtype (float32 -> ti.f32, float64 -> ti.f64)."""
    import taichi as ti
    import torch

    if dtype == torch.float64:
        return ti.f64
    if dtype == torch.float32:
        return ti.f32
    raise TypeError(f"expected torch.float32 or torch.float64, got {dtype}")

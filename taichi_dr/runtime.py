"""Taichi runtime selection: which backend our kernels run on, and sharing it with the host program.

Taichi must be initialised once per process before the first kernel launch. We do it lazily, on
the first op, never at import time, so that ``import taichi_dr`` is cheap (it does not even import
Taichi) and the user can still pick the backend (``taichi_dr.init(arch="cpu")`` or the environment
variable ``TAICHI_DR_ARCH``) before anything runs.

Arch names:
    ``"cpu"``    Taichi's LLVM CPU backend (x64 / arm64).
    ``"cuda"``   Taichi's CUDA backend. Chosen only when torch sees a CUDA device: asking
                 Taichi to probe for a GPU on a headless machine can crash, so we never let it guess.
    ``"vulkan"`` Taichi's Vulkan backend (no float64 on most drivers).
    ``"gpu"``    Alias of ``"cuda"``.
    ``"auto"``   CUDA when torch reports a CUDA device, else CPU (the default).

Contract with a host program that uses Taichi itself:

* If Taichi is already initialised when our first op runs (the program called ``ti.init``), we
  **use that runtime** and never call ``ti.init`` again: ``ti.init`` resets Taichi, which would
  invalidate the program's fields. Its arch must be one of ours (else ``RuntimeError``), and an
  explicit ``taichi_dr.init(arch)`` naming another arch raises ``ValueError``. Settings that differ
  from the ones we would choose (``fast_math``, ``default_fp``, ``default_ip``, ``debug``) are listed
  in **one** ``RuntimeWarning``; the kernels still run (they type their own floats and ints), but
  results may differ in the last bits and float64 finite-difference checks need ``fast_math=False``.
* If the program calls ``ti.init`` *after* our ops ran, our kernels recompile for the new runtime
  on their next call (Taichi resets every kernel), and we adopt it as above.
* Importing taichi_dr changes no environment variable. While *our own* ``ti.init`` runs (and only
  then), ``TI_ARCH`` is hidden, because Taichi 1.7.4 lets it override the ``arch`` argument (and
  aborts on ``TI_ARCH=cpu``), and ``TI_SKIP_VERSION_CHECK`` defaults to ``ON`` so that Taichi does
  not start a thread that contacts its server; both are restored right after.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from typing import Dict, Iterator, List, Optional

__all__ = ["init", "is_initialized", "current_arch", "ensure_init", "ti_real", "torch_device_for_arch"]

_VALID = ("auto", "cpu", "cuda", "gpu", "vulkan")
_lock = threading.Lock()
# Which Taichi program we run on and its arch name; set on our ti.init or when adopting the host's
# runtime. Taichi's own runtime is the process-wide state; this only remembers what we checked.
_state: Dict[str, object] = {"prog": None, "arch": None}


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


def _program():
    """Taichi's live program, or ``None`` before ``ti.init`` (or when Taichi is not even imported)."""
    ti = sys.modules.get("taichi")
    if ti is None:
        return None
    return ti.lang.impl.get_runtime().prog


def _arch_name(ti_arch) -> Optional[str]:
    import taichi as ti

    if ti_arch in (ti.x64, ti.arm64):
        return "cpu"
    if ti_arch == ti.cuda:
        return "cuda"
    if ti_arch == ti.vulkan:
        return "vulkan"
    return None


@contextlib.contextmanager
def _taichi_init_env() -> Iterator[None]:
    """Hide ``TI_ARCH`` and default ``TI_SKIP_VERSION_CHECK`` to ``ON`` for the duration of ``ti.init``."""
    saved = {k: os.environ.get(k) for k in ("TI_ARCH", "TI_SKIP_VERSION_CHECK")}
    os.environ.pop("TI_ARCH", None)
    os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _differences() -> List[str]:
    """Settings of the live Taichi runtime that differ from what :func:`init` would choose."""
    import taichi as ti

    rt, cfg = ti.lang.impl.get_runtime(), ti.lang.impl.current_cfg()
    diffs = []
    if cfg.fast_math:
        diffs.append("fast_math=True (ours: False; approximate sqrt/division change the last bits, "
                     "and float64 finite-difference checks need exact maths)")
    if rt.default_fp != ti.f32:
        diffs.append(f"default_fp={rt.default_fp} (ours: f32; untyped float literals in float32 kernels "
                     "get promoted)")
    if rt.default_ip != ti.i32:
        diffs.append(f"default_ip={rt.default_ip} (ours: i32; index arithmetic gets wider and slower)")
    if cfg.debug:
        diffs.append("debug=True (bounds checks on every access: several times slower)")
    return diffs


def _cpu_tuning_advice() -> Optional[str]:
    """What to set for the benchmarked CPU speed, or None when nothing is missing.

    Both variables are read by libraries when they load (libgomp, torch's CPU allocator), before
    any taichi_dr code runs, so we can only advise (the CLI sets them before importing torch).
    """
    import torch

    missing = []
    if torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        missing.append("OMP_WAIT_POLICY=PASSIVE (torch's OpenMP workers otherwise spin after every parallel "
                       "op and take the cores from the Taichi kernel that runs next; torch.set_num_threads(1) "
                       "also avoids it)")
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as fh:
            thp_madvise = "[madvise]" in fh.read()
    except OSError:
        thp_madvise = False
    if thp_madvise and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        missing.append("THP_MEM_ALLOC_ENABLE=1 (torch then backs large images with huge pages: far fewer "
                       "page faults on every new image tensor)")
    if not missing:
        return None
    return ("taichi_dr on the CPU runs 10-20 % slower in this process than in its benchmarks; set "
            + " and ".join(missing) + " in the environment before Python starts (e.g. "
            "`export OMP_WAIT_POLICY=PASSIVE THP_MEM_ALLOC_ENABLE=1`); the taichi-dr command line sets both itself.")


def _advise(name: str) -> None:
    if name == "cpu":
        advice = _cpu_tuning_advice()
        if advice:
            warnings.warn(advice, RuntimeWarning, stacklevel=4)


def _adopt(prog, arch: Optional[str]) -> str:
    """Use a Taichi runtime initialised by someone else (caller holds the lock)."""
    import taichi as ti

    actual = ti.lang.impl.current_cfg().arch
    name = _arch_name(actual)
    if name is None:
        raise RuntimeError(f"Taichi is already initialised with arch={actual.name}, which taichi_dr does not "
                           "support (expected cpu, cuda or vulkan); call ti.init with one of those")
    if arch is not None and _resolve(arch) != name:
        raise ValueError(f"arch: Taichi is already initialised by this program with {name!r}; "
                         f"taichi_dr cannot switch it to {_resolve(arch)!r} (that would reset the program's fields)")
    diffs = _differences()
    if diffs:
        warnings.warn("taichi_dr runs on the Taichi runtime this program initialised (arch="
                      f"{name}); its settings differ from taichi_dr's: " + "; ".join(diffs),
                      RuntimeWarning, stacklevel=4)
    _state.update(prog=prog, arch=name)
    _advise(name)
    return name


def init(arch: Optional[str] = None, **ti_kwargs) -> str:
    """Initialise Taichi for taichi_dr (idempotent), or adopt the runtime the program initialised.

    Args:
        arch: ``"cpu"``, ``"cuda"`` (alias ``"gpu"``), ``"vulkan"`` or ``"auto"``. ``None`` reads
            ``TAICHI_DR_ARCH`` and falls back to ``"auto"`` (CUDA when present, else CPU).
        **ti_kwargs: extra keyword arguments for ``ti.init`` (e.g. ``cpu_max_num_threads``); ignored
            when Taichi is already initialised.

    Returns:
        The arch name actually in use (``"cpu"``, ``"cuda"`` or ``"vulkan"``).

    Raises:
        ValueError: unknown arch name, or a different arch than the one already initialised.
        RuntimeError: the program initialised Taichi with an arch we do not support (e.g. OpenGL).
    """
    with _lock:
        prog = _program()
        if prog is not None:
            if prog is not _state["prog"]:
                return _adopt(prog, arch)
            if arch is not None and _resolve(arch) != _state["arch"]:
                raise ValueError(f"arch: taichi_dr is already initialised with {_state['arch']!r}; "
                                 f"cannot switch to {_resolve(arch)!r} in the same process")
            return str(_state["arch"])
        wanted = _resolve(arch)
        import taichi as ti

        kwargs = dict(
            arch={"cpu": ti.cpu, "cuda": ti.cuda, "vulkan": ti.vulkan}[wanted],
            default_fp=ti.f32,
            default_ip=ti.i32,
            # Exact sqrt/div in both precisions: float64 finite-difference checks must be honest
            # on every backend (CUDA's fast math uses approximate sqrt even for f64).
            fast_math=False,
            offline_cache=True,
            log_level=ti.WARN,
        )
        kwargs.update(ti_kwargs)
        with _taichi_init_env():
            ti.init(**kwargs)
        name = _arch_name(ti.lang.impl.current_cfg().arch) or "cpu"
        if name != wanted:  # Taichi falls back to the CPU when it finds no driver for the arch
            warnings.warn(f"taichi_dr asked Taichi for arch={wanted!r} and got {name!r} "
                          "(Taichi found no usable driver); ops expect tensors on the CPU", RuntimeWarning, stacklevel=2)
        _state.update(prog=_program(), arch=name)
        _advise(name)
        return name


def ensure_init() -> str:
    """The arch in use; initialises Taichi (or adopts the program's runtime) on the first call.

    Called by every op: after the first call it is one attribute lookup and an identity test.
    """
    prog = _program()
    if prog is not None and prog is _state["prog"]:
        return str(_state["arch"])
    return init(None)


def is_initialized() -> bool:
    """Whether Taichi is initialised in this process (by taichi_dr or by the program)."""
    return _program() is not None


def current_arch() -> Optional[str]:
    """The arch name taichi_dr runs on, or ``None`` before the first op."""
    prog = _program()
    if prog is None:
        return None
    if prog is _state["prog"]:
        return str(_state["arch"])
    import taichi as ti

    return _arch_name(ti.lang.impl.current_cfg().arch)


def torch_device_for_arch() -> str:
    """The torch device whose memory Taichi kernels read without a host copy: ``"cuda:0"`` for the
    CUDA arch (Taichi's CUDA context always opens the first visible device; to run on another
    GPU, restrict ``CUDA_VISIBLE_DEVICES`` before the process starts), else ``"cpu"``."""
    return "cuda:0" if ensure_init() == "cuda" else "cpu"


def ti_real(dtype):
    """Taichi float type matching a torch float dtype (float32 -> ti.f32, float64 -> ti.f64)."""
    import taichi as ti
    import torch

    if dtype == torch.float64:
        return ti.f64
    if dtype == torch.float32:
        return ti.f32
    raise TypeError(f"expected torch.float32 or torch.float64, got {dtype}")

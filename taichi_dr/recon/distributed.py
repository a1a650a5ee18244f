"""Data-parallel reconstruction with ``torch.distributed``: one process per device, gradients summed.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``),
every rank builds the same model (same seed; parameters broadcast from rank 0 whenever the set of
learned parameters changes), renders *its slice* of each iteration's global batch of views,
back-propagates its share of the global loss, and one flattened ``all_reduce`` per step sums the
gradients of every parameter the optimiser holds together with the loss terms for logging. Every
rank then takes the same Adam step, so the ranks stay identical without ever exchanging
parameters again.

Why an explicit all-reduce and not ``DistributedDataParallel``: DDP wraps one ``nn.Module`` whose
parameter set is fixed at construction and registers bucketed hooks on those parameters. Here the
learned set changes between passes (DMTet SDF/offsets + colour MLP + light, then free mesh vertices
and colours in refinement, then textures/materials), the refinement vertices are plain tensors
created mid-run, and the extracted mesh differs every iteration. Reading ``optimizer.param_groups``
after ``backward()`` follows whatever the current pass optimises, and one flat message per step is
also fewer round trips than DDP's buckets for these small models.

This module sets up the process group and the ranks' devices; the per-step part (which views a
rank draws, the gradient sum that makes N processes give one process' answer) is
:mod:`taichi_dr.recon.data_parallel`.

Devices: the backend is ``gloo`` on CPU and ``cpu:gloo,cuda:nccl`` on CUDA (CUDA tensors go
through NCCL, small CPU control messages through gloo). Taichi 1.7.4 always runs on CUDA device
ordinal 0 of the process (``CUDAContext`` calls ``cuDeviceGet(&dev, 0)`` and retains that
device's primary context), so ``torch.cuda.set_device(LOCAL_RANK)`` alone would put every rank's
Taichi kernels on the first GPU. :func:`prepare_rank` therefore narrows ``CUDA_VISIBLE_DEVICES`` to
the rank's GPU *before* CUDA is initialised, then uses ``cuda:0`` for torch and Taichi alike.
"""
import dataclasses
import datetime
import os
from typing import Any, Dict, Optional, Tuple

import torch

__all__ = ["DistContext", "torchrun_env", "is_main_process", "prepare_rank", "init_distributed", "finish", "share_state",
           "TIMEOUT_ENV"]

TIMEOUT_ENV = "TAICHI_DR_DIST_TIMEOUT"  # seconds a collective may wait for a peer (default 1800)


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process stands in a launch. The default is a single process.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: torch device of this rank's Taichi runtime (``"cpu"`` or ``"cuda:0"`` after pinning).
        backend: process-group backend, ``None`` without a group.
        owns_group: whether :func:`init_distributed` created the group (then :func:`finish` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes outputs, checkpoints and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process: gradients must be reduced."""
        return self.world_size > 1


def _env_int(env, name: str) -> int:
    text = env.get(name)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(f"${name}: expected an integer (set by torchrun), got {text!r}") from None


def torchrun_env(env=None) -> Optional[Tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` from a torchrun launch's environment, or ``None``.

    Raises:
        ValueError: ``WORLD_SIZE``/``RANK`` present but malformed or inconsistent.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"torchrun environment: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got "
                         f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process: the one that prints summaries."""
    env = torchrun_env()
    return env is None or env[0] == 0


def _wanted_arch(arch: Optional[str]) -> str:
    from taichi_dr import runtime

    name = arch or runtime.current_arch() or os.environ.get("TAICHI_DR_ARCH", "auto")
    name = name.strip().lower()
    return "cuda" if name == "gpu" else name


def _pin_gpu(arch: str, local_rank: int) -> bool:
    """Make this rank's GPU the process's CUDA device 0 (for torch and Taichi); return "use CUDA"."""
    from taichi_dr import runtime

    if arch not in ("auto", "cuda"):
        return False
    cuda_up = runtime.current_arch() == "cuda" or torch.cuda.is_initialized()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = None if visible is None else [s.strip() for s in visible.split(",") if s.strip()]
    if not cuda_up and (ids is None or len(ids) > 1):
        if ids is not None and local_rank >= len(ids):
            raise RuntimeError(f"LOCAL_RANK={local_rank} but CUDA_VISIBLE_DEVICES={visible!r} lists {len(ids)} "
                               "GPU(s): launch at most one process per GPU (torchrun --nproc_per_node)")
        # must happen before the CUDA driver is initialised in this process: it reads the variable once
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank] if ids is not None else str(local_rank)
    if not torch.cuda.is_available():
        if arch == "cuda":
            raise RuntimeError(f"arch 'cuda': rank with LOCAL_RANK={local_rank} sees no CUDA device "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); launch at "
                               "most one process per GPU")
        return False
    if torch.cuda.device_count() > 1 and local_rank != 0:
        raise RuntimeError(
            f"CUDA was initialised in this process before taichi_dr could pin LOCAL_RANK={local_rank}'s GPU, and "
            f"{torch.cuda.device_count()} GPUs are visible; Taichi always uses CUDA device 0, so every rank would "
            "share one GPU. Call taichi_dr.recon.distributed.prepare_rank() before anything touches CUDA, or "
            "set CUDA_VISIBLE_DEVICES per rank")
    torch.cuda.set_device(0)
    return True


def prepare_rank(arch: Optional[str] = None) -> str:
    """Give this torchrun rank its own device, then start taichi_dr's runtime on it (idempotent).

    On CUDA: narrows ``CUDA_VISIBLE_DEVICES`` to GPU ``LOCAL_RANK`` (of those visible) so that torch's
    ``cuda:0`` and Taichi's CUDA context are that GPU. On CPU: splits the cores between the ranks of
    this machine (torch and Taichi threads), so that N ranks do not run N x cores threads. Without a
    torchrun launch this only initialises the runtime. Call it before anything initialises CUDA.

    Args:
        arch: as :func:`taichi_dr.init` (``None`` = ``$TAICHI_DR_ARCH`` or auto).

    Returns:
        The torch device string of this rank (``"cpu"`` or ``"cuda:0"``).
    """
    from taichi_dr import runtime

    env = torchrun_env()
    if env is None:
        runtime.init(arch)
        return "cuda:0" if runtime.current_arch() == "cuda" else "cpu"
    _, _, local_rank = env
    wanted = _wanted_arch(arch)
    use_cuda = _pin_gpu(wanted, local_rank)
    if runtime.is_initialized():
        name = runtime.current_arch()
    else:
        kwargs: Dict[str, Any] = {}
        if not use_cuda and wanted in ("auto", "cpu"):
            local_world = _env_int(os.environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in os.environ else 1
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads = max(1, cores // max(local_world, 1))
            kwargs["cpu_max_num_threads"] = threads
            torch.set_num_threads(threads)
        name = runtime.init("cuda" if use_cuda else ("cpu" if wanted == "auto" else wanted), **kwargs)
    return "cuda:0" if name == "cuda" else "cpu"


def _timeout(timeout_s: Optional[float]) -> datetime.timedelta:
    if timeout_s is None:
        text = os.environ.get(TIMEOUT_ENV, "1800")
        try:
            timeout_s = float(text)
        except ValueError:
            raise ValueError(f"${TIMEOUT_ENV}: expected seconds (a number > 0), got {text!r}") from None
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected seconds > 0, got {timeout_s!r}")
    return datetime.timedelta(seconds=timeout_s)


def init_distributed(arch: Optional[str] = None, enabled: Optional[bool] = None,
                     timeout_s: Optional[float] = None) -> DistContext:
    """This process's :class:`DistContext`; joins the torchrun process group when launched by torchrun.

    Args:
        arch: Taichi arch for :func:`prepare_rank`.
        enabled: ``None`` = detect a torchrun launch; ``False`` = a single process even under torchrun
            (``reconstruct-many`` runs one scene per rank this way).
        timeout_s: how long a collective waits for a missing peer before it raises (default
            ``$TAICHI_DR_DIST_TIMEOUT`` or 1800 s), so a dead or stuck rank is an error, not a hang.

    Raises:
        RuntimeError: launched with ``WORLD_SIZE > 1`` but the group cannot be formed, or the ranks
            disagree on the backend. A torchrun launch never silently becomes N independent runs.
    """
    import torch.distributed as dist

    if enabled is False:
        return DistContext(device=prepare_rank(arch))
    if dist.is_available() and dist.is_initialized():  # the caller (or the CLI) already joined
        device = prepare_rank(arch)
        env = torchrun_env()
        return DistContext(dist.get_rank(), dist.get_world_size(), env[2] if env else 0, device,
                           str(dist.get_backend()), owns_group=False)
    env = torchrun_env()
    if env is None or env[1] == 1:
        return DistContext(local_rank=env[2] if env else 0, device=prepare_rank(arch))
    rank, world, local_rank = env
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world}: this torch build has no torch.distributed; refusing to run "
                           f"{world} independent copies")
    device = prepare_rank(arch)
    backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=_timeout(timeout_s), rank=rank, world_size=world)
    except Exception as e:
        raise RuntimeError(f"launched by torchrun with WORLD_SIZE={world} (RANK={rank}) but "
                           f"torch.distributed.init_process_group(backend={backend!r}) failed: "
                           f"{type(e).__name__}: {e}; refusing to run {world} independent copies") from e
    flag = torch.tensor([1.0 if device.startswith("cuda") else 0.0])
    lo, hi = flag.clone(), flag.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if lo.item() != hi.item():
        raise RuntimeError("ranks disagree on the device: some run Taichi on CUDA, others on CPU (more processes "
                           "per machine than GPUs?); launch one process per GPU or pass --arch cpu")
    return DistContext(rank, world, local_rank, device, backend, owns_group=True)


def finish(ctx: DistContext, result: Any = None) -> Any:
    """End of a distributed run: every rank waits for rank 0 and returns rank 0's ``result``.

    Rank 0 calls it after writing its outputs; the other ranks call it right after training, so
    this broadcast is the barrier. The process group is destroyed if :func:`init_distributed`
    created it.
    """
    import torch.distributed as dist

    if not ctx.enabled:
        return result
    box = [result]
    dist.broadcast_object_list(box, src=0)
    if ctx.owns_group:
        dist.destroy_process_group()
    return box[0]


def share_state(ctx: DistContext, run) -> None:
    """Give every rank rank 0's copy of ``run``'s state (``run.state()`` / ``run.restore()``).

    Called when a pass starts: what a pass derives from the parameters (cleanup of the extracted
    mesh, the xatlas UV atlas of the texture pass) is not a continuous function of them, so ranks
    must not each derive their own; one broadcast per pass makes them identical by construction.
    """
    import torch.distributed as dist

    if not ctx.enabled:
        return
    box = [run.state() if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    if not ctx.is_main:
        run.restore(box[0])

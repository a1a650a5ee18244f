"""The per-step part of data-parallel reconstruction: each rank's views and the gradient sum.

Same answer as one process: the global batch of each iteration (which views, which random
backgrounds) is a function of ``(seed, iteration)`` only (:func:`local_batch`); rank ``r`` of ``N``
takes views ``[r*B//N, (r+1)*B//N)``. Image and mask losses are means over the batch, so rank
``r`` weights its mean by ``n_r / B``; the regularisers (computed identically on every rank) are
counted on rank 0 only. The *sum* over ranks of the gradients, one flattened ``all_reduce`` per
step (:class:`GradSync`), is then the single-process gradient. In one process every function here
is the identity on the single-process answer. Process-group setup: :mod:`taichi_dr.recon.distributed`.
"""
import zlib
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from taichi_dr.recon.distributed import TIMEOUT_ENV, DistContext

__all__ = ["PeerLostError", "LocalBatch", "GradSync", "local_batch", "rank_slice", "batch_layout"]


class PeerLostError(RuntimeError):
    """A collective lost its peers: another rank died (or none answered within the timeout).

    ``torchrun`` also sends SIGTERM to the surviving ranks when one dies, so the reconstruction loop
    reports this error itself, with SIGTERM ignored, before that signal can end the process silently.
    """


def rank_slice(total: int, ctx: DistContext) -> Tuple[int, int]:
    """``[start, end)`` of rank ``ctx.rank``'s share of ``total`` items (sizes differ by at most one)."""
    return ctx.rank * total // ctx.world_size, (ctx.rank + 1) * total // ctx.world_size


def batch_layout(n_views: int, batch: int, ctx: DistContext) -> Dict[str, Any]:
    """``{"world_size": N, "batch_per_rank": [n_0, ..., n_{N-1}]}`` for metrics.json."""
    B = min(batch, n_views)
    return {"world_size": ctx.world_size,
            "batch_per_rank": [(r + 1) * B // ctx.world_size - r * B // ctx.world_size for r in range(ctx.world_size)]}


class LocalBatch(NamedTuple):
    """This rank's part of one iteration's global batch.

    Attributes:
        idx: ``[n_r]`` int64 training view indices.
        bg: ``[n_r, H, W, 3]`` float32 random backgrounds (one per view, independent of the rank).
        view_share: ``n_r / B``: weight of this rank's batch-mean losses in the global mean.
        once_share: 1 on rank 0, 0 elsewhere: weight of terms every rank computes identically.
        global_size: ``B``.
    """

    idx: torch.Tensor
    bg: torch.Tensor
    view_share: float
    once_share: float
    global_size: int


def _iteration_seed(seed: int, it: int) -> int:
    # 32 bits each: distinct (seed, it) pairs never share a stream for it < 2**32
    return ((int(seed) & 0xFFFFFFFF) << 32) | (int(it) & 0xFFFFFFFF)


def local_batch(n_views: int, hw: Sequence[int], seed: int, it: int, batch: int,
                ctx: Optional[DistContext] = None, background: str = "pixel") -> LocalBatch:
    """Views and backgrounds of iteration ``it`` for this rank: a function of ``(seed, it)`` only.

    A generator seeded by ``(seed, it)`` draws the global batch (``min(batch, n_views)`` distinct
    views) and one seed per batch slot; each slot's background comes from its own generator, so a
    rank draws only the backgrounds of its own views and the union over ranks equals what one
    process draws. ``background``: ``"pixel"`` (a random colour per pixel) or ``"view"`` (one random
    colour per view: only its 3 numbers are drawn, the first 3 the per-pixel draw would give).

    Raises:
        ValueError: fewer views in the global batch than ranks, or an unknown ``background``.
    """
    if background not in ("pixel", "view"):
        raise ValueError(f"background: expected 'pixel' or 'view', got {background!r}")
    ctx = ctx or DistContext()
    g = torch.Generator().manual_seed(_iteration_seed(seed, it))
    views = torch.randperm(n_views, generator=g)[:batch]
    slot_seeds = torch.randint(0, 2 ** 62, (views.numel(),), generator=g)
    B = views.numel()
    if B < ctx.world_size:
        raise ValueError(f"batch: expected at least one view per rank ({ctx.world_size} ranks), got a global batch "
                         f"of {B} (batch={batch}, {n_views} training views)")
    a, b = rank_slice(B, ctx)
    H, W = int(hw[0]), int(hw[1])
    shape = (H, W, 3) if background == "pixel" else (1, 1, 3)
    bg = torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(int(s))).expand(H, W, 3)
                      for s in slot_seeds[a:b]]) if b > a else torch.zeros((0, H, W, 3))
    return LocalBatch(views[a:b], bg, (b - a) / B, 1.0 if ctx.is_main else 0.0, B)


class GradSync:
    """Sums gradients and loss terms over ranks after ``backward()``: one message per step.

    Holds only the signature of the last parameter set, to check (once per pass, not every step)
    that all ranks optimise the same tensors, and to broadcast rank 0's values when a new set
    appears (a new pass), so that ranks can never drift apart.
    """

    def __init__(self, ctx: Optional[DistContext] = None):
        self.ctx = ctx or DistContext()
        self._signature: Optional[Tuple] = None

    def _new_param_set(self, params: List[torch.Tensor], signature: Tuple) -> None:
        import torch.distributed as dist

        code = zlib.crc32(repr(signature).encode())
        probe = torch.tensor([float(code), float(sum(p.numel() for p in params))], dtype=torch.float64)
        lo, hi = probe.clone(), probe.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise RuntimeError(f"rank {self.ctx.rank}: the ranks optimise different parameter sets (shapes "
                               f"{[s[0] for s in signature][:6]}...); the mesh extraction or model set-up "
                               "is not deterministic across ranks")
        with torch.no_grad():
            for group in _by_device_dtype(params).values():
                flat = torch.cat([p.detach().reshape(-1) for p in group])
                dist.broadcast(flat, src=0)
                _scatter(flat, group, lambda p, seg: p.copy_(seg))
        self._signature = signature

    def all_reduce(self, optimizer: torch.optim.Optimizer, terms: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Sum the grads of every parameter in ``optimizer`` and the scalar ``terms`` over ranks.

        Args:
            optimizer: its ``param_groups`` name the learned parameters (whatever the current pass is).
            terms: 0-d tensors, each rank's weighted share of a loss term.

        Returns:
            The terms summed over ranks (detached 0-d tensors); the inputs themselves in one process.
        """
        import torch.distributed as dist

        if not self.ctx.enabled:
            return list(terms)
        params = list(dict.fromkeys(p for grp in optimizer.param_groups for p in grp["params"]))
        signature = tuple((tuple(p.shape), str(p.dtype), str(p.device)) for p in params)
        if signature != self._signature:
            self._new_param_set(params, signature)
        groups = _by_device_dtype(params)
        for k, group in enumerate(groups.values()):
            pieces = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype,
                                                                                device=p.device) for p in group]
            # a grad that is None on every rank stays None (Adam then skips the tensor, as in one process)
            has = torch.tensor([float(p.grad is not None) for p in group], dtype=group[0].dtype)
            extra = [has.to(group[0].device)]
            if k == 0:  # the loss terms ride in the first message
                extra.append(torch.stack([t.detach().reshape(()) for t in terms]).to(group[0]))
            flat = torch.cat(pieces + extra)
            try:
                dist.all_reduce(flat)
            except RuntimeError as e:  # gloo/NCCL: a peer closed its connection or the timeout passed
                raise PeerLostError(f"rank {self.ctx.rank}/{self.ctx.world_size}: lost the other ranks in the "
                                   f"gradient all-reduce (a rank died, or none answered within "
                                   f"${TIMEOUT_ENV} seconds): {e}") from e
            n = sum(p.numel() for p in group)
            present = flat[n:n + len(group)]

            def put(p, seg, present=present, idx={id(q): i for i, q in enumerate(group)}):
                if present[idx[id(p)]] > 0:
                    p.grad = seg.clone()
                else:
                    p.grad = None
            _scatter(flat[:n], group, put)
            if k == 0:
                summed = flat[n + len(group):].detach()
        return [summed[i] for i in range(len(terms))]


def _by_device_dtype(params: List[torch.Tensor]) -> Dict[Tuple, List[torch.Tensor]]:
    groups: Dict[Tuple, List[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((str(p.device), p.dtype), []).append(p)
    return groups


def _scatter(flat: torch.Tensor, group: List[torch.Tensor], put) -> None:
    o = 0
    for p in group:
        put(p, flat[o:o + p.numel()].view_as(p))
        o += p.numel()

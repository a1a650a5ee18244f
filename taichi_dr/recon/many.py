"""reconstruct_many(): a folder of datasets, one reconstruction each, sharded over torchrun ranks.

Scene ``k`` (in sorted order) runs on rank ``k mod N``, as an ordinary single-process
:func:`~taichi_dr.recon.reconstruct` into ``OUT/<scene>/``. A scene whose ``metrics.json`` and
``mesh.obj`` exist is complete and skipped; one with only a ``checkpoint.pt`` (interrupted) is
resumed. At the end every rank's results are gathered (``all_gather_object``) and rank 0 writes
``OUT/summary.csv``: one row per scene with its status, seconds and headline metrics. A scene
that fails is reported in the table (status ``failed`` and the error) and the others still run.
"""
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from taichi_dr.recon.config import ReconConfig
from taichi_dr.recon.distributed import DistContext, finish, init_distributed

__all__ = ["find_scenes", "reconstruct_many", "SUMMARY_COLUMNS"]

# scalar metrics copied into summary.csv (absent ones left empty)
SUMMARY_COLUMNS = ["scene", "status", "rank", "seconds", "iterations", "triangles", "test_psnr", "test_mask_iou",
                   "chamfer_l2", "error"]


def find_scenes(scenes_dir: Optional[str] = None, scenes: Optional[Sequence[str]] = None) -> List[str]:
    """Dataset folders to reconstruct, sorted by name.

    Args:
        scenes_dir: a folder whose sub-folders holding ``transforms_train.json`` are the scenes.
        scenes: explicit scene folders (relative to ``scenes_dir`` when it is given).

    Raises:
        ValueError: neither is given, a folder is not a dataset, or two scenes share a name.
    """
    from taichi_dr.recon.checks import check_dataset_dir

    if scenes is not None:
        paths = [os.path.join(scenes_dir, s) if scenes_dir is not None else s for s in scenes]
        for p in paths:
            check_dataset_dir(p, "scenes")
    elif scenes_dir is not None:
        if not os.path.isdir(scenes_dir):
            raise ValueError(f"{scenes_dir}: no such folder (expected a folder of NeRF-synthetic datasets)")
        paths = [os.path.join(scenes_dir, n) for n in sorted(os.listdir(scenes_dir))
                 if os.path.isfile(os.path.join(scenes_dir, n, "transforms_train.json"))]
        if not paths:
            raise ValueError(f"{scenes_dir}: expected sub-folders containing transforms_train.json, found none")
    else:
        raise ValueError("scenes_dir / scenes: expected a folder of datasets or a list of dataset folders, got neither")
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"scenes: expected distinct folder names (each names its output folder), got duplicates {dup}")
    return sorted(paths, key=lambda p: os.path.basename(os.path.normpath(p)))


def _complete(out: str) -> bool:
    return os.path.isfile(os.path.join(out, "metrics.json")) and os.path.isfile(os.path.join(out, "mesh.obj"))


def _row(scene: str, status: str, rank: int, metrics: Dict, error: str = "") -> Dict:
    row = {k: metrics.get(k, "") for k in SUMMARY_COLUMNS}
    row.update(scene=scene, status=status, rank=rank, error=error)
    return row


def _run_scene(path: str, out: str, config: ReconConfig, gt_name: Optional[str], ctx: DistContext) -> Dict:
    from taichi_dr.recon.loop import reconstruct

    name = os.path.basename(os.path.normpath(path))
    if _complete(out):
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as fh:
            return _row(name, "skipped", ctx.rank, json.load(fh))
    resume = os.path.isfile(os.path.join(out, "checkpoint.pt"))
    gt = os.path.join(path, gt_name) if gt_name else None
    print(f"[rank {ctx.rank}] {name}: {'resuming' if resume else 'starting'}", flush=True)
    t = time.time()
    try:
        # each scene is an ordinary one-process run on this rank (distributed=False)
        metrics = reconstruct(path, out, config, resume=resume, gt_mesh=gt, progress=ctx.world_size == 1,
                              distributed=False)
    except (ValueError, TypeError, OSError, RuntimeError, FloatingPointError) as e:
        print(f"[rank {ctx.rank}] {name}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return _row(name, "failed", ctx.rank, {}, f"{type(e).__name__}: {e}")
    print(f"[rank {ctx.rank}] {name}: done in {time.time() - t:.1f} s", flush=True)
    return _row(name, "resumed" if resume else "done", ctx.rank, metrics)


def reconstruct_many(out_dir: str, scenes_dir: Optional[str] = None, scenes: Optional[Sequence[str]] = None,
                     config: Optional[ReconConfig] = None, gt_name: Optional[str] = None) -> List[Dict]:
    """Reconstruct every scene into ``out_dir/<scene>/``, sharded over the ranks of a torchrun launch.

    Args:
        out_dir: output root; ``summary.csv`` goes here.
        scenes_dir, scenes: which datasets (see :func:`find_scenes`).
        config: settings of every scene (default :class:`ReconConfig`).
        gt_name: file name of a ground-truth OBJ inside each scene folder (Chamfer distance), e.g.
            ``"gt_mesh.obj"``; ``None`` = no Chamfer distance.

    Returns:
        One row per scene (``SUMMARY_COLUMNS``), on every rank, in scene order.
    """
    paths = find_scenes(scenes_dir, scenes)
    config = (config or ReconConfig()).validate()
    ctx = init_distributed()
    os.makedirs(out_dir, exist_ok=True)
    mine = [(k, p) for k, p in enumerate(paths) if k % ctx.world_size == ctx.rank]
    rows = {k: _run_scene(p, os.path.join(out_dir, os.path.basename(os.path.normpath(p))), config, gt_name, ctx)
            for k, p in mine}
    if ctx.enabled:
        import torch.distributed as dist

        parts: List = [None] * ctx.world_size
        dist.all_gather_object(parts, rows)
        rows = {k: r for part in parts for k, r in part.items()}
    table = [rows[k] for k in sorted(rows)]
    if ctx.is_main:
        _write_summary(os.path.join(out_dir, "summary.csv"), table)
    return finish(ctx, table)


def _write_summary(path: str, table: List[Dict]) -> None:
    from taichi_dr.mesh import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
            w.writeheader()
            for row in table:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, write)

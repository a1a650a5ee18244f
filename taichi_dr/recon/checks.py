"""Checks a reconstruction runs before any work starts, and the finite-loss guard it runs every step.

Every user mistake we can detect from the arguments alone (a missing or wrong dataset folder, a
missing ground-truth OBJ, an out-of-range setting, a resume without a checkpoint, a changed grid on
resume) raises ``ValueError`` here, naming what is wrong and what was expected, so a run never
trains for minutes and then fails on its last step.
"""
import dataclasses
import os
from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

import torch

from taichi_dr.recon.config import FROZEN_BEFORE_ADDED, ReconConfig

if TYPE_CHECKING:
    from taichi_dr.mesh import Mesh

__all__ = ["check_dataset_dir", "check_inputs", "check_finite", "checkpoint_config"]


def check_dataset_dir(data_dir: str, arg: str = "data_dir") -> None:
    """Raise ``ValueError`` unless ``data_dir`` is a folder holding ``transforms_train.json``."""
    expected = "expected a NeRF-synthetic dataset folder containing transforms_train.json"
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"{arg}: expected a folder path, got {type(data_dir).__name__}")
    if not os.path.exists(data_dir):
        raise ValueError(f"{data_dir}: no such folder ({expected})")
    if not os.path.isdir(data_dir):
        raise ValueError(f"{data_dir}: is a file ({expected})")
    if not os.path.isfile(os.path.join(data_dir, "transforms_train.json")):
        raise ValueError(f"{data_dir}: has no transforms_train.json ({expected})")


def _checkpoint_config(state: Dict, path: str) -> Dict:
    cfg = state.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: checkpoint has no config; expected one written by reconstruct()")
    known = {f.name for f in dataclasses.fields(ReconConfig)}
    # settings removed since then are ignored; frozen ones added since then take the value it was made with
    return {**FROZEN_BEFORE_ADDED, **{k: v for k, v in cfg.items() if k in known}}


def checkpoint_config(out_dir: str) -> Dict:
    """The settings ``{field: value}`` stored in ``out_dir/checkpoint.pt`` (for ``--resume``)."""
    from taichi_dr.recon.outputs import load_checkpoint

    path = os.path.join(out_dir, "checkpoint.pt")
    return _checkpoint_config(load_checkpoint(path), path)


def check_inputs(data_dir: str, out_dir: str, config: Optional[ReconConfig], resume: bool,
                 gt_mesh: Optional[Union[str, "Mesh"]]) -> Tuple[ReconConfig, Optional[Dict], Optional[object]]:
    """Validate everything :func:`~taichi_dr.recon.reconstruct` is given, before it starts.

    Args:
        config: ``None`` = defaults, or on ``resume`` the checkpoint's config.
        resume: a checkpoint ``out_dir/checkpoint.pt`` must exist; settings that fix the model's
            shape (metadata ``"frozen"``) must equal the checkpoint's.

    Returns:
        ``(config, checkpoint state or None, ground-truth Mesh or None)``.

    Raises:
        ValueError / TypeError: naming the argument or setting, the expected and the actual value.
    """
    from taichi_dr.mesh import Mesh, load_obj
    from taichi_dr.recon.outputs import load_checkpoint

    check_dataset_dir(data_dir)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir: expected a folder path, got {type(out_dir).__name__}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir}: is a file (expected an output folder)")
    if config is not None and not isinstance(config, ReconConfig):
        raise TypeError(f"config: expected a ReconConfig, got {type(config).__name__}")
    state = None
    if resume:
        ckpt = os.path.join(out_dir, "checkpoint.pt")
        state = load_checkpoint(ckpt)
        saved = _checkpoint_config(state, ckpt)
        if config is None:
            config = ReconConfig.from_dict(saved, source=ckpt)
        for f in dataclasses.fields(ReconConfig):
            if f.metadata.get("frozen") and f.name in saved and saved[f.name] != getattr(config, f.name):
                raise ValueError(f"{f.name}: cannot change on resume (the checkpoint was made with "
                                 f"{saved[f.name]!r}, got {getattr(config, f.name)!r}); start a new output folder")
    config = (config if config is not None else ReconConfig()).validate()
    gt = None
    if isinstance(gt_mesh, Mesh):  # already loaded (the CLI parses --gt in its own checks)
        if gt_mesh.faces.shape[0] == 0:
            raise ValueError("gt_mesh: expected a mesh with faces, got 0 faces")
        gt = gt_mesh
    elif gt_mesh is not None:
        if not isinstance(gt_mesh, (str, os.PathLike)):
            raise TypeError(f"gt_mesh: expected an OBJ file path or a taichi_dr.mesh.Mesh, got {type(gt_mesh).__name__}")
        if os.path.isdir(gt_mesh):
            raise ValueError(f"{gt_mesh}: is a directory (expected a ground-truth OBJ file for the Chamfer distance)")
        gt = load_obj(gt_mesh)
    return config, state, gt


def check_finite(loss: torch.Tensor, optimizer: torch.optim.Optimizer, it: int, phase: str) -> None:
    """Raise ``FloatingPointError`` if the loss or any gradient is NaN/Inf (call before ``step()``).

    Stopping here, before the optimiser applies the step, keeps the parameters at their last
    good values, so the checkpoint written on this error can be resumed from.
    """
    # one host read for the loss and every gradient (not one per parameter: on CUDA each is a sync)
    flags = [torch.isfinite(loss.detach()).all()] + [torch.isfinite(p.grad).all() for group in optimizer.param_groups
                                                    for p in group["params"] if p.grad is not None]
    if bool(torch.stack(flags).all()):
        return
    if not bool(flags[0]):
        raise FloatingPointError(f"the loss became {float(loss.detach())} at iteration {it} ({phase} pass)")
    raise FloatingPointError(f"a gradient became NaN/Inf at iteration {it} ({phase} pass)")

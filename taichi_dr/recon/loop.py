"""reconstruct(): multi-view images -> a coloured triangle mesh, nvdiffrec style, in two passes.

Pass 1 (DMTet, topology free). Each iteration takes a batch of training views and

    sdf, δ = DMTet()                     grid SDF and bounded offsets
    verts, faces = marching_tets(...)    differentiable extraction
    colour = ColorField(verts)           albedo at the mesh vertices
    image = render(...)                  rasterize -> interpolate -> shade -> composite -> antialias
    L = image_loss(tonemapped L1) + mask_loss(L2) + λ(t)·sdf_reg_loss,  λ: 0.2 -> 0.01 over 1/4

The backgrounds behind both the render and the target are random per pixel (as nvdiffrec
does), so a pixel can only be matched by covering it with the right colour or by leaving it
uncovered: the mask is learned, never taken for granted.

Pass 2 (mesh refinement, topology fixed): the extracted mesh's vertex positions and colours are
optimised directly with the same image losses plus a Laplacian regulariser on the displacement,
which recovers detail finer than the tet grid.

Both passes use Adam with an exponentially decaying learning rate (×0.1 over a pass). A
checkpoint is written every ``checkpoint_every`` iterations and on Ctrl-C; ``resume=True``
continues from it with the iteration count, models, optimiser and loss history restored.
"""
import dataclasses
import math
import os
import signal
import threading
import time
from typing import Dict, Optional

import torch
from tqdm import tqdm

from taichi_dr.camera import camera_position
from taichi_dr.data.nerf import load_nerf
from taichi_dr.geometry.dmtet import sdf_reg_weight
from taichi_dr.losses import image_loss, laplacian_loss, linear_to_srgb, mask_loss, sdf_reg_loss
from taichi_dr.mesh import Mesh, load_obj, save_obj
from taichi_dr.metrics import chamfer_distance, mask_iou, psnr
from taichi_dr.recon.config import ReconConfig
from taichi_dr.recon.model import ReconModel, hull_bounds
from taichi_dr.recon.outputs import (load_checkpoint, save_checkpoint, save_json, save_loss_plot,
                                     save_side_by_side, save_turntable)
from taichi_dr.render.antialias import antialias_construct_topology_hash
from taichi_dr.render.pipeline import render_mesh_views

__all__ = ["reconstruct"]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _lr_lambda(total: int):
    return lambda it: 10.0 ** (-it / max(total, 1))  # x0.1 over the pass


def _batch(ds, idx: torch.Tensor, gen: torch.Generator):
    imgs = ds.images[idx]
    H, W = imgs.shape[1:3]
    bg = torch.rand((idx.numel(), H, W, 3), generator=gen)
    a = imgs[..., 3:]
    target = imgs[..., :3] * a + bg * (1 - a)
    mv = ds.mv[idx]
    return target, a, bg, ds.proj.unsqueeze(0) @ mv, camera_position(mv)


class _Run:
    """State of one reconstruction; a class only so that checkpointing sees everything in one place."""

    def __init__(self, cfg: ReconConfig, train, out_dir: str):
        self.cfg, self.train, self.out_dir = cfg, train, out_dir
        mvp_all = train.proj.unsqueeze(0) @ train.mv
        center, half = hull_bounds(mvp_all, train.images[..., 3], camera_position(train.mv))
        self.center, self.half = center, half
        self.model = ReconModel(cfg.grid_res, center, half * 1.15, cfg.sdf_mode, cfg.light)
        self.model.init_from_hull(mvp_all, train.images[..., 3])
        self.opt = self._dmtet_optimizer()
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg.iters))
        self.it, self.phase = 0, "dmtet"
        self.history: Dict[str, list] = {k: [] for k in ("iter", "total", "image", "mask", "sdf_reg", "laplacian")}
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.mesh_verts = self.mesh_faces = self.mesh_colors = self.verts0 = None

    def _dmtet_optimizer(self):
        m = self.model
        return torch.optim.Adam([{"params": m.dmtet.parameters(), "lr": self.cfg.lr_geometry},
                                 {"params": list(m.color.parameters()) + list(m.light.parameters()),
                                  "lr": self.cfg.lr_color}])

    # ------------------------------------------------------------------ passes
    def start_refine(self):
        with torch.no_grad():
            v, f = self.model.dmtet.mesh()
            colors = self.model.color(v)
        self.mesh_faces = f
        self.mesh_verts = torch.nn.Parameter(v.detach().clone())
        self.verts0 = v.detach().clone()
        # colours as logits so they stay in (0, 1)
        self.mesh_colors = torch.nn.Parameter(torch.logit(colors.clamp(1e-4, 1 - 1e-4)))
        self.opt = torch.optim.Adam([{"params": [self.mesh_verts], "lr": self.cfg.lr_refine},
                                     {"params": [self.mesh_colors], "lr": self.cfg.lr_color * 3},
                                     {"params": self.model.light.parameters(), "lr": self.cfg.lr_color}])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.cfg.refine_iters))
        self.phase = "refine"
        self.history.setdefault("refine_start", []).append(self.it)

    def current_mesh(self):
        if self.phase == "refine":
            return self.mesh_verts, self.mesh_faces, torch.sigmoid(self.mesh_colors)
        v, f = self.model.dmtet.mesh()
        return v, f, self.model.color(v)

    def step(self):
        cfg = self.cfg
        idx = torch.randperm(len(self.train), generator=self.gen)[:cfg.batch]
        target, alpha, bg, mvp, campos = _batch(self.train, idx, self.gen)
        light = self.model.light()
        if self.phase == "dmtet":
            sdf, offsets = self.model.dmtet()
            verts, faces = self.model.dmtet.mesh(sdf, offsets)
            colors = self.model.color(verts)
            reg = sdf_reg_loss(sdf, self.model.dmtet.edges) * sdf_reg_weight(self.it, cfg.iters)
            lap = torch.zeros(())
            topo = None
        else:
            verts, faces, colors = self.mesh_verts, self.mesh_faces, torch.sigmoid(self.mesh_colors)
            t = (self.it - self.history["refine_start"][-1]) / max(cfg.refine_iters, 1)
            lap = laplacian_loss(verts, faces, self.verts0) * cfg.laplacian_weight * (1 - t) * 1e3
            reg = torch.zeros(())
            topo = getattr(self, "_topo", None) or antialias_construct_topology_hash(faces)
            self._topo = topo
        pred = render_mesh_views(verts, faces, colors, mvp, campos, target.shape[1:3], light, bg, topology_hash=topo)
        l_img = image_loss(pred[..., :3], target, cfg.loss)
        l_mask = mask_loss(pred[..., 3:], alpha)
        total = l_img + l_mask + reg + lap
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.sched.step()
        for k, v in (("iter", self.it), ("total", total), ("image", l_img), ("mask", l_mask), ("sdf_reg", reg),
                     ("laplacian", lap)):
            self.history[k].append(float(v.detach()) if torch.is_tensor(v) else float(v))
        self.it += 1
        return float(total.detach())

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> Dict:
        s = {"it": self.it, "phase": self.phase, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
             "sched": self.sched.state_dict(), "history": self.history, "gen": self.gen.get_state(),
             "config": dataclasses.asdict(self.cfg), "center": self.center, "half": self.half}
        if self.phase == "refine":
            s.update(mesh_verts=self.mesh_verts.detach(), mesh_faces=self.mesh_faces,
                     mesh_colors=self.mesh_colors.detach(), verts0=self.verts0)
        return s

    def restore(self, s: Dict):
        self.model.load_state_dict(s["model"])
        self.it, self.history = s["it"], s["history"]
        self.gen.set_state(s["gen"])
        if s["phase"] == "refine":
            self.phase = "refine"
            self.mesh_faces, self.verts0 = s["mesh_faces"], s["verts0"]
            self.mesh_verts = torch.nn.Parameter(s["mesh_verts"].clone())
            self.mesh_colors = torch.nn.Parameter(s["mesh_colors"].clone())
            self.opt = torch.optim.Adam([{"params": [self.mesh_verts], "lr": self.cfg.lr_refine},
                                         {"params": [self.mesh_colors], "lr": self.cfg.lr_color * 3},
                                         {"params": self.model.light.parameters(), "lr": self.cfg.lr_color}])
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.cfg.refine_iters))
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])


@torch.no_grad()
def _evaluate(run: _Run, test, out_dir: str) -> Dict[str, float]:
    """Render every test view over white; PSNR (sRGB) and mask IoU against the targets."""
    verts, faces, colors = run.current_mesh()
    light = run.model.light()
    H, W = test.images.shape[1:3]
    psnrs, ious = [], []
    os.makedirs(os.path.join(out_dir, "renders"), exist_ok=True)
    for i in range(len(test)):
        mv = test.mv[i:i + 1]
        white = torch.ones((1, H, W, 3))
        pred = render_mesh_views(verts, faces, colors, test.proj.unsqueeze(0) @ mv, camera_position(mv), (H, W),
                                 light, white)[0]
        a = test.images[i, ..., 3:]
        target = test.images[i, ..., :3] * a + (1 - a)
        psnrs.append(psnr(linear_to_srgb(pred[..., :3]), linear_to_srgb(target)))
        ious.append(mask_iou(pred[..., 3], a[..., 0]))
        save_side_by_side(os.path.join(out_dir, "renders", f"test_{i:03d}.png"), target, pred[..., :3])
    return {"test_psnr": sum(psnrs) / len(psnrs), "test_mask_iou": sum(ious) / len(ious),
            "test_psnr_per_view": psnrs, "test_mask_iou_per_view": ious}


def reconstruct(data_dir: str, out_dir: str, config: Optional[ReconConfig] = None, resume: bool = False,
                gt_mesh: Optional[str] = None, progress: bool = True) -> Dict:
    """Reconstruct a mesh from a NeRF-synthetic style dataset; write all outputs into ``out_dir``.

    Args:
        data_dir: folder with ``transforms_train.json`` (``transforms_test.json`` or ``_val`` for
            evaluation, optional).
        out_dir: output folder (``mesh.obj``, ``metrics.json``, ``loss.png``, ``renders/``,
            ``turntable.gif``, ``checkpoint.pt``).
        config: :class:`ReconConfig`.
        resume: continue from ``out_dir/checkpoint.pt``.
        gt_mesh: optional ground-truth OBJ for the Chamfer distance.

    Returns:
        The metrics dictionary also written to ``metrics.json``.
    """
    cfg = config or ReconConfig()
    torch.manual_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    train = load_nerf(data_dir, "train", cfg.train_res)
    test = None
    for split in ("test", "val"):
        if os.path.isfile(os.path.join(data_dir, f"transforms_{split}.json")):
            test = load_nerf(data_dir, split, cfg.eval_res)
            break
    t0 = time.time()
    run = _Run(cfg, train, out_dir)
    ckpt = os.path.join(out_dir, "checkpoint.pt")
    elapsed_before = 0.0
    if resume:
        s = load_checkpoint(ckpt)
        run.restore(s)
        elapsed_before = float(s.get("seconds", 0.0))
    total = cfg.iters + cfg.refine_iters
    bar = tqdm(total=total, initial=run.it, desc="reconstruct", disable=not progress, dynamic_ncols=True)
    # `kill` / a job scheduler's timeout (SIGTERM) is treated like Ctrl-C: checkpoint, then stop
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while run.it < total:
            if run.phase == "dmtet" and run.it >= cfg.iters:
                run.start_refine()
            loss = run.step()
            bar.update(1)
            bar.set_postfix(phase=run.phase, loss=f"{loss:.4f}")
            if run.it % cfg.checkpoint_every == 0 or run.it == total:
                save_checkpoint(ckpt, {**run.state(), "seconds": elapsed_before + time.time() - t0})
    except KeyboardInterrupt:
        save_checkpoint(ckpt, {**run.state(), "seconds": elapsed_before + time.time() - t0})
        bar.close()
        print(f"\ninterrupted at iteration {run.it}: checkpoint saved to {ckpt} (continue with --resume)")
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    bar.close()
    seconds = elapsed_before + time.time() - t0

    with torch.no_grad():
        verts, faces, colors = run.current_mesh()
        mesh = Mesh(verts.detach().clone(), faces.clone(), colors=colors.detach().clone())
    save_obj(os.path.join(out_dir, "mesh.obj"), mesh)
    metrics: Dict = {"iterations": run.it, "seconds": round(seconds, 2), "triangles": int(faces.shape[0]),
                     "vertices": int(verts.shape[0]), "grid_res": cfg.grid_res,
                     "train_res": list(train.images.shape[1:3]), "train_views": len(train)}
    if test is not None:
        metrics.update(_evaluate(run, test, out_dir))
    if gt_mesh is not None and faces.shape[0] > 0:
        gt = load_obj(gt_mesh)
        metrics["chamfer_l2"] = chamfer_distance(verts.detach(), faces, gt.verts, gt.faces, num_samples=cfg.chamfer_samples)
    history = run.history
    save_loss_plot(os.path.join(out_dir, "loss.png"), history)
    if faces.shape[0] > 0:
        save_turntable(os.path.join(out_dir, "turntable.gif"), mesh.verts, mesh.faces, mesh.colors,
                       run.model.light(), run.center, run.half, res=cfg.turntable_res, frames=cfg.turntable_frames)
    save_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics

"""reconstruct(): multi-view images -> a coloured triangle mesh, nvdiffrec style, in two passes.

Pass 1 (DMTet, topology free). Each iteration takes a batch of training views and

    sdf, δ = DMTet()                     grid SDF and bounded offsets (smooth steps: λ = dmtet_smoothing)
    verts, faces = marching_tets(...)    differentiable extraction
    colour = ColorField(verts)           albedo at the mesh vertices
    image = render(...)                  rasterize -> interpolate -> shade -> composite -> antialias,
                                         k×k samples per pixel box-filtered (``supersample_factor``)
    L = image_loss(tonemapped L1) + mask_loss(L2) + λ(t)·sdf_reg_loss + hull hinge
        + 0.03·ramp(t)·kd smoothness,  λ: 0.2 -> 0.01 over 1/4 (0 in MLP mode), ramp: 0 -> 1 over 1/10

The SDF starts as the visual hull's signed distance (from the masks' sub-pixel silhouettes), carved
first where the training views disagree about the hull's colour (recon/carve.py: concavities no
silhouette shows).

The backgrounds behind both the render and the target are random, new every step (one colour
per view by default; ``background='pixel'``: per pixel, as nvdiffrec), so a pixel can only be
matched by covering it with the right colour or by leaving it uncovered: the mask is learned,
never taken for granted.

Pass 2 (mesh refinement, topology fixed): the extracted mesh's vertex positions and colours are
optimised directly with the same image losses plus a Laplacian regulariser on the displacement,
which recovers detail finer than the tet grid; it starts from the cleaned DMTet mesh split at its
edges' midpoints (``refine_subdivide`` times, automatically twice for a DMTet mesh of up to 10,000
faces and else once; recon/subdivide.py: four faces per face, the surface unmoved), so it can
follow curves within a grid cell. Before it and at the end, slivers are collapsed and
faces no training view sees, and components the images do not support, are removed
(recon/cleanup.py; docs/08 says why DMTet leaves them), and what still owns no pixel (slivers
between pixel centres) is collapsed away, keeping the surface closed (recon/collapse.py).

Both passes use Adam with an exponentially decaying learning rate (×0.1 over a pass); a DMTet pass
longer than the 200 iterations its rates were tuned at takes proportionally smaller geometry steps
(``dmtet_rate_scale``: ×200 / iters: the same total movement in more, less noisy steps; a start
shrunk by more than 0.6 cells on the grid the run chose takes a larger one, ``shrink_rate_scale``,
so that the pass can grow it back), and in
direct mode those steps are smooth (``geometry/lattice_smooth.py``: the SDF and offsets move by
``(I + λL)⁻¹`` times Adam's step, λ = ``dmtet_smoothing`` × (grid / 40)², so one-cell lumps are damped). A
checkpoint is written every ``checkpoint_every`` iterations and on Ctrl-C; ``resume=True``
continues from it with the iteration count, models, optimiser and loss history restored.
"""
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from tqdm import tqdm

from taichi_dr._sparse import csr_transpose
from taichi_dr.camera import camera_position, rig_up
from taichi_dr.data.nerf import load_nerf
from taichi_dr.geometry.dmtet import sdf_reg_weight
from taichi_dr.losses import (albedo_guide_loss, face_pairs, image_loss, laplacian_loss, linear_to_srgb, mask_loss,
                               normal_consistency_loss, sdf_reg_loss, umbrella_operator)
from taichi_dr.mesh import Mesh
from taichi_dr.metrics import chamfer_distance, mask_iou, psnr, ssim
from taichi_dr.recon.checks import check_finite, check_inputs
from taichi_dr.recon.cleanup import clean_faces, collapse_short_edges, compact, components_genus
from taichi_dr.recon.collapse import (COLLAPSE_MAX_ERROR_PX, COLLAPSE_MAX_ERROR_SEEN_PX, COLLAPSE_ROUNDS,
                                      collapse_invisible, flip_invisible, merge_vertex_data)
from taichi_dr.recon.config import ReconConfig
from taichi_dr.recon.large_steps import SmoothParametrization
from taichi_dr.recon.subdivide import auto_subdivisions
from taichi_dr.recon.data_parallel import GradSync, PeerLostError, batch_layout, local_batch
from taichi_dr.recon.distributed import DistContext, finish, init_distributed, share_state
from taichi_dr.recon.model import ReconModel, hull_bounds, hull_topology, hull_views, pixel_footprint
from taichi_dr.recon.topology import TOPOLOGY_EPS, keep_topology, lattice_border
from taichi_dr.recon.export import export_mesh
from taichi_dr.recon.texture_pass import start_material_pass
from taichi_dr.recon.outputs import (save_checkpoint, save_json, save_loss_plot,
                                     save_side_by_side, save_turntable)
from taichi_dr.render.antialias import antialias_construct_topology_hash
from taichi_dr.render.pipeline import render_mesh_views
from taichi_dr.render.shading import VertexNormalOperator, vertex_normals
from taichi_dr.runtime import torch_device_for_arch

__all__ = ["reconstruct"]


class _StopRequest:
    """The training loop's Ctrl-C (SIGINT) and SIGTERM handler: stop at the next iteration boundary.

    Raising ``KeyboardInterrupt`` wherever the signal lands can cut a step in two (parameters
    updated by ``opt.step()`` but ``it`` and the history not yet advanced, so a resumed run would
    repeat a step) or leave Taichi, torch or tqdm half-way through a call. So the first signal only
    sets ``signal``; the loop finishes the step it is in, writes the checkpoint and stops. A second
    SIGINT stops at once (``forced``). The loop then writes the checkpoint too, unless the signal
    cut the parameter update or the pass change in two (``_Run.updating``): then it keeps the last.
    """

    def __init__(self):
        self.signal: Optional[int] = None
        self.forced = False

    def __call__(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt
        if self.signal is None and signum == signal.SIGINT:
            # os.write, not print: the handler may run inside a write to sys.stderr (tqdm's), and a
            # buffered stream re-entered from a signal handler raises
            os.write(2, b"\ntaichi-dr: stopping after this iteration (Ctrl-C again stops at once)\n")
        self.signal = signum


AUTO_TRAIN_RES = 256  # default training size cap in pixels (measured cost table: docs/08)
# default size cap of the refinement (texture) pass: its topology is fixed, so it costs per pixel, not per grid
# cell, and textures learned from 256-px views are blurred in 800-px test views (README: 800² scenes)
AUTO_REFINE_RES = 512
# default grid per training size (longer side, pixels): measured on Mitsuba renders (README): at 256 px
# grid 64 keeps 4-px rods that grid 40 loses (gadget 800²: 22.4 -> 23.7 dB, Chamfer 1.7e-3 -> 8.6e-4;
# Spot: Chamfer 4.1e-5 -> 3.0e-5); at 128 px grid 40 is as good and 1.6x cheaper
AUTO_GRID = (160, 40, 64)  # (longest side in px up to which, grid there, grid above)


def auto_grid_res(train_hw: Tuple[int, int]) -> int:
    """``grid_res`` when the user left it unset: from the training images' longer side (``AUTO_GRID``)."""
    limit, small, large = AUTO_GRID
    return small if max(train_hw) <= limit else large


THIN_OUTLINE_SHARE = 0.19  # above this share of mask pixels on the outline, a small image's grid is too coarse


def outline_share(alpha: torch.Tensor) -> float:
    """The share of the masks' pixels (``alpha`` ``[N, H, W]`` > 0.5) that lie on their outline: the
    pixels a 3×3 erosion removes, over all views.

    About 2–2.5 / (the parts' typical width in pixels): 0.07 for a bowl filling a 128² view, 0.23–0.33
    for a cow or a figure with limbs 3–5 px wide, whose grid-40 cells (~2.2 px there) round them off.
    """
    m = (alpha > 0.5).to(torch.float32).unsqueeze(1)  # [N, 1, H, W]
    total = float(m.sum())
    if total == 0:
        return 0.0
    inner = -F.max_pool2d(-m, 3, stride=1, padding=1)  # erosion: 1 where all 3×3 neighbours are inside
    return 1.0 - float(inner.sum()) / total


def choose_grid_res(grid_res: Optional[int], train_hw: Tuple[int, int], mvp: torch.Tensor, alpha: torch.Tensor,
                    center: torch.Tensor, half: float) -> Tuple[int, Optional[float], Dict]:
    """The DMTet grid for these masks and the genus cap of its start shape.

    Unset, the grid is ``auto_grid_res`` of the image size, except that a small-image grid (40) is
    too coarse for an object made of thin parts, and the run takes the large-image grid (64):
    * when grid 40 cuts the visual hull into more pieces than grid 64 does (the Mitsuba cow at 128²:
      grid 40's hull has 4 pieces, its legs cut off and not regrown, grid 64's one; docs/08 round 16);
    * when more than ``THIN_OUTLINE_SHARE`` of the mask pixels lie on the outline
      (:func:`outline_share`: figures with limbs a few pixels wide), grid 40's cells span more than a
      pixel (so they round those outlines off) and both grids cut the hull into as many pieces (more
      pieces on the finer grid: gaps under a grid-40 cell, e.g. an open shell's windows, which the
      finer grid resolves into broken surfaces; docs/08 round 28).
    A grid above the default gets the default grid's hull genus as the cap of its start's
    (``ReconModel.init_from_hull(max_genus=)``: the fine lattice resolves phantom handles, round 15),
    unless the default grid cut the hull into more pieces than this grid: then its genus is no
    reference either.

    Args:
        grid_res: the user's grid (``None``: choose).
        train_hw: training image size; mvp: ``[N, 4, 4]`` cameras; alpha: ``[N, H, W]`` masks.
        center: ``[3]`` the grid cube's centre; half: its half size (world units).

    Returns:
        ``(grid_res, max_genus or None, report)``; ``report`` (for ``metrics.json``) has the default
        grid and, when it chose, the hull's pieces on each grid compared, the masks' outline share
        and a default grid cell's size in pixels.
    """
    ref = auto_grid_res(train_hw)
    report: Dict = {"default_grid_res": ref}
    if grid_res is None:
        fine = AUTO_GRID[2]
        if ref >= fine:
            return ref, None, report
        pieces = {ref: hull_topology(mvp, alpha, ref, center, half)[0],
                  fine: hull_topology(mvp, alpha, fine, center, half)[0]}
        report["hull_pieces"] = {str(k): v for k, v in pieces.items()}
        share = outline_share(alpha)
        cell_px = 2.0 * half / ref / pixel_footprint(mvp, train_hw, center)  # a default grid cell, in pixels
        report.update(outline_share=round(share, 4), cell_px=round(cell_px, 3))
        # thin parts: grid 40 cuts the hull, or its cells (over a pixel) round off outlines that are
        # mostly a pixel from the other side; but a finer grid that splits the hull into more pieces
        # resolves gaps narrower than a grid-40 cell (an open shell's windows), where it loses more
        # than it gains (docs/08 round 28)
        thin = pieces[ref] > pieces[fine] or (share > THIN_OUTLINE_SHARE and cell_px > 1.0
                                              and pieces[ref] == pieces[fine])
        return (fine if thin else ref), None, report
    if grid_res <= ref:
        return grid_res, None, report
    (p_ref, g_ref), p_fine = hull_topology(mvp, alpha, ref, center, half), \
        hull_topology(mvp, alpha, grid_res, center, half)[0]
    report["hull_pieces"] = {str(ref): p_ref, str(grid_res): p_fine}
    return grid_res, (g_ref if p_ref <= p_fine else None), report


AUTO_MLP_MAX_GRID = 40  # sdf_mode "auto": the MLP on grids up to this many cells, direct on finer ones
SLIVER_FRACTION = 0.2  # mesh edges shorter than this many grid cells are collapsed before refinement
KD_SMOOTH_POINTS = 4096  # surface points per step for the albedo smoothness term (cost ~ 2x that many pixels)
MLP_LR_FACTOR = 0.15  # Adam rate of the SDF MLP's weights relative to lr_geometry (measured: docs/08)
REF_DMTET_ITERS = 200  # the DMTet pass length lr_geometry was tuned at (the default `iters` is 2x it)
SHRINK_REACH_CELLS = 0.6  # the start's shrink the tuned DMTet pass grows back (cells; shrink_rate_scale)
SHRINK_RATE_MAX = 2.0  # the largest rate factor shrink_rate_scale gives (the largest measured)
SUPERSAMPLE_PX = 256  # automatic supersampling renders the losses' images at least this large (longer side)
SUPERSAMPLE_MAX = 2  # ... with at most this factor (3x3 on the cow: same IoU as 2x2; docs/08 round 18)


def supersample_factor(cfg_value: Optional[int], hw: Tuple[int, int]) -> int:
    """Samples per pixel side for the losses' renders of ``hw`` images (:func:`render_mesh_views`'
    ``supersample``): ``cfg_value`` when given, else the smallest k with k · max(hw) >= 256, at most 2.

    The targets' pixels are area averages (a path tracer's box filter); one antialiased sample per
    pixel matches them only where the silhouette is straight over a pixel pair, so the losses
    also fit that approximation's errors, most where outlines curve and parts are 1-2 px wide.
    In pixels of the image those errors are the same at any size, but a smaller image has more of
    its object within a pixel of an outline: 128² images take k = 2 (cow: test IoU 0.966 -> 0.976,
    Homer 0.969 -> 0.972, time x1.5; docs/08 round 18), images of 256 px and more k = 1. The cap
    is 2: 3×3 gave the cow the same IoU (0.976), and 4 would cost 16x the pixels of a 64² image.
    """
    if cfg_value is not None:
        return int(cfg_value)
    return max(1, min(SUPERSAMPLE_MAX, math.ceil(SUPERSAMPLE_PX / max(hw))))


def dmtet_rate_scale(iters: int) -> float:
    """Factor on the DMTet pass' geometry rate for a pass of ``iters`` iterations: 200 / iters for a
    longer pass, 1 otherwise.

    Adam moves each SDF value and offset by about the rate per step whatever the gradient's size.
    Where the gradient is mostly noise (4 random views a step, texture the field has not learned
    yet) the steps add up like a random walk, ∝ rate · √steps; and the pass' objective is not the
    true shape's (no light here casts shadows), so the total movement the tuned pass allows
    (Σ rate) acts as early stopping. A longer pass therefore keeps that total and splits it into
    more, smaller steps, which halves the noise at 4× the iterations. Measured at 400 iterations
    (docs/08), same rate → ×1/√2 → ×1/2: Bob Chamfer 2.49e-5 → 2.11e-5 → 1.95e-5 (200: 2.15e-5),
    blob 3.37e-5 (×1/√2) → 2.66e-5 (200: 3.06e-5). Shorter passes keep the tuned rate: a larger
    one was never measured to be stable.
    """
    if iters < 1:
        raise ValueError(f"iters: expected >= 1, got {iters}")
    return min(1.0, REF_DMTET_ITERS / iters)


def shrink_rate_scale(shrink_cells: float) -> float:
    """Factor on the DMTet pass' geometry rate (direct mode, automatic grid) that lets it grow back
    the start's shrink.

    The pass starts ``shrink_cells`` inside the carved visual hull (:func:`hull_shrink_cells`), and
    only the mask and image losses bring the surface back out to the silhouettes. Adam moves an SDF
    value by at most about the rate per step, so the tuned pass (0.005 cells a step over 400 steps,
    ×0.1 over the pass) moves the surface at most Σ rate ≈ 0.78 cells, and a silhouette's gradient
    reaches a vertex only in the views where it lies on the outline. A larger shrink was not grown
    back (measured, held-out cow at 128², grid 64, shrink 1.11 cells: the DMTet pass alone ended
    ~1 px inside every silhouette, test IoU 0.859; rate ×2: 0.919). So the rate is scaled by
    ``shrink_cells / 0.6``, never below 1 (most datasets measured shrink at most 0.59 cells and run
    unchanged; what moves is grid 64 chosen for thin parts at 128² and objects small in their
    frame) and never above 2, the largest factor measured (docs/08 round 17).
    """
    if shrink_cells < 0:
        raise ValueError(f"shrink_cells: expected >= 0, got {shrink_cells}")
    return min(SHRINK_RATE_MAX, max(1.0, float(shrink_cells) / SHRINK_REACH_CELLS))


def resolve_sdf_mode(sdf_mode: str, grid_res: int) -> str:
    """The DMTet parametrisation a run uses: ``sdf_mode`` itself unless it is ``"auto"``, which takes
    ``"mlp"`` on grids up to ``AUTO_MLP_MAX_GRID`` cells (the small images' grid) and ``"direct"`` on finer ones.

    The network's SDF is smooth where per-vertex values are free: on the coarse grid that prior is
    what the images lack, at 12-25 % more time than direct mode (round 26, thirteen Mitsuba shapes
    at 128² and grid 40: eight gain, e.g. rocker arm Chamfer 1.04e-4 -> 6.6e-5, beetle
    8.9e-4 -> 4.7e-4, bowl 1.34e-4 -> 1.06e-4, five lose, the pair most, +18 %; the geometric mean
    of the ratios is 0.90; docs/08). A finer grid is there for detail the network smooths away
    (the 800² gadget at grid 64: 5 pieces -> 3, 30.5 -> 30.0 dB; round 25), and its network over
    every lattice point triples the DMTet pass' time.

    Args:
        sdf_mode: ``"auto"``, ``"direct"`` or ``"mlp"`` (``ReconConfig.sdf_mode``).
        grid_res: the run's grid (``choose_grid_res``), >= 1.

    Returns:
        ``"direct"`` or ``"mlp"``.

    Raises:
        ValueError: an unknown mode or a grid below 1.
    """
    modes = ReconConfig.__dataclass_fields__["sdf_mode"].metadata["choices"]  # one list: the setting's
    if sdf_mode not in modes:
        raise ValueError(f"sdf_mode: expected one of {list(modes)}, got {sdf_mode!r}")
    if isinstance(grid_res, bool) or not isinstance(grid_res, int) or grid_res < 1:
        raise ValueError(f"grid_res: expected an int >= 1, got {grid_res!r}")
    if sdf_mode != "auto":
        return sdf_mode
    return "mlp" if grid_res <= AUTO_MLP_MAX_GRID else "direct"


def dmtet_smoothing(cfg: ReconConfig, grid_res: int, sdf_mode: str) -> float:
    """λ of the DMTet pass' smooth steps at ``grid_res``: ``cfg.dmtet_smoothing`` × (grid_res / 40)², so that
    a step spreads over the same world-space width at every grid; 0 for the MLP (``sdf_mode``: the run's,
    :func:`resolve_sdf_mode`), whose weights each move every vertex."""
    return float(cfg.dmtet_smoothing) * (grid_res / 40.0) ** 2 if sdf_mode == "direct" else 0.0


def hull_shrink_cells(cfg: ReconConfig, mvp: torch.Tensor, hw: Tuple[int, int], center: torch.Tensor,
                      cell: float) -> float:
    """``cfg.hull_shrink_px`` in grid cells: pixels are what the passes can grow back (the mask loss and
    the silhouettes act per pixel), so the shrink is set in pixels and converted at the hull's centre."""
    return float(cfg.hull_shrink_px) * pixel_footprint(mvp, hw, center) / float(cell)


# the image's half-width at the object in NeRF-synthetic's framing (cameras 4.0 from the object,
# camera_angle_x 0.6911: 4·tan(0.3456)); every dataset the refinement's settings were measured on has it
REFINE_FRAME_REF = 1.44


def refine_length_unit(mvp: torch.Tensor, hw: Tuple[int, int], center: torch.Tensor) -> float:
    """The refinement pass' unit of length, in world units: the image's half-width at the object
    (``pixel_footprint`` × the longer side / 2) over :data:`REFINE_FRAME_REF`.

    ``lr_refine`` and the Laplacian term are in this unit, so a scene in other units (a model ten
    times larger, its cameras ten times farther) runs the same steps in pixels; on data framed as
    NeRF-synthetic (all of docs/08) it is 1 within 1 %. Measured on the cow at 128² before this unit:
    Chamfer / size² 3.71e-5 (scene ×3), 2.63e-5 (×1), 1.97e-5 (×0.3); docs/08 round 32. The DMTet
    pass works in grid cells, which scale with the visual hull, and so needs no unit.

    Args:
        mvp: ``[N, 4, 4]`` training cameras; hw: their image size (H, W); center: ``[3]`` the hull's centre.
    """
    return pixel_footprint(mvp, hw, center) * max(hw) / 2.0 / REFINE_FRAME_REF


def sdf_reg_scale(cfg: ReconConfig, sdf_mode: str) -> float:
    """Multiplier of the SDF regulariser's schedule: ``cfg.sdf_reg_scale``, or when unset 1 in direct
    mode (nvdiffrec's) and 0 in MLP mode (``sdf_mode``: the run's, :func:`resolve_sdf_mode`; measured
    on the torus: Chamfer 1.27e-4 with it, 3.4e-5 without; the network's shared weights keep its SDF
    free of stray sign flips; docs/08)."""
    if cfg.sdf_reg_scale is not None:
        return float(cfg.sdf_reg_scale)
    return 0.0 if sdf_mode == "mlp" else 1.0


def _lr_lambda(total: int):
    return lambda it: 10.0 ** (-it / max(total, 1))  # x0.1 over the pass


def _to_device(ds, device):
    """The dataset with its tensors on ``device`` (the Taichi arch's: ops refuse other devices)."""
    return dataclasses.replace(ds, images=ds.images.to(device), c2w=ds.c2w.to(device), mv=ds.mv.to(device),
                               proj=ds.proj.to(device))


def _batch(ds, idx: torch.Tensor, bg: torch.Tensor):
    imgs = ds.images[idx]
    bg = bg.to(imgs.device)
    a = imgs[..., 3:]
    target = imgs[..., :3] * a + bg * (1 - a)
    mv = ds.mv[idx]
    return target, a, bg, ds.proj.unsqueeze(0) @ mv, camera_position(mv)


def _auto_train_res(data_dir: str, cap: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """``train_res`` when the user left it unset: ``None`` (the stored size), or ``cap`` (default
    ``AUTO_TRAIN_RES``) pixels on the longer side when the first training image is larger (the cost of
    an iteration grows with the pixel count, the geometry a 2-core CPU can resolve in minutes does
    not; see docs/08)."""
    import json

    import imageio.v3 as iio

    from taichi_dr.data.nerf import _resolve

    with open(os.path.join(data_dir, "transforms_train.json"), encoding="utf-8") as fh:
        first = json.load(fh)["frames"][0]["file_path"]
    h, w = iio.improps(_resolve(data_dir, first)).shape[:2]
    cap = AUTO_TRAIN_RES if cap is None else cap
    if max(h, w) <= cap:
        return None
    k = cap / max(h, w)  # keep the aspect ratio (the field of view follows W / H)
    return max(1, round(h * k)), max(1, round(w * k))


class _Stopwatch:
    """Wall seconds per stage of a run (``metrics.json`` -> ``timings``), kept in the checkpoint so that
    a resumed run adds to what the first process spent. ``with watch("stage"):`` adds the block's
    time to that stage (also when it raises)."""

    def __init__(self):
        self.spent: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t = time.time()
        try:
            yield
        finally:
            self.spent[stage] = self.spent.get(stage, 0.0) + time.time() - t

    def report(self) -> Dict[str, float]:
        return {k: round(v, 2) for k, v in self.spent.items()}


class _Run:
    """State of one reconstruction; a class only so that checkpointing sees everything in one place."""

    def __init__(self, cfg: ReconConfig, train, out_dir: str, dist: Optional[DistContext] = None, refine_data=None):
        self.cfg, self.train, self.out_dir = cfg, train, out_dir
        # the refinement pass' views: the same cameras, possibly at a higher resolution (ReconConfig.refine_res)
        self.refine_data = train if refine_data is None else refine_data
        self.dist = dist or DistContext()  # this process's rank; one process by default
        self.sync = GradSync(self.dist)
        self.stop_request: Optional[_StopRequest] = None  # the loop's signal handler (Ctrl-C/SIGTERM seen)
        self.stop_votes = 0.0  # how many ranks had seen one at the last step's all-reduce
        self.updating = False  # True while a step or the pass change mutates the state (not checkpointable)
        mvp_all = train.proj.unsqueeze(0) @ train.mv
        # the start's views: not those whose mask is empty (a sheet seen edge-on), which would empty the hull
        hv = hull_views(train.images[..., 3])
        left = sorted(set(range(train.images.shape[0])) - set(hv.tolist()))  # the views left out
        # the usual case: no view left out, no copy of the images
        mvp_h, images_h = (mvp_all[hv], train.images[hv]) if left else (mvp_all, train.images)
        campos_h = camera_position(train.mv[hv] if left else train.mv)
        try:
            center, half = hull_bounds(mvp_h, images_h[..., 3], campos_h)
        except ValueError as e:  # the error names empty views; those left out are not among the ones it saw
            if not left:
                raise
            raise ValueError(f"{e}; training view(s) {', '.join(map(str, left))} have no foreground pixel "
                             "(alpha > 0.5) and were left out of it") from None
        self.center, self.half = center, half
        hw = tuple(train.images.shape[1:3])
        box_half = half * 1.15  # the grid's cube: the hull's bounds and a margin
        # the grid: the default for the image size unless it cuts thin parts off; a finer one's start
        # gets the default grid's genus as a cap (phantom handles; docs/08 rounds 15-16)
        self.grid_res, max_genus, self.grid_report = choose_grid_res(cfg.grid_res, hw, mvp_h, images_h[..., 3],
                                                                     center, box_half)
        if left:  # metrics.json: the views the start left out
            self.grid_report["views_without_mask"] = left
        sdf_mode = resolve_sdf_mode(cfg.sdf_mode, self.grid_res)  # "auto": by the grid (MLP on a coarse one)
        self.model = ReconModel(self.grid_res, center, box_half, sdf_mode, cfg.light, cfg.material,
                                smoothing=dmtet_smoothing(cfg, self.grid_res, sdf_mode),
                                mlp_frequencies=cfg.mlp_frequencies)
        self.model.to(train.images.device)  # the data's device = the Taichi arch's (see reconstruct)
        self.shrink_cells = hull_shrink_cells(cfg, mvp_all, hw, center, self.model.dmtet.cell)
        self.unit = refine_length_unit(mvp_all, hw, center)  # the refinement's lengths (1 for NeRF's framing)
        # per-vertex steps with the grid chosen here only: at a user's grid finer than the images need, the
        # larger rate regrew the hull excess the shrink removes (torus, grid 64: 3.79e-5 -> 4.41e-5; docs/08)
        self.rate_scale = shrink_rate_scale(self.shrink_cells) if sdf_mode == "direct" and cfg.grid_res is None \
            else 1.0
        self.model.init_from_hull(mvp_h, images_h[..., 3], images=images_h if cfg.carve else None,
                                  campos=campos_h, stereo=cfg.stereo,
                                  shrink=self.shrink_cells, max_genus=max_genus)
        self.opt = self._dmtet_optimizer()
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg.iters))
        self.sdf_reg_scale = sdf_reg_scale(cfg, sdf_mode)
        self.it, self.phase = 0, "dmtet"
        self.history: Dict[str, list] = {k: [] for k in ("iter", "total", "image", "mask", "sdf_reg", "laplacian",
                                                                "albedo_guide")}
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.mesh_param = self.smoother = self.mesh_faces = self.mesh_colors = self.verts0 = None
        self.cleanup: Dict[str, Dict[str, int]] = {}  # phase -> clean_faces report
        self.watch = _Stopwatch()  # wall seconds per stage (metrics.json -> timings)

    @property
    def sdf_mode(self) -> str:
        """The DMTet parametrisation this run uses (``"direct"`` or ``"mlp"``: ``cfg.sdf_mode`` resolved)."""
        return self.model.dmtet.mode

    def _dmtet_optimizer(self):
        m, cfg = self.model, self.cfg
        # the SDF is in grid cells (model.init_from_hull) and the offsets in fractions of a cell, so a step
        # moves the surface a fixed fraction of a cell: the world-space step (and the noise that
        # Adam's normalised steps put on every vertex) shrinks with the cell size, so a finer grid
        # is at least as precise. The MLP's weights take a smaller rate (each moves every vertex).
        # (scaling the rate by grid_res / 40 helped the torus at grid 64 but ruined grid 96: docs/08)
        lr = cfg.lr_geometry * dmtet_rate_scale(cfg.iters)  # a longer pass: the same total movement, smaller steps
        lr *= self.rate_scale  # enough reach to grow the start's shrink back
        geo = [{"params": m.dmtet.parameters(), "lr": lr if m.dmtet.mode == "direct" else lr * MLP_LR_FACTOR}]
        return torch.optim.Adam(geo + [{"params": list(m.color.parameters()) + list(m.light.parameters()),
                                        "lr": cfg.lr_color}])

    def _clean(self, verts, faces):
        """Faces to keep (:func:`~taichi_dr.recon.cleanup.clean_faces` against all training views at
        twice the training resolution) and the report, also stored in ``self.cleanup``."""
        H, W = self.train.images.shape[1:3]
        keep, rep = clean_faces(verts.detach(), faces, self.train.proj.unsqueeze(0) @ self.train.mv,
                                (2 * H, 2 * W), self.train.images[..., 3])
        self.cleanup[self.phase] = rep.as_dict()
        return keep, rep

    def _visibility_views(self):
        """Cameras ``[N, 4, 4]`` and raster sizes for "owns a pixel": the training views at the training
        resolution and twice it (what a scorer rasterizes)."""
        H, W = self.train.images.shape[1:3]
        return self.train.proj.unsqueeze(0) @ self.train.mv, [(H, W), (2 * H, 2 * W)]

    def _collapse_invisible(self, verts, faces, rep):
        """:func:`~taichi_dr.recon.collapse.collapse_invisible` on the visibility views; the collapses
        and what stays invisible go into ``rep``."""
        # a subdivided mesh has 4^n times the faces between pixel centres: as many more rounds at most
        # (each stops early once nothing is left to collapse)
        mvp, sizes = self._visibility_views()
        # a collapse may move the surface by half a training pixel at most: slivers between pixel
        # centres go, a patch no view sees (an underside filmed from above) keeps its shape
        # (a pixel for faces some raster size sees: surface the views see between pixel centres)
        px = pixel_footprint(mvp, sizes[0], verts.detach().mean(0))
        out = collapse_invisible(verts.detach(), faces, mvp, sizes, report=rep,
                                 rounds=COLLAPSE_ROUNDS * 4 ** self._subdivisions(),
                                 max_error=COLLAPSE_MAX_ERROR_PX * px, max_error_seen=COLLAPSE_MAX_ERROR_SEEN_PX * px)
        self.cleanup[self.phase] = rep.as_dict()
        return out[:4]

    def _grid_scale(self) -> float:
        """``(grid_res / default grid)²`` for a grid finer than the image size's default (the user's, or
        the automatic 64 for thin parts at 128²), else 1: the subdivision budget grows with it
        (``auto_subdivisions``), so the same grid gets the same subdivisions whoever chose it."""
        ref = self.grid_report.get("default_grid_res", self.grid_res)
        return (self.grid_res / ref) ** 2 if self.grid_res > ref else 1.0

    def _subdivisions(self) -> int:
        """How often the refinement's mesh was subdivided: the DMTet cleanup's record (a checkpoint
        from before round 20 has none: its setting), 0 before the refinement."""
        n = self.cleanup.get("dmtet", {}).get("subdivisions")
        return n if n is not None else (self.cfg.refine_subdivide or 0)

    def _flip_invisible(self, verts, faces, rep, uv_faces=None):
        """:func:`~taichi_dr.recon.collapse.flip_invisible` for the slivers the collapses left owning
        fewer than two pixels at a size (a pixel centre on an edge: the OBJ's rounding can take it
        away), on the same views; returns ``(faces, uv_faces)``."""
        f, uv, _ = flip_invisible(verts.detach(), faces, *self._visibility_views(), uv_faces=uv_faces, report=rep)
        self.cleanup[self.phase] = rep.as_dict()
        return f, uv

    def _dmtet_grad_rows(self, sdf: torch.Tensor) -> torch.Tensor:
        """The grid vertices a DMTet step's losses read (MLP mode backpropagates through these only):
        the ends of sign-changing edges (the mesh, and the SDF regulariser's edges) and the vertices
        outside the hull whose SDF is negative (the hull term's non-zero gradients)."""
        rows = self.model.dmtet.surface_rows(sdf)
        stray = torch.nonzero(self.model.outside_hull & (sdf < 0))[:, 0]
        return torch.unique(torch.cat([rows, stray])) if stray.numel() else rows

    def _kd_smoothness(self, verts: torch.Tensor) -> torch.Tensor:
        """nvdiffrec's albedo smoothness on up to ``KD_SMOOTH_POINTS`` random surface points of the
        DMTet mesh: without it the per-pixel field paints shading (a filled dish's, say) into kd, and
        the image loss has no reason to move the geometry (docs/08)."""
        n = verts.shape[0]
        if n == 0:
            return torch.zeros(())
        idx = torch.randperm(n, generator=self.gen)[:KD_SMOOTH_POINTS].to(verts.device)
        return self.model.color.smoothness_loss(verts.detach()[idx], generator=self.gen)

    def _dmtet_mesh_with_start_topology(self):
        """The DMTet pass' mesh, unless its lattice signs made handles or pieces the start did not have.

        Free per-vertex SDF values (or the network's) can flip a lattice point anywhere, and one
        flip in a wall a cell thick is a tunnel: the Mitsuba mug (genus 1, and so its hull) ended
        the pass with genus 2. The signs are therefore also projected onto the starting SDF's
        topology (recon/topology.py: each flip that would change it is undone, the point gets
        ±0.05 cells), and that mesh is used when the pass' own has a higher genus or more
        components. The pass may also *remove* handles: a fine grid's hull can have thin phantom
        tunnels (torus at grid 96: hull genus 3, the pass' mesh 1), which the projection would
        restore, so a pass' mesh of lower or equal genus stands. Either way the grid box's border
        points count as outside. ``cleanup.dmtet.topology_fixed_points``: lattice points changed.
        """
        sdf, offsets = self.model.dmtet()
        res = self.model.dmtet.resolution
        # the grid's outermost lattice points are outside: a part poking out of the grid box (a thin
        # rod the coarse hull bounds missed) ends in a cap, not in an open cut (800² gadget: 9 open edges)
        border = lattice_border(res).to(sdf.device)
        was_inside = sdf < 0
        flip = torch.full_like(sdf, TOPOLOGY_EPS)  # the SDF is in grid cells (model.init_from_hull)

        def with_signs(inside):
            return torch.where(inside == was_inside, sdf, torch.where(inside, -flip, flip))
        inside = was_inside & ~border
        mesh = self.model.dmtet.mesh(with_signs(inside), offsets)
        ref = getattr(self.model, "start_inside", None)
        if ref is not None:
            kept, _ = keep_topology(ref & ~border.to(ref.device), inside.to(ref.device), res)
            kept = kept.to(sdf.device)
            if not torch.equal(kept, inside):
                projected = self.model.dmtet.mesh(with_signs(kept), offsets)
                (c_raw, g_raw), (c_new, g_new) = components_genus(mesh[1]), components_genus(projected[1])
                if g_raw > g_new or c_raw > c_new:
                    mesh, inside = projected, kept
        self._topology_fixed = int((inside != was_inside).sum())
        return mesh

    # ------------------------------------------------------------------ passes
    def start_refine(self):
        self.updating = True  # until the refinement's parameters, optimiser and phase are all set
        with torch.no_grad():
            v, f = self._dmtet_mesh_with_start_topology()
            # slivers (vertices a fraction of a cell apart) first, then hidden surfaces and floaters:
            # the refinement should not spend its time on geometry no image constrains
            v, f = collapse_short_edges(v, f, SLIVER_FRACTION * self.model.dmtet.cell)
            keep, rep = self._clean(v, f)
            v, f = compact(v, f, keep)
            # what still owns no pixel (slivers between pixel centres) goes by edge collapse: no holes
            v, f = self._collapse_invisible(v, f, rep)[:2]
            f = self._flip_invisible(v, f, rep)[0]
            self.cleanup[self.phase]["topology_fixed_points"] = self._topology_fixed
            # four faces per face, the surface unmoved: room to follow curves within a cell (recon/subdivide.py)
            n = self.cfg.refine_subdivide
            n = auto_subdivisions(f.shape[0], grid_scale=self._grid_scale()) if n is None else n
            self.cleanup[self.phase].update(subdivisions=n, subdivided_faces=int(f.shape[0]) * 4 ** n)
        # the material moves from the field to UV textures (or per-vertex colours), and the mesh is split
        # n times after the UV atlas is made (recon/texture_pass.py)
        v, f, self.mesh_colors = start_material_pass(self.model.color, v, f, self.refine_data.images.shape[1:3],
                                                     normal_map=self.cfg.normal_map, subdivisions=n)
        self.mesh_colors.to(v.device)  # its buffers (bounds, uv atlas) next to the parameters
        self.mesh_faces = f
        self._set_refine_mesh(v, f, smooth=True)
        self.verts0 = v.detach().clone()
        self.opt = self._refine_optimizer()
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.cfg.refine_iters))
        self.phase = "refine"
        self.history.setdefault("refine_start", []).append(self.it)
        self.updating = False

    def _set_refine_mesh(self, verts: torch.Tensor, faces: torch.Tensor, smooth: bool) -> None:
        """The refinement pass' vertex parameters: ``u = (I + λL) x`` with smooth steps
        (``refine_smoothing`` = λ > 0; recon/large_steps.py), else the positions themselves."""
        lam = self.cfg.refine_smoothing if smooth else 0.0
        self.smoother = SmoothParametrization(faces, verts.shape[0], lam) if lam > 0 else None
        u = verts.detach().clone() if self.smoother is None else self.smoother.to_param(verts)
        self.mesh_param = torch.nn.Parameter(u)

    @property
    def mesh_verts(self) -> Optional[torch.Tensor]:
        """``[V, 3]`` the refinement pass' vertex positions (differentiable in its parameters)."""
        p = self.mesh_param
        return p if p is None or self.smoother is None else self.smoother(p)

    def _refine_optimizer(self) -> torch.optim.Optimizer:
        # per-coordinate Adam on u: Nicolet et al.'s uniform denominator let the few vertices with
        # the largest gradients set everyone's step (800² gadget: -0.8 dB, IoU -0.003; docs/08)
        # positions in the pass' unit of length: the rate scales with it, and so does Adam's eps (the
        # gradients scale inversely), else a scene in millimetres has gradients near eps and shorter steps
        return torch.optim.Adam([{"params": [self.mesh_param], "lr": self.cfg.lr_refine * self.unit,
                                  "eps": 1e-8 / self.unit},
                                 {"params": self.mesh_colors.parameters(), "lr": self.cfg.lr_color * 3},
                                 {"params": self.model.light.parameters(), "lr": self.cfg.lr_color}])

    @torch.no_grad()
    def finish_cleanup(self):
        """The final cleanup: the refined mesh against the training views (a DMTet-only run is turned
        into a mesh first, which is cleaned on the way)."""
        if self.phase == "dmtet":
            self.start_refine()
            return
        keep, rep = self._clean(self.mesh_verts, self.mesh_faces)
        mat = self.mesh_colors
        uv_faces = getattr(mat, "uv_faces", None)  # textured material: its row k is the mesh's triangle k
        per_vertex = [mat.logits.data] if hasattr(mat, "logits") else []  # per-vertex colours
        out = compact(self.mesh_verts.data, self.mesh_faces, keep, *per_vertex)
        v, f, vmap, rows = self._collapse_invisible(out[0], out[1], rep)
        if uv_faces is not None:
            uv_faces = uv_faces[keep][rows.to(uv_faces.device)]
        f, uv_faces = self._flip_invisible(v, f, rep, uv_faces)
        if bool(keep.all()) and rep.collapsed_edges == 0 and rep.flipped_edges == 0 \
                and v.shape[0] == self.mesh_verts.shape[0]:
            return  # nothing removed, collapsed or flipped
        if uv_faces is not None:
            mat.uv_faces = uv_faces
        self.mesh_faces, self._topo, self._pairs, self._lap_op, self._normal_op = f, None, None, None, None
        self._set_refine_mesh(v, f, smooth=False)  # the pass is over: no optimiser will step these
        if per_vertex:  # merged vertices take the mean of their colours
            mat.logits = torch.nn.Parameter(merge_vertex_data(out[2], vmap, v.shape[0]))

    def current_mesh(self):
        if self.phase == "refine":
            return self.mesh_verts, self.mesh_faces, self.mesh_colors.material()
        v, f = self.model.dmtet.mesh()
        return v, f, self.model.material_for(v)

    def step(self):
        cfg = self.cfg
        # views and backgrounds are a function of (seed, it), split over ranks (recon/data_parallel.py)
        data = self.train if self.phase == "dmtet" else self.refine_data
        # one colour per view by default: antialiasing blends a neighbour's background (docs/08)
        part = local_batch(len(data), data.images.shape[1:3], cfg.seed, self.it, cfg.batch, self.dist,
                           cfg.background)
        target, alpha, bg, mvp, campos = _batch(data, part.idx, part.bg)
        light = self.model.light()
        if self.phase == "dmtet":
            sdf, offsets = self.model.dmtet(grad_rows=self._dmtet_grad_rows)
            verts, faces = self.model.dmtet.mesh(sdf, offsets)
            colors = self.model.material_for(verts)
            # 0 in MLP mode: then not evaluated (a pass over every grid edge, ~4 ms a step)
            if self.sdf_reg_scale != 0:
                reg = sdf_reg_loss(sdf, self.model.dmtet.edges) * (sdf_reg_weight(self.it, cfg.iters)
                                                                    * self.sdf_reg_scale)
            else:
                reg = torch.zeros((), dtype=sdf.dtype, device=sdf.device)
            # the object lies inside its visual hull: vertices a cell or more outside it stay outside
            # (also what keeps the MLP's SDF from collapsing to "all inside")
            reg = reg + torch.relu(-sdf[self.model.outside_hull]).mean() if bool(self.model.outside_hull.any()) \
                else reg
            ramp = min(1.0, self.it / max(0.1 * cfg.iters, 1.0))  # nvdiffrec ramps it in over 10 % of the pass
            if cfg.kd_smooth_weight > 0 and self.model.material_mode == "field" and ramp > 0:
                reg = reg + self._kd_smoothness(verts) * (cfg.kd_smooth_weight * ramp)
            lap = torch.zeros(())
            topo = normals = None  # a new mesh every step: nothing to keep
        else:
            verts, faces, colors = self.mesh_verts, self.mesh_faces, self.mesh_colors.material()
            t = (self.it - self.history["refine_start"][-1]) / max(cfg.refine_iters, 1)
            if getattr(self, "_lap_op", None) is None:  # the topology is fixed for the pass: one sparse matrix
                lap_op = umbrella_operator(faces, verts.shape[0], verts.dtype, verts.device)
                self._lap_op = (lap_op, csr_transpose(lap_op))  # and its transpose, for the gradient
            # in the pass' unit of length (refine_length_unit): the same weight against the images at any scale
            lap = laplacian_loss(verts, faces, self.verts0, *self._lap_op) * (
                cfg.laplacian_weight * (1 - t) * 1e3 / self.unit ** 2)
            if cfg.normal_weight > 0:  # creases: the one-pixel bumps shading noise carves (docs/08)
                if getattr(self, "_pairs", None) is None:
                    self._pairs = face_pairs(faces)
                lap = lap + normal_consistency_loss(verts, faces, self._pairs) * cfg.normal_weight
            reg = torch.zeros(())
            topo = getattr(self, "_topo", None) or antialias_construct_topology_hash(faces)
            self._topo = topo
            if getattr(self, "_normal_op", None) is None:  # the normals as sparse products
                self._normal_op = VertexNormalOperator(faces, verts.shape[0], verts.dtype, verts.device)
            normals = vertex_normals(verts, faces, self._normal_op)
        # the DMTet pass only: in the refinement the tangent-space normal map and ks also carry shading,
        # and there the term bent the table's flat top and undid the bowl's and the fandisk's gains (docs/08)
        guide = cfg.albedo_guide_weight > 0 and self.phase == "dmtet"
        pred = render_mesh_views(verts, faces, colors, mvp, campos, target.shape[1:3], light, bg, topology_hash=topo,
                                 normals=normals, albedo=guide,
                                 supersample=supersample_factor(cfg.supersample, tuple(target.shape[1:3])))
        if guide:  # flat target, flat albedo: wrong shading cannot hide in kd (losses.albedo_guide_loss, docs/08)
            pred, albedo = pred
            l_alb = albedo_guide_loss(albedo, target, cfg.albedo_guide_tau) * cfg.albedo_guide_weight
        else:
            l_alb = torch.zeros(())
        l_img = image_loss(pred[..., :3], target, cfg.loss)
        l_mask = mask_loss(pred[..., 3:], alpha)
        # this rank's share of the global loss; the sum over ranks of its gradients is the 1-process gradient
        parts = [l_img * part.view_share, l_mask * part.view_share, reg * part.once_share, lap * part.once_share,
                 l_alb * part.view_share]
        self.opt.zero_grad(set_to_none=True)
        sum(parts).backward()
        # + grads, and the ranks' stop requests (Ctrl-C/SIGTERM seen so far); identity in one process
        stop = self.stop_request.signal is not None if self.stop_request is not None else False
        l_img, l_mask, reg, lap, l_alb, votes = self.sync.all_reduce(self.opt, parts + [torch.tensor(float(stop))])
        self.stop_votes = float(votes)  # > 0: every rank stops after this step
        total = l_img + l_mask + reg + lap + l_alb
        check_finite(total, self.opt, self.it, self.phase)  # stop before a NaN/Inf step is applied
        self.updating = True  # from here to `it += 1` the state is half-way between two steps
        self.opt.step()
        if self.phase != "dmtet":
            self.mesh_colors.clamp_()  # textures back into the material bounds
        self.sched.step()
        for k, v in (("iter", self.it), ("total", total), ("image", l_img), ("mask", l_mask), ("sdf_reg", reg),
                     ("laplacian", lap), ("albedo_guide", l_alb)):
            # setdefault: a checkpoint from before round 36 has no albedo_guide history
            self.history.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))
        self.it += 1
        self.updating = False
        return float(total.detach())

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> Dict:
        s = {"it": self.it, "phase": self.phase, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
             "sched": self.sched.state_dict(), "history": self.history, "gen": self.gen.get_state(),
             "config": dataclasses.asdict(self.cfg), "center": self.center, "half": self.half,
             "cleanup": self.cleanup, "timings": dict(self.watch.spent)}
        if self.phase == "refine":
            s.update(mesh_verts=self.mesh_verts.detach(), mesh_faces=self.mesh_faces,
                     mesh_colors=self.mesh_colors, verts0=self.verts0)
        return s

    def restore(self, s: Dict):
        self.model.load_state_dict(s["model"])
        self.it, self.history = s["it"], s["history"]
        self.cleanup = s.get("cleanup", {})
        # the first process' stages plus what this one spent before resuming (loading, the start shape)
        spent = dict(s.get("timings", {}))  # a checkpoint from before round 21 has none
        for k, v in self.watch.spent.items():
            spent[k] = spent.get(k, 0.0) + v
        self.watch.spent = spent
        self.gen.set_state(s["gen"])
        if s["phase"] == "refine":
            self.phase = "refine"
            dev = self.train.images.device  # checkpoints load on the CPU; the run lives on the arch's device
            self.mesh_faces, self.verts0 = s["mesh_faces"].to(dev), s["verts0"].to(dev)
            self._set_refine_mesh(s["mesh_verts"].to(dev), self.mesh_faces, smooth=True)
            self.mesh_colors = s["mesh_colors"].to(dev)  # the pass-2 material module (recon/texture_pass.py)
            self.opt = self._refine_optimizer()
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.cfg.refine_iters))
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])


@torch.no_grad()
def _evaluate(run: _Run, test, out_dir: str) -> Dict[str, float]:
    """Render every test view over white; PSNR (sRGB) and mask IoU against the targets."""
    verts, faces, colors = run.current_mesh()
    light = run.model.light()
    H, W = test.images.shape[1:3]
    psnrs, ssims, ious = [], [], []
    os.makedirs(os.path.join(out_dir, "renders"), exist_ok=True)
    for i in range(len(test)):
        mv = test.mv[i:i + 1]
        white = torch.ones((1, H, W, 3), device=verts.device)
        pred = render_mesh_views(verts, faces, colors, test.proj.unsqueeze(0) @ mv, camera_position(mv), (H, W),
                                 light, white)[0]
        a = test.images[i, ..., 3:]
        target = test.images[i, ..., :3] * a + (1 - a)
        pred_s, target_s = linear_to_srgb(pred[..., :3]), linear_to_srgb(target)  # once: 800² views add up
        psnrs.append(psnr(pred_s, target_s))
        ssims.append(ssim(pred_s, target_s))
        ious.append(mask_iou(pred[..., 3], a[..., 0]))
        save_side_by_side(os.path.join(out_dir, "renders", f"test_{i:03d}.png"), target_s, pred_s, encoded=True)
    return {"test_psnr": sum(psnrs) / len(psnrs), "test_ssim": sum(ssims) / len(ssims),
            "test_mask_iou": sum(ious) / len(ious), "test_psnr_per_view": psnrs, "test_ssim_per_view": ssims,
            "test_mask_iou_per_view": ious}


def reconstruct(data_dir: str, out_dir: str, config: Optional[ReconConfig] = None, resume: bool = False,
                gt_mesh: Optional[Union[str, Mesh]] = None, progress: bool = True,
                distributed: Optional[bool] = None) -> Dict:
    """Reconstruct a mesh from a NeRF-synthetic style dataset; write all outputs into ``out_dir``.

    Args:
        data_dir: folder with ``transforms_train.json`` (``transforms_test.json`` or ``_val`` for
            evaluation, optional).
        out_dir: output folder (``mesh.obj``, ``metrics.json``, ``config.json`` (the resolved
            settings), ``loss.png``, ``renders/``, ``turntable.gif``, ``checkpoint.pt``).
        config: :class:`ReconConfig` (``None``: defaults, or with ``resume`` the checkpoint's).
        resume: continue from ``out_dir/checkpoint.pt``.
        gt_mesh: optional ground truth for the Chamfer distance: an OBJ path (loaded before training)
            or a loaded :class:`~taichi_dr.mesh.Mesh`.
        distributed: ``None``: data-parallel over the ranks when launched by ``torchrun`` (rank 0
            writes every file; all ranks return its metrics); ``False``: one process regardless.

    Returns:
        The metrics dictionary also written to ``metrics.json``.

    Raises:
        ValueError, TypeError: a bad argument, setting or input file (before any work starts).
        FloatingPointError: the loss or a gradient became NaN/Inf; the last good state is in
            ``checkpoint.pt``.
        KeyboardInterrupt: Ctrl-C or SIGTERM: the step under way is finished and ``checkpoint.pt``
            written first (a second Ctrl-C stops at once; if it cut the parameter update in two,
            the last checkpoint is kept instead).
        PeerLostError: under torchrun, another rank died; reported on stderr (attribute
            ``reported``) after writing ``checkpoint.pt``.
    """
    t_load = time.time()
    # every argument and input file is checked before any work starts (raises ValueError/TypeError)
    cfg, resume_state, gt = check_inputs(data_dir, out_dir, config, resume, gt_mesh)
    ctx = init_distributed(enabled=distributed)  # one process unless launched by torchrun
    torch.manual_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    if ctx.is_main:
        cfg.save(os.path.join(out_dir, "config.json"))  # the resolved settings: a run can be repeated
    auto_res = _auto_train_res(data_dir) if cfg.train_res is None else None
    train = load_nerf(data_dir, "train", cfg.train_res or auto_res)
    if bool((train.images[..., 3] >= 0.999).all()):  # the masks drive the hull, the mask loss and the cleanup
        raise ValueError(f"{data_dir}: every training pixel is opaque (RGB images, or alpha = 1 everywhere); "
                         "expected RGBA images whose alpha is the object's mask (NeRF-synthetic layout)")
    # the refinement pass' views: refine_res, else train_res when the user gave it, else the stored size up
    # to AUTO_REFINE_RES (loaded only when it differs from the DMTet pass' size)
    refine_res = cfg.refine_res or cfg.train_res or _auto_train_res(data_dir, AUTO_REFINE_RES)
    if refine_res is None:  # the stored size (not above AUTO_REFINE_RES)
        refine_data = train if auto_res is None else load_nerf(data_dir, "train")
    else:
        hw = (refine_res, refine_res) if isinstance(refine_res, int) else tuple(refine_res)
        refine_data = train if hw == tuple(train.images.shape[1:3]) else load_nerf(data_dir, "train", hw)
    test = None
    for split in ("test", "val"):
        if os.path.isfile(os.path.join(data_dir, f"transforms_{split}.json")):
            # evaluated at the dataset's own size (renders/test_###.png too) unless eval_res is set
            test = load_nerf(data_dir, split, cfg.eval_res)
            break
    # data, models and optimiser state live where the Taichi arch reads them without copies
    device = torch_device_for_arch()
    train = _to_device(train, device)
    refine_data = train if refine_data is train else _to_device(refine_data, device)
    test = None if test is None else _to_device(test, device)
    t0 = time.time()
    run = _Run(cfg, train, out_dir, ctx, refine_data)
    # inputs checked and loaded (with --gt, the ground truth too), then the start shape (visual hull)
    run.watch.spent.update(load=t0 - t_load, setup=time.time() - t0)
    ckpt = os.path.join(out_dir, "checkpoint.pt")

    saved = {"it": None}  # the iteration of the last checkpoint written (or resumed from)

    def checkpoint():
        if ctx.is_main:  # every rank holds the same state; one writes it
            with run.watch("checkpoints"):
                save_checkpoint(ckpt, {**run.state(), "seconds": elapsed_before + time.time() - t0})
        saved["it"] = run.it
    elapsed_before = 0.0
    if resume:
        s = resume_state
        run.restore(s)
        saved["it"] = run.it
        elapsed_before = float(s.get("seconds", 0.0))
    total = cfg.iters + cfg.refine_iters
    bar = tqdm(total=total, initial=run.it, desc="reconstruct", disable=not progress or not ctx.is_main,
               dynamic_ncols=True)
    # Ctrl-C, `kill` or a job scheduler's timeout (SIGTERM): finish the step, checkpoint, then stop
    # (_StopRequest). Only the main thread may set handlers; a host program's own Ctrl-C handler is kept.
    stop, old_handlers = _StopRequest(), {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if sig == signal.SIGTERM or signal.getsignal(sig) is signal.default_int_handler:
                old_handlers[sig] = signal.signal(sig, stop)
    run.stop_request = stop  # its flag rides in the step's all-reduce: every rank stops at the same step
    try:
        while run.it < total:
            if run.phase == "dmtet" and run.it >= cfg.iters:
                with run.watch("refine_start"):  # cleanup, subdivision, UV atlas and texture bake
                    run.start_refine()
                    share_state(ctx, run)  # every rank continues from rank 0's mesh, atlas and cleanup
            with run.watch(run.phase):
                loss = run.step()
            bar.update(1)
            bar.set_postfix(phase=run.phase, loss=f"{loss:.4f}")
            if run.it % cfg.checkpoint_every == 0 or run.it == total:
                checkpoint()
            # one process: stop now; ranks: when one had asked by this step's all-reduce (all agree)
            if run.stop_votes > 0 or (not ctx.enabled and stop.signal is not None):
                raise KeyboardInterrupt  # at a step boundary: run.updating is False
    except KeyboardInterrupt:
        bar.close()
        if run.updating:  # a second Ctrl-C (or a host's handler) cut the parameter update or the pass
            # change in two: keep the last consistent checkpoint
            kept = f"{ckpt} kept (iteration {saved['it']})" if saved["it"] is not None else "no checkpoint yet"
            line = f"interrupted during iteration {run.it}: {kept}" + (
                " (continue with --resume)" if saved["it"] is not None else "")
        else:
            if saved["it"] != run.it:
                checkpoint()
            line = f"interrupted at iteration {run.it}: checkpoint saved to {ckpt} (continue with --resume)"
        print("\n" + line, flush=True)
        raise KeyboardInterrupt(line) from None  # the CLI exits 130 without a traceback
    except PeerLostError as e:
        # torchrun SIGTERMs the survivors of a dead rank. Once the `finally` puts the default handler back
        # that signal ends this process silently, so the checkpoint and the report happen here, with it
        # ignored (a race seen in CI: rank 0 died of SIGTERM before Python printed the error)
        if signal.SIGTERM in old_handlers:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        checkpoint()  # the failed step changed nothing: the all-reduce comes before the optimiser step
        bar.close()
        print(f"taichi-dr: error: {e}; checkpoint saved to {ckpt} (continue with --resume)", file=sys.stderr,
              flush=True)
        e.reported = True  # the CLI exits 1 without printing it again
        raise
    except FloatingPointError as e:  # NaN/Inf: the parameters still hold the last good step
        checkpoint()
        bar.close()
        raise FloatingPointError(f"{e}; run stopped, last good state saved to {ckpt} (lower the learning "
                                 "rates, e.g. --lr-geometry, then continue with --resume)") from None
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    bar.close()
    seconds = elapsed_before + time.time() - t0
    if not ctx.is_main:
        return finish(ctx)  # wait for rank 0's outputs; return its metrics

    with run.watch("final_cleanup"):
        run.finish_cleanup()  # no face that no training view sees, no unsupported floaters (recon/cleanup.py)
    with torch.no_grad():
        verts, faces, colors = run.current_mesh()
        verts = verts.detach().clone()
    with run.watch("export"):  # mesh.obj/.mtl + textures + mesh.glb + light files (recon/export.py)
        export_mesh(out_dir, verts, faces, colors, run.model.light(), image_hw=tuple(refine_data.images.shape[1:3]))
    metrics: Dict = {"iterations": run.it, "seconds": round(seconds, 2), "triangles": int(faces.shape[0]),
                     "vertices": int(verts.shape[0]), "grid_res": run.grid_res, "grid_choice": run.grid_report,
                     "sdf_mode": run.sdf_mode,
                     "shrink_rate_scale": round(run.rate_scale, 4),
                     "supersample": {"dmtet": supersample_factor(cfg.supersample, tuple(train.images.shape[1:3])),
                                     "refine": supersample_factor(cfg.supersample,
                                                                  tuple(refine_data.images.shape[1:3]))},
                     "train_res": list(train.images.shape[1:3]), "refine_res": list(refine_data.images.shape[1:3]),
                     "train_views": len(train),
                     **batch_layout(len(train), cfg.batch, ctx),
                     "cleanup": run.cleanup, **getattr(run.model, "carve_report", {}),
                     "removed_invisible_faces": sum(r["invisible_faces"] for r in run.cleanup.values()),
                     "removed_components": sum(r["removed_components"] for r in run.cleanup.values())}
    if test is not None:
        with run.watch("evaluate"):
            metrics.update(_evaluate(run, test, out_dir))
    if gt is not None and faces.shape[0] > 0:
        with run.watch("chamfer"):
            metrics["chamfer_l2"] = chamfer_distance(verts.detach().cpu(), faces.cpu(), gt.verts, gt.faces,
                                                     num_samples=cfg.chamfer_samples)
    with run.watch("pictures"):
        save_loss_plot(os.path.join(out_dir, "loss.png"), run.history)
        if faces.shape[0] > 0:
            save_turntable(os.path.join(out_dir, "turntable.gif"), verts, faces, colors,
                           run.model.light(), res=cfg.turntable_res, frames=cfg.turntable_frames,
                           up=rig_up(train.c2w))  # upright in the dataset's world (Blender scenes: +Z)
    # wall seconds per stage, over every process of a resumed run (the last stages of this one only)
    metrics["timings"] = run.watch.report()
    save_json(os.path.join(out_dir, "metrics.json"), metrics)
    return finish(ctx, metrics)

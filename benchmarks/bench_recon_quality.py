"""Reconstruction quality on datasets with a ground-truth mesh: one row per dataset.

For each dataset folder (NeRF-synthetic layout plus ``gt.obj`` or ``gt_mesh.obj``) it runs
:func:`taichi_dr.reconstruct` and prints Chamfer-L2, normal consistency, test mask IoU, test PSNR,
time, the number of connected components of the output mesh, its genus (from the Euler
characteristic; compare with the object's: a spurious handle is a fold no camera sees), its
non-manifold vertices (two sheets pinched together), its edges not shared by exactly two
faces (0: closed) and the number of its faces that own no pixel in any training view, rasterized at
the training resolution and at twice it. ``unseen`` / ``1-2 views`` are the shares of the ground
truth's area that no / one or two training views see (a depth test at twice the training size),
each followed by the share of the Chamfer's ground truth → mesh half that lies there (``err``):
error few images could correct (the walls of a narrow hole, the inside of a deep cup). ``floor``
is the Chamfer of the ground truth against a second sampling of itself, what the sample-based
estimator reports for a perfect mesh.

Usage::

    python benchmarks/bench_recon_quality.py DATA_DIR [DATA_DIR ...] [--set grid_res=64 --set iters=400]
        [--out OUT] [--json results.json]
    python benchmarks/bench_recon_quality.py --tiny      # CI: builds a tiny dataset with our renderer
    python benchmarks/bench_recon_quality.py DATA_DIR --cost   # seconds/iteration vs grid, image size, batch

Datasets from another renderer: ``scripts/make_mitsuba_dataset.py``.
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import typing

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch loads (see README, Benchmarks)

import torch  # noqa: E402

from taichi_dr.data.nerf import load_nerf  # noqa: E402
from taichi_dr.mesh import load_obj, unique_edges  # noqa: E402
from taichi_dr.metrics import normal_consistency, unseen_error  # noqa: E402
from taichi_dr.recon import ReconConfig, reconstruct  # noqa: E402
from taichi_dr.recon.cleanup import (components_genus, face_components, face_pixels, nonmanifold_vertices,  # noqa: E402
                                     points_views)

TINY = dict(iters=20, refine_iters=6, grid_res=12, batch=2, turntable_frames=2, turntable_res=16,
            chamfer_samples=2000, checkpoint_every=1000)


def parse_overrides(items) -> dict:
    """``["grid_res=64", "sdf_mode=mlp"]`` -> typed dict of :class:`ReconConfig` fields."""
    hints = typing.get_type_hints(ReconConfig)
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k not in hints:
            raise ValueError(f"--set: unknown ReconConfig field {k!r} (fields: {', '.join(sorted(hints))})")
        t = hints[k]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        base = args[0] if args else t
        if v.lower() == "none" and args:
            out[k] = None
        elif base is bool:
            out[k] = v.lower() in ("1", "true", "yes", "on")
        else:
            out[k] = base(v)
    return out


def gt_path(data: str) -> str:
    for name in ("gt.obj", "gt_mesh.obj"):
        if os.path.isfile(os.path.join(data, name)):
            return os.path.join(data, name)
    raise ValueError(f"{data}: no gt.obj or gt_mesh.obj (the ground-truth mesh) in the dataset folder")


def measure(data: str, out: str, cfg: ReconConfig) -> dict:
    """Reconstruct ``data`` into ``out`` and return the row of the table."""
    gt_file = gt_path(data)
    t0 = time.time()
    m = reconstruct(data, out, cfg, gt_mesh=gt_file, progress=False)
    seconds = time.time() - t0
    mesh, gt = load_obj(os.path.join(out, "mesh.obj")), load_obj(gt_file)
    train = load_nerf(data, "train", cfg.train_res)
    H, W = train.images.shape[1:3]
    pix = face_pixels(mesh.verts, mesh.faces, train.proj.unsqueeze(0) @ train.mv, [(H, W), (2 * H, 2 * W)])
    ncomp, _ = face_components(mesh.faces)
    f = mesh.faces.long()
    edges, which = unique_edges(f)
    uses = torch.bincount(which, minlength=edges.shape[0])  # faces per edge (2 on a closed surface)
    row = {"dataset": os.path.basename(os.path.normpath(data)), "chamfer_l2": m.get("chamfer_l2", float("nan")),
           "normal_consistency": normal_consistency(mesh.verts, mesh.faces, gt.verts, gt.faces)
           if mesh.faces.shape[0] else 0.0,
           "test_iou": m.get("test_mask_iou", float("nan")), "test_psnr": m.get("test_psnr", float("nan")),
           "seconds": seconds, "components": ncomp, "open_edges": int((uses != 2).sum()),
           "invisible_1x": int((pix[0] == 0).sum()), "invisible_2x": int((pix[1] == 0).sum()),
           "faces": int(mesh.faces.shape[0]),
           "genus": components_genus(mesh.faces)[1],
           "nonmanifold_vertices": int(nonmanifold_vertices(f.numpy(), mesh.verts.shape[0]).sum())}
    if mesh.faces.shape[0]:
        # the ground truth no / one or two training views see (a depth test at 2x the training
        # size), and the share of the Chamfer's gt -> mesh half that lies there
        mvp = train.proj.unsqueeze(0) @ train.mv
        row.update(unseen_error(mesh.verts, mesh.faces, gt.verts, gt.faces,
                                lambda p: points_views(p, gt.verts, gt.faces, mvp, (2 * H, 2 * W)),
                                num_samples=cfg.chamfer_samples))
    for k in ("removed_invisible_faces", "removed_components", "grid_res", "sdf_mode"):  # sdf_mode: "auto" resolved
        if k in m:
            row[k] = m[k]
    return row


def cost_table(data: str, steps: int = 4, grids=(40, 64, 96, 128), sizes=(128, 256, 512, 800),
               batches=(4, 8)) -> None:
    """Seconds per DMTet iteration (median of ``steps`` after one warm-up) for each grid resolution
    at the stored image size and for each training size at grid 40, per batch size; ``ss``: the
    losses' samples per pixel side the defaults take at that size (``supersample_factor``)."""
    from taichi_dr.recon.loop import _Run, supersample_factor

    print(f"{'grid':>5s} {'train px':>8s} {'ss':>3s} {'batch':>5s} {'s/iter':>7s}", flush=True)
    configs = [(g, None) for g in grids] + [(40, r) for r in sizes]
    for batch in batches:
        for g, r in configs:
            cfg = ReconConfig(grid_res=g, train_res=r, batch=batch)
            train = load_nerf(data, "train", r)
            run = _Run(cfg, train, tempfile.gettempdir())
            run.step()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                run.step()
                times.append(time.perf_counter() - t0)
            ss = supersample_factor(cfg.supersample, tuple(train.images.shape[1:3]))
            print(f"{g:5d} {train.images.shape[1]:8d} {ss:3d} {batch:5d} {sorted(times)[len(times) // 2]:7.2f}",
                  flush=True)


def print_table(rows) -> None:
    nan = float("nan")
    print(f"{'dataset':14s} {'chamfer':>9s} {'normals':>7s} {'IoU':>6s} {'PSNR':>6s} {'time s':>7s} "
          f"{'comps':>5s} {'genus':>5s} {'nonm':>4s} {'open':>5s} {'inv1x':>5s} {'inv2x':>5s} {'faces':>7s} "
          f"{'unseen':>6s} {'err':>5s} {'1-2 views':>9s} {'err':>5s} {'floor':>8s} {'grid':>4s} {'sdf':>6s}")
    for r in rows:
        print(f"{r['dataset']:14s} {r['chamfer_l2']:9.2e} {r['normal_consistency']:7.4f} {r['test_iou']:6.4f} "
              f"{r['test_psnr']:6.2f} {r['seconds']:7.1f} {r['components']:5d} {r['genus']:5g} "
              f"{r['nonmanifold_vertices']:4d} {r['open_edges']:5d} "
              f"{r['invisible_1x']:5d} {r['invisible_2x']:5d} {r['faces']:7d} {r.get('unseen_area', nan):6.3f} "
              f"{r.get('unseen_error_share', nan):5.2f} {r.get('few_views_area', nan):9.3f} "
              f"{r.get('few_views_error_share', nan):5.2f} {r.get('chamfer_floor', nan):8.1e} "
              f"{r.get('grid_res', 0):4d} {r.get('sdf_mode', '-'):>6s}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="*", help="dataset folders (NeRF layout + gt.obj)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ReconConfig override")
    ap.add_argument("--out", default=None, help="output root (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--tiny", action="store_true", help="tiny dataset and settings (seconds; for CI)")
    ap.add_argument("--cost", action="store_true", help="print seconds/iteration vs grid, image size and batch")
    args = ap.parse_args(argv)
    if args.cost:
        for d in args.data:
            cost_table(d)
        return 0
    overrides = parse_overrides(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        out_root = args.out or os.path.join(tmp, "runs")
        data = list(args.data)
        if args.tiny:
            from taichi_dr.recon.demo import make_demo_dataset

            tiny = os.path.join(tmp, "tiny")
            make_demo_dataset(tiny, res=24, n_train=8, n_test=2, gt_res=24)
            data.append(tiny)
            overrides = {**TINY, **overrides}
        if not data:
            ap.error("give at least one dataset folder, or --tiny")
        cfg = ReconConfig(**overrides)
        print("config:", {k: v for k, v in dataclasses.asdict(cfg).items()
                          if k in overrides or k in ("iters", "refine_iters", "grid_res", "sdf_mode")}, flush=True)
        rows = []
        for d in data:
            out = os.path.join(out_root, os.path.basename(os.path.normpath(d)))
            rows.append(measure(d, out, ReconConfig(**overrides)))
            print_table(rows[-1:])
        if len(rows) > 1:
            print("\nall datasets:")
            print_table(rows)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"config": dataclasses.asdict(cfg), "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Iteration cost of the appearance models: per-vertex colour vs the per-pixel material field
(DMTet pass) and vertex colours vs UV textures (refinement pass), same data, same resolution;
or (``--compare albedo_guide``) the default material with the image-guided albedo smoothness off
and on (``albedo_guide_weight`` 0 and 1: the kd image and its loss).

    python benchmarks/bench_material.py DATA_DIR [--train-res 256] [--steps 10] [--compare albedo_guide]

Prints CPU seconds per iteration (median of ``--steps`` after 3 warm-up steps) for each model; the
ratio field/vertex is the number the materials must keep under 1.5. The two models' steps are
interleaved (one step of each in turn), so both see the same load on a shared machine.
"""
import argparse
import os
import statistics
import time

# before torch loads: its OpenMP threads must sleep, not spin, between ops, and large tensors
# should sit on huge pages (fewer page faults); see README, Benchmarks
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402


def _interleaved(runs, steps: int):
    """Median CPU seconds of this process per ``step()`` of each run, the runs stepped in turn.

    CPU time, not wall time: the 2-core machine is shared, and other jobs' load inflates wall time,
    not the work this process does."""
    ts = [[] for _ in runs]
    for k in range(steps + 3):
        for i, run in enumerate(runs):
            t = time.process_time()
            run.step()
            if k >= 3:
                ts[i].append(time.process_time() - t)
    return [statistics.median(t) for t in ts]


def main(argv=None):
    from taichi_dr.data.nerf import load_nerf
    from taichi_dr.recon.config import ReconConfig
    from taichi_dr.recon.loop import _Run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--train-res", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--light", default="simple")
    ap.add_argument("--compare", default="material", choices=("material", "albedo_guide"),
                    help="vertex colours vs the material field, or the albedo guide off vs on")
    args = ap.parse_args(argv)
    train = load_nerf(args.data_dir, "train", args.train_res)
    if args.compare == "material":
        materials = ("vertex", "field")
        settings = [dict(material=m, albedo_guide_weight=0.0) for m in materials]
    else:
        materials = ("guide off", "guide on")
        settings = [dict(albedo_guide_weight=w) for w in (0.0, 1.0)]
    runs = []
    for setting in settings:
        torch.manual_seed(0)
        cfg = ReconConfig(light=args.light, train_res=args.train_res, **setting)
        run = _Run(cfg, train, "/tmp/bench_material")
        # skip into the middle of the pass so the mesh is the one the loop spends its time on
        for _ in range(40):
            run.step()
        runs.append(run)
    t_dmtet = _interleaved(runs, args.steps)
    for run in runs:
        run.start_refine()
    t_refine = _interleaved(runs, args.steps)
    print(f"{args.compare:12s} {'dmtet s/it':>11s} {'refine s/it':>12s} {'faces':>7s}")
    for m, a, b, run in zip(materials, t_dmtet, t_refine, runs):
        print(f"{m:12s} {a:11.3f} {b:12.3f} {int(run.mesh_faces.shape[0]):7d}")
    print(f"ratio {materials[1]} / {materials[0]}: dmtet {t_dmtet[1] / t_dmtet[0]:.2f}x, "
          f"refine {t_refine[1] / t_refine[0]:.2f}x")


if __name__ == "__main__":
    main()

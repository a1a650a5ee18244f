"""Iteration cost of the appearance models: per-vertex colour vs the per-pixel material field
(DMTet pass) and vertex colours vs UV textures (refinement pass), same data, same resolution.

    python benchmarks/bench_material.py DATA_DIR [--train-res 256] [--steps 10]

Prints CPU seconds per iteration (median of ``--steps`` after 3 warm-up steps) for each model; the
ratio field/vertex is the number the materials must keep under 1.5.
"""
import argparse
import statistics
import time

import torch


def _time_steps(run, steps: int) -> float:
    # CPU seconds of this process (not wall time): the 2-core machine is shared, and other jobs'
    # load inflates wall time, not the work this process does
    ts = []
    for k in range(steps + 3):
        t = time.process_time()
        run.step()
        if k >= 3:
            ts.append(time.process_time() - t)
    return statistics.median(ts)


def main(argv=None):
    from taichi_dr.data.nerf import load_nerf
    from taichi_dr.recon.config import ReconConfig
    from taichi_dr.recon.loop import _Run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--train-res", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--light", default="simple")
    args = ap.parse_args(argv)
    train = load_nerf(args.data_dir, "train", args.train_res)
    rows = []
    for material in ("vertex", "field"):
        torch.manual_seed(0)
        cfg = ReconConfig(material=material, light=args.light, train_res=args.train_res)
        run = _Run(cfg, train, "/tmp/bench_material")
        # skip into the middle of the pass so the mesh is the one the loop spends its time on
        for _ in range(40):
            run.step()
        t_dmtet = _time_steps(run, args.steps)
        run.start_refine()
        t_refine = _time_steps(run, args.steps)
        rows.append((material, t_dmtet, t_refine, int(run.mesh_faces.shape[0])))
    print(f"{'material':10s} {'dmtet s/it':>11s} {'refine s/it':>12s} {'faces':>7s}")
    for m, a, b, f in rows:
        print(f"{m:10s} {a:11.3f} {b:12.3f} {f:7d}")
    print(f"ratio field/vertex: dmtet {rows[1][1] / rows[0][1]:.2f}x, refine {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()

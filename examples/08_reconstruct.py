"""08 — the whole pipeline from Python: images -> DMTet -> mesh (what `taichi-dr demo` does).

1. Render a coloured trefoil knot into a NeRF-synthetic dataset with our own renderer.
2. Reconstruct it from the images alone: a DMTet grid fitted to the visual hull, then optimised
   through marching tets -> rasterize -> shade -> antialias against the photos, then a mesh
   refinement pass.
3. Compare with the ground truth (Chamfer distance) and look at the outputs in out/examples/08/.
"""
import os

import taichi_dr as tdr
from taichi_dr.recon.demo import make_demo_dataset
from taichi_dr.recon.outputs import format_metrics


def main(iters=200, refine_iters=100, grid_res=40, res=128, gt_res=96, **settings):  # the demo's defaults
    out = "out/examples/08"
    data = os.path.join(out, "dataset")
    if not os.path.isfile(os.path.join(data, "transforms_test.json")):
        make_demo_dataset(data, res=res, gt_res=gt_res)  # 24 train + 8 test views, RGBA PNG + json

    # any other ReconConfig field can be passed as a keyword (e.g. sdf_mode="mlp", light="env")
    config = tdr.ReconConfig(iters=iters, refine_iters=refine_iters, grid_res=grid_res, **settings)
    metrics = tdr.reconstruct(data, out, config, gt_mesh=os.path.join(data, "gt_mesh.obj"))

    print(format_metrics(metrics))  # the table `taichi-dr demo` prints
    print(f"-> {out}/mesh.obj, metrics.json, config.json, loss.png, turntable.gif, renders/ (target | ours)")


TINY = dict(iters=3, refine_iters=1, grid_res=8, res=24, gt_res=24, turntable_frames=2, turntable_res=32,
            chamfer_samples=2000)  # TAICHI_DR_EXAMPLE_TINY=1: a smoke test, not a result

if __name__ == "__main__":
    main(**(TINY if os.environ.get("TAICHI_DR_EXAMPLE_TINY") else {}))

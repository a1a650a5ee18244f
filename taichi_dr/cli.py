"""The ``taichi-dr`` command line.

Subcommands (argparse only here; the library takes plain arguments / dataclass configs):
    demo         build the built-in dataset with our renderer, reconstruct it
    reconstruct  multi-view images (NeRF-synthetic layout) -> mesh
    render       render an OBJ to a PNG
    gradcheck    float64 finite-difference check of every differentiable op
    bench        benchmarks (rasterizer, texture, marching tets)
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _view(text: str):
    try:
        az, el = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--view: expected AZ,EL in degrees, got {text!r}") from None
    return az, el


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taichi-dr", description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["auto", "cpu", "cuda", "gpu", "vulkan"], default=None,
                   help="Taichi backend (default: $TAICHI_DR_ARCH or auto = CUDA when present, else CPU)")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="render the built-in shape into a dataset and reconstruct it")
    d.add_argument("--out", default="taichi_dr_out/demo", help="output directory")
    d.add_argument("--iters", type=int, default=None, help="override the number of DMTet iterations")
    d.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    d.add_argument("--seed", type=int, default=0)

    r = sub.add_parser("reconstruct", help="reconstruct a mesh from a NeRF-synthetic style dataset")
    r.add_argument("data_dir")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--iters", type=int, default=None)
    r.add_argument("--grid-res", type=int, default=None)
    r.add_argument("--train-res", type=int, default=None)
    r.add_argument("--batch", type=int, default=None)
    r.add_argument("--resume", action="store_true")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--gt", default=None, help="ground-truth OBJ for the Chamfer distance")
    r.add_argument("--arch", dest="arch_sub", choices=["auto", "cpu", "cuda", "gpu", "vulkan"], default=None)

    m = sub.add_parser("render", help="render an OBJ (shaded, antialiased) to a PNG")
    m.add_argument("mesh")
    m.add_argument("--out", required=True)
    m.add_argument("--res", type=int, default=512)
    m.add_argument("--view", type=_view, default=(30.0, 20.0), help="azimuth,elevation in degrees")

    g = sub.add_parser("gradcheck", help="finite-difference check of every differentiable op")
    g.add_argument("--op", default=None, help="only ops whose name contains this")

    b = sub.add_parser("bench", help="run benchmarks and print tables")
    b.add_argument("which", nargs="*", default=["raster", "texture", "marching_tets"],
                   help="any of: raster texture marching_tets")
    b.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    # Before torch is first imported (every subcommand imports it below): torch's OpenMP (libgomp)
    # reads this once, when it is loaded. Its default lets worker threads spin-wait after each
    # parallel op, stealing a core from the Taichi kernel that runs next; PASSIVE makes them sleep.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # torch's CPU allocator backs tensors of 2 MB and more with transparent huge pages when this is
    # set: a fresh 64 MB image then takes 32 page faults instead of 16 384 (on this VM a 4 KB fault
    # costs ~3 µs, which made page faults half the time of a 2048² forward pass).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    from taichi_dr import runtime

    arch = getattr(args, "arch_sub", None) or args.arch
    runtime.init(arch)

    if args.cmd == "demo":
        from taichi_dr.recon.demo import run_demo

        run_demo(out_dir=args.out, iters=args.iters, resume=args.resume, seed=args.seed)
        return 0
    if args.cmd == "reconstruct":
        from taichi_dr.recon import ReconConfig, reconstruct

        overrides = {k: v for k, v in dict(iters=args.iters, grid_res=args.grid_res, train_res=args.train_res,
                                            batch=args.batch, seed=args.seed).items() if v is not None}
        reconstruct(args.data_dir, args.out, ReconConfig(**overrides), resume=args.resume, gt_mesh=args.gt)
        return 0
    if args.cmd == "render":
        from taichi_dr.render.preview import render_obj_to_png

        render_obj_to_png(args.mesh, args.out, res=args.res, view=args.view)
        print(f"wrote {args.out}")
        return 0
    if args.cmd == "gradcheck":
        from taichi_dr.gradcheck import run

        return 0 if run(filter=args.op) else 1
    if args.cmd == "bench":
        import importlib

        for name in args.which:
            importlib.import_module(f"taichi_dr.bench.{name}").main(quick=args.quick)
        return 0
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

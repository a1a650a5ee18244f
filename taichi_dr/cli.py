"""The ``taichi-dr`` command line.

Subcommands (argparse only here; the library takes plain arguments / dataclass configs):
    demo         build the built-in dataset with our renderer, reconstruct it
    reconstruct  multi-view images (NeRF-synthetic layout) -> mesh (data-parallel under torchrun)
    reconstruct-many  every dataset in a folder, scenes sharded over torchrun ranks -> summary.csv
    render       render an OBJ to a PNG
    gradcheck    float64 finite-difference check of every differentiable op
    bench        benchmarks (rasterizer, texture, marching tets, ...)

Mistakes are reported kindly: a user error (bad flag, missing or corrupt file, out-of-range
setting) prints one line to stderr and exits with status 2, before any work starts; Ctrl-C finishes
the step under way and exits with 130 after the reconstruction's checkpoint line; a NaN loss, or a torchrun rank that died,
stops with one line and exit 1.
A traceback is printed only for a real bug, or always with ``--debug``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Any, Dict, List, Optional

__all__ = ["main", "entry", "build_parser"]

_ARCHES = ["auto", "cpu", "cuda", "gpu", "vulkan"]
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A mistake in the command line or its input files: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) that points at ``--help``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bench_names() -> List[str]:
    import pkgutil

    import taichi_dr.bench as bench

    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def _bounded(f: dataclasses.Field, base: type, optional: bool):
    """argparse ``type=`` for a config field: parses and checks the metadata bounds."""
    from taichi_dr.recon.config import ReconConfig

    meta, flag = f.metadata, "--" + f.name.replace("_", "-")

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        what = {int: "an integer", float: "a number", str: "a string"}[base]
        bounds = " and ".join(b for b in (f">= {meta['min']}" if "min" in meta else "",
                                          f"> {meta['gt']}" if "gt" in meta else "",
                                          f"<= {meta['max']}" if "max" in meta else "") if b)
        expected = (f"{what} {bounds}" if bounds else what) + (" or none" if optional else "")
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            dataclasses.replace(ReconConfig(), **{f.name: value}).validate()
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        return value
    parse.__name__ = flag
    return parse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`ReconConfig` field (help, bounds and default from its metadata).

    Flags default to "not given" so that ``--config`` and ``--resume`` can tell what the user set.
    """
    from taichi_dr.recon.config import ReconConfig, field_type

    group = parser.add_argument_group("reconstruction settings (ReconConfig; any of them also via --config)")
    group.add_argument("--config", metavar="JSON", default=None,
                       help="read settings from a JSON file {setting: value} (OUT/config.json of a run works); "
                            "flags given here override it")
    for f in dataclasses.fields(ReconConfig):
        if f.metadata.get("cli", True) is False:
            continue
        base, optional = field_type(f)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', f.name)} (default: {'none' if default is None else default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings: a measured "+12 %" is text
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
            continue
        kwargs: Dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        else:
            metavar = {int: "N", float: "X", str: "TEXT"}[base] + ("|none" if optional else "")
            kwargs.update(type=_bounded(f, base, optional), metavar=metavar)
        group.add_argument(flag, **kwargs)


def _view(text: str):
    try:
        az, el = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AZ,EL in degrees (e.g. -30,20), got {text!r}") from None
    return az, el


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.HelpFormatter  # defaults are written into the help texts where they mean something
    p = _Parser(prog="taichi-dr", description=__doc__.split("\n")[0].replace("``", ""), formatter_class=fmt)
    p.add_argument("--arch", choices=_ARCHES, default=None,
                   help="Taichi backend (default: $TAICHI_DR_ARCH or auto = CUDA when present, else CPU)")
    p.add_argument("--debug", action="store_true", help="show a Python traceback for every error (anywhere on the line)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="render the built-in shape into a dataset and reconstruct it", formatter_class=fmt)
    d.add_argument("--out", default="taichi_dr_out/demo", help="output folder; the dataset goes to OUT/dataset (default: taichi_dr_out/demo)")
    d.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt with its settings")
    add_config_arguments(d)

    r = sub.add_parser("reconstruct", help="reconstruct a mesh from a NeRF-synthetic style dataset", formatter_class=fmt)
    r.add_argument("data_dir", metavar="DATA", help="dataset folder with transforms_train.json (+ _test.json)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt with its settings "
                                                          "(flags given here override them)")
    r.add_argument("--gt", default=None, help="ground-truth OBJ for the Chamfer distance (checked before training)")
    r.add_argument("--arch", dest="arch_sub", choices=_ARCHES, default=None, help="as taichi-dr --arch")
    add_config_arguments(r)

    rm = sub.add_parser("reconstruct-many", formatter_class=fmt,
                        help="reconstruct every dataset in a folder (scenes sharded over the ranks of torchrun)")
    rm.add_argument("scenes_dir", metavar="SCENES_DIR", nargs="?", default=None,
                    help="folder whose sub-folders with transforms_train.json are the scenes")
    rm.add_argument("--scenes", default=None, help="comma-separated scene folders (relative to SCENES_DIR if given)")
    rm.add_argument("--out", required=True, help="output root: OUT/<scene>/ per scene and OUT/summary.csv")
    rm.add_argument("--gt-name", default=None, help="ground-truth OBJ file name inside each scene (Chamfer distance)")
    rm.add_argument("--arch", dest="arch_sub", choices=_ARCHES, default=None, help="as taichi-dr --arch")
    rm.set_defaults(resume=False)  # complete scenes are skipped, interrupted ones resumed automatically
    add_config_arguments(rm)

    m = sub.add_parser("render", help="render an OBJ (shaded, antialiased) to a PNG", formatter_class=fmt)
    m.add_argument("mesh", help="Wavefront OBJ file")
    m.add_argument("--out", required=True, help="PNG file to write")
    m.add_argument("--res", type=_positive_int, default=512, help="image side in pixels (default: 512)")
    m.add_argument("--view", type=_view, default=(30.0, 20.0), help="AZ,EL in degrees; negative angles work (default: 30,20)")
    m.add_argument("--up", choices=("y", "z"), default="y",
                   help="the mesh's up axis: the orbit turns about it (z: Blender / NeRF-synthetic scenes; default: y)")

    g = sub.add_parser("gradcheck", help="finite-difference check of every differentiable op", formatter_class=fmt)
    g.add_argument("--op", default=None, help="only ops whose name contains this")

    names = _bench_names()
    b = sub.add_parser("bench", help="run benchmarks and print tables", formatter_class=fmt)
    b.add_argument("which", nargs="*", default=names, choices=names, metavar="NAME",
                   help=f"any of: {' '.join(names)}")
    b.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    return p


def _join_negative_values(argv: List[str]) -> List[str]:
    """``--view -30,20`` -> ``--view=-30,20``: argparse would take ``-30,20`` for an option."""
    out: List[str] = []
    for tok in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"^-\d", tok):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def resolve_config(args: argparse.Namespace, out_dir: str):
    """Settings in increasing priority: defaults < the checkpoint's (``--resume``) < ``--config`` < flags."""
    from taichi_dr.recon.checks import checkpoint_config
    from taichi_dr.recon.config import ReconConfig, read_config_json

    values: Dict[str, Any] = {}
    if args.resume:
        values.update(checkpoint_config(out_dir))
    if args.config is not None:
        from_file = read_config_json(args.config)
        ReconConfig.from_dict(from_file, source=args.config)  # a bad value is named with its file
        values.update(from_file)
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(ReconConfig) if hasattr(args, f.name)})
    return ReconConfig.from_dict(values, source="settings")


def _print_summary(metrics: Dict, out_dir: str) -> None:
    from taichi_dr.recon.outputs import format_metrics

    print(format_metrics(metrics))
    names = sorted(n + ("/" if os.path.isdir(os.path.join(out_dir, n)) else "") for n in os.listdir(out_dir))
    print(f"outputs in {out_dir}/: {', '.join(names)}")


def _run(args: argparse.Namespace) -> int:
    if args.cmd in ("demo", "reconstruct"):
        from taichi_dr.recon.checks import check_dataset_dir

        try:
            cfg = resolve_config(args, args.out)  # everything is checked before any work starts
        except TypeError as e:  # a wrongly typed value in --config / the checkpoint: the user's file
            raise UsageError(str(e)) from None
        if args.cmd == "reconstruct":
            check_dataset_dir(args.data_dir, "DATA")
            if args.gt is not None:
                from taichi_dr.mesh import load_obj

                args.gt = load_obj(args.gt)  # parsed once, before any work; reconstruct() takes the Mesh
    if args.cmd == "render" and not os.path.isfile(args.mesh):
        from taichi_dr.mesh import load_obj

        load_obj(args.mesh)  # raises the one-line "no such file" / "is a directory"

    from taichi_dr import runtime

    arch = getattr(args, "arch_sub", None) or args.arch
    from taichi_dr.recon.distributed import is_main_process, prepare_rank

    if args.cmd in ("reconstruct", "reconstruct-many"):

        prepare_rank(arch)  # under torchrun: this rank's own GPU / share of the cores, before CUDA starts
    runtime.init(arch)
    if args.cmd == "demo":
        from taichi_dr.recon.demo import run_demo

        _print_summary(run_demo(out_dir=args.out, resume=args.resume, config=cfg), args.out)
        return 0
    if args.cmd == "reconstruct":
        from taichi_dr.recon import reconstruct

        metrics = reconstruct(args.data_dir, args.out, cfg, resume=args.resume, gt_mesh=args.gt)
        if is_main_process():  # under torchrun every rank returns rank 0's metrics; one prints them
            _print_summary(metrics, args.out)
        return 0
    if args.cmd == "reconstruct-many":
        from taichi_dr.recon.many import reconstruct_many

        scenes = [s for s in args.scenes.split(",") if s] if args.scenes else None
        rows = reconstruct_many(args.out, args.scenes_dir, scenes, resolve_config(args, args.out), args.gt_name)
        if is_main_process():
            print(f"{len(rows)} scene(s): {os.path.join(args.out, 'summary.csv')}")
        return EXIT_FAILED if any(r["status"] == "failed" for r in rows) else 0
    if args.cmd == "render":
        from taichi_dr.render.preview import render_obj_to_png

        render_obj_to_png(args.mesh, args.out, res=args.res, view=args.view, up=args.up)
        print(f"wrote {args.out}")
        return 0
    if args.cmd == "gradcheck":
        from taichi_dr.gradcheck import all_cases, run

        if args.op and not any(args.op in c.op for c in all_cases()):
            ops = sorted({c.op for c in all_cases()})
            raise UsageError(f"--op {args.op!r}: matches no op; expected part of one of {ops}")
        return 0 if run(filter=args.op) else EXIT_FAILED
    if args.cmd == "bench":
        import importlib

        for name in args.which:
            importlib.import_module(f"taichi_dr.bench.{name}").main(quick=args.quick)
        return 0
    raise AssertionError(f"unhandled command {args.cmd!r}")  # argparse only lets known commands through


def main(argv: Optional[List[str]] = None) -> int:
    # Before torch is first imported (every subcommand imports it below): torch's OpenMP (libgomp)
    # reads this once, when it is loaded. Its default lets worker threads spin-wait after each
    # parallel op, stealing a core from the Taichi kernel that runs next; PASSIVE makes them sleep.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # torch's CPU allocator backs tensors of 2 MB and more with transparent huge pages when this is
    # set: a fresh 64 MB image then takes 32 page faults instead of 16 384 (on this VM a 4 KB fault
    # costs ~3 µs, which made page faults half the time of a 2048² forward pass).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = _join_negative_values([a for a in argv if a != "--debug"])
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt as e:
        if debug:
            raise
        if not e.args:  # reconstruct() already printed where its checkpoint is
            print("taichi-dr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FloatingPointError as e:  # a NaN/Inf loss: the run stopped, its last good state is saved
        if debug:
            raise
        print(f"taichi-dr: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as e:
        # a torchrun rank died: reconstruct() has printed the line and saved the checkpoint already
        if debug or not getattr(e, "reported", False):
            raise
        return EXIT_FAILED
    except (UsageError, ValueError, OSError) as e:
        # ValueError is how the library reports bad input (a file, an argument), never an internal
        # failure; OSError: unreadable / unwritable paths
        if debug:
            raise
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"taichi-dr: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


def entry(argv: Optional[List[str]] = None) -> None:
    """The ``taichi-dr`` console script: :func:`main`, then exit with its status.

    A torchrun rank leaves with ``os._exit`` once its outputs are written and its process group is
    gone (``finish``), skipping the interpreter's teardown: there torch's C++ communication threads
    are destroyed in an unspecified order, and a finished two-rank run once aborted at exit
    ("terminate called without an active exception", SIGABRT; seen once in about eight CI runs of
    the test suite), which torchrun reports as a failed job. Nothing is lost: every output is
    written and renamed into place before ``main`` returns, and stdio and logging are flushed here
    first. A plain process exits normally.
    """
    rc = main(argv)
    try:
        from taichi_dr.recon.distributed import torchrun_env

        env = torchrun_env()
    except ValueError:  # a malformed WORLD_SIZE/RANK: no process group was formed, exit normally
        env = None
    if env is not None and env[1] > 1:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    entry()

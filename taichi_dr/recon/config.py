"""ReconConfig: every setting of a reconstruction in one dataclass.

HOW TO ADD A SETTING (read this before adding a field; the CLI is generated from it)
-----------------------------------------------------------------------------------
Every field is a ``dataclasses.field`` with a ``metadata`` dict. ``taichi-dr reconstruct`` and
``taichi-dr demo`` grow a ``--field-name`` flag for each field automatically (underscores become
dashes), ``--config run.json`` can set it, and :meth:`ReconConfig.validate` checks it before any
work starts. Nothing else needs to change. Metadata keys:

    "help"     (required) one line for ``--help``; the default is appended automatically.
    "min"      inclusive lower bound for int/float fields            e.g. "min": 1
    "gt"       exclusive lower bound (e.g. learning rates: "gt": 0)
    "max"      inclusive upper bound
    "choices"  allowed values of a str field                          e.g. "choices": ("direct", "mlp")
    "cli"      False to keep a field out of the command line (still settable by --config / Python)
    "frozen"   True if the setting fixes the model's shape (e.g. grid_res): --resume refuses a change

Types: ``int``, ``float``, ``str``, ``bool`` (flag ``--x`` / ``--no-x``) and ``Optional[...]`` of
those (the flag then also accepts ``none``). Floats must be finite. Example::

    grid_res: int = field(default=40, metadata={"help": "tet grid cells per axis", "min": 1})
    sdf_mode: str = field(default="direct", metadata={"help": "SDF parametrisation",
                                                      "choices": ("direct", "mlp")})

Checks that involve several fields go into :meth:`ReconConfig.validate` (raise ``ValueError``
naming the field, the expected and the actual value).
"""
import dataclasses
import json
import math
import os
import typing
from dataclasses import field
from typing import Any, Dict, Optional

__all__ = ["ReconConfig", "field_type", "read_config_json", "FROZEN_BEFORE_ADDED"]

# settings that fix the model's shape ("frozen") and were added after checkpoints existed: the value
# a checkpoint written before the field existed was made with. --resume fills it in, so an older run
# continues as it started (round 13's smooth steps change what the DMTet parameters mean; round 19's
# subdivision changes the refinement's mesh). Also frozen fields whose default changed since: the value
# a checkpoint that lacks the key was made with (sdf_mode was "direct" until round 26's "auto").
FROZEN_BEFORE_ADDED = {"dmtet_smoothing": 0.0, "refine_subdivide": 0, "sdf_mode": "direct", "mlp_frequencies": 4}


@dataclasses.dataclass
class ReconConfig:
    """Settings of :func:`reconstruct` (defaults: the demo on a 2-core CPU in a few minutes)."""

    iters: int = field(default=400, metadata={
        "help": "DMTet pass iterations (the mesh refinement pass, --refine-iters, follows); its geometry rate "
                "is x200/iters past 200, so a longer pass moves as far in smaller steps (measured: 400 over 200 "
                "holds or gains on every dataset at ~1.4x the time, docs/08 round 12)", "min": 1})
    refine_iters: int = field(default=600, metadata={
        "help": "texture + mesh refinement iterations after the DMTet pass (0 = off; 600 over 300 measured: "
                "Bob's 2048² texture +1.0 dB, Chamfer unchanged, docs/08 round 12)", "min": 0})
    grid_res: Optional[int] = field(default=None, metadata={
        "help": "tet grid cells per axis (none = from the training size: 40 up to 160 px on the longer side, "
                "64 above, so a cell spans ~2-2.5 training pixels: coarser cells lose thin parts the images "
                "show, finer ones cost time the images cannot repay; 64 also for small images whose visual "
                "hull grid 40 cuts into more pieces than grid 64 does (thin legs) or whose masks lie mostly on "
                "their outline (limbs a few pixels wide))", "min": 1, "frozen": True})
    train_res: Optional[int] = field(default=None, metadata={
        "help": "resample training images to this size in pixels (none = as stored, but at most 256 px on the "
                "longer side: the measured cost per iteration grows with the pixel count)", "min": 1})
    refine_res: Optional[int] = field(default=None, metadata={
        "help": "image size in pixels of the refinement (texture) pass and so of the textures (none = train_res "
                "when that is given, else as stored but at most 512 px on the longer side: textures learned "
                "from 256-px views look blurred in 800-px test views; the pass has fixed topology, so its cost "
                "grows only with the pixel count)", "min": 1})
    supersample: Optional[int] = field(default=None, metadata={
        "help": "render each training image at k times its size and average k x k blocks before the losses "
                "(a box filter, what a path tracer's pixel is; one antialiased sample per pixel errs where "
                "silhouettes curve or parts are 1-2 px wide); none = the smallest k that brings the longer side "
                "to 256 px, at most 2, so 1 from 256 px up and 2 at 128 px (measured at 128²: cow Chamfer "
                "4.7e-5 -> 4.5e-5, test IoU 0.966 -> 0.976, x1.5 the time; docs/08 round 18)", "min": 1, "max": 8})
    batch: int = field(default=4, metadata={"help": "training views per iteration", "min": 1})
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0})
    lr_geometry: float = field(default=0.01, metadata={
        "help": "learning rate of the DMTet SDF and offsets (in grid cells per step; the MLP mode uses 0.15x it for "
                "its weights) for a pass of up to 200 iterations; a longer pass (--iters N) uses it x 200 / N",
        "gt": 0})
    lr_color: float = field(default=0.01, metadata={"help": "learning rate of the colour MLP and light", "gt": 0})
    refine_subdivide: Optional[int] = field(default=None, metadata={
        "help": "midpoint subdivisions of the DMTet mesh before the refinement pass (each splits every triangle "
                "into four without moving the surface): the refinement then follows curves that bend within one "
                "grid cell; none = two while the refined mesh stays within 160,000 faces (a DMTet mesh of up to "
                "10,000; on a grid finer than the image size's default, 160,000 x (grid / default)², at most "
                "640,000), "
                "else one (measured at 128², docs/08 rounds 19-20: one over none: cow Chamfer 4.5e-5 -> "
                "3.9e-5, 800² gadget 2.1e-4 -> 1.4e-4 and +1.8 dB; two over one: cow 3.9e-5 -> 2.7e-5 and test "
                "IoU 0.977 -> 0.982, bunny 1.6e-4 -> 6.1e-5, rocker arm 4.5e-4 -> 1.9e-4; the time grows about "
                "linearly with the refined faces: cow 230 s, bunny 242 s alone); 0 = refine the DMTet mesh as it is",
        "min": 0, "max": 2, "frozen": True})
    lr_refine: float = field(default=6.67e-3, metadata={
        "help": "learning rate of vertex positions in the refinement pass, in its unit of length: the image's "
                "half-width at the object / 1.44 (1 for NeRF-synthetic's framing, cameras 4 from the object at "
                "a 39.6° field of view), so a scene in other units takes the same steps in pixels; 6.67e-3 since "
                "round 32 (2e-3 before: rocker arm Chamfer 7.34e-5 -> 5.37e-5, box with a hole 1.76e-4 -> 1.15e-4, "
                "cow 2.63e-5 -> 2.34e-5, bowl 1.08e-4 -> 1.14e-4; docs/08)", "gt": 0})
    refine_smoothing: float = field(default=20.0, metadata={
        "help": "λ of the refinement pass' smooth steps: vertices move by (I + λL)⁻¹ times Adam's step (L: the "
                "mesh's graph Laplacian; Nicolet et al. 2021), so bulges many vertices wide move as fast as "
                "one-vertex noise; 0 = plain per-vertex steps", "min": 0})
    dmtet_smoothing: float = field(default=1.0, metadata={
        "help": "λ of the DMTet pass' smooth steps (direct mode): the SDF and offsets move by (I + λL)⁻¹ times "
                "Adam's step (L: the grid lattice's Laplacian; λ given for grid 40, x(grid/40)² at others), so "
                "one-cell lumps are damped and wide corrections are not (measured: Spot Chamfer 1.86e-5 -> "
                "1.21e-5, normal consistency 0.965 -> 0.984; docs/08 round 13); 0 = free per-vertex steps",
        "min": 0, "frozen": True})
    sdf_mode: str = field(default="auto", metadata={
        "help": "SDF parametrisation: direct (free per-vertex values, nvdiffrec), mlp (a torch MLP on the grid's "
                "positionally encoded vertices) or auto (mlp on grids up to 40 cells, direct on finer ones). "
                "Measured in round 26 at 128² and grid 40, mlp over direct: 8 of 13 shapes gain, geometric mean "
                "of the Chamfer ratios 0.90 (rocker arm 1.04e-4 -> 6.6e-5, beetle 8.9e-4 -> 4.7e-4, bowl 1.34e-4 "
                "-> 1.06e-4; the pair loses most, 2.15e-5 -> 2.54e-5) at 12-25 % more time; on finer grids its "
                "network over every vertex triples the DMTet pass and its smooth SDF merges or loses thin parts "
                "(800² gadget, grid 64: 1.31e-4 -> 1.42e-4, 5 -> 3 pieces); docs/08 rounds 25-26",
        "choices": ("auto", "direct", "mlp"), "frozen": True})
    mlp_frequencies: int = field(default=6, metadata={
        "help": "positional-encoding frequencies L of the SDF network (MLP mode): sin/cos(2^k π x) for k < L, "
                "x the grid cube scaled to [-1, 1], so the finest period is 1/2^(L-1) of the cube's side: 1.25 "
                "cells at grid 40 with 6, 5 with 4; 6 over 4 measured in round 26 (13 Mitsuba shapes at 128²: "
                "geometric mean of the Chamfer ratios 0.97, box with a hole 1.76e-4 -> 1.54e-4, bowl "
                "1.22e-4 -> 1.06e-4; docs/08); at most 10 (a period of 1/512 of the side, finer than any grid "
                "cell reconstruction uses)", "min": 1, "max": 10, "frozen": True})
    light: str = field(default="env", metadata={
        "help": "light model: env (learnable environment map, split-sum GGX; measured +0.8 dB on "
                "Spot over simple) or simple (ambient + one directional light; ~1.5x faster)",
        "choices": ("simple", "env"), "frozen": True})
    material: str = field(default="field", metadata={
        "help": "appearance: field (per-pixel kd/ks from a hash-grid field in the DMTet pass, 2-D textures "
                "in the refinement pass; nvdiffrec) or vertex (one colour per vertex)",
        "choices": ("field", "vertex"), "frozen": True})
    normal_map: bool = field(default=True, metadata={
        "help": "learn a tangent-space normal map in the refinement pass (material=field; nvdiffrec)"})
    laplacian_weight: float = field(default=25.0, metadata={
        "help": "weight of the Laplacian regulariser on the refinement pass' displacement, measured in the "
                "unit of --lr-refine (decays to 0 over the pass); 25 since round 21 (50 before: the detailed "
                "shapes gain, e.g. rocker arm Chamfer 1.9e-4 -> 1.6e-4; the shadowed bowl loses; docs/08)",
        "min": 0})
    normal_weight: float = field(default=0.0, metadata={
        "help": "weight of the normal-consistency regulariser (1 - cos between neighbouring faces) in the "
                "refinement pass: smooths one-pixel bumps without shrinking", "min": 0})
    sdf_reg_scale: Optional[float] = field(default=None, metadata={
        "help": "multiplier of nvdiffrec's SDF regulariser (BCE of the signs across sign-changing grid edges, "
                "weight 0.2 -> 0.01 over the first quarter of the DMTet pass); none = 1 in direct mode, 0 in mlp "
                "mode: the MLP's shared weights already keep its SDF free of stray sign flips, and the term's "
                "gradient on them moved the whole torus surface (measured, mlp torus Chamfer 1.27e-4 with it, "
                "3.4e-5 without; docs/08)", "min": 0})
    carve: bool = field(default=True, metadata={
        "help": "carve the visual hull where the training views disagree about its colour before the DMTet "
                "pass (photo-consistency: concavities no silhouette shows; assumes diffuse surfaces)"})
    stereo: bool = field(default=True, metadata={
        "help": "with --carve: then also carve the free space in front of multi-view stereo depths (plane sweep "
                "behind the carved hull, 3x3 patches, confident pixels only), where it grows out of what colour-"
                "range carving removed: the deep part of a concavity that carving leaves filled (Mitsuba bowl: "
                "Chamfer 2.3e-3 -> 2.1e-4; a glossy object's highlights no longer carve it; docs/08)"})
    hull_shrink_px: float = field(default=1.5, metadata={
        "help": "start the DMTet pass this many pixels (of the training views, at the object) inside the carved "
                "visual hull, wherever that keeps its topology (parts under 4 grid cells deep move in proportionally "
                "less): the passes grow back what the silhouettes show, while hull excess no view sees past (a "
                "concave fold, the inner lip of a torus, a cast shadow) is otherwise never removed (measured: Chamfer "
                "box 5.1e-4 -> 2.2e-4, bowl 1.75e-4 -> 9.6e-5, torus 6.2e-5 -> 4.1e-5, knot 5.1e-5 -> 3.2e-5, blob "
                "1.5e-5 -> 2.0e-5; docs/08 rounds 14-15); on the grid the run chooses, a shrink over 0.6 cells "
                "raises the DMTet pass' geometry rate in proportion (up to 2x) so that it can grow back (cow "
                "5.8e-5 -> 4.7e-5, docs/08 round 17); 0 = start on the hull", "min": 0})
    kd_smooth_weight: float = field(default=0.03, metadata={
        "help": "weight of nvdiffrec's albedo smoothness term (mean |kd(x+ε) − kd(x)| on surface points, ramped "
                "in over the first tenth of the DMTet pass; material=field only): shading must come from the "
                "geometry, not be painted into kd", "min": 0})
    albedo_guide_weight: float = field(default=1.0, metadata={
        "help": "weight of the image-guided albedo smoothness (DMTet pass): between neighbouring pixels where "
                "the training image is flat, the rendered albedo must be flat too (|Δ log kd|), so that shading "
                "the geometry gets wrong (a visual hull's wedge on a flat wall) cannot be painted into kd; where "
                "the image has an edge (texture, cast shadow, crease) kd is free (docs/08 round 36); 0 = off",
        "min": 0})
    albedo_guide_tau: float = field(default=0.012, metadata={
        "help": "target contrast (tone-mapped sRGB, 0..1) between two neighbouring pixels at which the albedo "
                "guide's weight falls to 1/e; 0.012 is three 8-bit steps", "gt": 0})
    background: str = field(default="view", metadata={
        "help": "random training background behind render and target, new every step: view (one colour per "
                "view) or pixel (per pixel, nvdiffrec's). Antialiasing blends an edge pixel with its "
                "neighbour's background, not its own, so per-pixel noise pushed the silhouettes outward "
                "(measured, torus DMTet pass: test-view edge +0.13 -> +0.10 px, IoU 0.981 -> 0.983; docs/08)",
        "choices": ("view", "pixel")})
    loss: str = field(default="logl1", metadata={
        "help": "image loss", "choices": ("logl1", "logl2", "l1", "mse", "relmse", "smape")})
    checkpoint_every: int = field(default=100, metadata={"help": "write checkpoint.pt every N iterations", "min": 1})
    eval_res: Optional[int] = field(default=None, metadata={
        "help": "test render and evaluation size in pixels (none = the dataset's own size, as nvdiffrec "
                "evaluates)", "min": 1})
    turntable_frames: int = field(default=36, metadata={"help": "frames of turntable.gif", "min": 1})
    turntable_res: int = field(default=192, metadata={"help": "turntable.gif size in pixels", "min": 8})
    chamfer_samples: int = field(default=200_000, metadata={
        "help": "surface samples per mesh for the Chamfer distance (with --gt)", "min": 1})

    # ------------------------------------------------------------------ checks and files
    def validate(self) -> "ReconConfig":
        """Check every field against its type and metadata bounds; return ``self``.

        Raises:
            TypeError: a field has the wrong type (e.g. ``grid_res=40.5``).
            ValueError: a field is out of range / not one of its choices, naming the field.
        """
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Plain ``{field: value}`` (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "config") -> "ReconConfig":
        """Build a validated config from ``{field: value}``; unknown keys are an error.

        Args:
            data: field values; missing fields keep their defaults.
            source: named in error messages (e.g. the JSON file's path).
        """
        if not isinstance(data, dict):
            raise TypeError(f"{source}: expected a JSON object {{field: value}}, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; expected any of {sorted(names)}")
        try:
            return cls(**data).validate()
        except (TypeError, ValueError) as e:
            raise type(e)(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str) -> "ReconConfig":
        """Read a JSON file written by :meth:`save` (or by hand: any subset of fields)."""
        return cls.from_dict(read_config_json(path), source=path)

    def save(self, path: str) -> None:
        """Write the config as JSON, atomically (temporary file + rename)."""
        from taichi_dr.mesh import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def read_config_json(path: str) -> Dict[str, Any]:
    """The ``{field: value}`` object of a JSON config file, unknown fields rejected (values unchecked)."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory (expected a JSON config file)")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{setting: value}}, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(ReconConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; expected any of {sorted(names)}")
    return data


def field_type(f: dataclasses.Field) -> tuple:
    """``(base_type, optional)`` of a ReconConfig field, e.g. ``(int, True)`` for ``Optional[int]``."""
    tp = f.type
    if isinstance(tp, str):  # postponed annotations
        tp = typing.get_type_hints(ReconConfig)[f.name]
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _check_field(f: dataclasses.Field, value: Any) -> None:
    base, optional = field_type(f)
    meta = f.metadata
    if value is None:
        if optional:
            return
        raise TypeError(f"{f.name}: expected {base.__name__}, got None")
    ok = (isinstance(value, base) and not (base is int and isinstance(value, bool))) or \
        (base is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise TypeError(f"{f.name}: expected {base.__name__}, got {value!r} ({type(value).__name__})")
    if base is float and not math.isfinite(value):
        raise ValueError(f"{f.name}: expected a finite number, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ValueError(f"{f.name}: expected one of {list(meta['choices'])}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ValueError(f"{f.name}: expected >= {meta['min']}, got {value!r}")
    if "gt" in meta and value <= meta["gt"]:
        raise ValueError(f"{f.name}: expected > {meta['gt']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ValueError(f"{f.name}: expected <= {meta['max']}, got {value!r}")

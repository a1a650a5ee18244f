#!/usr/bin/env python3
"""Render procedural shapes with Mitsuba 3 into NeRF-synthetic datasets (data we did not render).

Diffuse by default; ``--bsdf plastic`` makes them glossy (GGX coat, roughness α 0.15): highlights
that move with the view, which colour-consistency methods must not read as geometry.

Why: a reconstruction that is only ever tested on images made by our own renderer can hide
mistakes that both sides share (camera conventions, shading model, anti-aliasing). Mitsuba is an
independent path tracer: its images have cast shadows, its own pixel filter and its own sampling.

Each shape is an analytic signed distance function inside [-1, 1]³:

* ``torus``   — genus 1, tilted (the hole is visible from most but not all views);
* ``blob``    — "bunny-like" smooth union of a body, a head and two ears (non-convex, saddles);
* ``bowl``    — a rounded box with a spherical dish carved into its top (a concavity that the
  visual hull fills and only shading can recover);
* ``boxhole`` — a rounded box with a cylindrical hole through it (genus 1, sharp-ish rims).
* ``cup``     — a rounded cylinder with a deep flat-bottomed well in its top, tilted (a concavity
  deeper and steeper than the bowl's dish: held out while the stereo carving was tuned on the bowl).
* ``mug``     — a cylinder with a well and a ring handle (genus 1: the handle's hole shows in the
  silhouettes, the well does not; held out while the topology-preserving carving was built).
* ``pair``    — a sphere and a tilted rounded box 0.41 apart: two separate objects (the cleanup must
  keep both; held out in round 7).
* ``knot``    — a trefoil knot tube (genus 1, radius 0.13: thin, knotted, occluding itself; held
  out in round 7).
* ``table``   — a slab on four legs 3 px wide at 128², two of them joined by a thinner bar (genus 1:
  thin parts joined to a thick one; held out in round 16).

The ground-truth mesh is extracted with this project's own marching tets on a fine grid and then
projected onto the exact zero level set (a few Newton steps along the SDF gradient), so ``gt.obj``
is the analytic surface to well below a pixel. Mitsuba renders exactly that mesh (with smooth vertex
normals) under four fixed directional lights with shadows, one render per light summed (the
``direct`` integrator picks one light at random per sample otherwise, which is noisy at edges).
``--light sky`` lights it instead by a daylight environment (a sky brighter towards the horizon, a
dim ground, a 3° sun at 40° elevation; :func:`sky_envmap`) through Mitsuba's path tracer with two
interreflections: soft light from every direction, occlusion darkening concavities, light bounced
between surfaces: none of which our shading models (use ``--spp 256``: a path tracer is noisier).

Layout (NeRF-synthetic / Blender): ``transforms_{train,test}.json`` (``camera_angle_x``, frames with
``file_path`` and camera-to-world ``transform_matrix``, OpenGL camera frame: looks down −Z, +Y up),
``train/r_<i>.png`` / ``test/r_<i>.png`` (8-bit sRGB, straight alpha = pixel coverage), ``gt.obj``
(world coordinates), ``render_info.json`` (the command, settings, package versions and the source
OBJ's SHA-256: what another render must match to give the same images). World is Z-up; cameras
sit on a sphere of radius 4 looking at the origin: a Fibonacci sphere for training (``--cameras
upper``: its upper half only, elevations 4-69°, so that no view sees the object's underside, as in
NeRF-synthetic's Blender scenes), a 25° ring for testing.

Any OBJ can be rendered the same way (``--obj``): it is centred, scaled to ``--size`` (longest side)
and, with ``--up y``, turned Z-up. Its own texture (``--texture``, an 8-bit sRGB PNG for the OBJ's
``vt``) is its diffuse albedo; without one, and for the procedural shapes with ``--dots``, the
albedo is a procedural texture (colour bands and ~60 coloured dots, a function of the 3D position,
so no seam shows) baked into an xatlas atlas. Textured datasets also get ``gt.mtl`` and
``gt_kd.png`` beside ``gt.obj``. Held out this way (docs/08): Bob (Keenan Crane, CC0, from the
nvdiffrec repository), Cheburashka and Homer (common 3D test models), a textured cup.

Requirements: ``mitsuba`` (not a dependency of taichi_dr). For the LLVM variant set
``DRJIT_LIBLLVM_PATH`` (e.g. ``/usr/lib/x86_64-linux-gnu/libLLVM-19.so``); ``--variant scalar_rgb`` needs
nothing but is slower.

Usage::

    python scripts/make_mitsuba_dataset.py --out data_mitsuba --shapes torus blob bowl boxhole
    python scripts/make_mitsuba_dataset.py --out data/bob --obj bob_tri.obj --texture bob_diffuse.png \
        --up y --res 256 --n-train 64 --n-test 16
    python scripts/make_mitsuba_dataset.py --out data_tex --shapes cup --dots --gt-res 64 --res 256 \
        --n-train 64 --n-test 16    # xatlas takes minutes on the 150k faces of --gt-res 128
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.mesh import Mesh, read_texture, save_obj, unique_edges
from taichi_dr.recon.outputs import save_json
from taichi_dr.render.shading import vertex_normals

CAMERA_ANGLE_X = 0.6911112070083618  # NeRF-synthetic Blender scenes (~39.6°)
RADIUS = 4.0
TEST_ELEVATION_DEG = 25.0
TEST_AZIMUTH_OFFSET = 0.2
# (direction the light travels, irradiance): a key light, a fill light and two weaker rim lights
LIGHTS = [((-1.0, -0.6, -1.4), 2.4), ((1.0, 1.0, -0.8), 0.7), ((1.0, -1.0, 1.0), 0.45), ((-1.0, 1.0, 1.0), 0.3)]
# ``--light sky``: a daylight environment (radiance per direction, linear RGB) lit into the scene by
# Mitsuba's path tracer with interreflections. A sun disc (radius SUN_RADIUS_DEG, irradiance
# SUN_IRRADIANCE at normal incidence) at SUN_ELEVATION_DEG, a sky brighter towards the horizon and a
# dim ground below it.
SUN_ELEVATION_DEG, SUN_AZIMUTH_DEG, SUN_RADIUS_DEG, SUN_IRRADIANCE = 40.0, 30.0, 3.0, 1.6
SKY_ZENITH, SKY_HORIZON, GROUND = (0.22, 0.30, 0.45), (0.55, 0.58, 0.62), (0.16, 0.13, 0.10)
# the envmap's frame -> world: a +90° turn about X takes its +Y (up) to world +Z (up)
SKY_TO_WORLD = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
SKY_MAX_DEPTH = 4  # path length: direct light and two interreflections
ALBEDO = {"torus": (0.65, 0.45, 0.3), "blob": (0.5, 0.55, 0.6), "bowl": (0.6, 0.6, 0.45), "boxhole": (0.4, 0.5, 0.65),
          "cup": (0.55, 0.4, 0.5), "mug": (0.45, 0.6, 0.5), "pair": (0.6, 0.5, 0.4), "knot": (0.5, 0.45, 0.65),
          "table": (0.55, 0.5, 0.4)}


# ----------------------------------------------------------------------------- shapes (SDFs, torch, [P, 3] -> [P])
def _smin(a, b, k):
    """Polynomial smooth minimum (blend radius k): a smooth union of two SDFs."""
    h = torch.clamp(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1 - h)


def _round_box(p, half, r):
    q = p.abs() - (torch.tensor(half, dtype=p.dtype) - r)
    return q.clamp(min=0).norm(dim=-1) + q.max(-1)[0].clamp(max=0) - r


def _rot(p, deg_x, deg_z):
    ax, az = math.radians(deg_x), math.radians(deg_z)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]], dtype=p.dtype)
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]], dtype=p.dtype)
    return p @ (rz @ rx)  # world -> shape frame (the transpose of the shape's rotation)


def sdf_torus(p):
    q = _rot(p, 30.0, 20.0)
    return torch.stack([q[:, :2].norm(dim=-1) - 0.62, q[:, 2]], -1).norm(dim=-1) - 0.26


def sdf_blob(p):
    body = (p - torch.tensor([0.0, 0.0, -0.25], dtype=p.dtype)).norm(dim=-1) - 0.55
    head = (p - torch.tensor([0.35, 0.1, 0.35], dtype=p.dtype)).norm(dim=-1) - 0.32
    ear1 = (p - torch.tensor([0.3, 0.28, 0.72], dtype=p.dtype)).norm(dim=-1) - 0.13
    ear2 = (p - torch.tensor([0.42, -0.12, 0.72], dtype=p.dtype)).norm(dim=-1) - 0.13
    return _smin(_smin(body, head, 0.15), _smin(ear1, ear2, 0.02), 0.08)


def sdf_bowl(p):
    box = _round_box(p, (0.75, 0.75, 0.4), 0.15)
    dish = (p - torch.tensor([0.0, 0.0, 0.95], dtype=p.dtype)).norm(dim=-1) - 0.85
    return torch.maximum(box, -dish)  # box minus the sphere: a dish in the top face


def sdf_boxhole(p):
    q = _rot(p, 0.0, 25.0)
    box = _round_box(q, (0.75, 0.5, 0.45), 0.12)
    hole = q[:, [0, 2]].norm(dim=-1) - 0.25  # a cylinder along y
    return torch.maximum(box, -hole)


def _round_cylinder(p, radius, half_height, r):
    """A z-axis cylinder with its rims rounded by ``r``."""
    d = torch.stack([p[:, :2].norm(dim=-1) - (radius - r), p[:, 2].abs() - (half_height - r)], -1)
    return d.clamp(min=0).norm(dim=-1) + d.max(-1)[0].clamp(max=0) - r


def sdf_cup(p):
    q = _rot(p, 20.0, 10.0)
    body = _round_cylinder(q, 0.65, 0.45, 0.08)
    well = _round_cylinder(q - torch.tensor([0.0, 0.0, 0.5], dtype=p.dtype), 0.42, 0.75, 0.06)  # bottom at z = -0.25
    return torch.maximum(body, -well)


def sdf_mug(p):
    q = _rot(p, 0.0, 30.0)
    body = _round_cylinder(q, 0.5, 0.45, 0.06)
    well = _round_cylinder(q - torch.tensor([0.0, 0.0, 0.5], dtype=p.dtype), 0.34, 0.75, 0.05)  # bottom at z = -0.25
    h = q - torch.tensor([0.62, 0.0, 0.0], dtype=p.dtype)  # a ring handle in the xz-plane, through the wall
    handle = torch.stack([h[:, [0, 2]].norm(dim=-1) - 0.22, h[:, 1]], -1).norm(dim=-1) - 0.055
    return torch.minimum(torch.maximum(body, -well), handle)


def sdf_pair(p):
    sphere = (p - torch.tensor([-0.5, 0.25, 0.1], dtype=p.dtype)).norm(dim=-1) - 0.36
    box = _round_box(_rot(p - torch.tensor([0.45, -0.25, -0.1], dtype=p.dtype), 25.0, 35.0), (0.3, 0.22, 0.32), 0.07)
    return torch.minimum(sphere, box)  # 0.41 apart at the closest


def _trefoil(n: int = 720) -> torch.Tensor:
    t = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
    c = torch.stack([torch.sin(t) + 2 * torch.sin(2 * t), torch.cos(t) - 2 * torch.cos(2 * t), -torch.sin(3 * t)], -1)
    return c * 0.26  # spans about [-0.8, 0.8] in x and y


def sdf_knot(p, chunk: int = 65536):
    """Distance to a densely sampled trefoil curve minus the tube radius (samples 0.006 apart: the
    nearest sample is within ~3e-5 of the curve distance on the tube surface)."""
    curve = _trefoil().to(p.dtype)
    out = []
    for s in range(0, p.shape[0], chunk):  # the Newton projection differentiates through min()
        out.append(torch.cdist(p[s:s + chunk], curve).min(-1)[0])
    return torch.cat(out) - 0.13


def _segment(p, a, b):
    """Distance of points ``p [P, 3]`` to the segment from ``a`` to ``b``."""
    a, b = torch.tensor(a, dtype=p.dtype), torch.tensor(b, dtype=p.dtype)
    t = ((p - a) @ (b - a) / ((b - a) @ (b - a))).clamp(0.0, 1.0)
    return (p - a - t[:, None] * (b - a)).norm(dim=-1)


def sdf_table(p):
    """A slab on four legs 3 px wide at 128² (radius 0.035), two of them joined by a thinner bar."""
    q = _rot(p, 0.0, 15.0)
    top = _round_box(q - torch.tensor([0.0, 0.0, 0.3], dtype=p.dtype), (0.75, 0.5, 0.06), 0.03)
    legs = torch.stack([_segment(q, (x, y, -0.6), (x, y, 0.3)) for x in (-0.62, 0.62) for y in (-0.38, 0.38)], -1)
    bar = _segment(q, (-0.62, -0.38, -0.3), (0.62, -0.38, -0.3)) - 0.025  # with the top: a loop, genus 1
    return torch.minimum(torch.minimum(top, legs.min(-1)[0] - 0.035), bar)


SHAPES = {"torus": sdf_torus, "blob": sdf_blob, "bowl": sdf_bowl, "boxhole": sdf_boxhole, "cup": sdf_cup,
          "mug": sdf_mug, "pair": sdf_pair, "knot": sdf_knot, "table": sdf_table}


def shape_mesh(fn, resolution: int = 128, newton: int = 4):
    """Marching tets of ``fn`` on a [-1, 1]³ grid, vertices then projected onto the zero set.

    Returns ``(verts [M, 3] float64, faces [F, 3] int64, normals [M, 3] float64)`` numpy arrays; the
    normals are the analytic SDF gradients (smooth shading without degenerate-face artefacts)."""
    grid = TetGrid.create(resolution, 2.0)
    with torch.no_grad():
        v, f = marching_tets(grid.verts, fn(grid.verts), grid)
    v = v.double()
    for _ in range(newton):  # p <- p - s(p) ∇s / |∇s|²: the linear interpolant's error is O(h²)
        v.requires_grad_(True)
        s = fn(v)
        (g,) = torch.autograd.grad(s.sum(), v)
        v = (v - (s / g.pow(2).sum(-1).clamp(min=1e-12)).unsqueeze(-1) * g).detach()
    v.requires_grad_(True)
    (g,) = torch.autograd.grad(fn(v).sum(), v)
    n = g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return v.detach().numpy(), f.long().numpy(), n.numpy()


# ----------------------------------------------------------------------------- meshes from files, textures
def load_source_mesh(path: str, size: float = 1.6, up: str = "z") -> Mesh:
    """An OBJ centred at the origin, its longest bounding-box side ``size``, Z-up (``up="y"``:
    turned +90° about X, so the file's +Y becomes +Z); a closed mesh wound inward is turned outward."""
    from taichi_dr.mesh import load_obj

    mesh = load_obj(path)
    v, f, uv_f = mesh.verts, mesh.faces, mesh.uv_faces
    if up == "y":
        v = torch.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    # a closed mesh wound inward (some scans, e.g. the common test models' horse) would show Mitsuba its
    # faces' backs, which the one-sided diffuse BSDF renders black: wind it outward (an open one has no
    # inside to tell by, and stays as it is)
    edges, which = unique_edges(f.long())
    closed = bool((torch.bincount(which, minlength=edges.shape[0]) == 2).all())  # two faces on every edge
    vd, fl = v.double(), f.long()
    if closed and float((vd[fl[:, 0]] * torch.cross(vd[fl[:, 1]], vd[fl[:, 2]], dim=1)).sum()) < 0:
        print(f"[{os.path.basename(path)}] closed and wound inward (negative volume): faces turned outward")
        f = f[:, [0, 2, 1]]
        uv_f = uv_f[:, [0, 2, 1]] if uv_f is not None else None
    return Mesh(v, f, uvs=mesh.uvs, uv_faces=uv_f).normalized(size / 2)


def dots_albedo(p: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Procedural albedo ``[P, 3]`` in (0, 1), linear, of positions ``p [P, 3]`` in [-1, 1]³: smooth
    colour bands plus ~60 dots 0.05–0.13 wide with sharp (0.016) edges, texture that multi-view
    matching can use but that leaves some regions plain."""
    g = torch.Generator().manual_seed(seed)
    q = (p.double() + 1) / 2
    col = torch.stack([0.55 + 0.15 * torch.sin(9 * q[:, 2]), 0.4 + 0.15 * torch.sin(7 * q[:, 0] + 1),
                       0.25 + 0.12 * torch.cos(11 * q[:, 1])], 1)
    centres = torch.rand(60, 3, generator=g, dtype=torch.float64)
    radii = 0.025 + 0.04 * torch.rand(60, generator=g, dtype=torch.float64)
    colours = 0.05 + 0.7 * torch.rand(60, 3, generator=g, dtype=torch.float64)
    for c, r, k in zip(centres, radii, colours):
        w = ((r - (q - c).norm(dim=1)) / 0.008).clamp(0, 1).unsqueeze(1)
        col = col * (1 - w) + k * w
    return col.float()


def baked_dots_texture(mesh: Mesh, resolution: int = 1024) -> Mesh:
    """``mesh`` with an xatlas atlas and :func:`dots_albedo` baked into it (sRGB, rows bottom-up)."""
    from taichi_dr.losses import linear_to_srgb
    from taichi_dr.recon.texture_pass import bake, dilate, unwrap

    faces, uvs, uv_faces = unwrap(mesh.verts, mesh.faces, resolution)
    tex, cov = bake(mesh.verts, faces, uvs, uv_faces, dots_albedo, resolution)
    tex = dilate(tex, cov)
    return Mesh(mesh.verts, faces, uvs=uvs, uv_faces=uv_faces, texture=linear_to_srgb(tex.clamp(0, 1)))


# ----------------------------------------------------------------------------- cameras
def look_at_c2w(eye, up=(0.0, 0.0, 1.0)):
    """OpenGL camera-to-world looking at the origin: columns right, up, back (camera looks down −Z), eye."""
    eye = np.asarray(eye, dtype=np.float64)
    back = eye / np.linalg.norm(eye)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return m


def train_cameras(n, layout: str = "sphere"):
    """``n`` camera-to-world matrices on a Fibonacci spiral: over the whole sphere (``sphere``), or over
    the upper hemisphere only (``upper``, elevations 4-69°: an object on a turntable or a floor, as in
    NeRF-synthetic's Blender scenes; its underside is never seen)."""
    if layout not in ("sphere", "upper"):
        raise ValueError(f"layout: expected 'sphere' or 'upper', got {layout!r}")
    golden = math.pi * (3.0 - math.sqrt(5.0))
    z0, span = (0.9, 1.75) if layout == "sphere" else (0.95, 0.9)
    out = []
    for i in range(n):
        z = z0 - span * (i + 0.5) / n  # no exact poles (the look-at up vector degenerates there)
        r = math.sqrt(1 - z * z)
        out.append(look_at_c2w(RADIUS * np.array([r * math.cos(golden * i), r * math.sin(golden * i), z])))
    return out


def test_cameras(n):
    el = math.radians(TEST_ELEVATION_DEG)
    return [look_at_c2w(RADIUS * np.array([math.cos(el) * math.cos(a), math.cos(el) * math.sin(a), math.sin(el)]))
            for a in (2 * math.pi * (i + 0.5) / n + TEST_AZIMUTH_OFFSET for i in range(n))]


# ----------------------------------------------------------------------------- rendering
def _to_png(img):
    """Mitsuba RGBA (premultiplied over black) -> straight-alpha sRGB uint8 (like Blender's PNGs)."""
    rgb, a = img[..., :3], np.clip(img[..., 3:4], 0.0, 1.0)
    straight = np.clip(np.where(a > 1e-6, rgb / np.maximum(a, 1e-6), 0.0), 0.0, 1.0)
    srgb = np.where(straight <= 0.0031308, 12.92 * straight, 1.055 * np.power(straight, 1 / 2.4) - 0.055)
    out = np.concatenate([srgb, a], -1)
    out[a[..., 0] <= 1e-6] = 0.0
    return (out * 255.0 + 0.5).astype(np.uint8)


def sky_radiance(d: np.ndarray) -> np.ndarray:
    """``--light sky``'s radiance (linear RGB) arriving from world directions ``d`` ``[..., 3]``
    (unit, Z up): sky, ground and sun (:data:`SUN_ELEVATION_DEG` and the constants beside it)."""
    z = d[..., 2:3]
    t = np.clip(z, 0.0, 1.0) ** 0.5  # 0 at the horizon, 1 at the zenith
    sky = (1.0 - t) * np.array(SKY_HORIZON) + t * np.array(SKY_ZENITH)
    # the ground darkens within a few degrees below the horizon, so the horizon has no hard edge
    g = np.clip(-z / 0.05, 0.0, 1.0)
    out = (1.0 - g) * sky + g * np.array(GROUND)
    el, az = math.radians(SUN_ELEVATION_DEG), math.radians(SUN_AZIMUTH_DEG)
    sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    ang = np.degrees(np.arccos(np.clip(d @ sun, -1.0, 1.0)))[..., None]
    disc = np.clip((SUN_RADIUS_DEG + 0.5 - ang) / 1.0, 0.0, 1.0)  # a disc with a 1° soft rim
    solid_angle = 2.0 * math.pi * (1.0 - math.cos(math.radians(SUN_RADIUS_DEG)))
    return out + disc * (SUN_IRRADIANCE / solid_angle)


def sky_envmap(width: int = 1024) -> np.ndarray:
    """``[width / 2, width, 3]`` float32 equirectangular image of :func:`sky_radiance` in Mitsuba's
    ``envmap`` layout: row v looks at polar angle θ = πv from the map's +Y, column u at azimuth
    atan2(x, −z) = 2πu (the map's frame; :data:`SKY_TO_WORLD` turns its +Y to world +Z). At 1024 a
    pixel spans 0.35°, so the 3° sun is a disc, not a pixel."""
    h = width // 2
    theta = (np.arange(h) + 0.5) / h * math.pi
    phi = (np.arange(width) + 0.5) / width * 2.0 * math.pi
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    local = np.stack([np.sin(th) * np.sin(ph), np.cos(th), -np.sin(th) * np.cos(ph)], -1)  # x, y, z
    world = local @ SKY_TO_WORLD[:3, :3].T
    return sky_radiance(world).astype(np.float32)


def _bsdf(albedo: dict, kind: str) -> dict:
    """A Mitsuba BSDF of ``albedo`` (a Mitsuba texture dict): Lambert, or a glossy plastic (GGX
    coat, roughness alpha 0.15)."""
    if kind == "diffuse":
        return {"type": "diffuse", "reflectance": albedo}
    return {"type": "roughplastic", "distribution": "ggx", "alpha": 0.15, "int_ior": 1.49,
            "diffuse_reflectance": albedo}


def render_shape(out, name, res, spp, n_train, n_test, variant, gt_res, bsdf="diffuse", dots=False,
                 cameras="sphere", light="suns"):
    """Render procedural shape ``name`` (its own colour, or ``dots``: the baked procedural texture)."""
    t0 = time.time()
    v, f, n = shape_mesh(SHAPES[name], gt_res)
    if np.abs(v).max() > 1.0:
        raise RuntimeError(f"{name}: shape leaves [-1, 1]^3 (max |coord| {np.abs(v).max():.3f})")
    mesh = Mesh(torch.from_numpy(v).float(), torch.from_numpy(f).int())
    if dots:
        mesh = baked_dots_texture(mesh)
    print(f"[{name}] gt mesh: {len(v)} verts, {len(f)} faces ({time.time() - t0:.1f}s)", flush=True)
    render_mesh(out, name, mesh, n, ALBEDO[name], res, spp, n_train, n_test, variant, bsdf, cameras, light)


def render_mesh(out, name, mesh, normals, colour, res, spp, n_train, n_test, variant, bsdf="diffuse",
                cameras="sphere", light="suns"):
    """Write ``gt.obj`` (+ ``gt.mtl``, ``gt_kd.png`` when ``mesh`` has a texture) and the views.

    Args:
        mesh: the object (world coordinates); with ``uvs``, ``uv_faces`` and ``texture`` (sRGB,
            rows bottom-up) the texture is its albedo, else the constant ``colour`` (linear RGB).
        normals: ``[V, 3]`` smooth vertex normals for Mitsuba, or None (Mitsuba's own).
        cameras: the training views' layout, ``sphere`` or ``upper`` (:func:`train_cameras`).
        light: ``suns`` (the four directional lights, direct light only) or ``sky`` (the daylight
            environment of :func:`sky_envmap`, path traced with interreflections).
    """
    import imageio.v2 as imageio
    import mitsuba as mi

    mi.set_variant(variant)
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    save_obj(os.path.join(out, "gt.obj"), mesh)
    textured = mesh.texture is not None
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "render.obj")
        v, f = mesh.verts.double().numpy(), mesh.faces.long().numpy()
        with open(obj, "w") as fh:
            np.savetxt(fh, v, fmt="v %.7f %.7f %.7f")
            if textured:
                np.savetxt(fh, mesh.uvs.double().numpy(), fmt="vt %.7f %.7f")
            if normals is not None:
                np.savetxt(fh, normals, fmt="vn %.7f %.7f %.7f")
            corners = [f + 1]  # per corner: v[/vt][/vn], in OBJ's order
            corners += [mesh.uv_faces.long().numpy() + 1] if textured else []
            corners += [f + 1] if normals is not None else []
            pattern = {1: "%d", 2: "%d/%d" if textured else "%d//%d", 3: "%d/%d/%d"}[len(corners)]
            np.savetxt(fh, np.stack(corners, 2).reshape(len(f), -1), fmt=" ".join(["f"] + [pattern] * 3))
        if textured:  # the texture save_obj wrote (sRGB, top row first; the bitmap plugin decodes it)
            albedo = {"type": "bitmap", "filename": os.path.join(out, "gt_kd.png")}
        else:
            albedo = {"type": "rgb", "value": list(colour)}
        shape = {"type": "obj", "filename": obj, "face_normals": False, "bsdf": _bsdf(albedo, bsdf)}
        if light == "sky":  # one scene; hide_emitters: the background stays transparent (alpha 0)
            scenes = [mi.load_dict({
                "type": "scene", "shape": shape,
                "integrator": {"type": "path", "max_depth": SKY_MAX_DEPTH, "hide_emitters": True},
                "light": {"type": "envmap", "bitmap": mi.Bitmap(sky_envmap()),
                          "to_world": mi.ScalarTransform4f(SKY_TO_WORLD.tolist())}})]
        else:
            scenes = [mi.load_dict({
                "type": "scene", "shape": shape,
                "integrator": {"type": "direct", "emitter_samples": 1, "bsdf_samples": 0},
                "light": {"type": "directional", "direction": list(d), "irradiance": {"type": "rgb", "value": [e] * 3}},
            }) for d, e in LIGHTS]
        for split, cams in (("train", train_cameras(n_train, cameras)), ("test", test_cameras(n_test))):
            os.makedirs(os.path.join(out, split), exist_ok=True)
            frames = []
            for i, c2w in enumerate(cams):
                # Mitsuba's camera looks down +Z with +X to the image's left: flip X and Z of the OpenGL frame
                sensor = mi.load_dict({
                    "type": "perspective", "fov": math.degrees(CAMERA_ANGLE_X), "fov_axis": "x",
                    "near_clip": 0.1, "far_clip": 100.0,
                    "to_world": mi.ScalarTransform4f((c2w @ np.diag([-1.0, 1.0, -1.0, 1.0])).tolist()),
                    "film": {"type": "hdrfilm", "width": res, "height": res, "pixel_format": "rgba",
                             "rfilter": {"type": "box"}},
                    "sampler": {"type": "stratified", "sample_count": spp}})
                seed = i + (0 if split == "train" else 1000)  # same samples in every light pass: same alpha
                img = None
                for scene in scenes:
                    part = np.array(mi.render(scene, sensor=sensor, seed=seed, spp=spp))
                    if img is None:
                        img = part
                    else:
                        img[..., :3] += part[..., :3]
                imageio.imwrite(os.path.join(out, split, f"r_{i}.png"), _to_png(img))
                frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
            with open(os.path.join(out, f"transforms_{split}.json"), "w") as fh:
                json.dump({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}, fh, indent=2)
    print(f"[{name}] {n_train} train + {n_test} test views at {res}² in {time.time() - t0:.1f}s", flush=True)


def write_render_info(out: str, args: argparse.Namespace, argv, source: str = None) -> dict:
    """Write ``<out>/render_info.json``: how the dataset was made, so that a reconstruction's numbers
    can be tied to its images. The command line, every setting, the versions of the packages that
    shape the pixels (Mitsuba, Dr.Jit, xatlas for the baked texture's atlas, numpy, torch, taichi,
    taichi-dr) and, for ``--obj``, the SHA-256 of the source file. Why: the same command with another
    Mitsuba or source file gives other images (re-rendered held-out sets reconstructed differently
    by more than a run's spread, docs/08 round 24). Returns the dict written."""
    import hashlib
    import importlib.metadata as md

    versions = {}
    for pkg in ("mitsuba", "drjit", "xatlas", "numpy", "torch", "taichi", "taichi-dr"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    info = {"command": ["scripts/make_mitsuba_dataset.py", *argv], "settings": vars(args), "versions": versions}
    if source is not None:
        with open(source, "rb") as fh:
            info["source_sha256"] = hashlib.sha256(fh.read()).hexdigest()
    save_json(os.path.join(out, "render_info.json"), info)  # atomic, as every file a run writes
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True,
                    help="parent folder; each shape goes to <out>/<shape> (--obj: <out> itself)")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--obj", help="render this OBJ instead of the procedural shapes")
    ap.add_argument("--texture", help="--obj's diffuse texture (8-bit sRGB PNG for its vt); "
                                      "default: the procedural dots, baked into an xatlas atlas")
    ap.add_argument("--up", choices=("z", "y"), default="z", help="--obj's up axis (y: turned Z-up)")
    ap.add_argument("--size", type=float, default=1.6, help="--obj's longest bounding-box side after centring")
    ap.add_argument("--dots", action="store_true", help="procedural shapes: the baked dots texture, not one colour")
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--spp", type=int, default=64, help="stratified samples per pixel (a square number)")
    ap.add_argument("--n-train", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--gt-res", type=int, default=128, help="marching-tets grid of the ground-truth mesh")
    ap.add_argument("--variant", default="llvm_ad_rgb", help="Mitsuba variant (llvm_ad_rgb or scalar_rgb)")
    ap.add_argument("--bsdf", default="diffuse", choices=("diffuse", "plastic"),
                    help="material: Lambert, or glossy plastic (GGX highlights of the four lights)")
    ap.add_argument("--cameras", default="sphere", choices=("sphere", "upper"),
                    help="training views over the whole sphere, or the upper hemisphere only (the underside "
                         "never seen, as in NeRF-synthetic's Blender scenes); the test ring is the same")
    ap.add_argument("--light", default="suns", choices=("suns", "sky"),
                    help="four directional lights with shadows (direct light only), or a daylight sky with "
                         "a sun, path traced with interreflections (use more --spp: 256)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if math.isqrt(args.spp) ** 2 != args.spp:
        ap.error(f"--spp: expected a square number, got {args.spp}")
    if args.texture and not args.obj:
        ap.error("--texture: only with --obj")
    if args.obj:
        if not os.path.isfile(args.obj):
            ap.error(f"--obj: no such file: {args.obj}")
        if not 0.0 < args.size <= 2.0:
            ap.error(f"--size: expected a side in (0, 2] (the object stays inside [-1, 1]^3), got {args.size}")
        try:
            mesh = load_source_mesh(args.obj, args.size, args.up)
        except ValueError as e:
            ap.error(f"--obj: {e}")
        name = os.path.splitext(os.path.basename(args.obj))[0]
        if args.texture:
            if mesh.uvs is None:
                ap.error(f"--texture: {args.obj} has no texture coordinates (vt)")
            try:
                mesh.texture = read_texture(args.texture)  # sRGB, rows bottom-up
            except ValueError as e:
                ap.error(f"--texture: {e}")
        else:
            mesh = baked_dots_texture(mesh)
        print(f"[{name}] {len(mesh.verts)} verts, {len(mesh.faces)} faces", flush=True)
        normals = vertex_normals(mesh.verts.double(), mesh.faces).numpy()  # one per position: UV seams do not show
        render_mesh(args.out, name, mesh, normals, None, args.res, args.spp, args.n_train, args.n_test,
                    args.variant, args.bsdf, args.cameras, args.light)
        write_render_info(args.out, args, argv, source=args.obj)
        return 0
    for name in args.shapes:
        render_shape(os.path.join(args.out, name), name, args.res, args.spp, args.n_train, args.n_test,
                     args.variant, args.gt_res, args.bsdf, args.dots, args.cameras, args.light)
        write_render_info(os.path.join(args.out, name), args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

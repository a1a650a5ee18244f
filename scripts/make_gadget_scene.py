#!/usr/bin/env python3
"""Compose the "gadget" test scene: a NeRF-synthetic-like object with thin parts and printed detail.

A base plate with a red/white checker print, a box wearing a photo texture (``--texture``, e.g. a
scanned model's albedo; a procedural dot pattern without it), a striped sphere, a thin ring, three
thin rods (diameters 0.036-0.05 of a 1.6-unit object: ~4 px at 256², ~12 px at 800²; one floats
free of the rest) and two wheels, written as one OBJ with per-corner UVs into a 1024² atlas
(``gadget.obj`` + ``atlas.png``). Vertices are split along sharp edges, so a renderer that
smooths per-vertex normals keeps the boxes flat.

We render it with Mitsuba 3 (diffuse bitmap BSDF, the four directional lights and camera layout of
``make_mitsuba_dataset.py``) into 100 train + 40 test views at 800²: a scene our renderer did not
make, with the thin structures and texture detail of a Blender scene such as NeRF's lego.

Usage::

    python scripts/make_gadget_scene.py OUT_DIR [--texture albedo.png]
"""
import argparse
import os

import imageio.v3 as iio
import numpy as np
import trimesh
import trimesh.creation as C

ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
ap.add_argument("out")
ap.add_argument("--texture", help="image for the box (resampled to 512²); default: procedural dots")
args = ap.parse_args()
out = args.out
os.makedirs(out, exist_ok=True)
A = 1024
atlas = np.zeros((A, A, 3), np.uint8)
yy, xx = np.mgrid[0:512, 0:512]
# Q0 (rows 0-511, cols 0-511 in image space; v = 0 is the bottom row): the photo texture
if args.texture:
    img = iio.imread(args.texture)[..., :3]
    ry = np.arange(512) * img.shape[0] // 512
    rx = np.arange(512) * img.shape[1] // 512
    atlas[:512, :512] = img[ry][:, rx]
else:
    dots = ((yy % 48 - 24) ** 2 + (xx % 64 - 32) ** 2) < 100
    atlas[:512, :512] = np.where(dots[..., None], (30, 30, 30), (225, 215, 200)).astype(np.uint8)
# Q1: checker 16x16
chk = ((yy // 32 + xx // 32) % 2).astype(bool)
atlas[:512, 512:][chk] = (200, 30, 30)
atlas[:512, 512:][~chk] = (235, 235, 225)
# Q2: stripes
band = (yy // 40) % 3
cols = np.array([(30, 60, 200), (240, 200, 40), (40, 160, 70)], np.uint8)
atlas[512:, :512] = cols[band]
# Q3: solid tiles
tiles = [(60, 60, 65), (230, 120, 30), (20, 150, 150), (180, 180, 190)]
for i, c in enumerate(tiles):
    r0, c0 = 512 + (i // 2) * 256, 512 + (i % 2) * 256
    atlas[r0:r0 + 256, c0:c0 + 256] = c
iio.imwrite(os.path.join(out, "atlas.png"), atlas)

# regions in UV space (u right, v up; image row = (1 - v) * A)
def region(qr, qc, sub=None):
    u0, v1 = qc * 0.5, 1 - qr * 0.5
    w = 0.5
    if sub is not None:
        w = 0.25
        u0 += (sub % 2) * 0.25
        v1 -= (sub // 2) * 0.25
    m = 0.02 * w / 0.5
    return (u0 + m, v1 - w + m, w - 2 * m)  # u0, v0, size


parts = []
T = trimesh.transformations


def add(mesh, reg):
    # split vertices along sharp edges so the renderer's per-vertex smooth normals keep boxes flat
    parts.append((trimesh.graph.smooth_shade(mesh, angle=np.radians(35)), reg))


base = C.box(extents=(1.5, 1.0, 0.14)); base.apply_translation((0, 0, -0.55)); add(base, region(0, 1))
tower = C.box(extents=(0.34, 0.34, 0.7)); tower.apply_translation((-0.35, 0.1, -0.13)); add(tower, region(0, 0))
sph = C.icosphere(subdivisions=4, radius=0.24); sph.apply_translation((0.35, 0.15, -0.24)); add(sph, region(1, 0))
# thin rods (radius 0.018 ~ 4 px at 800^2, ~1.3 px at 256^2)
rod1 = C.cylinder(radius=0.018, height=0.75, sections=24); rod1.apply_translation((-0.35, 0.1, 0.55)); add(rod1, region(1, 1, 0))
rod2 = C.cylinder(radius=0.02, height=0.9, sections=24)
rod2.apply_transform(T.rotation_matrix(np.pi / 2, (0, 1, 0))); rod2.apply_translation((0.05, -0.3, -0.3)); add(rod2, region(1, 1, 0))
rod3 = C.cylinder(radius=0.025, height=0.8, sections=24)
rod3.apply_transform(T.rotation_matrix(0.7, (1, 0, 0))); rod3.apply_translation((0.55, -0.2, -0.2)); add(rod3, region(1, 1, 3))
ring = C.torus(major_radius=0.22, minor_radius=0.035, major_sections=64, minor_sections=16)
ring.apply_transform(T.rotation_matrix(np.pi / 2, (1, 0, 0))); ring.apply_translation((0.35, 0.15, 0.2)); add(ring, region(1, 1, 1))
wheel = C.cylinder(radius=0.16, height=0.08, sections=48)
wheel.apply_transform(T.rotation_matrix(np.pi / 2, (1, 0, 0))); wheel.apply_translation((-0.5, -0.5, -0.4)); add(wheel, region(1, 1, 2))
wheel2 = wheel.copy(); wheel2.apply_translation((1.0, 0, 0)); add(wheel2, region(1, 1, 2))

lines_v, lines_vt, lines_f = [], [], []
nv = nvt = 0
for mesh, (u0, v0, s) in parts:
    V, F = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    lo, hi = V.min(0), V.max(0)
    ext = np.maximum(hi - lo, 1e-6)
    fn = np.asarray(mesh.face_normals)
    for v in V:
        lines_v.append("v %.6f %.6f %.6f" % tuple(v))
    for fi, f in enumerate(F):
        k = int(np.argmax(np.abs(fn[fi])))
        a, b = [j for j in range(3) if j != k]
        idx = []
        for vi in f:
            p = (V[vi] - lo) / ext
            lines_vt.append("vt %.6f %.6f" % (u0 + s * p[a], v0 + s * p[b]))
            nvt += 1
            idx.append("%d/%d" % (nv + vi + 1, nvt))
        lines_f.append("f " + " ".join(idx))
    nv += len(V)
with open(os.path.join(out, "gadget.obj"), "w") as fh:
    fh.write("\n".join(lines_v + lines_vt + lines_f) + "\n")
print(nv, "vertices", len(lines_f), "faces")

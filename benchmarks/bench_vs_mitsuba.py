#!/usr/bin/env python3
"""taichi_dr against Mitsuba 3 (LLVM backend) on the same mesh, camera and light, on this CPU.

The workload: an 81 920-triangle icosphere (subdivision level 6) seen at 512² by a 45° camera,
one directional light, diffuse albedo. Both sides get the mesh with smooth vertex normals.

* **forward**: ours is what a user writes — ``rasterize`` → ``interpolate`` (normals) → Lambert
  in torch → ``antialias`` without a precomputed topology hash (the op caches it per ``tri``); no
  gradients tracked. Mitsuba renders one sample per pixel with its ``direct`` integrator.
* **step** (one optimisation step with silhouette gradients w.r.t. the vertex positions): ours is
  the same forward with the vertices requiring grad, an L2 loss and ``backward()``; Mitsuba uses
  ``direct_projective`` (its silhouette-gradient integrator) and ``dr.backward``.

Calls alternate (ours, Mitsuba, ours, ...) so that both see the same machine load, for
``--rounds`` rounds; each timing is the median and the minimum of ``--reps`` calls after warm-up
calls (JIT compiles on both sides). On a shared machine the minimum is the better estimate of
each side's own cost (the median also holds the neighbours' load), so the summary gives both.

Before timing, the two forward images are compared (Mitsuba's is flipped to our row order and
multiplied by π: its diffuse BSDF is albedo/π): the silhouettes must agree (intersection over
union of the covered pixels) and so must the shading (mean absolute difference), or the script
stops — a faster wrong image is no result. Mitsuba's one sample per pixel sits at a random spot in
the pixel and its direct integrator also traces a shadow ray per pixel; ours samples the pixel
centre, computes no shadows and antialiases the silhouette analytically.

Skips cleanly (exit 0, one line) when Mitsuba or its LLVM variant is not available. For the LLVM
variant set ``DRJIT_LIBLLVM_PATH`` (e.g. ``/usr/lib/x86_64-linux-gnu/libLLVM-19.so``).

Usage::

    OMP_WAIT_POLICY=PASSIVE THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_vs_mitsuba.py
"""
import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import torch

RES = 512
FOVY_DEG = 45.0
EYE = (0.0, 0.0, 3.0)
LIGHT_TO = (-0.4, -0.6, -1.0)  # direction the light travels
ALBEDO = (0.7, 0.5, 0.3)


def icosphere(level: int):
    """Unit icosphere: (verts [V, 3] float32, faces [20·4^level, 3] int32), outward winding."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
         (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6),
         (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7),
         (9, 8, 1)]
    verts = torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float64), dim=1)
    faces = torch.tensor(f, dtype=torch.int64)
    for _ in range(level):
        V = verts.shape[0]
        e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # [3F, 2] edges of every face
        key = torch.minimum(e[:, 0], e[:, 1]) * V + torch.maximum(e[:, 0], e[:, 1])
        uniq, inv = torch.unique(key, return_inverse=True)
        mids = torch.nn.functional.normalize((verts[uniq // V] + verts[uniq % V]) / 2, dim=1)
        m = (inv + V).view(3, -1).T  # midpoint ids of edges (01, 12, 20) per face
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        faces = torch.cat([torch.stack([a, m[:, 0], m[:, 2]], 1), torch.stack([b, m[:, 1], m[:, 0]], 1),
                           torch.stack([c, m[:, 2], m[:, 1]], 1), torch.stack([m[:, 0], m[:, 1], m[:, 2]], 1)])
        verts = torch.cat([verts, mids])
    return verts.float(), faces.int()


def paired_ms(fns, reps: int, warmup: int = 2):
    """Times the functions call by call in turn (a, b, a, b, ...), so that both meet the same
    machine load at the same moments. Returns per function (median wall ms, median CPU ms of the
    whole process, minimum wall ms): on a shared machine the CPU time, the work done by all
    threads, varies less with the neighbours' load than the wall time, and the minimum least."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[i].append(time.perf_counter() - t)
            cpu[i].append(time.process_time() - c)
    return [(statistics.median(w) * 1e3, statistics.median(c) * 1e3, min(w) * 1e3) for w, c in zip(wall, cpu)]


def compare_images(ours: torch.Tensor, theirs: torch.Tensor) -> "tuple[float, float]":
    """(silhouette IoU, mean |difference| over pixels both cover) of our [1, H, W, 3] forward image
    and Mitsuba's [H, W, 3] one, after flipping Mitsuba's rows (its row 0 is the top, ours the
    bottom) and scaling it by π (its diffuse BSDF is albedo/π, our Lambert albedo·max(n·l, 0))."""
    a = ours[0].float()
    b = torch.flip(theirs.float(), dims=[0]) * math.pi
    ca, cb = a.sum(-1) > 0, b.sum(-1) > 0
    iou = float((ca & cb).sum()) / max(int((ca | cb).sum()), 1)
    both = ca & cb
    mad = float((a - b).abs()[both].mean()) if bool(both.any()) else float("inf")
    return iou, mad


# ----------------------------------------------------------------------------- ours
def make_ours(verts, faces):
    from taichi_dr import antialias, interpolate, rasterize
    from taichi_dr.camera import look_at, perspective, transform_pos
    from taichi_dr.render.shading import vertex_normals

    mvp = (perspective(math.radians(FOVY_DEG), 1.0, 0.1, 100.0) @ look_at(EYE, (0, 0, 0), (0, 1, 0)))[None]
    normals = vertex_normals(verts, faces)
    light = torch.nn.functional.normalize(-torch.tensor(LIGHT_TO), dim=0)
    albedo = torch.tensor(ALBEDO)

    def render(v):
        clip = transform_pos(mvp, v)
        rast, _ = rasterize(clip, faces, (RES, RES), grad_db=False)
        n, _ = interpolate(normals, rast, faces)
        n = torch.nn.functional.normalize(n, dim=-1)
        img = albedo * (n * light).sum(-1, keepdim=True).clamp(min=0) * (rast[..., 3:] > 0)
        return antialias(img, rast, clip, faces)

    def forward():
        with torch.no_grad():
            return render(verts)

    target = forward() * 0.9

    def step():
        v = verts.clone().requires_grad_(True)
        ((render(v) - target) ** 2).mean().backward()
        return v.grad

    return forward, step


# ----------------------------------------------------------------------------- Mitsuba
def make_mitsuba(verts, faces):
    import drjit as dr
    import mitsuba as mi

    mi.set_variant("llvm_ad_rgb")
    from taichi_dr.mesh import Mesh, save_obj

    tmp = tempfile.mkdtemp(prefix="bench_mi_")
    path = os.path.join(tmp, "sphere.obj")
    save_obj(path, Mesh(verts, faces))
    light = [float(x) for x in LIGHT_TO]
    scene = mi.load_dict({
        "type": "scene",
        "sensor": {"type": "perspective", "fov": FOVY_DEG, "fov_axis": "y",
                   "to_world": mi.ScalarTransform4f().look_at(origin=list(EYE), target=[0, 0, 0], up=[0, 1, 0]),
                   "film": {"type": "hdrfilm", "width": RES, "height": RES, "rfilter": {"type": "box"},
                            "pixel_format": "rgb"},
                   "sampler": {"type": "independent", "sample_count": 1}},
        "light": {"type": "directional", "direction": light, "irradiance": {"type": "rgb", "value": 1.0}},
        "sphere": {"type": "obj", "filename": path, "face_normals": False,
                   "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": list(ALBEDO)}}},
    })
    direct = mi.load_dict({"type": "direct", "emitter_samples": 1, "bsdf_samples": 0})
    projective = mi.load_dict({"type": "direct_projective", "sppi": 0})  # no indirect silhouettes here
    params = mi.traverse(scene)
    key = "sphere.vertex_positions"

    def forward():
        img = mi.render(scene, params, spp=1, integrator=direct, seed=0)
        dr.eval(img)
        dr.sync_thread()
        return img

    target = mi.TensorXf(forward()) * 0.9

    def step():
        dr.enable_grad(params[key])
        params.update()
        img = mi.render(scene, params, spp=1, integrator=projective, seed=0)
        loss = dr.mean(dr.square(img - target), axis=None)
        dr.backward(loss)
        g = dr.grad(params[key])
        dr.eval(g)
        dr.sync_thread()
        dr.disable_grad(params[key])
        return g

    return forward, step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--no-step", action="store_true", help="forward only")
    ap.add_argument("--level", type=int, default=6, help="icosphere subdivisions (6: 81 920 triangles)")
    ap.add_argument("--res", type=int, default=512)
    args = ap.parse_args()
    global RES
    RES = args.res
    try:
        import mitsuba as mi

        mi.set_variant("llvm_ad_rgb")
    except Exception as e:  # not installed, or no LLVM library for drjit
        print(f"skipped: Mitsuba 3 with the llvm_ad_rgb variant is not available ({type(e).__name__}: {e})")
        return 0
    os.environ.setdefault("TAICHI_DR_ARCH", "cpu")
    torch.manual_seed(0)
    verts, faces = icosphere(args.level)
    ours_f, ours_s = make_ours(verts, faces)
    mi_f, mi_s = make_mitsuba(verts, faces)
    iou, mad = compare_images(ours_f(), torch.as_tensor(mi_f().numpy()))
    print(f"images: silhouette IoU {iou:.4f}, mean |ours - Mitsuba·π| {mad:.4f} where both cover (albedo up to 0.7)")
    if iou < 0.98 or mad > 0.02:
        print("the two renderers disagree on the image: no timing")
        return 1
    print(f"{faces.shape[0]} triangles at {RES}x{RES}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')} THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE', '-')}; median and min of {args.reps} alternating calls after warm-up")
    rows = []
    for r in range(args.rounds):
        row = paired_ms([ours_f, mi_f], args.reps)
        if not args.no_step:
            row += paired_ms([ours_s, mi_s], max(3, args.reps // 3), 1)
        rows.append(row)
        (ow, oc, om), (mw, mc, mm) = row[0], row[1]
        line = (f"round {r + 1}: forward ours {ow:.1f} ms (min {om:.1f}, CPU {oc:.1f}), Mitsuba {mw:.1f} ms "
                f"(min {mm:.1f}, CPU {mc:.1f}): {mw / ow:.2f}x wall, {mm / om:.2f}x min wall, {mc / oc:.2f}x CPU")
        if not args.no_step:
            (sw, sc, sm), (nw, nc, nm) = row[2], row[3]
            line += (f"; step ours {sw:.1f} ms (min {sm:.1f}, CPU {sc:.1f}), Mitsuba {nw:.1f} ms (min {nm:.1f}, "
                     f"CPU {nc:.1f}): {nw / sw:.1f}x wall, {nm / sm:.1f}x min wall")
        print(line, flush=True)
    for i, what in ((0, "forward"), (2, "step")):
        if i < len(rows[0]):
            w = [r[i + 1][0] / r[i][0] for r in rows]
            c = [r[i + 1][1] / r[i][1] for r in rows]
            m = min(r[i + 1][2] for r in rows) / min(r[i][2] for r in rows)
            print(f"{what} speed-up over Mitsuba: {min(w):.2f}-{max(w):.2f}x wall (medians per round), "
                  f"{min(c):.2f}-{max(c):.2f}x CPU time, {m:.2f}x min over all rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Forward outputs and gradients of every op on one Taichi arch, saved for a cross-arch comparison.

``tests/test_cuda.py`` runs this file twice in fresh processes (a process can initialise Taichi
with one arch only): once with ``TAICHI_DR_ARCH=cpu`` as the reference and once with the arch
under test, then compares the saved arrays. Every input is built on the CPU from fixed seeds and
moved to the arch's device, so both runs see bitwise the same problem.

Usage: ``TAICHI_DR_ARCH=cuda python tests/cuda_cases.py OUT.npz``
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

__all__ = ["CASES", "run_all"]

# name -> fn(dev, dtype) returning {array name: tensor}
CASES: Dict[str, Callable[[torch.device, torch.dtype], Dict[str, torch.Tensor]]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _sphere(n_tris: int = 1200) -> Tuple[torch.Tensor, torch.Tensor]:
    from taichi_dr.bench.raster import uv_sphere

    v, f = uv_sphere(n_tris)
    return v.double(), f


def _scene(dev, dtype):
    """Two images: a sphere (dense mesh, small triangles) in front of a large quad that crosses the
    near plane (clipping, tile jobs of big triangles); per image a slightly different pose."""
    v, f = _sphere()
    g = torch.Generator().manual_seed(0)
    v = v * 0.6 + 0.01 * torch.randn(v.shape, generator=g, dtype=torch.float64)
    quad = torch.tensor([[-2.0, -2.0, 0.7], [2.0, -2.0, 0.7], [2.0, 2.0, -1.6], [-2.0, 2.0, -1.6]], dtype=torch.float64)
    V = v.shape[0]
    verts = torch.cat([v, quad])
    tri = torch.cat([f, torch.tensor([[V, V + 1, V + 2], [V, V + 2, V + 3]], dtype=torch.int32)])
    poses = []
    for n, (dx, dy) in enumerate([(0.05, -0.03), (-0.11, 0.07)]):
        p = verts.clone()
        p[:, 0] += dx
        p[:, 1] += dy
        w = 1.5 - 0.5 * p[:, 2]  # a simple perspective: farther = larger w
        poses.append(torch.stack([p[:, 0], p[:, 1], 0.4 * p[:, 2], w], 1))
    pos = torch.stack(poses)
    col = torch.rand(verts.shape[0], 3, generator=g, dtype=torch.float64)
    return pos.to(dev, dtype), tri.to(dev), col.to(dev, dtype)


def _cot(t: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)


@case
def rasterize(dev, dtype):
    from taichi_dr import rasterize

    pos, tri, _ = _scene(dev, dtype)
    p = pos.clone().requires_grad_(True)
    rast, db = rasterize(p, tri, (48, 64))
    ((rast[..., :2] * _cot(rast[..., :2], 1)).sum() + (db * _cot(db, 2)).sum()).backward()
    out = {"rast": rast.detach(), "db": db.detach(), "g_pos": p.grad}
    p2 = pos.clone().requires_grad_(True)  # the hand-written backward (no loss on rast_db)
    r2, _ = rasterize(p2, tri, (48, 64), grad_db=False)
    (r2[..., :2] * _cot(r2[..., :2], 1)).sum().backward()
    out["g_pos_uv"] = p2.grad
    # range mode: one position set, two triangle ranges
    rg = torch.tensor([[0, tri.shape[0] // 2], [tri.shape[0] // 3, tri.shape[0] - tri.shape[0] // 3]], dtype=torch.int32)
    r3, _ = rasterize(pos[0].contiguous(), tri, (40, 40), ranges=rg)
    out["rast_range"] = r3
    return out


@case
def interpolate(dev, dtype):
    from taichi_dr import interpolate, rasterize

    pos, tri, col = _scene(dev, dtype)
    rast, db = rasterize(pos, tri, (48, 64))
    a = col.clone().requires_grad_(True)
    r = rast.clone().requires_grad_(True)
    d = db.clone().requires_grad_(True)
    img, da = interpolate(a, r, tri, rast_db=d, diff_attrs="all")
    ((img * _cot(img, 3)).sum() + (da * _cot(da, 4)).sum()).backward()
    wide = torch.cat([col] * 4, 1).clone().requires_grad_(True)  # 12 channels: the per-pixel kernel
    img2, _ = interpolate(wide, rast, tri)
    (img2 * _cot(img2, 5)).sum().backward()
    return {"img": img.detach(), "da": da.detach(), "g_attr": a.grad, "g_rast": r.grad[..., :2], "g_db": d.grad,
            "img_wide": img2.detach(), "g_attr_wide": wide.grad}


@case
def antialias(dev, dtype):
    from taichi_dr import antialias, interpolate, rasterize

    pos, tri, col = _scene(dev, dtype)
    rast, _ = rasterize(pos, tri, (48, 64), grad_db=False)
    img, _ = interpolate(col, rast, tri)
    c = img.detach().clone().requires_grad_(True)
    p = pos.clone().requires_grad_(True)
    out = antialias(c, rast, p, tri)
    (out * _cot(out, 6)).sum().backward()
    return {"out": out.detach(), "g_color": c.grad, "g_pos": p.grad}


@case
def texture(dev, dtype):
    from taichi_dr import texture

    g = torch.Generator().manual_seed(7)
    res = {}
    tex = torch.rand(1, 16, 24, 3, generator=g, dtype=torch.float64)
    uv = torch.rand(2, 12, 10, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    uv_da = torch.rand(2, 12, 10, 4, generator=g, dtype=torch.float64) * 0.2 + 0.02
    bias = torch.rand(2, 12, 10, generator=g, dtype=torch.float64) * 0.5
    for mode in ("linear", "linear-mipmap-linear"):
        for boundary in ("wrap", "clamp"):
            t = tex.to(dev, dtype).requires_grad_(True)
            u = uv.to(dev, dtype).requires_grad_(True)
            kw = {}
            if mode != "linear":
                kw = dict(uv_da=uv_da.to(dev, dtype).requires_grad_(True), mip_level_bias=bias.to(dev, dtype))
            out = texture(t, u, filter_mode=mode, boundary_mode=boundary, **kw)
            (out * _cot(out, 8)).sum().backward()
            key = f"{mode}_{boundary}"
            res[f"out_{key}"], res[f"g_tex_{key}"], res[f"g_uv_{key}"] = out.detach(), t.grad, u.grad
            if kw:
                res[f"g_uv_da_{key}"] = kw["uv_da"].grad
    cube = torch.rand(1, 6, 8, 8, 3, generator=g, dtype=torch.float64).to(dev, dtype).requires_grad_(True)
    dirs = torch.nn.functional.normalize(torch.randn(2, 6, 5, 3, generator=g, dtype=torch.float64), dim=-1)
    d = dirs.to(dev, dtype).requires_grad_(True)
    out = texture(cube, d, boundary_mode="cube")
    (out * _cot(out, 9)).sum().backward()
    res.update(out_cube=out.detach(), g_tex_cube=cube.grad, g_dir_cube=d.grad)
    return res


@case
def marching_tets(dev, dtype):
    from taichi_dr.geometry.marching_tets import marching_tets
    from taichi_dr.geometry.tetgrid import TetGrid

    grid = TetGrid.create(12, 2.0)
    g = torch.Generator().manual_seed(11)
    sdf = grid.verts.double().norm(dim=1) - 0.7 + 0.03 * torch.randn(grid.verts.shape[0], generator=g, dtype=torch.float64)
    res = {}
    for name, tets in (("lattice", grid.to(dev)), ("general", grid.tets.to(dev))):
        v = grid.verts.to(dev, dtype).requires_grad_(True)
        s = sdf.to(dev, dtype).requires_grad_(True)
        mv, faces = marching_tets(v, s, tets)
        (mv * _cot(mv, 10)).sum().backward()
        res.update({f"verts_{name}": mv.detach(), f"faces_{name}": faces, f"g_verts_{name}": v.grad,
                    f"g_sdf_{name}": s.grad})
    return res


@case
def smooth_solve(dev, dtype):
    """The refinement's smooth-step solve: our Taichi substitution on the CPU arch, SuperLU on a GPU
    arch (``solver="auto"``), the same numbers either way."""
    from taichi_dr.recon.large_steps import SmoothParametrization
    from taichi_dr.recon.subdivide import subdivide_midpoint

    v, f = _sphere()
    v, f = subdivide_midpoint(v.double(), f.long(), times=1)
    sp = SmoothParametrization(f, v.shape[0], 25.0)
    u = sp.to_param(v.to(dev, dtype)).requires_grad_(True)
    x = sp(u)
    (x * _cot(x, 12)).sum().backward()
    return {"x": x.detach(), "g_u": u.grad}


def _shade_inputs(dev, dtype, n=2, h=24, w=20):
    """Per-pixel shading inputs on a tiny image: random unit normals facing the camera side,
    kd in (0, 1), ks = (occlusion, roughness, metallic) in valid ranges."""
    g = torch.Generator().manual_seed(21)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    pos = (r(n, h, w, 3) - 0.5) * 0.4
    nrm = torch.nn.functional.normalize(torch.randn(n, h, w, 3, generator=g, dtype=torch.float64) + torch.tensor(
        [0.0, 0.0, 1.5], dtype=torch.float64), dim=-1)
    kd = r(n, h, w, 3) * 0.9 + 0.05
    ks = torch.stack([r(n, h, w) * 0.3, 0.1 + 0.85 * r(n, h, w), r(n, h, w)], -1)
    campos = torch.tensor([[0.3, 0.2, 3.0], [-0.4, 0.5, 2.5]], dtype=torch.float64)[:n]
    return [t.to(dev, dtype).requires_grad_(i < 4) for i, t in enumerate((pos, nrm, kd, ks, campos))]


@case
def shade_point(dev, dtype):
    from taichi_dr.render.light import PointLight

    pos, nrm, kd, ks, campos = _shade_inputs(dev, dtype)
    light = PointLight(torch.tensor([1.0, 2.0, 2.5], device=dev, dtype=dtype),
                       torch.tensor([3.0, 2.5, 2.0], device=dev, dtype=dtype),
                       torch.tensor([0.2, 0.25, 0.3], device=dev, dtype=dtype))
    out = light.shade(pos, nrm, kd, ks, campos)
    (out * _cot(out, 20)).sum().backward()
    return dict(out=out.detach(), g_pos=pos.grad, g_nrm=nrm.grad, g_kd=kd.grad, g_ks=ks.grad)


@case
def shade_env(dev, dtype):
    from taichi_dr.render.light import EnvironmentLight

    pos, nrm, kd, ks, campos = _shade_inputs(dev, dtype)
    light = EnvironmentLight(8, init=0.5).to(dev)
    g = torch.Generator().manual_seed(22)
    with torch.no_grad():
        light.base.copy_(0.2 + torch.rand(light.base.shape, generator=g))
    light = light.to(dtype)
    out = light.shade(pos, nrm, kd, ks, campos)
    (out * _cot(out, 23)).sum().backward()
    return dict(out=out.detach(), g_pos=pos.grad, g_nrm=nrm.grad, g_kd=kd.grad, g_ks=ks.grad, g_env=light.base.grad)


def run_all(dtypes=(torch.float32, torch.float64)) -> Dict[str, np.ndarray]:
    """Run every case on the current arch; returns ``{"case/dtype/name": array}`` (float64 / int64)."""
    from taichi_dr import runtime

    runtime.init()
    dev = torch.device(runtime.torch_device_for_arch())
    out: Dict[str, np.ndarray] = {}
    errors: List[str] = []
    for name, fn in CASES.items():
        for dt in dtypes:
            tag = f"{name}/{str(dt).replace('torch.', '')}"
            try:
                for k, v in fn(dev, dt).items():
                    if v is None:
                        continue
                    v = v.detach().cpu()
                    out[f"{tag}/{k}"] = v.double().numpy() if v.is_floating_point() else v.long().numpy()
            except Exception as e:  # recorded, so that one failing op does not hide the others
                errors.append(f"{tag}: {type(e).__name__}: {e}")
                out[f"{tag}/__error__"] = np.array(str(e))
    out["__arch__"] = np.array(runtime.current_arch())
    if errors:
        print("\n".join(errors), file=sys.stderr)
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **run_all())

"""09 — fit 2-D material textures (kd, roughness) and an environment light to a fixed mesh from images.

This is the reconstruction's second pass on its own (``taichi_dr/recon/texture_pass.py``):

1. ``make_textured_material`` unwraps the mesh with xatlas, bakes a starting material into a
   ``[1, T, T, 6]`` texture (kd RGB | occlusion, roughness, metallic) and pads the atlas islands;
2. ``render_mesh_views`` samples it per pixel with our ``texture()`` op (mipmapped trilinear, the
   pixel footprint ``uv_da`` from ``interpolate``'s screen derivatives) and shades with a learnable
   ``EnvironmentLight`` (split-sum GGX);
3. Adam moves texels and cube-map texels together; ``clamp_()`` keeps the texels inside the
   material bounds after each step (kd in [0, 1], roughness in [0.08, 1]).

The target is a sphere with a checker of two paints (one glossy, one rough) under a sky with a sun.
out/examples/09_fit_texture_material_light.png: target | fit for two held-out views (29.7 dB after 80
steps, ~20 s of CPU), then the fitted
kd texture (the UV atlas) and the fitted light (lat-long). Albedo and light are only known up to a
common colour scale (see example 04), so compare renders, not kd values.
"""
import math
import os

import imageio.v3 as iio
import numpy as np
import torch

from taichi_dr.camera import camera_position, look_at, perspective
from taichi_dr.losses import image_loss, linear_to_srgb
from taichi_dr.metrics import psnr
from taichi_dr.recon.texture_pass import make_textured_material
from taichi_dr.render.light import EnvironmentLight
from taichi_dr.render.pipeline import render_mesh_views


def uv_sphere(n_lat=24, n_lon=48):
    th = torch.linspace(0, math.pi, n_lat + 1)[1:-1]
    ph = torch.linspace(0, 2 * math.pi, n_lon + 1)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    v = torch.stack([T.sin() * P.cos(), T.cos(), T.sin() * P.sin()], -1).reshape(-1, 3)
    v = torch.cat([v, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])])
    top, bot, rows = v.shape[0] - 2, v.shape[0] - 1, n_lat - 1
    f = []
    for j in range(n_lon):
        j2 = (j + 1) % n_lon
        f += [[top, j2, j], [bot, (rows - 1) * n_lon + j, (rows - 1) * n_lon + j2]]
        for i in range(rows - 1):
            a, b, c, d = i * n_lon + j, i * n_lon + j2, (i + 1) * n_lon + j, (i + 1) * n_lon + j2
            f += [[a, b, d], [a, d, c]]
    return v.contiguous(), torch.tensor(f, dtype=torch.int32)


def target_material(p):
    """Checker of a glossy red and a rough cream paint: [P, 3] -> kd | (occlusion, roughness, metallic)."""
    s = (torch.sin(5 * p[:, 0]) * torch.sin(5 * p[:, 1]) * torch.sin(5 * p[:, 2]) > 0).float()[:, None]
    kd = s * torch.tensor([0.7, 0.12, 0.1]) + (1 - s) * torch.tensor([0.85, 0.8, 0.65])
    ks = s * torch.tensor([0.0, 0.25, 0.0]) + (1 - s) * torch.tensor([0.0, 0.9, 0.0])
    return torch.cat([kd, ks], 1)


def target_light(S=16):
    h = 32
    th = (torch.arange(h) + 0.5) / h * math.pi
    ph = (torch.arange(2 * h) + 0.5) / (2 * h) * 2 * math.pi
    T, P = torch.meshgrid(th, ph, indexing="ij")
    up = (-torch.cos(T)).unsqueeze(-1)
    sky = torch.where(up > 0, torch.tensor([0.35, 0.5, 0.8]), torch.tensor([0.25, 0.2, 0.12])) * (0.5 + 0.5 * up.abs())
    d = torch.stack([T.sin() * P.sin(), -T.cos(), -T.sin() * P.cos()], -1)
    sun = torch.exp(30 * ((d * torch.nn.functional.normalize(torch.tensor([0.5, 0.7, 0.5]), dim=0)).sum(-1, True) - 1))
    return EnvironmentLight.from_latlong(sky + sun * torch.tensor([3.0, 2.7, 2.2]), resolution=S)


def cameras(n, elev, offset):
    proj = perspective(math.radians(40), 1.0, 0.1, 10.0)
    mv = torch.stack([look_at([3.2 * math.cos(e) * math.sin(a), 3.2 * math.sin(e), 3.2 * math.cos(e) * math.cos(a)],
                              [0, 0, 0]) for a, e in zip(torch.linspace(0, 2 * math.pi, n + 1)[:-1] + offset,
                                                         [elev * (-1) ** k for k in range(n)])])
    return proj.unsqueeze(0) @ mv, camera_position(mv)


def main(iters=80, res=64, out="out/examples"):
    torch.manual_seed(0)
    verts, faces = uv_sphere()
    light_t = target_light()
    mvp, campos = cameras(12, 0.5, 0.0)
    mvp_test, campos_test = cameras(2, 0.3, 0.7)
    with torch.no_grad():
        target = render_mesh_views(verts, faces, target_material, mvp, campos, (res, res), light_t)
        target_test = render_mesh_views(verts, faces, target_material, mvp_test, campos_test, (res, res), light_t)

    grey = lambda p: torch.tensor([0.5, 0.5, 0.5, 0.0, 0.6, 0.0]).expand(p.shape[0], 6)  # noqa: E731
    faces2, mat = make_textured_material(verts, faces, grey, (res, res))
    light = EnvironmentLight(16, init=0.5)
    opt = torch.optim.Adam([{"params": mat.parameters(), "lr": 0.03}, {"params": light.parameters(), "lr": 0.03}])
    for it in range(iters):
        idx = torch.randperm(mvp.shape[0])[:3]
        pred = render_mesh_views(verts, faces2, mat, mvp[idx], campos[idx], (res, res), light)
        loss = image_loss(pred[..., :3], target[idx, ..., :3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mat.clamp_()
        with torch.no_grad():
            light.base.clamp_(min=0.0)
        if it % 40 == 0 or it == iters - 1:
            print(f"iter {it:4d}  loss {float(loss.detach()):.4f}")

    with torch.no_grad():
        fit = render_mesh_views(verts, faces2, mat, mvp_test, campos_test, (res, res), light)
    p = psnr(linear_to_srgb(fit[..., :3]), linear_to_srgb(target_test[..., :3]))
    print(f"held-out views: PSNR {p:.2f} dB")

    def u8(x):  # [H, W, 3] linear, rows bottom-up -> uint8 sRGB, top row first
        return (linear_to_srgb(x.clamp(0, 1)).numpy()[::-1] * 255 + 0.5).astype(np.uint8)

    tiles = [u8(target_test[k, ..., :3]) for k in range(2)] + [u8(fit[k, ..., :3]) for k in range(2)]
    row = np.concatenate([tiles[0], tiles[2], tiles[1], tiles[3]], 1)
    kd = torch.nn.functional.interpolate(mat.padded()[..., :3].permute(2, 0, 1)[None], size=(res, res),
                                         mode="area")[0].permute(1, 2, 0)
    env = light.to_latlong(res // 2)
    env = env / max(float(env.max()), 1e-6)
    pic = np.concatenate([row, _panel(u8(kd), u8(env), res)], 1)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "09_fit_texture_material_light.png")
    iio.imwrite(path, pic)
    print(f"-> {path}")
    return p


def _panel(kd, env, res):
    """kd atlas (res×res) next to the light (res/2 × res), on white, res high."""
    panel = np.full((res, 2 * res, 3), 255, np.uint8)
    panel[:, :res] = kd
    panel[: env.shape[0], res:res + env.shape[1]] = env
    return panel


if __name__ == "__main__":
    main(**({"iters": 3, "res": 32} if os.environ.get("TAICHI_DR_EXAMPLE_TINY") else {}))

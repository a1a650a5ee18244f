"""04 — recover an environment map and the GGX roughness / colour of a sphere from renders.

The sphere is lit only by a learnable cube map (split-sum image-based lighting, EnvironmentLight):
diffuse = irradiance(n)·kd, specular = prefiltered(reflect(v, n), roughness)·(F0·A + B). Every
term is linear in the cube map, so its gradient reaches every texel the sphere "sees". We fit the
cube map, the base colour and the roughness together from renders at a few orbiting views and
print their errors; out/examples/04_fit_light_material.png shows target | fit renders and the
target | fitted environment (lat-long).

Expect kd and the sky to come out *different* from the truth while the renders match: that is
the colour–light ambiguity, not a bug. The diffuse term is irradiance(n)·kd, so kd·s with the
environment divided by s (per colour channel, any s > 0) renders the same diffuse image; only the
weak dielectric specular lobe (F0 = 0.04) depends on the environment alone, and barely pins its
scale. What the images determine is the product, so the example prints kd × mean sky radiance
for the truth and the fit: those agree where kd alone does not. (Fixing one of the two, e.g. a
known light or a grey-world prior on kd, removes the ambiguity.)
"""
import math
import os

import imageio.v3 as iio
import numpy as np
import torch

import taichi_dr as tdr


def uv_sphere(n_lat=16, n_lon=32):
    th = torch.linspace(0, math.pi, n_lat + 1)
    ph = torch.linspace(0, 2 * math.pi, n_lon + 1)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    v = torch.stack([T.sin() * P.cos(), T.cos(), T.sin() * P.sin()], -1).reshape(-1, 3)
    f = []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            f += [[a, b + n_lon, b], [a, a + n_lon, b + n_lon]]
    return v.contiguous(), torch.tensor(f, dtype=torch.int32)


def target_env(S=16):
    """A sky: blue above, brown ground below, and a warm 'sun' (a smooth bright lobe)."""
    env = tdr.EnvironmentLight(S)
    h = 32
    th = (torch.arange(h) + 0.5) / h * math.pi  # row 0 = looking down (-y)
    ph = (torch.arange(2 * h) + 0.5) / (2 * h) * 2 * math.pi
    T, P = torch.meshgrid(th, ph, indexing="ij")
    up = (-torch.cos(T)).unsqueeze(-1)
    sky = torch.where(up > 0, torch.tensor([0.3, 0.5, 0.9]), torch.tensor([0.25, 0.18, 0.1])) * (0.4 + 0.6 * up.abs())
    d = torch.stack([T.sin() * P.sin(), -T.cos(), -T.sin() * P.cos()], -1)
    sun_dir = torch.nn.functional.normalize(torch.tensor([0.5, 0.6, 0.6]), dim=0)
    sun = torch.exp(40 * ((d * sun_dir).sum(-1, keepdim=True) - 1)) * torch.tensor([4.0, 3.5, 2.5])
    env.load_latlong(sky + sun)
    return env


def render(env, kd, rough, verts, tri, mvp, campos, res=64):
    clip = tdr.transform_pos(mvp, verts)
    rast, _ = tdr.rasterize(clip, tri, (res, res))
    pos, _ = tdr.interpolate(verts, rast, tri)
    nrm = torch.nn.functional.normalize(pos, dim=-1)  # unit sphere: normal = position
    mask = rast[..., 3:] > 0
    shape = pos.shape[:3] + (1,)
    zero = torch.zeros(shape)
    ks = torch.cat([zero, rough.expand(shape), zero], -1)  # (occlusion, roughness, metallic)
    col = env.shade(pos, nrm, kd.expand(pos.shape), ks, campos)
    return col * mask


def main(iters=120, seed=0):
    torch.manual_seed(seed)
    verts, tri = uv_sphere()
    proj = tdr.perspective(math.radians(45), 1.0, 0.1, 10.0)
    c2w = tdr.orbit_views(8, 3.0, elevation_deg=[-20.0, 10.0, 40.0])
    mvp, campos = proj @ torch.linalg.inv(c2w), c2w[:, :3, 3].contiguous()
    true_env, true_kd, true_r = target_env(), torch.tensor([0.7, 0.3, 0.2]), torch.tensor([0.35])
    with torch.no_grad():
        targets = render(true_env, true_kd, true_r, verts, tri, mvp, campos)

    env = tdr.EnvironmentLight(16, init=0.5)
    kd_logit, r_logit = torch.zeros(3, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([{"params": env.parameters(), "lr": 0.05}, {"params": [kd_logit, r_logit], "lr": 0.05}])
    for it in range(iters):
        views = torch.randperm(8)[:2]
        img = render(env, kd_logit.sigmoid(), r_logit.sigmoid(), verts, tri, mvp[views], campos[views])
        loss = tdr.image_loss(img, targets[views])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            env.base.clamp_(min=0)
        if it % 20 == 0 or it == iters - 1:
            print(f"iter {it:3d}  loss {loss.item():.4f}  roughness {r_logit.sigmoid().item():.3f}  "
                  f"kd {[round(x, 3) for x in kd_logit.sigmoid().tolist()]}")
    with torch.no_grad():
        fit = render(env, kd_logit.sigmoid(), r_logit.sigmoid(), verts, tri, mvp[:4], campos[:4])
        print(f"true roughness {true_r.item():.2f}, kd {true_kd.tolist()}; render PSNR "
              f"{tdr.psnr(tdr.tonemap_srgb(fit), tdr.tonemap_srgb(targets[:4])):.2f} dB")
        # the colour–light ambiguity (module docstring): only kd × light is determined by the images
        prod_true = true_kd * true_env.to_latlong(32).mean((0, 1))
        prod_fit = kd_logit.sigmoid() * env.to_latlong(32).mean((0, 1))
        print(f"kd × mean sky radiance, per channel: true {[round(x, 3) for x in prod_true.tolist()]}, "
              f"fit {[round(x, 3) for x in prod_fit.tolist()]} (kd alone is ambiguous: see the docstring)")
        row = lambda imgs: torch.cat([im.flip(0) for im in imgs], 1)  # bottom-up images -> top-down
        top = torch.cat([row(targets[:4]), row(fit)], 0)
        envs = row([true_env.to_latlong(32), env.to_latlong(32)])
        envs = torch.nn.functional.interpolate(envs.permute(2, 0, 1)[None], size=(64, 256))[0].permute(1, 2, 0)
        img = tdr.tonemap_srgb(torch.cat([top, envs], 0)).clamp(0, 1).numpy()
    os.makedirs("out/examples", exist_ok=True)
    iio.imwrite("out/examples/04_fit_light_material.png", np.rint(img * 255).astype(np.uint8))
    print("-> out/examples/04_fit_light_material.png (rows: target, fit, env target | fit)")


if __name__ == "__main__":
    main(**({"iters": 3} if os.environ.get("TAICHI_DR_EXAMPLE_TINY") else {}))

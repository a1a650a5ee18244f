"""03 — recover a texture from renders of a textured plane at random distances, mipmaps on vs off.

Far away, many texels fall into one pixel. Without mipmaps a bilinear lookup sees only 4 of them,
so the image aliases and most texels never get a gradient; trilinear mipmapping averages the
whole footprint (uv derivatives from interpolate's rast_db), and the gradient reaches every
texel. Prints the texture PSNR of both runs; writes out/examples/03_fit_texture.png
(target | mipmaps off | mipmaps on).
"""
import math
import os

import imageio.v3 as iio
import numpy as np
import torch

import taichi_dr as tdr

QUAD = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float32)
UVS = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float32)
TRI = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)


def target_texture(n=128):
    y, x = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    checker = ((x * 8).floor() + (y * 8).floor()) % 2
    rings = 0.5 + 0.5 * torch.cos(30 * ((x - 0.5) ** 2 + (y - 0.5) ** 2).sqrt())
    return torch.stack([0.2 + 0.6 * checker, rings, 1 - 0.8 * x], -1)[None].contiguous()


def render(tex, mvp, res, mip):
    clip = tdr.transform_pos(mvp, QUAD)
    rast, rast_db = tdr.rasterize(clip, TRI, (res, res))
    uv, uv_da = tdr.interpolate(UVS, rast, TRI, rast_db, diff_attrs="all")
    if mip:
        img = tdr.texture(tex, uv, uv_da, filter_mode="linear-mipmap-linear", boundary_mode="clamp")
    else:
        img = tdr.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")
    return img * (rast[..., 3:] > 0)


def fit(mip, iters=150, res=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = target_texture()
    tex = torch.full_like(target, 0.2).requires_grad_(True)
    opt = torch.optim.Adam([tex], lr=0.04)
    proj = tdr.perspective(math.radians(40), 1.0, 0.1, 200.0)
    for _ in range(iters):
        dist = 2.5 + 25.0 * float(torch.rand(1, generator=gen))  # near and (mostly) far away
        angle = float(torch.rand(1, generator=gen)) * 2 * math.pi
        mv = tdr.look_at((0.4 * math.cos(angle), 0.4 * math.sin(angle), dist), (0, 0, 0))
        mvp = (proj @ mv)[None]
        # the reference is rendered with mipmaps from the true texture (what a camera would see)
        loss = torch.mean((render(tex, mvp, res, mip) - render(target, mvp, res, True)) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            tex.clamp_(0, 1)
    return tex.detach(), tdr.psnr(tex.detach(), target)


def main(iters=150, res=64):
    target = target_texture()
    tiles = [target[0]]
    for mip in (False, True):
        tex, p = fit(mip, iters=iters, res=res)
        print(f"mipmaps {'on ' if mip else 'off'}: texture PSNR {p:.2f} dB")
        tiles.append(tex[0])
    os.makedirs("out/examples", exist_ok=True)
    img = torch.cat(tiles, 1).flip(0).clamp(0, 1).numpy()
    iio.imwrite("out/examples/03_fit_texture.png", np.rint(img * 255).astype(np.uint8))
    print("-> out/examples/03_fit_texture.png (target | mipmaps off | mipmaps on)")


if __name__ == "__main__":
    main(**({"iters": 3, "res": 16} if os.environ.get("TAICHI_DR_EXAMPLE_TINY") else {}))

"""02 — fit a randomly perturbed RGB cube to renders of the true one (nvdiffrast's cube.py).

Only the antialiasing step makes the silhouettes differentiable: without it the vertices would get
gradients from the colours inside the cube but none from where its outline should be. Prints the
mean vertex error falling; writes out/examples/02_fit_cube.png (before | after | target).
"""
import math
import os

import imageio.v3 as iio
import numpy as np
import torch

import taichi_dr as tdr

CORNERS = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
FACES = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=torch.int32)


def random_rotation(gen):
    q = torch.nn.functional.normalize(torch.randn(4, generator=gen), dim=0)
    w, x, y, z = q
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def render(verts, colors, mvp, res):
    clip = tdr.transform_pos(mvp, verts)
    rast, _ = tdr.rasterize(clip, FACES, (res, res))
    img, _ = tdr.interpolate(colors, rast, FACES)
    return tdr.antialias(img, rast, clip, FACES)


def main(iters=400, res=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    colors_true = CORNERS + 0.5  # an RGB cube
    verts = (CORNERS + (torch.rand(8, 3, generator=gen) - 0.5) * 0.5).requires_grad_(True)
    colors = torch.rand(8, 3, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([verts, colors], lr=1e-2)
    proj = tdr.perspective(math.radians(45), 1.0, 1.0, 50.0)
    view = torch.eye(4)
    view[2, 3] = -3.5
    shots = []
    for it in range(iters + 1):
        model = torch.eye(4)
        model[:3, :3] = random_rotation(gen)
        mvp = (proj @ view @ model)[None]
        loss = torch.mean((render(verts, colors, mvp, res) - render(CORNERS, colors_true, mvp, res)) ** 2)
        if it in (0, iters):
            fixed = (proj @ view @ torch.tensor([[0.8, 0, 0.6, 0], [0.3, 0.9, -0.4, 0], [-0.5, 0.5, 0.7, 0], [0, 0, 0, 1.0]]))[None]
            shots.append(render(verts.detach(), colors.detach(), fixed, 256)[0])
            if it == iters:
                shots.append(render(CORNERS, colors_true, fixed, 256)[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 50 == 0:
            err = float((verts.detach() - CORNERS).norm(dim=1).mean())
            print(f"iter {it:4d}  loss {float(loss):.5f}  mean vertex error {err:.4f}")
    os.makedirs("out/examples", exist_ok=True)
    img = torch.cat(shots, 1).clamp(0, 1).flip(0).numpy()
    iio.imwrite("out/examples/02_fit_cube.png", np.rint(img * 255).astype(np.uint8))
    print("-> out/examples/02_fit_cube.png (before | after | target)")


if __name__ == "__main__":
    main(**({"iters": 3, "res": 16} if os.environ.get("TAICHI_DR_EXAMPLE_TINY") else {}))

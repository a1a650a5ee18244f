"""05 — recover a rotation (a unit quaternion) from a target render of a coloured cube.

The image depends on the pose through rasterize's barycentrics (interior colours) and antialias
(the outline). A few random starts avoid the symmetric local minima of a cube; the best one is
refined with Adam. Prints the angle error; writes out/examples/05_fit_pose.png (start | fit | target).
"""
import math
import os

import imageio.v3 as iio
import numpy as np
import torch

import taichi_dr as tdr

V = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
FACES = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=torch.int32)
COLORS = V + 0.5


def quat_to_mat(q):
    w, x, y, z = torch.nn.functional.normalize(q, dim=0)
    return torch.stack([torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
                        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
                        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])])


def render(q, res=128):
    proj = tdr.perspective(math.radians(40), 1.0, 0.5, 10.0)
    mv = tdr.look_at((0, 0, 3.0))
    verts = V @ quat_to_mat(q).T
    clip = tdr.transform_pos((proj @ mv)[None], verts)
    rast, _ = tdr.rasterize(clip, FACES, (res, res))
    img, _ = tdr.interpolate(COLORS, rast, FACES)
    return tdr.antialias(img, rast, clip, FACES)


def angle_deg(q1, q2):
    d = abs(float(torch.dot(torch.nn.functional.normalize(q1, dim=0), torch.nn.functional.normalize(q2, dim=0))))
    return math.degrees(2 * math.acos(min(1.0, d)))


def main(starts=8, iters=150, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q_true = torch.nn.functional.normalize(torch.randn(4, generator=gen), dim=0)
    target = render(q_true)
    candidates = [torch.nn.functional.normalize(torch.randn(4, generator=gen), dim=0) for _ in range(starts)]
    losses = [float(torch.mean((render(c) - target) ** 2)) for c in candidates]
    q0 = candidates[int(np.argmin(losses))]
    q = q0.clone().requires_grad_(True)
    opt = torch.optim.Adam([q], lr=0.01)
    for it in range(iters + 1):
        loss = torch.mean((render(q) - target) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 30 == 0:
            print(f"iter {it:3d}  loss {loss.item():.5f}  angle error {angle_deg(q.detach(), q_true):6.2f} deg")
    os.makedirs("out/examples", exist_ok=True)
    img = torch.cat([render(q0)[0], render(q.detach())[0], target[0]], 1).flip(0).clamp(0, 1).detach().numpy()
    iio.imwrite("out/examples/05_fit_pose.png", np.rint(img * 255).astype(np.uint8))
    print("-> out/examples/05_fit_pose.png (start | fit | target)")


if __name__ == "__main__":
    main(**({"starts": 2, "iters": 3} if os.environ.get("TAICHI_DR_EXAMPLE_TINY") else {}))

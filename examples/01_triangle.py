"""01 — the classic three-colour triangle: rasterize, interpolate, save.

Every pixel centre inside the triangle gets perspective-correct barycentrics (u, v); interpolating
one colour per vertex with them gives the famous RGB gradient. Writes out/examples/01_triangle.png.
"""
import os

import imageio.v3 as iio
import numpy as np
import torch

import taichi_dr as tdr


def main():
    # clip-space positions (x, y, z, w): one image, three vertices
    pos = torch.tensor([[[-0.8, -0.8, 0.0, 1.0], [0.8, -0.8, 0.0, 1.0], [-0.8, 0.8, 0.0, 1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    col = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    rast, _ = tdr.rasterize(pos, tri, resolution=(256, 256))  # [1, 256, 256, 4] = (u, v, z/w, id + 1)
    img, _ = tdr.interpolate(col, rast, tri)                   # [1, 256, 256, 3]

    # our images are bottom-up (OpenGL); image files are top-down
    png = np.rint(img[0].flip(0).numpy() * 255).astype(np.uint8)
    os.makedirs("out/examples", exist_ok=True)
    iio.imwrite("out/examples/01_triangle.png", png)
    print("covered pixels:", int((rast[..., 3] > 0).sum()), "-> out/examples/01_triangle.png")


if __name__ == "__main__":
    main()

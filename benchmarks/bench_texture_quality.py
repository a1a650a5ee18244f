"""kd texture quality of a reconstruction against a ground-truth textured mesh.

    python benchmarks/bench_texture_quality.py OUT_DIR GT.obj [--samples 200000]

Samples points uniformly on the ground-truth surface with their ground-truth UVs, reads the
ground-truth albedo from its ``map_Kd`` texture (sRGB-decoded, bilinear, wrapping), finds for each
the nearest sample of the reconstructed surface (``OUT_DIR/mesh.obj``, dense samples with their UVs)
and reads our kd there. Prints the PSNR of the two albedos (sRGB, [0, 1]) as is, and after a
best-fit per-channel scale of ours (albedo and light intensity are only known up to a common
factor from images), plus the median distance between matched points.
"""
import argparse
import json

import torch

from taichi_dr.losses import linear_to_srgb, srgb_to_linear
from taichi_dr.mesh import load_obj
from taichi_dr.metrics import _nearest, psnr
from taichi_dr.recon.export import load_textured_obj
from taichi_dr.render.texture import texture


def _samples_with_uv(verts, faces, uvs, uv_faces, n, gen):
    v = verts.double()[faces.long()]
    area = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).norm(dim=1)
    k = torch.multinomial(area, n, replacement=True, generator=gen)
    r1 = torch.rand(n, 1, dtype=torch.float64, generator=gen).sqrt()
    r2 = torch.rand(n, 1, dtype=torch.float64, generator=gen)
    w = torch.cat([1 - r1, r1 * (1 - r2), r1 * r2], 1)
    p = (v[k] * w[..., None]).sum(1)
    uv = (uvs.double()[uv_faces[k].long()] * w[..., None]).sum(1)
    return p, uv


def _lookup(tex, uv, boundary):
    return texture(tex[None].float().contiguous(), uv.float().view(1, 1, -1, 2).contiguous(), filter_mode="linear",
                   boundary_mode=boundary)[0, 0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("gt_obj")
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    gt = load_obj(args.gt_obj)
    p_gt, uv_gt = _samples_with_uv(gt.verts, gt.faces, gt.uvs, gt.uv_faces, args.samples, gen)
    kd_gt = srgb_to_linear(_lookup(gt.texture, uv_gt, "wrap"))
    v, f, mat = load_textured_obj(f"{args.out_dir}/mesh.obj")
    p_our, uv_our = _samples_with_uv(v, f, mat.uvs, mat.uv_faces, 4 * args.samples, gen)
    kd_our_all = _lookup(mat.tex.detach()[0, ..., :3], uv_our, "clamp")
    d2, idx = _nearest(p_gt, p_our)
    kd_our = kd_our_all[idx]
    scale = (kd_gt * kd_our).sum(0) / (kd_our * kd_our).sum(0).clamp(min=1e-12)
    res = {"kd_psnr": psnr(linear_to_srgb(kd_our), linear_to_srgb(kd_gt)),
           "kd_psnr_scaled": psnr(linear_to_srgb((kd_our * scale).clamp(0, 1)), linear_to_srgb(kd_gt)),
           "scale": [round(float(s), 4) for s in scale], "median_match_distance": float(d2.sqrt().median()),
           "samples": args.samples}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()

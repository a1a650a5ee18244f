"""Regenerate every figure of docs/ from the library itself, so the pictures never go stale.

    python docs/figures/make_figures.py            # full size, into docs/figures/
    python docs/figures/make_figures.py --quick --out /tmp/figs   # small and fast (used by a test)
"""
import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import taichi_dr as tdr  # noqa: E402

FIGURES = ["rasterize.png", "interpolate.png", "antialias.png", "texture.png", "shading.png", "marching_tets.png",
           "dmtet.png", "tonemap.png", "reconstruction.png", "gradcheck.png", "materials.png"]


def _img(ax, img, title):
    ax.imshow(np.clip(np.asarray(img), 0, 1)[::-1] if np.asarray(img).ndim == 3 else np.asarray(img)[::-1],
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _save(fig, out, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=90)
    plt.close(fig)


TRI = torch.tensor([[0, 1, 2]], dtype=torch.int32)
POS = torch.tensor([[[-0.8, -0.7, 0.0, 1.0], [0.9, -0.5, 0.0, 1.6], [-0.3, 0.8, 0.0, 0.8]]])


def fig_rasterize(out, res):
    rast, _ = tdr.rasterize(POS, TRI, (res, res))
    small, _ = tdr.rasterize(POS, TRI, (12, 12))
    fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
    _img(ax[0], torch.stack([rast[0, ..., 0], rast[0, ..., 1], 1 - rast[0, ..., 0] - rast[0, ..., 1]], -1) * (rast[0, ..., 3:] > 0),
         "perspective-correct (u, v, 1-u-v)")
    _img(ax[1], rast[0, ..., 2] * 0.5 + 0.5, "z/w")
    _img(ax[2], (small[0, ..., 3] > 0).float(), "coverage at 12x12: pixel centres")
    _save(fig, out, "rasterize.png")


def fig_interpolate(out, res):
    rast, db = tdr.rasterize(POS, TRI, (res, res))
    uv = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    val, da = tdr.interpolate(uv, rast, TRI, db, diff_attrs="all")
    checker = ((val[0, ..., 0].floor() + val[0, ..., 1].floor()) % 2) * (rast[0, ..., 3] > 0)
    fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
    _img(ax[0], checker, "checker of interpolated uv")
    _img(ax[1], da[0, ..., 0].abs() / da[0, ..., 0].abs().max(), "|du/dX| (rast_db chain rule)")
    foot = (da[0, ..., 0] ** 2 + da[0, ..., 2] ** 2).sqrt()
    _img(ax[2], foot / foot.max(), "pixel footprint in uv -> mip level")
    _save(fig, out, "interpolate.png")


def fig_antialias(out, res):
    pos = POS.clone().requires_grad_(True)
    rast, _ = tdr.rasterize(pos, TRI, (res, res))
    img = tdr.antialias((rast[..., 3:] > 0).float(), rast, pos, TRI)
    # gradient image of a moving triangle: d(pixel)/d(x-translation), by a vector-Jacobian per pixel
    grads = torch.zeros(res, res)
    shift = torch.zeros_like(POS)
    shift[..., 0] = POS[..., 3]  # moving x_clip by w moves the projection by 1 in NDC
    eps = 1e-3
    with torch.no_grad():
        r1, _ = tdr.rasterize(POS, TRI, (res, res))
        plus = tdr.antialias((r1[..., 3:] > 0).float(), r1, POS + eps * shift, TRI)
        minus = tdr.antialias((r1[..., 3:] > 0).float(), r1, POS - eps * shift, TRI)
        grads = ((plus - minus) / (2 * eps))[0, ..., 0]
    fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
    _img(ax[0], (rast[0, ..., 3] > 0).float(), "coverage (no gradient)")
    _img(ax[1], img[0, ..., 0].detach(), "antialiased coverage")
    m = float(grads.abs().max()) or 1.0
    ax[2].imshow(grads.numpy()[::-1], cmap="RdBu", vmin=-m, vmax=m, interpolation="nearest")
    ax[2].set_title("d(image)/d(move right): silhouettes only", fontsize=9)
    ax[2].axis("off")
    _save(fig, out, "antialias.png")


def fig_texture(out, res):
    quad = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float32) * torch.tensor([1, 1, 1.0])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    uvs = torch.tensor([[0, 0], [8, 0], [8, 8], [0, 8]], dtype=torch.float32)
    n = 64
    cb = (((torch.arange(n)[:, None] // 8) + (torch.arange(n)[None] // 8)) % 2).float()[None, ..., None].expand(1, n, n, 3)
    proj = tdr.perspective(math.radians(50), 1.0, 0.1, 100.0)
    mv = tdr.look_at((0, -4.0, 0.6), (0, 2.0, 0), (0, 0, 1))
    clip = tdr.transform_pos((proj @ mv)[None], quad * 4)
    rast, db = tdr.rasterize(clip, tri, (res, res))
    uv, uv_da = tdr.interpolate(uvs, rast, tri, db, diff_attrs="all")
    cov = rast[..., 3:] > 0
    lin = tdr.texture(cb.contiguous(), uv, filter_mode="linear") * cov
    mip = tdr.texture(cb.contiguous(), uv, uv_da, filter_mode="linear-mipmap-linear") * cov
    fig, ax = plt.subplots(1, 2, figsize=(6.4, 3.4))
    _img(ax[0], lin[0], "bilinear: aliasing in the distance")
    _img(ax[1], mip[0], "trilinear mipmaps (uv_da from interpolate)")
    _save(fig, out, "texture.png")


def fig_shading(out, res):
    from taichi_dr.bench.raster import uv_sphere
    from taichi_dr.render.light import cube_directions

    v, f = uv_sphere(6000)
    n = tdr.vertex_normals(v, f)
    proj = tdr.perspective(math.radians(30), 1.0, 0.1, 10.0)
    mv = tdr.look_at((0, 0, 4.0))
    clip = tdr.transform_pos((proj @ mv)[None], v)
    rast, _ = tdr.rasterize(clip, f, (res, res))
    attr, _ = tdr.interpolate(torch.cat([v, n], 1), rast, f)
    nn_ = torch.nn.functional.normalize(attr[..., 3:], dim=-1)
    env = tdr.EnvironmentLight(16)
    d, _ = cube_directions(16)
    with torch.no_grad():
        sun = torch.exp(25 * ((d * torch.nn.functional.normalize(torch.tensor([0.6, 0.6, 0.5]), dim=0)).sum(-1) - 1))
        env.base.copy_(0.25 + 0.25 * d[..., 1:2].clamp(min=0) + 5 * sun[..., None])
    fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
    shape = (*attr.shape[:3], 1)
    with torch.no_grad():
        for i, r in enumerate((0.15, 0.45, 0.9)):
            col = env.shade(attr[..., :3], nn_, torch.tensor([0.8, 0.25, 0.2]).expand(*shape[:3], 3),
                            torch.tensor([0.0, r, 0.0]).expand(*shape[:3], 3), torch.tensor([[0, 0, 4.0]]))
            _img(ax[i], tdr.linear_to_srgb(col[0] * (rast[0, ..., 3:] > 0) + (rast[0, ..., 3:] == 0)),
                 f"GGX split-sum, roughness {r}")
    _save(fig, out, "shading.png")


def fig_marching_tets(out, res):
    from taichi_dr.render.preview import render_mesh

    tiles = []
    for r in (6, 12, 32):
        g = tdr.TetGrid.create(r, 2.0)
        q = torch.stack([g.verts[:, [0, 2]].norm(dim=1) - 0.55, g.verts[:, 1]], 1)
        v, fc = tdr.marching_tets(g.verts, q.norm(dim=1) - 0.25, g.tets, g.edges, g.tet_edges)
        tiles.append(render_mesh(tdr.Mesh(v, fc, colors=0.5 + 0.5 * tdr.vertex_normals(v, fc)), res=res, view=(20, 35)))
    fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
    for a, t, r in zip(ax, tiles, (6, 12, 32)):
        a.imshow(t)
        a.set_title(f"torus SDF, grid {r}", fontsize=9)
        a.axis("off")
    _save(fig, out, "marching_tets.png")


def fig_dmtet(out, quick):
    # the SDF regulariser on a noisy SDF: floaters (isolated sign changes) disappear
    torch.manual_seed(0)
    m = tdr.DMTet(grid_resolution=16 if quick else 24, mode="direct")
    with torch.no_grad():
        m.sdf_param.copy_(m.verts.norm(dim=1) - 0.6 + 0.35 * torch.randn(m.verts.shape[0]))
    counts, losses = [], []
    opt = torch.optim.Adam([m.sdf_param], lr=0.02)
    for it in range(60 if quick else 150):
        loss = tdr.sdf_reg_loss(m.sdf_param, m.edges)
        _, f = m.mesh()
        counts.append(int(f.shape[0]))
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(losses)
    ax[0].set_title("sdf_reg_loss alone on a noisy SDF", fontsize=9)
    ax[0].set_xlabel("step")
    ax[1].plot(counts)
    ax[1].set_title("triangles: floaters and sheets vanish", fontsize=9)
    ax[1].set_xlabel("step")
    _save(fig, out, "dmtet.png")


def fig_tonemap(out):
    x = torch.linspace(0, 8, 400)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(x, tdr.tonemap_srgb(x), label="x' = sRGB(log(x + 1))")
    ax.plot(x, tdr.linear_to_srgb(x), "--", label="sRGB(x), clipped")
    ax.set_xlabel("linear radiance x")
    ax.legend(fontsize=8)
    _save(fig, out, "tonemap.png")


def fig_reconstruction(out, quick):
    import tempfile

    from taichi_dr.recon.demo import make_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        res = 48 if quick else 128
        make_demo_dataset(tmp, res=res, n_train=12 if quick else 24, n_test=2 if quick else 8, gt_res=32 if quick else 96)
        cfg = tdr.ReconConfig(iters=20 if quick else 200, refine_iters=10 if quick else 100, grid_res=16 if quick else 40,
                              turntable_frames=2, turntable_res=32, chamfer_samples=5000)
        metrics = tdr.reconstruct(tmp, os.path.join(tmp, "out"), cfg, progress=False)
        import imageio.v3 as iio

        loss = iio.imread(os.path.join(tmp, "out", "loss.png"))
        side = iio.imread(os.path.join(tmp, "out", "renders", "test_000.png"))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    ax[0].imshow(loss)
    ax[0].axis("off")
    ax[1].imshow(side)
    ax[1].set_title(f"test view: target | ours  (PSNR {metrics['test_psnr']:.1f} dB)", fontsize=9)
    ax[1].axis("off")
    _save(fig, out, "reconstruction.png")


def fig_materials(out, res):
    """Material field -> xatlas UV atlas -> baked, padded texture -> the same render from the texture."""
    import trimesh

    from taichi_dr.camera import camera_position
    from taichi_dr.recon.texture_pass import TexturedMaterial, bake, dilate, unwrap
    from taichi_dr.render.pipeline import SimpleLight, render_mesh_views

    s = trimesh.creation.icosphere(subdivisions=3, radius=0.9)
    v, f = torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int32)

    def field(p):  # spots: a procedural kd (and a constant ks) of the world position
        spot = (torch.sin(7 * p[:, 0]) * torch.sin(7 * p[:, 1] + 1) * torch.sin(7 * p[:, 2] + 2) > 0.15).float()[:, None]
        kd = spot * torch.tensor([0.1, 0.1, 0.12]) + (1 - spot) * torch.tensor([0.9, 0.85, 0.8])
        return torch.cat([kd, torch.tensor([0.0, 0.8, 0.0]).expand(p.shape[0], 3)], 1)

    T = 2 * res
    faces2, uvs, uvf = unwrap(v, f, T)
    tex, mask = bake(v, faces2, uvs, uvf, field, T)
    padded = dilate(tex, mask)
    mat = TexturedMaterial(padded[None], uvs, uvf, mask)
    proj = tdr.perspective(math.radians(40), 1.0, 0.1, 10.0)
    mv = tdr.look_at((1.6, 1.2, 2.2), (0, 0, 0))
    args = ((proj @ mv)[None], camera_position(mv[None]), (res, res), SimpleLight.default(), torch.ones((1, res, res, 3)))
    with torch.no_grad():
        a = render_mesh_views(v, faces2, field, *args)[0, ..., :3]
        b = render_mesh_views(v, faces2, mat, *args)[0, ..., :3]
    fig, ax = plt.subplots(1, 4, figsize=(11, 3.0))
    _img(ax[0], tdr.linear_to_srgb(a), "pass 1: field, per pixel")
    _img(ax[1], tdr.linear_to_srgb(tex[..., :3].clamp(0, 1)), "baked into the xatlas atlas")
    _img(ax[2], tdr.linear_to_srgb(padded[..., :3].clamp(0, 1)), "islands padded (dilated)")
    _img(ax[3], tdr.linear_to_srgb(b), "pass 2: texture() lookups")
    _save(fig, out, "materials.png")


def fig_gradcheck(out, quick):
    from taichi_dr.gradcheck import all_cases, check_case

    areas = ["rasterize", "interpolate", "antialias"] if quick else None
    rows = [(f"{c.op} / {c.input}", *check_case(c)[:2], c.atol) for c in all_cases(areas)]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    errs = [max(r[1], 1e-17) for r in rows]
    ax.barh(range(len(rows)), errs, color=["tab:green" if r[2] else "tab:red" for r in rows])
    ax.axvline(rows[0][3], color="k", ls="--", lw=1, label="tolerance (atol)")
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("max |autograd − finite difference| (float64)")
    ax.legend(fontsize=8)
    _save(fig, out, "gradcheck.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    res = 64 if a.quick else 256
    fig_rasterize(a.out, res)
    fig_interpolate(a.out, res)
    fig_antialias(a.out, res)
    fig_texture(a.out, res)
    fig_shading(a.out, res)
    fig_marching_tets(a.out, res)
    fig_dmtet(a.out, a.quick)
    fig_tonemap(a.out)
    fig_reconstruction(a.out, a.quick)
    fig_gradcheck(a.out, a.quick)
    fig_materials(a.out, res)
    print("wrote", ", ".join(FIGURES), "to", a.out)


if __name__ == "__main__":
    sys.exit(main())

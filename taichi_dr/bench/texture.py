"""Texture benchmark: bilinear and trilinear lookups at 512², 4 channels, 1024² texture."""
import torch

from taichi_dr.bench import table, timed_stats

__all__ = ["main"]


def main(quick: bool = False) -> None:
    from taichi_dr import texture
    from taichi_dr.render.texture import texture_construct_mip

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(1, 1024, 1024, 4, generator=g)
    # a textured plane seen at an angle: uv rotates by 30° and minifies about 2.5x across the
    # screen (coherent access, as when rendering; random uv would only measure cache misses)
    ys, xs = torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij")
    c, s = 0.866, 0.5
    scale = 2.5 / 1024 * (1 + ys / 512)  # texels per pixel grows towards the top: a range of levels
    uv = torch.stack([(c * xs - s * ys) * scale, (s * xs + c * ys) * scale], -1)[None].contiguous()
    uv_da = torch.stack([c * scale, -s * scale, s * scale, c * scale], -1)[None].contiguous()
    mip = texture_construct_mip(tex)
    reps = 3 if quick else 7
    rows = []
    for name, kw in (("bilinear", dict(filter_mode="linear")),
                     ("trilinear (prebuilt mip)", dict(uv_da=uv_da, mip=mip, filter_mode="linear-mipmap-linear")),
                     ("trilinear (mip built per call)", dict(uv_da=uv_da, filter_mode="linear-mipmap-linear"))):
        c, f_min, t_f = timed_stats(lambda: texture(tex, uv, **kw), reps)
        t_req = tex.clone().requires_grad_(True)
        u_req = uv.clone().requires_grad_(True)

        def fb():
            kw2 = dict(kw)
            if "mip" in kw2:
                kw2["mip"] = texture_construct_mip(t_req)
            texture(t_req, u_req, **kw2).sum().backward()
        _, fb_min, t_fb = timed_stats(fb, reps)
        rows.append([name, f"{f_min * 1e3:.1f}", f"{t_f * 1e3:.1f}", f"{fb_min * 1e3:.1f}", f"{t_fb * 1e3:.1f}", f"{c:.2f}"])
    print("texture 512x512 lookups, 4 channels, 1024x1024 texture (CPU; min and median after warm-up)")
    print(table(["filter", "fwd min ms", "fwd median ms", "fwd+bwd min ms", "fwd+bwd median ms", "compile s"], rows))


if __name__ == "__main__":
    main()

"""Shading benchmark: the fused light kernels on 4 views at 512² (random normals and materials),
next to the yardstick rasterize + interpolate + antialias of an 80k-triangle sphere at 512²."""
import torch

from taichi_dr.bench import table, timed_stats

__all__ = ["main"]


def _inputs(N: int, res: int, dev: str):
    g = torch.Generator().manual_seed(0)
    shape = (N, res, res, 3)
    pos = torch.randn(shape, generator=g) * 0.3
    n = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    kd, ks = torch.rand(shape, generator=g), torch.rand(shape, generator=g)  # ks = (occlusion, roughness, metallic)
    cam = torch.randn(N, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0])
    return [t.to(dev).contiguous() for t in (pos, n, kd, ks, cam)]


def main(quick: bool = False) -> None:
    from taichi_dr import DirectionalLight, EnvironmentLight, PointLight
    from taichi_dr.bench.raster import _device, _pipeline

    torch.set_num_threads(2)
    dev = _device()
    reps = 3 if quick else 7
    pos, n, kd, ks, cam = _inputs(4, 512, dev)
    env = EnvironmentLight(32).to(dev)
    lights = [("split-sum environment (32² cube)", env),
              ("directional GGX + ambient", DirectionalLight(torch.tensor([0.3, 1.0, 0.5]), torch.ones(3) * 3,
                                                             torch.full((3,), 0.2))),
              ("point GGX", PointLight(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3) * 10))]
    rows = []
    for name, light in lights:
        c, f_min, f_med = timed_stats(lambda: light.shade(pos, n, kd, ks, cam), reps)

        def fb(light=light):
            x = [t.clone().requires_grad_(True) for t in (pos, n, kd, ks)]
            light.shade(x[0], x[1], x[2], x[3], cam).sum().backward()
        _, fb_min, fb_med = timed_stats(fb, reps)
        rows.append([name, f"{f_min * 1e3:.1f}", f"{f_med * 1e3:.1f}", f"{fb_min * 1e3:.1f}", f"{fb_med * 1e3:.1f}",
                     f"{c:.2f}"])
    _, fwd, fwd_bwd = _pipeline(80_000, 512)
    _, r_min, r_med = timed_stats(fwd, reps)
    _, rb_min, rb_med = timed_stats(fwd_bwd, reps)
    rows.append(["yardstick: rasterize+interpolate+antialias, 80k tris, 1 view", f"{r_min * 1e3:.1f}",
                 f"{r_med * 1e3:.1f}", f"{rb_min * 1e3:.1f}", f"{rb_med * 1e3:.1f}", "-"])
    print(f"shading 4 x 512x512 pixels ({dev}; min and median of {reps} calls after one warm-up call)")
    print(table(["light", "fwd min ms", "fwd median ms", "fwd+bwd min ms", "fwd+bwd median ms", "compile s"], rows))
    env_f, env_fb = float(rows[0][1]), float(rows[0][3])
    print(f"split-sum / yardstick (min): forward {env_f / (r_min * 1e3):.1f}x, "
          f"forward+backward {env_fb / (rb_min * 1e3):.1f}x")


if __name__ == "__main__":
    main()

"""Shading benchmark: the fused light kernels on 4 views at 512² (random normals and materials) and
the vertex normals of a 131k-face mesh (scatter vs :class:`VertexNormalOperator`), next to the
yardstick rasterize + interpolate + antialias of an 80k-triangle sphere at 512².

The calls are interleaved (one call of every entry per round, then the next round) and each
entry reports its minimum and median over the rounds: on a shared machine the load drifts over a
run, and interleaving exposes every entry to the same drift, so the ratios to the yardstick
measured in the same run are what to compare between runs and machines.
"""
import resource
import statistics
import time

import torch

from taichi_dr.bench import _sync, table

__all__ = ["main"]


def _inputs(N: int, res: int, dev: str):
    g = torch.Generator().manual_seed(0)
    shape = (N, res, res, 3)
    pos = torch.randn(shape, generator=g) * 0.3
    n = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    kd, ks = torch.rand(shape, generator=g), torch.rand(shape, generator=g)  # ks = (occlusion, roughness, metallic)
    cam = torch.randn(N, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0])
    return [t.to(dev).contiguous() for t in (pos, n, kd, ks, cam)]


def _cpu_s() -> float:
    """CPU seconds of this process so far (all threads): less sensitive than wall time to other
    processes on a busy machine, as long as ours do not spin while they wait."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _interleaved(fns, rounds: int):
    """{name: (first-call seconds minus median, min s, median s, min CPU s)} of ``fns`` {name:
    fn}, called in turn, ``rounds`` times each after one warm-up call each."""
    first, runs, cpus = {}, {k: [] for k in fns}, {k: [] for k in fns}
    for k, fn in fns.items():
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        first[k] = time.perf_counter() - t
    for _ in range(rounds):
        for k, fn in fns.items():
            t, c = time.perf_counter(), _cpu_s()
            fn()
            _sync()
            runs[k].append(time.perf_counter() - t)
            cpus[k].append(_cpu_s() - c)
    return {k: (max(first[k] - statistics.median(r), 0.0), min(r), statistics.median(r), min(cpus[k]))
            for k, r in runs.items()}


def main(quick: bool = False) -> None:
    from taichi_dr import DirectionalLight, EnvironmentLight, PointLight
    from taichi_dr.bench.raster import _device, _pipeline

    torch.set_num_threads(2)
    dev = _device()
    rounds = 3 if quick else 9
    pos, n, kd, ks, cam = _inputs(4, 512, dev)
    env = EnvironmentLight(32).to(dev)
    lights = [("split-sum environment (32² cube)", env),
              ("directional GGX + ambient", DirectionalLight(torch.tensor([0.3, 1.0, 0.5]), torch.ones(3) * 3,
                                                             torch.full((3,), 0.2))),
              ("point GGX", PointLight(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3) * 10))]
    fns = {}
    for name, light in lights:
        def fwd(light=light):
            light.shade(pos, n, kd, ks, cam)

        def fb(light=light):
            x = [t.clone().requires_grad_(True) for t in (pos, n, kd, ks)]
            light.shade(x[0], x[1], x[2], x[3], cam).sum().backward()
        fns[(name, "fwd")], fns[(name, "fb")] = fwd, fb
    # a reconstruction masks the shaded image by coverage: background pixels get no gradient and
    # the backward kernels skip them (here 30 % of each image is covered: a centred disc)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 512), torch.linspace(-1, 1, 512), indexing="ij")
    mask = ((xx * xx + yy * yy) < 0.382).to(dev, torch.float32)[None, :, :, None]
    masked = "split-sum, loss on 30 % of the pixels"

    def fb_masked():
        x = [t.clone().requires_grad_(True) for t in (pos, n, kd, ks)]
        (env.shade(x[0], x[1], x[2], x[3], cam) * mask).sum().backward()
    fns[(masked, "fwd")], fns[(masked, "fb")] = fns[(lights[0][0], "fwd")], fb_masked
    # the refinement pass's per-step vertex normals (its mesh has ~131k faces): the scatter path
    # against the sparse operator built once for the fixed topology
    from taichi_dr.bench.raster import uv_sphere
    from taichi_dr.render.shading import VertexNormalOperator, vertex_normals
    sv, sf = (torch.as_tensor(t).to(dev) for t in uv_sphere(131_000))
    normal_rows = [("vertex normals, 131k faces: gathers + index_add", None),
                   ("vertex normals, 131k faces: VertexNormalOperator",
                    VertexNormalOperator(sf, sv.shape[0], sv.dtype, dev))]
    for name, op in normal_rows:
        def nfwd(op=op):
            vertex_normals(sv, sf, op)

        def nfb(op=op):
            x = sv.clone().requires_grad_(True)
            vertex_normals(x, sf, op).sum().backward()
        fns[(name, "fwd")], fns[(name, "fb")] = nfwd, nfb
    yard = "yardstick: rasterize+interpolate+antialias, 80k tris, 1 view"
    _, fns[(yard, "fwd")], fns[(yard, "fb")] = _pipeline(80_000, 512)
    res = _interleaved(fns, rounds)
    y_f, y_fb = res[(yard, "fwd")][1], res[(yard, "fb")][1]
    yc_f, yc_fb = res[(yard, "fwd")][3], res[(yard, "fb")][3]
    rows = []
    for name in [name for name, _ in lights] + [masked] + [name for name, _ in normal_rows] + [yard]:
        c, f_min, f_med, f_cpu = res[(name, "fwd")]
        _, fb_min, fb_med, fb_cpu = res[(name, "fb")]
        rows.append([name, f"{f_min * 1e3:.1f} / {f_med * 1e3:.1f}", f"{fb_min * 1e3:.1f} / {fb_med * 1e3:.1f}",
                     f"{f_cpu * 1e3:.1f} / {fb_cpu * 1e3:.1f}", f"{f_min / y_f:.1f}x / {fb_min / y_fb:.1f}x",
                     f"{f_cpu / yc_f:.1f}x / {fb_cpu / yc_fb:.1f}x", "-" if name == yard else f"{c:.2f}"])
    print(f"shading 4 x 512x512 pixels ({dev}; {rounds} interleaved rounds after one warm-up call; "
          f"ratios of the minima to the yardstick's)")
    print(table(["light", "fwd ms min / median", "fwd+bwd ms min / median", "CPU ms fwd / fwd+bwd",
                 "÷ yardstick (wall)", "÷ yardstick (CPU)", "compile s"], rows))

if __name__ == "__main__":
    main()

"""Rasterizer benchmark: rasterize + interpolate + antialias, forward and forward+backward."""
import math

import torch

from taichi_dr.bench import table, timed, timed_stats

__all__ = ["main", "uv_sphere"]


def uv_sphere(n_tris: int):
    """A UV sphere with about ``n_tris`` triangles: (verts [V, 3], faces [F, 3] int32)."""
    nu = max(4, int(math.sqrt(n_tris / 2)))
    nv = max(3, n_tris // (2 * nu) + 1)
    th = torch.linspace(0, math.pi, nv)
    ph = torch.linspace(0, 2 * math.pi, nu + 1)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    v = torch.stack([T.sin() * P.cos(), T.cos(), T.sin() * P.sin()], -1).reshape(-1, 3)
    i, j = torch.arange(nv - 1)[:, None] * nu, torch.arange(nu)[None]
    a, b = i + j, i + (j + 1) % nu
    f = torch.cat([torch.stack([a, b, a + nu], -1).reshape(-1, 3), torch.stack([b, b + nu, a + nu], -1).reshape(-1, 3)])
    return v, f.int()


def _device() -> str:
    from taichi_dr.runtime import torch_device_for_arch

    return torch_device_for_arch()


def _pipeline(n_tris: int, res: int):
    from taichi_dr import antialias, antialias_construct_topology_hash, interpolate, rasterize

    v, f = uv_sphere(n_tris)
    pos = torch.cat([v * 0.9, torch.ones(v.shape[0], 1) * 1.0], 1)
    pos[:, 2] *= 0.5
    dev = _device()
    pos, v, f = pos[None].contiguous().to(dev), v.to(dev), f.to(dev)
    col = (v * 0.5 + 0.5).contiguous()
    topo = antialias_construct_topology_hash(f)

    def fwd(p=pos):
        rast, _ = rasterize(p, f, (res, res), grad_db=False)
        img, _ = interpolate(col, rast, f)
        return antialias(img, rast, p, f, topology_hash=topo)

    def fwd_bwd():
        p = pos.clone().requires_grad_(True)
        fwd(p).sum().backward()

    return f.shape[0], fwd, fwd_bwd


def _raster_only(n_tris: int, res: int):
    from taichi_dr import rasterize

    v, f = uv_sphere(n_tris)
    pos = torch.cat([v * 0.9, torch.ones(v.shape[0], 1)], 1)
    pos[:, 2] *= 0.5
    pos, f = pos[None].contiguous().to(_device()), f.to(_device())

    def fwd():
        return rasterize(pos, f, (res, res), grad_db=False)

    def fwd_bwd():
        p = pos.clone().requires_grad_(True)
        rast, db = rasterize(p, f, (res, res))
        (rast[..., :2].sum() + db.sum()).backward()

    return f.shape[0], fwd, fwd_bwd


def _host_speed() -> float:
    """Median ms of a fixed single-thread torch workload (a 512×512 matmul): a yardstick for
    comparing runs, since this VM's speed drifts by ±40 % with its neighbours' load."""
    a, b = torch.rand(512, 512), torch.rand(512, 512)
    return timed_stats(lambda: a @ b, 21)[2] * 1e3


def main(quick: bool = False) -> None:
    import os

    # One torch thread: the Taichi kernels run their own thread pool, and on a shared 2-core box
    # torch's OpenMP workers spin-wait, turning 10 µs tensor ops into 10 ms ones.
    torch.set_num_threads(1)
    reps = 3 if quick else 5
    print(f"CPU load average before start: {os.getloadavg()[0]:.1f} (2 cores; timings scale with it)")
    print(f"host speed yardstick: 512² torch matmul {_host_speed():.2f} ms (3.0 ms when this project's VM was quiet)")
    from taichi_dr.runtime import ensure_init

    arch = ensure_init()
    print(f"80k-triangle sphere at 512x512 ({arch}), median / min of 21 calls after one warm-up call")
    rows = []
    for build, name in ((_raster_only, "rasterize"), (_pipeline, "rast+interp+AA")):
        n, fwd, fb = build(80_000, 512)
        c1, m1, t1 = timed_stats(fwd, 21)
        c2, m2, t2 = timed_stats(fb, 21)
        rows.append([name, n, 512, f"{t1 * 1e3:.1f} / {m1 * 1e3:.1f}", f"{t2 * 1e3:.1f} / {m2 * 1e3:.1f}",
                     f"{c1:.2f}", f"{c2:.2f}"])
    print(table(["ops", "triangles", "res", "forward ms", "fwd+bwd ms", "compile fwd s", "compile fwd+bwd s"], rows))
    build, what = _pipeline, "rasterize + interpolate + antialias"
    sizes = [1_000, 10_000, 100_000] + ([] if quick else [1_000_000])
    resolutions = [256, 512] + ([] if quick else [1024, 2048])
    rows = []
    for tris in sizes:
        for res in resolutions:
            n, fwd, fb = build(tris, res)
            _, t1 = timed(fwd, reps)
            _, t2 = timed(fb, reps)
            rows.append([n, res, f"{t1 * 1e3:.1f}", f"{t2 * 1e3:.1f}"])
    print(f"\nscaling, {what} (median ms)")
    print(table(["triangles", "res", "forward ms", "fwd+bwd ms"], rows))


if __name__ == "__main__":
    main()

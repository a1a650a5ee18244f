"""rasterize -> interpolate -> antialias together: forward references, adjoints on meshes, bad input.

rasterize() alone is tested in test_rasterize.py; the float64 finite-difference checks of every op
live once, in taichi_dr/gradcheck/, and run from test_gradcheck.py.
"""
import math

import pytest
import torch

from taichi_dr import antialias, antialias_construct_topology_hash, interpolate, rasterize

TRI = torch.tensor([[0, 1, 2]], dtype=torch.int32)


def classic(dtype=torch.float32):
    return torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [-0.8, 0.8, 0, 1]]], dtype=dtype)


def pixel_centres(H, W, dtype=torch.float64):
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return ((2 * xs + 1) / W - 1).to(dtype), ((2 * ys + 1) / H - 1).to(dtype)


def perspective(fovy=1.0, aspect=1.0, n=0.1, f=100.0):
    t = math.tan(fovy / 2)
    return torch.tensor([[1 / (t * aspect), 0, 0, 0], [0, 1 / t, 0, 0],
                         [0, 0, -(f + n) / (f - n), -2 * f * n / (f - n)], [0, 0, -1, 0]], dtype=torch.float64)


# ---------------------------------------------------------------- forward references

def test_classic_triangle_interpolated_colours_match_nvdiffrast():
    # coverage and barycentrics of this triangle: test_rasterize.py; here the interpolated image
    rast, _ = rasterize(classic(), TRI, (256, 256))
    img, _ = interpolate(torch.eye(3), rast, TRI)
    sums = torch.round(img[0] * 255).sum((0, 1))
    assert sums.tolist() == [1761561.0, 1759209.0, 1759209.0]  # channel sums of tri.png
    assert torch.round(img[0, 26, 26] * 255).tolist() == [253.0, 1.0, 1.0]


def test_ground_plane_behind_camera_is_clipped_not_dropped():
    P = perspective()
    v = torch.tensor([[-50, -1, 50, 1], [50, -1, 50, 1], [50, -1, -50, 1], [-50, -1, -50, 1]], dtype=torch.float64)
    clip = (v @ P.T)[None]
    quad = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    r, _ = rasterize(clip, quad, (64, 64))
    cov = r[0, ..., 3] > 0
    # horizon of the plane y = -1 seen from the origin: the far edge at z = -50 projects to
    # NDC y = -1 / (50 tan(0.5)) -> pixel row 30.8: rows 0..30 fully covered, rows above empty
    assert bool(cov[:31].all()) and not bool(cov[31:].any())
    # barycentrics refer to the original (unclipped) vertices and reproduce the world position
    wpos, _ = interpolate(v[None, :, :3].contiguous(), r, quad)
    assert torch.allclose(wpos[0, ..., 1][cov], torch.tensor(-1.0, dtype=torch.float64), atol=1e-9)
    X, Y = pixel_centres(64, 64)
    # a point on the plane seen through pixel (X, Y): ray direction (X tan, Y tan, -1)
    t = math.tan(0.5)
    z = 1 / (Y * t)  # y = Y·t·s = -1 along the ray s·(X t, Y t, -1)
    assert torch.allclose(wpos[0, ..., 2][cov], z[cov], rtol=1e-6)


def test_interpolate_derivatives_match_finite_differences_in_screen_space():
    pos = torch.tensor([[[-0.7, -0.6, 0.1, 1.2], [0.8, -0.7, 0.3, 0.9], [-0.6, 0.75, -0.2, 1.1]]], dtype=torch.float64)
    attr = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    r, db = rasterize(pos, TRI, (32, 32))
    out, da = interpolate(attr, r, TRI, db, diff_attrs="all")
    # along X, two covered neighbours: central difference of out approximates dA/dX
    inner = (r[0, :, :-2, 3] > 0) & (r[0, :, 1:-1, 3] > 0) & (r[0, :, 2:, 3] > 0)
    fd = (out[0, :, 2:, 0] - out[0, :, :-2, 0]) / 2
    assert torch.allclose(fd[inner], da[0, :, 1:-1, 0][inner], rtol=0.05, atol=1e-3)


def test_antialias_coverage_sum_equals_area_and_leaves_interiors_alone():
    pos = torch.tensor([[[-0.63, -0.58, 0.1, 1.2], [0.71, -0.67, 0.3, 0.9], [-0.52, 0.66, -0.2, 1.1]]], dtype=torch.float64)
    r, _ = rasterize(pos, TRI, (64, 64))
    ones = (r[..., 3:] > 0).double()
    aa = antialias(ones, r, pos, TRI)
    xy = pos[0, :, :2] / pos[0, :, 3:] * 32
    area = 0.5 * abs(float((xy[1, 0] - xy[0, 0]) * (xy[2, 1] - xy[0, 1]) - (xy[2, 0] - xy[0, 0]) * (xy[1, 1] - xy[0, 1])))
    assert abs(float(aa.sum()) - area) < 0.01 * area
    # a constant colour over a closed two-triangle quad has no visible silhouette inside
    quad = torch.tensor([[[-0.5, -0.5, 0, 1], [0.5, -0.5, 0, 1], [0.5, 0.5, 0, 1], [-0.5, 0.5, 0, 1]]], dtype=torch.float64)
    qt = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    rq, _ = rasterize(quad, qt, (16, 16))
    col = torch.full((1, 16, 16, 1), 0.5, dtype=torch.float64)
    assert torch.equal(antialias(col, rq, quad, qt), col)


def test_antialias_gives_the_silhouette_gradient():
    # growing the triangle about its centroid grows the (antialiased) coverage by ~2x its area
    pos = torch.tensor([[[-0.63, -0.58, 0.1, 1.0], [0.71, -0.67, 0.3, 1.0], [-0.52, 0.66, -0.2, 1.0]]], dtype=torch.float64)

    def coverage(p):
        r, _ = rasterize(p, TRI, (96, 96))
        return antialias((r[..., 3:] > 0).double(), r, p, TRI).sum()

    p = pos.clone().requires_grad_(True)
    c = coverage(p)
    c.backward()
    c = c.detach()
    grow = torch.zeros_like(pos)
    grow[..., :2] = pos[..., :2] - pos[..., :2].mean(1, keepdim=True)
    analytic = float((p.grad * grow).sum())
    assert abs(analytic - 2 * float(c)) < 0.03 * 2 * float(c)  # d(area)/d(scale) = 2·area
    # without antialias the same coverage has no gradient at all (visibility is piecewise constant)
    q = pos.clone().requires_grad_(True)
    r, _ = rasterize(q, TRI, (96, 96))
    assert not (r[..., 3:] > 0).double().requires_grad


# ---------------------------------------------------------------- topology

QUAD = torch.tensor([[0, 1, 2], [1, 3, 2]], dtype=torch.int32)


def test_topology_hash_wings():
    th = antialias_construct_topology_hash(QUAD)
    # triangle 0 = (0, 1, 2): its edge opposite vertex 0 is (1, 2), shared with triangle 1 whose
    # third vertex is 3; triangle 1 = (1, 3, 2): edge opposite vertex 1 is (2, 1) -> wing 0
    assert th.wing.tolist() == [[3, -1, -1], [-1, 0, -1]]


def test_topology_hash_is_cached_per_tri_and_checked_when_passed(monkeypatch):
    from taichi_dr.bench.raster import uv_sphere
    from taichi_dr.render import antialias as aa_mod

    v, f = uv_sphere(300)
    pos = torch.cat([v * 0.8, torch.ones(v.shape[0], 1)], 1)[None].contiguous()
    rast, _ = rasterize(pos, f, (24, 24), grad_db=False)
    col, _ = interpolate((v * 0.5 + 0.5).contiguous(), rast, f)
    builds = []
    real_build = aa_mod.antialias_construct_topology_hash
    monkeypatch.setattr(aa_mod, "antialias_construct_topology_hash", lambda t: builds.append(1) or real_build(t))
    ref = antialias(col, rast, pos, f, topology_hash=real_build(f))
    for _ in range(3):  # same tensor: built once
        torch.testing.assert_close(antialias(col, rast, pos, f), ref, rtol=0, atol=0)
    assert len(builds) == 1
    antialias(col, rast, pos, f.clone())  # equal content in another tensor: the cached table, after a compare
    assert len(builds) == 1
    f2 = f.clone()
    f2[0] = f2[0].flip(0)  # other triangles of the same shape
    antialias(col, rast, pos, f2)
    assert len(builds) == 2
    f2.copy_(f)  # modified in place (version counter): checked again, the content is f's again
    antialias(col, rast, pos, f2)
    assert len(builds) == 2
    with pytest.raises(ValueError, match="topology_hash: expected a TopologyHash built for this tri"):
        antialias(col, rast, pos, f, topology_hash=real_build(f2.flip(1)))


# ---------------------------------------------------------------- bad input

def test_interpolate_and_antialias_bad_input():
    r, db = rasterize(classic(), TRI, (8, 8))
    with pytest.raises(ValueError, match=r"tri: expected indices in \[0, 2\)"):
        interpolate(torch.zeros(2, 3), r, TRI)  # 2 attribute rows for 3 vertices
    with pytest.raises(ValueError, match="rast_db: required"):
        interpolate(torch.zeros(3, 2), r, TRI, diff_attrs="all")
    with pytest.raises(ValueError, match="diff_attrs"):
        interpolate(torch.zeros(3, 2), r, TRI, db, diff_attrs=[5])
    with pytest.raises(ValueError, match=r"rast: expected shape \[N, H, W, 4\]"):
        interpolate(torch.zeros(3, 2), r[..., :3], TRI)
    with pytest.raises(ValueError, match="rast: expected shape"):
        antialias(torch.zeros(1, 4, 4, 3), r, classic(), TRI)
    with pytest.raises(TypeError, match="color: expected a torch.Tensor"):
        antialias(None, r, classic(), TRI)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpolate_and_antialias_reject_bad_rast_values(dtype):
    """A rast that did not come from rasterize: ids beyond the triangle count, negative or NaN
    ids, NaN/Inf u, v -> ValueError naming rast (never an out-of-bounds read)."""
    pos = classic().to(dtype)
    r, _ = rasterize(pos, TRI, (8, 8))
    attr, color = torch.ones(3, 2, dtype=dtype), torch.ones(1, 8, 8, 3, dtype=dtype)
    cases = [(3, 5.0, r"rast: expected triangle ids \(channel 3\) in \[0, 1\]"),
             (3, -2.0, "rast: expected triangle ids"), (3, float("nan"), "rast: expected triangle ids"),
             (3, 1e9, "rast: expected triangle ids"), (0, float("nan"), "rast.*expected finite"),
             (1, float("inf"), "rast.*expected finite")]
    for ch, val, match in cases:
        bad = r.clone()
        bad[0, 3, 4, ch] = val
        with pytest.raises(ValueError, match=match):
            interpolate(attr, bad, TRI)
        if ch == 3:  # antialias reads only the ids of rast
            with pytest.raises(ValueError, match=match):
                antialias(color, bad, pos, TRI)
    # the valid rast still works, and background (id 0) is fine
    out, _ = interpolate(attr, r, TRI)
    assert out.shape == (1, 8, 8, 2) and bool(out.isfinite().all())


def _disc(n=256, r=0.37, c=(0.03, -0.05)):
    """A fan of n triangles around c in clip space (w = 1): a disc of radius r, seen face on."""
    t = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    rim = torch.stack([c[0] + r * torch.cos(t), c[1] + r * torch.sin(t), torch.zeros(n, dtype=torch.float64)], 1)
    v = torch.cat([torch.tensor([[c[0], c[1], 0.0]], dtype=torch.float64), rim])
    i = torch.arange(n)
    f = torch.stack([torch.zeros(n, dtype=torch.long), 1 + i, 1 + (i + 1) % n], 1).int()
    return v, f


def test_supersampled_coverage_converges_to_the_pixel_area():
    # a path tracer's box-filtered pixel is the covered fraction of its area; one antialiased
    # sample per pixel only approximates that on a curved outline, k×k samples box-filtered
    # converge to it (reference: 64×64 point samples per pixel of the true disc)
    from taichi_dr.render.pipeline import SimpleLight, render_mesh_views

    H = W = 24
    r, c = 0.37, (0.03, -0.05)
    v, f = _disc(r=r, c=c)
    s = (torch.arange(H * 64, dtype=torch.float64) + 0.5) / (H * 64) * 2 - 1
    X, Y = torch.meshgrid(s, s, indexing="xy")  # rows bottom-up, like the renders
    ref = (((X - c[0]) ** 2 + (Y - c[1]) ** 2) < r * r).to(torch.float64).view(H, 64, W, 64).mean((1, 3))
    err = {}
    for k in (1, 2, 4):
        cov = render_mesh_views(v, f, torch.ones_like(v), torch.eye(4, dtype=torch.float64)[None],
                                torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64), (H, W),
                                SimpleLight.default(), supersample=k)[0, ..., 3]
        err[k] = float((cov - ref).abs().mean())
        assert abs(float(cov.sum()) - float(ref.sum())) < 0.02 * float(ref.sum())  # the disc's area
        assert bool((cov[ref == 0] == 0).all()) and bool((cov[ref == 1] == 1).all())  # nothing bleeds
    assert err[2] < 0.5 * err[1] and err[4] < 0.2 * err[1], err  # measured 0.0072, 0.0026, 0.0010


def test_supersample_rejects_bad_factors():
    from taichi_dr.render.pipeline import SimpleLight, render_mesh_views

    v, f = _disc(n=8)
    args = (v, f, torch.ones_like(v), torch.eye(4, dtype=torch.float64)[None],
            torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64), (8, 8), SimpleLight.default())
    with pytest.raises(ValueError, match="supersample: expected an int >= 1, got 0"):
        render_mesh_views(*args, supersample=0)
    with pytest.raises(TypeError, match="supersample: expected an int >= 1, got float"):
        render_mesh_views(*args, supersample=2.0)


def test_empty_mesh_and_odd_resolutions():
    r, db = rasterize(classic(), torch.zeros(0, 3, dtype=torch.int32), (5, 3))
    assert r.shape == (1, 5, 3, 4) and not bool(r.any())
    r, _ = rasterize(classic(), TRI, (1, 1000))
    assert r.shape == (1, 1, 1000, 4) and bool((r[..., 3] > 0).any())


# ---------------------------------------------------------------- hand-written adjoints on meshes
# The backward kernels sum runs of pixels of one triangle in registers before their atomic
# scatter, and pick a kernel by channel count: check those paths against exact references.

def _grid_mesh(n=6, batch=2, seed=0):
    """A jittered n×n-quad grid in front of the camera: many triangles, shared vertices, runs."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-0.9, 0.9, n + 1), torch.linspace(-0.9, 0.9, n + 1), indexing="ij")
    xy = torch.stack([xs, ys], -1).reshape(-1, 2).double()
    idx = torch.arange((n + 1) * (n + 1)).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    tri = torch.cat([torch.stack([a, b, d], 1), torch.stack([a, d, c], 1)]).int()
    pos = []
    for _ in range(batch):
        j = xy + 0.02 * torch.randn(xy.shape, generator=g, dtype=torch.float64)
        w = 1.0 + 0.3 * torch.rand(xy.shape[0], 1, generator=g, dtype=torch.float64)
        z = 0.2 * torch.rand(xy.shape[0], 1, generator=g, dtype=torch.float64)
        pos.append(torch.cat([j * w, z * w, w], 1))
    return torch.stack(pos), tri


@pytest.mark.parametrize("channels", [3, 11])
def test_interpolate_adjoint_matches_autograd_of_the_formula(channels):
    pos, tri = _grid_mesh()
    rast, _ = rasterize(pos, tri, (37, 45))
    g = torch.Generator().manual_seed(1)
    attr = torch.randn(2, pos.shape[1], channels, dtype=torch.float64, generator=g).requires_grad_()
    uv = rast[..., :2].clone().requires_grad_()
    out, _ = interpolate(attr, torch.cat([uv, rast[..., 2:]], -1), tri)
    w_out = torch.randn(out.shape, dtype=torch.float64, generator=g)
    ga, guv = torch.autograd.grad((out * w_out).sum(), (attr, uv))
    # reference: the same formula in plain torch (batched attributes, background masked)
    ids = rast[..., 3].long() - 1
    fg = ids >= 0
    corner = tri.long()[ids.clamp(min=0)]  # [N, H, W, 3]
    a_ref = attr.detach().clone().requires_grad_()
    uv_ref = uv.detach().clone().requires_grad_()
    n_idx = torch.arange(2).view(2, 1, 1, 1).expand_as(corner)
    A = a_ref[n_idx, corner]  # [N, H, W, 3, C]
    w = torch.stack([uv_ref[..., 0], uv_ref[..., 1], 1 - uv_ref[..., 0] - uv_ref[..., 1]], -1)
    ref = ((w[..., None] * A).sum(-2)) * fg[..., None]
    ga_ref, guv_ref = torch.autograd.grad((ref * w_out).sum(), (a_ref, uv_ref))
    assert torch.allclose(out, ref.detach(), atol=1e-12)
    assert torch.allclose(ga, ga_ref, atol=1e-10)
    assert torch.allclose(guv * fg[..., None], guv_ref, atol=1e-10)


def test_rasterize_hand_written_adjoint_matches_flat_autodiff_on_a_mesh():
    # grad_db=False uses resolve_bwd (hand-written, run-summed); a loss on rast_db with
    # grad_db=True uses Taichi's autodiff of resolve_flat. With a zero weight on rast_db both must
    # give the same gradient w.r.t. pos.
    pos, tri = _grid_mesh(batch=1)
    g = torch.Generator().manual_seed(2)
    w_uv = torch.randn(1, 37, 45, 2, dtype=torch.float64, generator=g)
    grads = []
    for grad_db in (False, True):
        p = pos.clone().requires_grad_()
        rast, db = rasterize(p, tri, (37, 45), grad_db=grad_db)
        loss = (rast[..., :2] * w_uv).sum() + (0.0 * db.sum() if grad_db else 0.0)
        grads.append(torch.autograd.grad(loss, p)[0])
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_gradcheck_antialias_batched_mesh_silhouettes():
    pos, tri = _grid_mesh(n=3, batch=2)
    rast, _ = rasterize(pos, tri, (12, 14))
    color = torch.rand(2, 12, 14, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    topo = antialias_construct_topology_hash(tri)
    f = lambda c, p: antialias(c, rast, p, tri, topology_hash=topo)
    assert torch.autograd.gradcheck(f, (color.requires_grad_(), pos.clone().requires_grad_()), eps=1e-7, atol=1e-6)


def _compiled_kernel_count():
    """Number of compiled Taichi kernel instances behind rasterize / interpolate / antialias
    (introspects Taichi's per-kernel cache, ``kernel._primal.compiled_kernels``)."""
    import taichi as ti

    from taichi_dr.render import antialias as aa_mod, interpolate as interp_mod, rasterize as rast_mod

    kernels = [k for mod in (rast_mod, interp_mod, aa_mod) for k in vars(mod._kernels(ti.f32)).values()]
    return sum(len(k._primal.compiled_kernels) for k in kernels)


def test_no_recompilation_for_new_shapes_or_resolutions():
    """Shapes and resolutions are run-time values of the kernels: after a first pass (forward and
    backward), other image sizes, triangle counts and batch sizes reuse the compiled kernels."""
    from taichi_dr.bench.raster import uv_sphere

    def step(n_tris, H, W, N):
        v, f = uv_sphere(n_tris)
        pos = torch.cat([v * 0.8, torch.ones(v.shape[0], 1)], 1).expand(N, -1, -1).contiguous()
        pos.requires_grad_(True)
        rast, _ = rasterize(pos, f, (H, W), grad_db=False)
        col, _ = interpolate((v * 0.5 + 0.5).contiguous(), rast, f)
        antialias(col, rast, pos, f).sum().backward()

    step(200, 32, 32, 1)  # compiles what this pipeline needs (if no earlier test did) ...
    step(8, 64, 64, 1)  # ... including the tile jobs of large triangles
    before = _compiled_kernel_count()
    for n_tris, H, W, N in [(200, 32, 32, 1), (2000, 48, 80, 1), (50, 17, 9, 2), (8, 300, 200, 1),
                            (5000, 128, 128, 1)]:
        step(n_tris, H, W, N)
    assert _compiled_kernel_count() == before
    assert before >= 6  # setup, resolve, expand, coverage, interp, AA forward (+ backward kernels)


@pytest.mark.parametrize("k", [1, 2])
def test_render_returns_the_albedo_image(k):
    # albedo=True returns the same render plus kd × covered share and the share (no antialiasing)
    from taichi_dr.render.pipeline import SimpleLight, render_mesh_views

    v, f = _disc(r=0.5, c=(0.1, 0.0))
    kd = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64).expand_as(v).contiguous()
    args = (v, f, kd, torch.eye(4, dtype=torch.float64)[None], torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64),
            (16, 16), SimpleLight.default())
    img = render_mesh_views(*args, supersample=k)
    img2, alb = render_mesh_views(*args, supersample=k, albedo=True)
    assert torch.equal(img, img2) and alb.shape == (1, 16, 16, 4)
    share = alb[..., 3]
    assert bool(((share * k * k) == (share * k * k).round()).all())  # counts of covered samples
    assert float(share.sum()) == pytest.approx(math.pi * 0.25 * 64, rel=0.06)  # the disc's area: 50.3 px
    inside = share > 0
    assert torch.allclose(alb[..., :3][inside] / share[inside, None], kd[:1].expand(int(inside.sum()), 3))
    assert bool((alb[~inside] == 0).all())
    # a material callable: its kd channels, per pixel
    _, alb_f = render_mesh_views(v, f, lambda p: torch.cat([p[:, :1] * 0 + 0.25, p[:, :2] * 0 + 0.5], 1), *args[3:],
                                 supersample=k, albedo=True)
    assert torch.allclose(alb_f[..., 0], 0.25 * alb_f[..., 3]) and torch.allclose(alb_f[..., 2], 0.5 * alb_f[..., 3])
    # an empty mesh: nothing covered
    _, alb_e = render_mesh_views(v, f[:0], kd, *args[3:], supersample=k, albedo=True)
    assert alb_e.shape == (1, 16, 16, 4) and not bool(alb_e.any())

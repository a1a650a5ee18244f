"""rasterize(): forward against analytic cases and a slow pure-torch reference; gradients by FD."""
import math

import pytest
import torch

from reference_raster import reference_rasterize
from taichi_dr import rasterize


def _random_mesh(seed, T=14, V=20, N=2, dtype=torch.float64, near_crossing=True):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(N, V, 2, generator=g, dtype=dtype) * 2.4 - 1.2
    w = torch.rand(N, V, 1, generator=g, dtype=dtype) * 1.5 + 0.5
    zn = torch.rand(N, V, 1, generator=g, dtype=dtype) * 1.6 - 0.8  # z/w
    if near_crossing:  # a few vertices behind the near plane (z/w < -1) -> clipped triangles
        zn[:, : V // 5] = -1.5
    pos = torch.cat([xy * w, zn * w, w], -1)
    tri = torch.randint(0, V, (T, 3), generator=g, dtype=torch.int32)
    tri = tri[(tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])]
    return pos, tri


# ----------------------------------------------------------------------------- primal (forward)
def test_classic_triangle_golden_count_and_analytic_barycentrics():
    pos = torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [-0.8, 0.8, 0, 1]]], dtype=torch.float64)
    rast, db = rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (256, 256))
    cov = rast[0, ..., 3] > 0
    assert int(cov.sum()) == 20706  # nvdiffrast's tri.png; hypotenuse centres excluded
    X = (2 * torch.arange(256, dtype=torch.float64) + 1) / 256 - 1
    Xg, Yg = X[None, :].expand(256, 256), X[:, None].expand(256, 256)
    v_an, w2 = (Xg + 0.8) / 1.6, (Yg + 0.8) / 1.6  # weight of vertex 1 and vertex 2
    u_an = 1 - v_an - w2
    inside = (u_an >= 0) & (v_an >= 0) & (w2 >= 0) & (u_an > 1e-12)
    assert torch.equal(cov, inside)
    torch.testing.assert_close(rast[0, ..., 0][cov], u_an[cov], atol=1e-12, rtol=0)
    torch.testing.assert_close(rast[0, ..., 1][cov], v_an[cov], atol=1e-12, rtol=0)
    # du/dX = -1/(1.6 * 128), dv/dX = +1/(1.6 * 128), du/dY = -1/(1.6*128), dv/dY = 0
    s = 1 / (1.6 * 128)
    torch.testing.assert_close(db[0][cov], torch.tensor([-s, -s, s, 0.0], dtype=torch.float64).expand(int(cov.sum()), 4))


@pytest.mark.parametrize("H,W", [(8, 8), (9, 7), (64, 64), (33, 17)])
def test_quad_diagonal_covered_exactly_once(H, W):
    # the diagonal y = x passes through pixel centres whenever H == W
    pos = torch.tensor([[[-1, -1, 0, 1], [1, -1, 0, 1], [1, 1, 0, 1], [-1, 1, 0, 1]]], dtype=torch.float32)
    for tri in ([[0, 1, 2], [0, 2, 3]], [[0, 1, 2], [2, 3, 0]], [[2, 1, 0], [3, 2, 0]]):  # both windings
        ids = rasterize(pos, torch.tensor(tri, dtype=torch.int32), (H, W))[0][0, ..., 3]
        assert bool((ids > 0).all()), "crack: some pixel centre covered by neither triangle"
        # double coverage would show with a per-triangle count: rasterize each alone
        n0 = int((rasterize(pos, torch.tensor(tri[:1], dtype=torch.int32), (H, W))[0][..., 3] > 0).sum())
        n1 = int((rasterize(pos, torch.tensor(tri[1:], dtype=torch.int32), (H, W))[0][..., 3] > 0).sum())
        assert n0 + n1 == H * W


def test_fan_around_shared_vertex_on_pixel_centre():
    # 8 triangles around a centre vertex sitting exactly on a pixel centre; no pixel twice/none
    import math

    H = W = 16
    c = [(2 * 8 + 1) / W - 1, (2 * 8 + 1) / H - 1]
    ring = [[c[0] + 0.9 * math.cos(k * math.pi / 4), c[1] + 0.9 * math.sin(k * math.pi / 4)] for k in range(8)]
    pos = torch.tensor([[[*c, 0, 1]] + [[x, y, 0, 1] for x, y in ring]], dtype=torch.float32)
    tris = [[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)]
    total = sum(int((rasterize(pos, torch.tensor([t], dtype=torch.int32), (H, W))[0][..., 3] > 0).sum()) for t in tris)
    union = int((rasterize(pos, torch.tensor(tris, dtype=torch.int32), (H, W))[0][..., 3] > 0).sum())
    assert total == union


def test_depth_order_both_ways():
    a = [[-0.9, -0.9, 0.2, 1], [0.9, -0.9, 0.2, 1], [0, 0.9, 0.2, 1]]
    b = [[-0.9, 0.9, -0.3, 1], [0.9, 0.9, -0.3, 1], [0, -0.9, -0.3, 1]]
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    for order, near in ((a + b, 2), (b + a, 1)):
        rast = rasterize(torch.tensor([order], dtype=torch.float32), tri, (32, 32))[0]
        both = rast[0, 16, 16]
        assert int(both[3]) == near
        assert abs(float(both[2]) + 0.3) < 1e-6


def test_equal_depth_tie_goes_to_smaller_id():
    p = [[-0.9, -0.9, 0.1, 1], [0.9, -0.9, 0.1, 1], [0, 0.9, 0.1, 1]]
    rast = rasterize(torch.tensor([p + p]), torch.tensor([[3, 4, 5], [0, 1, 2]], dtype=torch.int32), (16, 16))[0]
    ids = rast[..., 3][rast[..., 3] > 0]
    assert bool((ids == 1).all())


def _scattered_fillers(n, start):
    """n degenerate triangles (vertex ids from ``start``) along rows of pixel centres near two
    opposite corners of a 32×32 image, alternating: small and on screen but covering nothing, they
    make the mesh order jump around the screen, so that rasterize bins the small triangles by tile
    and draws the front faces, then the back faces behind the early depth test."""
    pos, tri = [], []
    for i in range(n):
        s = 1.0 if i % 2 else -1.0
        y = s * 27 / 32  # a row of pixel centres (2 and 29), exactly
        tri.append([start + len(pos), start + len(pos) + 1, start + len(pos) + 2])
        pos += [[s * 0.95, y, 0.5, 1], [s * 0.85, y, 0.5, 1], [s * 0.75, y, 0.5, 1]]
    return pos, tri


def test_back_face_behind_the_early_depth_test_wins_only_when_nearer():
    # The quad (counter-clockwise, ids 1 and 2) is drawn with the front faces, the clockwise
    # back face (id 3) after them, behind the early depth test. A hair nearer (2e-6 in z/w,
    # inside the test's rounding margin, ~17 float32 steps of the key) it must win; at the same
    # depth it loses the tie to the quad's smaller ids, and farther it loses.
    quad = [[-0.4, -0.4, 0.5, 1], [0.4, -0.4, 0.5, 1], [0.4, 0.4, 0.5, 1], [-0.4, 0.4, 0.5, 1]]  # 12×12 pixels
    fill_pos, fill_tri = _scattered_fillers(400, 7)
    for dz, back_wins in ((-2e-6, True), (0.0, False), (2e-6, False)):
        cw = [[-0.3, 0.3, 0.5 + dz, 1], [0.3, 0.0, 0.5 + dz, 1], [-0.3, -0.3, 0.5 + dz, 1]]
        pos = torch.tensor([quad + cw + fill_pos], dtype=torch.float32)
        tri = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]] + fill_tri, dtype=torch.int32)
        rast = rasterize(pos, tri, (32, 32))[0]
        alone = int((rasterize(pos, tri[2:3], (32, 32))[0][..., 3] > 0).sum())  # the back face's pixels
        assert alone > 20
        assert int(rast[0, 16, 14, 3]) == (3 if back_wins else 2)  # inside the back face and quad half (0, 2, 3)
        assert int((rast[..., 3] == 3).sum()) == (alone if back_wins else 0)
        assert int((rast[..., 3] > 0).sum()) == 12 * 12  # the quad's pixel centres, each covered once


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_closed_mesh_either_winding_and_order_matches_reference(flip, shuffle):
    # a closed mesh in mesh order (drawn as it comes) and shuffled (binned by tile, the faces
    # turned away drawn last behind the early depth test), wound either way: the visibility
    # must be the reference's exactly
    from taichi_dr.bench.raster import uv_sphere

    v, f = uv_sphere(600)
    f = f[:, [0, 2, 1]] if flip else f
    f = f[torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(0))] if shuffle else f
    ang = torch.tensor(0.4)
    rot = torch.tensor([[1, 0, 0], [0, torch.cos(ang), -torch.sin(ang)], [0, torch.sin(ang), torch.cos(ang)]])
    p = (v @ rot.T).double()
    w = 2.5 - p[:, 2:]  # eye at z = 2.5 looking down -z: w = distance along the view axis
    pos = torch.cat([p[:, :2] * 1.2, (w - 1.0) / 2.0, w], 1)[None].contiguous()  # z/w in (-1, 1)
    rast, _ = rasterize(pos, f, (40, 48))
    ref, _, safe = reference_rasterize(pos, f, (40, 48))
    assert safe.float().mean() > 0.95 and (ref[..., 3] > 0).sum() > 400
    assert torch.equal(rast[..., 3][safe], ref[..., 3][safe])
    # range mode (explicit (image, triangle) work lists) takes the same paths
    rast_r, _ = rasterize(pos[0], f, (40, 48), ranges=torch.tensor([[0, f.shape[0]]], dtype=torch.int32))
    assert torch.equal(rast_r, rast)


def test_ground_plane_behind_camera_is_clipped_not_dropped():
    # camera at height 1 looking along -z; the plane y = 0 extends from z = +50 (behind) to -50
    n, f, c = 0.1, 100.0, 1 / math.tan(math.radians(30))  # gluPerspective, fovy 60 deg
    proj = torch.tensor([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, -(f + n) / (f - n), -2 * f * n / (f - n)],
                         [0, 0, -1, 0]], dtype=torch.float64)
    verts = torch.tensor([[-50, -1, 50], [50, -1, 50], [50, -1, -50], [-50, -1, -50]], dtype=torch.float64)
    clip = torch.cat([verts, torch.ones(4, 1, dtype=torch.float64)], 1) @ proj.T
    assert bool((clip[:2, 3] < 0).all())  # two vertices really are behind the camera
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    rast = rasterize(clip[None].contiguous(), tri, (32, 32))[0]
    ref, _, safe = reference_rasterize(clip[None], tri, (32, 32))
    cov = rast[0, ..., 3] > 0
    assert bool(cov[:12].all()) and not bool(cov[20:].any())  # bottom half = ground, top = sky
    s = safe[0]
    assert torch.equal(rast[0, ..., 3][s], ref[0, ..., 3][s])
    torch.testing.assert_close(rast[0, ..., :3][s], ref[0, ..., :3][s].detach(), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_meshes_values_and_gradients(seed):
    pos, tri = _random_mesh(seed)
    H, W = 23, 30
    ref, ref_db, safe = reference_rasterize(pos.clone().requires_grad_(True), tri, (H, W))
    p = pos.clone().requires_grad_(True)
    rast, db = rasterize(p, tri, (H, W))
    assert safe.float().mean() > 0.95  # the test is meaningful: nearly all pixels compared
    assert (ref[..., 3] > 0).sum() > 100
    assert torch.equal(rast[..., 3][safe], ref[..., 3].detach()[safe])
    torch.testing.assert_close(rast[..., :3][safe], ref[..., :3].detach()[safe], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(db[safe], ref_db.detach()[safe], atol=1e-9, rtol=1e-8)
    # gradients of the same loss through both rasterizers (only over safe pixels)
    g = torch.Generator().manual_seed(seed + 10)
    c1 = torch.randn(rast[..., :2].shape, generator=g, dtype=torch.float64) * safe[..., None]
    c2 = torch.randn(db.shape, generator=g, dtype=torch.float64) * safe[..., None]
    pr = pos.clone().requires_grad_(True)
    ref2, ref_db2, _ = reference_rasterize(pr, tri, (H, W))
    ((ref2[..., :2] * c1).sum() + (ref_db2 * c2).sum()).backward()
    ((rast[..., :2] * c1).sum() + (db * c2).sum()).backward()
    assert float(pr.grad.abs().max()) > 0
    torch.testing.assert_close(p.grad, pr.grad, atol=1e-8, rtol=1e-7)
    assert bool((p.grad[..., 2] == 0).all())  # z never receives gradient


def test_range_mode_matches_reference_and_instanced():
    pos, tri = _random_mesh(5, T=40, N=1)
    tri = tri[:20]
    assert tri.shape[0] == 20
    ranges = torch.tensor([[0, 7], [7, 13], [3, 10]], dtype=torch.int32)
    rast, db = rasterize(pos[0], tri, (19, 21), ranges=ranges)
    ref, ref_db, safe = reference_rasterize(pos[0], tri, (19, 21), ranges=ranges)
    assert rast.shape == (3, 19, 21, 4)
    assert torch.equal(rast[..., 3][safe], ref[..., 3].detach()[safe])
    torch.testing.assert_close(rast[safe], ref.detach()[safe], atol=1e-10, rtol=1e-9)
    inst = rasterize(pos, tri[7:20], (19, 21))[0]
    ids = inst[0, ..., 3]
    torch.testing.assert_close(rast[1, ..., 3], torch.where(ids > 0, ids + 7, ids))


def test_float32_agrees_with_float64_and_keeps_dtype():
    pos, tri = _random_mesh(3, near_crossing=False)
    r64, d64 = rasterize(pos, tri, (40, 24))
    r32, d32 = rasterize(pos.float(), tri.long(), (40, 24))
    assert r32.dtype == torch.float32 and d32.dtype == torch.float32 and r64.dtype == torch.float64
    same = r32[..., 3] == r64[..., 3].float()
    assert same.float().mean() > 0.99  # only edge/depth near-ties may differ
    m = same & (r64[..., 3] > 0)
    torch.testing.assert_close(r32[..., :3][m].double(), r64[..., :3][m], atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("H,W", [(1, 1), (7, 13), (37, 5), (130, 67)])
def test_odd_resolutions_cover_full_screen_quad(H, W):
    pos = torch.tensor([[[-1, -1, 0.5, 1], [1, -1, 0.5, 1], [1, 1, 0.5, 1], [-1, 1, 0.5, 1]]])
    rast, _ = rasterize(pos, torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32), (H, W))
    assert rast.shape == (1, H, W, 4) and bool((rast[..., 3] > 0).all())
    torch.testing.assert_close(rast[..., 2], torch.full((1, H, W), 0.5))


@pytest.mark.slow
def test_4096_square_image_quad_and_barycentrics():
    """The largest resolution the issue names: a quad covering the screen, split in two, covers
    every pixel of a 4096² image exactly once, with the analytic barycentrics at pixel centres."""
    S = 4096
    pos = torch.tensor([[[-1, -1, 0.5, 1], [1, -1, 0.5, 1], [1, 1, 0.5, 1], [-1, 1, 0.5, 1]]])
    rast, _ = rasterize(pos, torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32), (S, S), grad_db=False)
    ids = rast[0, ..., 3]
    assert bool((ids > 0).all())
    c = (torch.arange(S, dtype=torch.float64) + 0.5) / S * 2 - 1  # pixel centres in NDC
    Y, X = torch.meshgrid(c, c, indexing="ij")
    lower = X > Y  # below the diagonal (0, 2): triangle 1 = (0, 1, 2)
    on_diag = X == Y
    assert bool((ids[lower & ~on_diag] == 1).all()) and bool((ids[~lower & ~on_diag] == 2).all())
    # triangle (0, 1, 2): u = weight of (-1, -1) = (1 - X) / 2, v = weight of (1, -1) = (X - Y) / 2
    m = lower & ~on_diag
    torch.testing.assert_close(rast[0, ..., 0][m].double(), ((1 - X) / 2)[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(rast[0, ..., 1][m].double(), ((X - Y) / 2)[m], atol=1e-5, rtol=0)


def test_big_triangle_outside_depth_range_is_discarded_and_empty_tri_is_background():
    pos = torch.tensor([[[-1, -1, 2.0, 1], [3, -1, 2.0, 1], [-1, 3, 2.0, 1]]])  # z/w = 2 > 1: beyond far
    rast, db = rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (16, 16))
    assert not bool(rast.any()) and not bool(db.any())
    rast, db = rasterize(pos, torch.zeros(0, 3, dtype=torch.int32), (5, 6))
    assert rast.shape == (1, 5, 6, 4) and not bool(rast.any())


def test_large_image_many_triangles_smoke():
    from taichi_dr.bench.raster import uv_sphere

    v, f = uv_sphere(20_000)
    pos = torch.cat([v * 0.8, torch.ones(v.shape[0], 1)], 1)[None]
    pos[..., 2] *= 0.5
    rast, _ = rasterize(pos.contiguous(), f, (1000, 1000), grad_db=False)
    cov = int((rast[..., 3] > 0).sum())
    assert abs(cov - 3.14159 * 400**2) < 0.01 * 3.14159 * 400**2  # disc of radius 0.8 * 500 px


# ----------------------------------------------------------------------------- backward
# finite-difference checks of u, v and rast_db w.r.t. pos: taichi_dr/gradcheck/rasterize.py, run by
# tests/test_gradcheck.py
def test_grad_db_false_keeps_the_forward_and_uv_gradient_and_makes_db_a_constant():
    from taichi_dr.gradcheck.rasterize import two_triangles

    pos, tri = two_triangles()
    g = torch.Generator().manual_seed(3)
    c_uv = torch.randn(1, 5, 6, 2, generator=g, dtype=torch.float64)
    c_db = torch.randn(1, 5, 6, 4, generator=g, dtype=torch.float64)

    def run(grad_db, with_db):
        p = pos.clone().requires_grad_(True)
        rast, db = rasterize(p, tri, (5, 6), grad_db=grad_db)
        loss = (rast[..., :2] * c_uv).sum()
        if with_db:
            loss = loss + (db * c_db).sum()
        if loss.requires_grad:
            loss.backward()
        return rast.detach(), db, p.grad

    r_on, db_on, g_uv_on = run(True, False)
    r_off, db_off, g_uv_off = run(False, False)
    assert torch.equal(r_on, r_off) and torch.equal(db_on.detach(), db_off)  # same forward
    assert db_on.requires_grad and not db_off.requires_grad  # grad_db=False: db is a constant
    torch.testing.assert_close(g_uv_off, g_uv_on)  # ... and the u, v gradient is unchanged
    _, _, g_all = run(True, True)
    assert float((g_all - g_uv_on).abs().max()) > 1e-6  # with grad_db, db's gradient reaches pos


# ----------------------------------------------------------------------------- bad input
_P = torch.zeros(1, 3, 4)
_T = torch.tensor([[0, 1, 2]], dtype=torch.int32)


@pytest.mark.parametrize("kw,err,match", [
    (dict(pos=torch.zeros(3, 3)), ValueError, r"pos: expected shape .*got \[3, 3\]"),
    (dict(pos=torch.zeros(1, 1, 3, 4)), ValueError, "pos: expected shape"),
    (dict(pos=torch.zeros(1, 3, 4, dtype=torch.int32)), TypeError, "pos: expected dtype"),
    (dict(pos=torch.full((1, 3, 4), float("nan"))), ValueError, "pos: expected finite"),
    (dict(pos=torch.full((1, 3, 4), float("inf"))), ValueError, "pos: expected finite"),
    (dict(tri=torch.tensor([[0, 1, 3]], dtype=torch.int32)), ValueError, r"tri: expected indices in \[0, 3\)"),
    (dict(tri=torch.tensor([[0, -1, 2]], dtype=torch.int32)), ValueError, "tri: expected indices"),
    (dict(tri=torch.tensor([[0, 1, 2]], dtype=torch.float32)), TypeError, "tri: expected dtype"),
    (dict(tri=torch.tensor([0, 1, 2], dtype=torch.int32)), ValueError, "tri: expected shape"),
    (dict(resolution=(0, 4)), ValueError, "resolution"),
    (dict(resolution=(4, -2)), ValueError, "resolution"),
    (dict(resolution=4), TypeError, "resolution"),
    (dict(pos=torch.zeros(3, 4)), ValueError, "pos: expected shape"),  # [V, 4] needs ranges
    (dict(pos=torch.zeros(3, 4), ranges=torch.tensor([[0, 2]], dtype=torch.int32)), ValueError, "ranges"),
    (dict(ranges=torch.tensor([[0, 1]], dtype=torch.int32)), ValueError, "pos: expected shape"),
    (dict(pos=torch.zeros(3, 4), ranges=torch.tensor([0, 1], dtype=torch.int32)), ValueError, "ranges: expected shape"),
    (dict(pos=torch.zeros(3, 4), ranges=torch.tensor([[-1, 1]], dtype=torch.int32)), ValueError, "ranges"),
])
def test_bad_input(kw, err, match):
    args = dict(pos=_P, tri=_T, resolution=(4, 4))
    args.update(kw)
    with pytest.raises(err, match=match):
        rasterize(**args)


def test_interpolate_constant_attr_skips_its_scatter_and_keeps_the_other_gradients():
    """A constant attribute (UV coordinates) takes the backward that skips the g_attr scatter: the
    (u, v) and footprint gradients must equal those of the same attribute with requires_grad."""
    from taichi_dr import interpolate

    g = torch.Generator().manual_seed(3)
    pos = torch.cat([torch.rand(12, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8,
                     torch.rand(12, 1, generator=g, dtype=torch.float64) * 0.5, torch.ones(12, 1, dtype=torch.float64)], 1)
    tri = torch.randint(0, 12, (10, 3), generator=g, dtype=torch.int32)
    w = torch.rand(2, 16, 16, 2, generator=g, dtype=torch.float64)
    wd = torch.rand(2, 16, 16, 4, generator=g, dtype=torch.float64)
    grads = []
    for attr_grad in (True, False):
        p = pos.clone().requires_grad_(True)
        rast, db = rasterize(torch.stack([p, p * 1.01]), tri, (16, 16))
        attr = torch.rand(12, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        attr.requires_grad_(attr_grad)
        out, da = interpolate(attr, rast, tri, db, diff_attrs="all")
        ((out * w).sum() + (da * wd).sum()).backward()
        grads.append(p.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)

"""Mesh cleanup (recon/cleanup.py, recon/collapse.py): hidden faces, floaters, separate objects, slivers;
smoothness loss."""
import math

import numpy as np
import pytest
import torch

from taichi_dr.camera import look_at, perspective
from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.losses import face_pairs, normal_consistency_loss
from taichi_dr.recon.cleanup import (clean_faces, clean_mesh, collapse_short_edges, compact, face_components,
                                     components_genus, nonmanifold_vertices, surviving_faces,
                                     face_pixels, face_visibility, CleanupReport)
from taichi_dr.recon.collapse import collapse_invisible, flip_invisible, merge_vertex_data


def sphere(center, radius, res=10, slivers=False):
    """Marching-tets sphere; its slivers collapsed as the reconstruction does (unless ``slivers``)."""
    grid = TetGrid.create(res, 2.2 * radius)
    v, f = marching_tets(grid.verts, grid.verts.norm(dim=1) - radius, grid)
    if not slivers:
        v, f = collapse_short_edges(v, f, 0.2 * 2.2 * radius / res)
    return v + torch.tensor(center), f


def box(center, half):
    c = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
    v = c * half + torch.tensor(center)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = [[a, b, c_] for a, b, c_, d in quads] + [[a, c_, d] for a, b, c_, d in quads]
    return v, torch.tensor(f, dtype=torch.int32)


def merge(*meshes):
    vs, fs, off, owner = [], [], 0, []
    for k, (v, f) in enumerate(meshes):
        vs.append(v)
        fs.append(f + off)
        owner.append(torch.full((f.shape[0],), k))
        off += v.shape[0]
    return torch.cat(vs), torch.cat(fs).to(torch.int32), torch.cat(owner)


def cameras(n=12, dist=4.0):
    proj = perspective(math.radians(40.0), 1.0, 0.1, 20.0)
    mvs = []
    for i in range(n):
        az, el = 2 * math.pi * i / n, math.radians((35.0, -25.0, 5.0)[i % 3])
        eye = (dist * math.cos(el) * math.sin(az), dist * math.sin(el), dist * math.cos(el) * math.cos(az))
        mvs.append(proj @ look_at(eye, (0, 0, 0)))
    return torch.stack(mvs)


def masks(v, f, mvp, res):
    """Coverage of a mesh from every camera (what a dataset's alpha would be)."""
    from taichi_dr.camera import transform_pos
    from taichi_dr.render.rasterize import rasterize
    rast, _ = rasterize(transform_pos(mvp, v), f, (res, res))
    return (rast[..., 3] > 0).float()


def test_hidden_box_inside_sphere_is_removed():
    sv, sf = sphere((0.0, 0.0, 0.0), 0.8)
    bv, bf = box((0.05, 0.0, -0.05), 0.3)
    v, f, owner = merge((sv, sf), (bv, bf))
    mvp = cameras()
    pix, _ = face_visibility(v, f, mvp, (128, 128))
    assert int((pix[owner == 1] > 0).sum()) == 0  # nothing of the box is ever seen
    keep, rep = clean_faces(v, f, mvp, (128, 128))
    assert not keep[owner == 1].any()  # the whole hidden box goes
    assert keep[owner == 0].all()  # the sphere stays complete (slivers between pixels are kept)
    assert rep.invisible_faces == 12 and rep.faces_out == sf.shape[0]
    v2, f2 = compact(v, f, keep)
    assert v2.shape[0] == sv.shape[0] and face_components(f2)[0] == 1


def test_floaters_removed_separate_object_kept():
    a = sphere((-0.7, 0.0, 0.0), 0.35)
    b = sphere((0.7, 0.1, 0.0), 0.3)         # a genuinely separate second object, in every mask
    floater = sphere((0.0, 1.0, 0.3), 0.06, res=6)   # outside the objects' silhouettes
    dust = sphere((-0.7, 0.0, 0.36), 0.012, res=4)   # a speck on the first object's surface
    v, f, owner = merge(a, b, floater, dust)
    mvp = cameras(16)
    objects = merge(a, b)
    alpha = masks(objects[0], objects[1], mvp, 64)
    assert face_components(f)[0] == 4
    keep, rep = clean_faces(v, f, mvp, (128, 128), alpha)
    assert keep[owner <= 1].all() and not keep[owner >= 2].any()
    # the specks' own sub-pixel faces are partly invisible already; what is left of them goes as components
    assert rep.faces_out == int((owner <= 1).sum()) and rep.removed_components >= 2
    # clean_mesh = clean_faces + compact; per-vertex data follows the compaction
    v2, f2, ids, _ = clean_mesh(v, f, mvp, (128, 128), alpha, extra=(torch.arange(v.shape[0]),))
    n_real = a[0].shape[0] + b[0].shape[0]
    assert face_components(f2)[0] == 2 and ids.tolist() == list(range(n_real))
    assert torch.equal(v2, v[:n_real])
    # without masks the floater in front of the background is judged by its pixels alone: it owns
    # too few, so it still goes
    keep_nomask, _ = clean_faces(v, f, mvp, (128, 128), None)
    assert keep_nomask[owner <= 1].all() and not keep_nomask[owner == 3].any()


def test_collapse_short_edges_removes_slivers_and_stays_closed():
    v, f = sphere((0.0, 0.0, 0.0), 0.7, res=20, slivers=True)
    cell = 2.2 * 0.7 / 20
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).long()
    assert bool(((v[e[:, 0]] - v[e[:, 1]]).norm(dim=1) < 0.2 * cell).any())  # marching tets makes slivers
    v2, f2 = collapse_short_edges(v, f, 0.2 * cell)
    e2 = torch.cat([f2[:, [0, 1]], f2[:, [1, 2]], f2[:, [2, 0]]]).long()
    assert float((v2[e2[:, 0]] - v2[e2[:, 1]]).norm(dim=1).min()) >= 0.2 * cell * 0.5
    _, counts = torch.unique(e2.sort(1)[0], dim=0, return_counts=True)
    assert bool((counts == 2).all())  # still closed and manifold
    assert f2.shape[0] < f.shape[0] and (v2.norm(dim=1) - 0.7).abs().max() < cell


def test_normal_consistency_loss():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], requires_grad=True)
    f = torch.tensor([[0, 1, 2], [1, 3, 2]], dtype=torch.int32)
    assert face_pairs(f).tolist() == [[0, 1]]
    assert float(normal_consistency_loss(v, f)) == pytest.approx(0.0, abs=1e-7)
    bent = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    assert float(normal_consistency_loss(bent, f)) == pytest.approx(1 - 1 / math.sqrt(3), rel=1e-5)
    lifted = v.detach().clone().requires_grad_(True)
    with torch.no_grad():
        lifted[3, 2] = 0.3
    normal_consistency_loss(lifted, f).backward()
    assert float(lifted.grad[3, 2]) > 0  # the gradient flattens the crease


def test_cleanup_rejects_bad_input():
    v, f = box((0, 0, 0), 0.5)
    with pytest.raises(ValueError, match="mvp"):
        face_visibility(v, f, torch.eye(4), (8, 8))
    with pytest.raises(ValueError, match="keep"):
        compact(v, f, torch.ones(3, dtype=torch.bool))


def closed_edges(f):
    """Whether every edge of ``f`` is shared by exactly two faces."""
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).long().sort(dim=1)[0]
    return bool((torch.unique(e, dim=0, return_counts=True)[1] == 2).all())


def with_needles(v, f, n, frac=2e-3):
    """Split ``n`` vertex-disjoint edges next to one end (``frac`` of the way): each split adds two
    needle faces that own no pixel, and the mesh stays closed."""
    v, f = v.clone(), f.long().tolist()
    used, done = set(), 0
    for k in range(len(f)):
        a, b, c = f[k]
        if done == n or used & {a, b, c}:
            continue
        d_face = next(j for j, g in enumerate(f) if j != k and a in g and b in g)
        g = f[d_face]
        d = next(x for x in g if x not in (a, b))
        used |= {a, b, c, d}
        m = v.shape[0]
        v = torch.cat([v, (v[a] + frac * (v[b] - v[a]))[None]])
        f[k] = [a, m, c]
        f.append([m, b, c])
        i = g.index(b)  # the neighbour is (b, a, d) up to rotation
        f[d_face] = [b, m, d]
        f.append([m, a, d])
        assert g[(i + 1) % 3] == a
        done += 1
    return v, torch.tensor(f, dtype=torch.int32)


def _hourglass(waist: float, k: int = 6):
    """Two cones joined by a ring of radius ``waist`` (a closed genus-0 surface with a neck)."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    ring = lambda r, z: torch.stack([r * torch.cos(ang), r * torch.sin(ang), torch.full_like(ang, z)], 1)
    v = torch.cat([torch.tensor([[0.0, 0, 1]], dtype=torch.float64), ring(0.5, 0.5), ring(waist, 0.0),
                   ring(0.5, -0.5), torch.tensor([[0.0, 0, -1]], dtype=torch.float64)])
    f = []
    for i in range(k):
        j = (i + 1) % k
        f.append([0, 1 + i, 1 + j])
        for r in range(2):  # bands between rings r and r + 1
            a, b = 1 + r * k, 1 + (r + 1) * k
            f += [[a + i, b + i, b + j], [a + i, b + j, a + j]]
        f.append([1 + 2 * k + i, 3 * k + 1, 1 + 2 * k + j])
    return v, torch.tensor(f, dtype=torch.int32)


def test_nonmanifold_vertices_finds_pinches():
    v, f = _hourglass(0.2)
    assert not nonmanifold_vertices(f.numpy(), v.shape[0]).any()
    pinched = f.clone()
    pinched[pinched >= 7] = torch.where(pinched[pinched >= 7] < 13, 7, pinched[pinched >= 7])  # waist -> one vertex
    keep = surviving_faces(pinched.numpy())
    bad = nonmanifold_vertices(pinched.numpy()[keep], v.shape[0])
    assert bad.nonzero()[0].tolist() == [7]


def test_components_genus_from_euler_and_bad_input():
    v, f = _hourglass(0.2)
    assert components_genus(f) == (1, 0.0)
    two = torch.cat([f, f + v.shape[0]])
    assert components_genus(two) == (2, 0.0)
    with pytest.raises(ValueError, match="faces"):
        components_genus(f[:, :2])
    with pytest.raises(ValueError, match="faces"):
        nonmanifold_vertices(f.numpy(), 5)
    with pytest.raises(ValueError, match="faces"):
        nonmanifold_vertices(f.numpy()[:, :2], v.shape[0])


def test_collapse_short_edges_never_pinches_a_neck():
    """A neck thinner than the sliver length must not collapse into one vertex (two cones touching
    at a point: a non-manifold vertex); slivers elsewhere still go."""
    v, f = _hourglass(1e-3)
    v2, f2 = collapse_short_edges(v, f, 0.01)
    assert not nonmanifold_vertices(f2.numpy(), v2.shape[0]).any()
    assert f2.shape[0] == f.shape[0] and v2.shape[0] == v.shape[0]  # the neck and its ring stay
    # without a neck, a short edge still collapses (the apex into the ring below it)
    v3 = _hourglass(0.2)[0]
    v3[0] = v3[1] + torch.tensor([0.0, 0.0, 0.004], dtype=torch.float64)
    _, f3 = collapse_short_edges(v3, f, 0.01)
    assert f3.shape[0] < f.shape[0]


def test_collapse_invisible_keeps_the_mesh_closed_and_every_face_visible():
    res = [(64, 64), (128, 128)]
    mvp = cameras(8, dist=2.5)
    (va, fa), (vb, fb) = (with_needles(*sphere((-0.45, 0.0, 0.0), 0.4, res=6), 6),
                          with_needles(*sphere((0.45, 0.05, 0.0), 0.35, res=6), 6))
    v, f, owner = merge((va, fa), (vb, fb))
    assert closed_edges(f) and face_components(f)[0] == 2
    pix = face_pixels(v, f, mvp, res)
    assert int((pix == 0).any(0).sum()) >= 12  # at least the needles own no pixel
    v2, f2, vmap, rows, rep = collapse_invisible(v, f, mvp, res)
    assert bool((face_pixels(v2, f2, mvp, res) > 0).all())  # every face is seen at both sizes
    assert closed_edges(f2) and face_components(f2)[0] == 2  # no hole, no part lost or fused
    assert rep.invisible_left == {"64x64": 0, "128x128": 0} and rep.collapsed_edges >= 12
    assert rep.collapsed_faces == f.shape[0] - f2.shape[0] and rep.faces_out == f2.shape[0]
    # per-face data follows `rows`, per-vertex data follows `vmap`
    assert torch.equal(vmap[f[rows].long()], f2.long())
    assert torch.equal(owner[rows], face_components(f2)[1])  # each face stays on its own sphere
    assert int((vmap < 0).sum()) == 0 and int(vmap.max()) == v2.shape[0] - 1
    # every merged position lies on a collapsed edge, so inside the box of the vertices merged into it
    idx = vmap[:, None].expand(-1, 3)
    lo = torch.full_like(v2, math.inf).scatter_reduce(0, idx, v, "amin")
    hi = torch.full_like(v2, -math.inf).scatter_reduce(0, idx, v, "amax")
    assert bool(((v2 >= lo - 1e-6) & (v2 <= hi + 1e-6)).all())
    data = torch.randn(v.shape[0], 2, generator=torch.Generator().manual_seed(0))
    merged = merge_vertex_data(data, vmap, v2.shape[0])
    groups = torch.bincount(vmap)
    assert int(groups.max()) > 1  # some vertices were merged ...
    for j in torch.nonzero(groups > 1)[:, 0].tolist():  # ... and take the mean of their data
        assert torch.allclose(merged[j], data[vmap == j].mean(0), atol=1e-6)
    assert torch.equal(merged[groups == 1], data[(groups[vmap] == 1)][torch.argsort(vmap[groups[vmap] == 1])])


def test_collapse_never_turns_a_face_over():
    from taichi_dr.recon.collapse import _apply_collapses, _collapse_candidates, _select_collapses
    v, f = sphere((0.0, 0.0, 0.0), 0.7, res=8)
    g = torch.Generator().manual_seed(3)
    v = (v + 0.06 * torch.randn(v.shape, generator=g)).double().numpy()  # a crumpled surface
    f = f.long().numpy()
    cand = np.ones(len(f), dtype=bool)

    def turned(pairs, t):
        v2, f2, _, rows = _apply_collapses(v, f, pairs, t)
        n_old = np.cross(v[f[rows, 1]] - v[f[rows, 0]], v[f[rows, 2]] - v[f[rows, 0]])
        n_new = np.cross(v2[f2[:, 1]] - v2[f2[:, 0]], v2[f2[:, 2]] - v2[f2[:, 0]])
        return int(((n_old * n_new).sum(1) <= 0).sum())

    a, b, t_any, _, _ = _collapse_candidates(v, f, cand, min_cos=-2.0)  # every manifold collapse allowed
    _, _, t_ok, _, _ = _collapse_candidates(v, f, cand, min_cos=0.0)
    flipping = ~np.isnan(t_any) & np.isnan(t_ok)
    assert flipping.sum() > 0  # the crumpled sphere has collapses that would turn a face over ...
    # ... and they really would: each one alone turns at least one face
    for k in np.nonzero(flipping)[0][:5]:
        assert turned(np.array([[a[k], b[k]]]), np.array([0.5])) > 0
    # every allowed collapse, alone at the position it was allowed at, turns no face (the candidates'
    # closed-form normals, linear in t, against normals recomputed on the collapsed mesh)
    allowed = np.nonzero(~np.isnan(t_ok))[0]
    assert len(allowed) > 20
    for k in allowed[:: max(1, len(allowed) // 40)]:
        assert turned(np.array([[a[k], b[k]]]), t_ok[k:k + 1]) == 0
    pairs, t = _select_collapses(v, f, cand, min_cos=0.0)  # the selected set, applied at once: none turns
    assert len(pairs) > 0 and turned(pairs, t) == 0
    assert not (flipping & np.isin(a * len(v) + b, pairs[:, 0] * len(v) + pairs[:, 1])).any()


def test_collapse_invisible_rejects_bad_input():
    v, f = box((0, 0, 0), 0.5)
    with pytest.raises(ValueError, match="resolutions"):
        collapse_invisible(v, f, cameras(2), [])
    with pytest.raises(TypeError, match="resolutions"):
        collapse_invisible(v, f, cameras(2), 64)
    with pytest.raises(ValueError, match="vmap"):
        merge_vertex_data(v, torch.arange(3), 3)


def _sliver_quad():
    """A flat patch at z = 0 seen from above: a sliver (a, b, c) 0.004 high along the edge ab (no pixel
    centre at 64² falls in it), its vertex c of valence 3, (b, a, d) across ab, and two more faces
    around each of a and b."""
    v = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.004, 0.0], [0.0, -0.5, 0.0], [0.0, 0.5, 0.0],
                      [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    a, b, c, d, e, p, q = range(7)
    f = torch.tensor([[a, b, c], [b, e, c], [e, a, c], [b, a, d], [p, a, e], [p, d, a], [b, q, e], [b, d, q]],
                     dtype=torch.int32)
    mvp = (perspective(0.8) @ look_at((0.0, 0.0, 3.0), (0.0, 0.0, 0.0))).unsqueeze(0)
    return v, f, mvp


def test_flip_invisible_gives_a_slivers_pixels_to_the_other_diagonal():
    """The sliver owns no pixel; flipping ab makes (c, a, d), (c, d, b), both owning pixels, same
    orientation, same face count, UV rows following; across a UV seam nothing flips."""
    v, f, mvp = _sliver_quad()
    res = [(64, 64), (128, 128)]
    before = face_pixels(v, f, mvp, res)
    assert int(before[:, 0].max()) == 0 and bool((before[:, 1:] > 0).all())
    rep = CleanupReport()
    f2, uv2, kept = flip_invisible(v, f, mvp, res, uv_faces=f.clone(), report=rep)
    assert kept == 1 and rep.flipped_edges == 1 and rep.invisible_left == {"64x64": 0, "128x128": 0}
    assert f2.shape == f.shape and torch.equal(uv2, f2)  # per-corner rows follow the vertices
    rest = [1, 2, 4, 5, 6, 7]
    assert sorted(map(tuple, f2[[0, 3]].tolist())) == [(2, 0, 3), (2, 3, 1)] and torch.equal(f2[rest], f[rest])
    assert bool((face_pixels(v, f2, mvp, res) >= 2).all())
    n = torch.linalg.cross(v[f2[:, 1].long()] - v[f2[:, 0].long()], v[f2[:, 2].long()] - v[f2[:, 0].long()])
    assert bool((n[:, 2] * n[1, 2] > 0).all())  # one orientation
    seam = f.clone()
    seam[3, 1] = 7  # a has another UV vertex in (b, a, d): a seam along ab
    f3, uv3, kept = flip_invisible(v, f, mvp, res, uv_faces=seam)
    assert kept == 0 and torch.equal(f3, f) and torch.equal(uv3, seam)
    # a vertex of the edge with only three faces would be left with two (a fold): no flip
    f4, _, kept = flip_invisible(v, f[:4], mvp, res)
    assert kept == 0 and torch.equal(f4, f[:4])
    with pytest.raises(ValueError, match="uv_faces"):
        flip_invisible(v, f, mvp, res, uv_faces=f[:2])
    with pytest.raises(ValueError, match="min_pixels"):
        flip_invisible(v, f, mvp, res, min_pixels=0)


def test_a_flip_never_takes_the_last_pixel_of_another_face():
    """On a crumpled sphere at a small raster many faces own one pixel or none. A flip's new
    diagonal can take a pixel centre from a face it does not touch (it lay on that face's edge, or
    the bent quad now covers it in front): such a flip is undone, so no face that owned a pixel at a
    size owns none afterwards (before the fix: 2–11 faces on 9 of 10 such spheres)."""
    res = [(32, 32), (64, 64)]
    mvp = cameras(6, dist=3.0)
    for seed in (7, 9):
        g = torch.Generator().manual_seed(seed)
        v, f = sphere((0.0, 0.0, 0.0), 0.6, res=6)
        v = v + 0.03 * torch.randn(v.shape, generator=g)
        before = face_pixels(v, f, mvp, res)
        f2, _, kept = flip_invisible(v, f, mvp, res)
        after = face_pixels(v, f2, mvp, res)
        flipped = (f2 != f).any(1)
        assert kept > 20 and int(flipped.sum()) == 2 * kept
        assert not bool(((after == 0) & (before > 0)).any(0)[~flipped].any())
        assert bool((after[:, flipped] > 0).all())  # the flipped pairs own pixels at both sizes
        assert int((after == 0).sum()) < int((before == 0).sum())


def test_plane_quadrics_measure_the_mean_squared_distance_to_the_planes():
    from taichi_dr.recon.collapse import _plane_quadrics, _quadric_matrices
    g = np.random.default_rng(0)
    v, f = sphere((0.0, 0.0, 0.0), 0.7, res=6)
    v, f = v.double().numpy() + 0.02 * g.standard_normal(tuple(v.shape)), f.long().numpy()
    q, w = _plane_quadrics(v, f)
    Q = _quadric_matrices(q)

    def _quadric_error(i, p):  # x̄ᵀ Q x̄ / area
        xb = np.r_[p, 1.0]
        return xb @ Q[i] @ xb / w[i]
    x = g.standard_normal((5, 3))
    for i, p in zip(g.integers(0, len(v), 5), x):
        # the area-weighted mean over the faces around vertex i of the squared distance of p to their planes
        fi = np.nonzero((f == i).any(1))[0]
        n = np.cross(v[f[fi, 1]] - v[f[fi, 0]], v[f[fi, 2]] - v[f[fi, 0]])
        area = 0.5 * np.linalg.norm(n, axis=1)
        d = ((p - v[f[fi, 0]]) * n / (2 * area[:, None])).sum(1)
        assert _quadric_error(i, p) == pytest.approx((area * d ** 2).sum() / area.sum(), rel=1e-9)
        assert _quadric_error(i, v[i]) == pytest.approx(0.0, abs=1e-12)  # on them


def test_collapse_invisible_keeps_the_shape_of_a_surface_no_view_sees():
    # a sphere filmed from above only (a turntable): nothing sees its underside
    proj = perspective(math.radians(40.0), 1.0, 0.1, 20.0)
    views = [(2 * math.pi * i / 8, math.radians((20.0, 45.0)[i % 2])) for i in range(8)]  # azimuth, elevation
    eyes = [(4 * math.cos(el) * math.sin(az), 4 * math.sin(el), 4 * math.cos(el) * math.cos(az)) for az, el in views]
    mvp = torch.stack([proj @ look_at(eye, (0, 0, 0)) for eye in eyes])
    res = [(64, 64), (128, 128)]
    v, f = sphere((0.0, 0.0, 0.0), 0.6, res=14)
    hidden = (face_pixels(v, f, mvp, res) == 0).all(0)
    assert int(hidden.sum()) > 100 and float(v[f[hidden].long()][..., 1].mean()) < -0.3  # the underside
    # unbounded, the unseen underside shrinks into a few large faces: a cap that cuts into the sphere
    v1, f1, _, _, rep1 = collapse_invisible(v, f, mvp, res, rounds=64)
    assert rep1.invisible_left == {"64x64": 0, "128x128": 0} and float(v1.norm(dim=1).min()) < 0.5
    # with the bound every vertex stays on the sphere; the underside keeps faces no view sees
    v2, f2, _, _, rep2 = collapse_invisible(v, f, mvp, res, rounds=64, max_error=0.01)
    r0, r2 = v.norm(dim=1), v2.norm(dim=1)
    assert float(r2.min()) > float(r0.min()) - 0.02 and float(r2.max()) <= float(r0.max()) + 1e-6
    assert rep2.refused_far > 0 and rep2.invisible_left["64x64"] > 0 and closed_edges(f2)
    assert rep2.collapsed_edges > 0 and f2.shape[0] < f.shape[0]  # what can go within the bound, went
    # what the views see is what they saw
    m0, m1, m2 = masks(v, f, mvp, 128), masks(v1, f1, mvp, 128), masks(v2, f2, mvp, 128)
    assert int((m2 != m0).sum()) <= int((m1 != m0).sum()) // 4
    # a looser bound for faces some raster size sees leaves the never-seen underside as bounded
    v3, _, _, _, rep3 = collapse_invisible(v, f, mvp, res, rounds=64, max_error=0.01, max_error_seen=0.05)
    assert float(v3.norm(dim=1).min()) > float(r0.min()) - 0.02 and rep3.refused_far > 0
    with pytest.raises(ValueError, match="max_error"):
        collapse_invisible(v, f, mvp, res, max_error=-1.0)
    with pytest.raises(ValueError, match="max_error_seen"):
        collapse_invisible(v, f, mvp, res, max_error=0.01, max_error_seen=float("nan"))
    with pytest.raises(ValueError, match="max_error_seen: needs max_error"):
        collapse_invisible(v, f, mvp, res, max_error_seen=0.05)


def test_a_collapse_the_bound_would_refuse_at_the_usual_positions_merges_where_the_bound_allows():
    """On a flat patch every position along an edge is as good for the current faces, so the usual
    trial positions (least squares, midpoint, either end) are tried first. If the surface the
    vertices came from (their accumulated quadric) wants the merged vertex at 30 % of the edge and
    the bound is tight, those all fail it; the quadric's own minimiser must be taken, not refused."""
    from taichi_dr.recon.collapse import _collapse_candidates, _plane_quadrics
    n = 4  # a flat 4×4-vertex grid in z = 0, two triangles per cell
    xs, ys = np.meshgrid(np.arange(n, dtype=float), np.arange(n, dtype=float), indexing="ij")
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1)
    idx = np.arange(n * n).reshape(n, n)
    f = np.concatenate([np.stack([idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()], 1),
                        np.stack([idx[:-1, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()], 1)])
    a, b = int(idx[1, 1]), int(idx[2, 1])  # an interior edge along +x, from (1, 1) to (2, 1)
    cand = ((f == a) | (f == b)).sum(1) == 2  # the two faces of that edge
    q, w = _plane_quadrics(v, f)  # every vertex on z = 0: the bound does not limit moves in the plane
    # plus, on a, a plane across the edge at x = 1.3 (unit area): 30 % along it
    plane = np.array([1.0, 0.0, 0.0, -1.3])
    q[a] += plane[np.triu_indices(4)[0]] * plane[np.triu_indices(4)[1]]
    w[a] += 1.0
    e_max = 0.02 * np.sqrt(1.0 / (w[a] + w[b]))  # RMS: 0.02 from x = 1.3 (all of a's plane's weight)
    stats = {}
    ea, eb, t, _, _ = _collapse_candidates(v, f, cand, 0.0, bound=(q, w, np.full(len(f), e_max)), stats=stats)
    k = np.nonzero((ea == min(a, b)) & (eb == max(a, b)))[0][0]
    assert t[k] == pytest.approx(0.3, abs=1e-9)
    # unbounded the same edge merges at one of the usual positions, and with the plane out of reach
    # (beyond b) it is refused and counted
    _, _, t0, _, _ = _collapse_candidates(v, f, cand, 0.0)
    assert min(abs(t0[k] - c) for c in (0.0, 0.5, 1.0)) < 1e-9
    far = np.array([1.0, 0.0, 0.0, -2.5])
    q2 = q.copy()
    q2[a] += far[np.triu_indices(4)[0]] * far[np.triu_indices(4)[1]] * 50.0
    w2 = w.copy()
    w2[a] += 50.0
    stats2 = {}
    _, _, t2, _, _ = _collapse_candidates(v, f, cand, 0.0, bound=(q2, w2, np.full(len(f), 0.02)), stats=stats2)
    assert np.isnan(t2[k]) and stats2["refused_far"] >= 1
    # the bound is per face, and an edge takes the tighter of its two faces': a loose bound on both
    # lets the usual positions through, a tight one on either brings back the quadric's position
    e_face = np.full(len(f), 1.0)
    _, _, t3, _, _ = _collapse_candidates(v, f, cand, 0.0, bound=(q, w, e_face))
    assert t3[k] == pytest.approx(t0[k])
    own = np.nonzero(cand)[0]
    for j in own:
        e_face = np.full(len(f), 1.0)
        e_face[j] = e_max
        _, _, t4, _, _ = _collapse_candidates(v, f, cand, 0.0, bound=(q, w, e_face))
        assert t4[k] == pytest.approx(0.3, abs=1e-9)

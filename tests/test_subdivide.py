"""Midpoint subdivision before the refinement pass (recon/subdivide.py)."""
import pytest
import torch

from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.mesh import unique_edges
from taichi_dr.recon.cleanup import components_genus, nonmanifold_vertices
from taichi_dr.recon.subdivide import subdivide_midpoint


def torus(res=12):
    """A closed genus-1 marching-tets surface (sign changes on every kind of tet edge)."""
    grid = TetGrid.create(res, 2.4)
    p = grid.verts.double()
    sdf = (torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - 0.6) ** 2 + p[:, 2] ** 2 - 0.3 ** 2
    return marching_tets(p, sdf, grid)


def edge_uses(f):
    """``(edges [E, 2], faces per edge [E])``."""
    edges, which = unique_edges(f)
    return edges, torch.bincount(which, minlength=edges.shape[0])


def face_normals(v, f):
    t = v[f.long()]
    return torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])


def test_one_triangle_splits_into_four_equal_quarters_with_its_orientation():
    v = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    v2, f2 = subdivide_midpoint(v, f)
    assert v2.shape == (6, 3) and f2.shape == (4, 3) and f2.dtype == torch.int32 and v2.dtype == torch.float64
    assert torch.equal(v2[:3], v)  # the old vertices keep their indices and positions
    assert {tuple(p) for p in v2[3:].tolist()} == {(1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 1.0, 0.0)}
    n = face_normals(v2, f2)
    assert torch.allclose(n, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(4, 3))  # same side, 1/4 area


def test_a_closed_surface_stays_closed_manifold_and_in_place():
    v, f = torus()
    _, uses = edge_uses(f)
    assert (uses == 2).all()
    c0, g0 = components_genus(f)
    area0 = face_normals(v, f).norm(dim=1).sum()
    n_edges = uses.numel()
    for times in (1, 2):
        v2, f2 = subdivide_midpoint(v, f, times)
        assert f2.shape[0] == f.shape[0] * 4 ** times
        if times == 1:
            assert v2.shape[0] == v.shape[0] + n_edges
        _, uses2 = edge_uses(f2)
        assert (uses2 == 2).all()  # closed: every edge between exactly two faces
        assert components_genus(f2) == (c0, g0) == (1, 1.0)
        assert not nonmanifold_vertices(f2.long().numpy(), v2.shape[0]).any()
        # the surface does not move: same area, and every new face lies in an old face's plane
        assert torch.allclose(face_normals(v2, f2).norm(dim=1).sum(), area0, rtol=1e-12)
    v1, f1 = subdivide_midpoint(v, f)
    parent = torch.arange(f.shape[0]).repeat(4)  # face k of block j comes from face k
    n_old = torch.nn.functional.normalize(face_normals(v, f), dim=1)[parent]
    n_new = torch.nn.functional.normalize(face_normals(v1, f1), dim=1)
    big = face_normals(v1, f1).norm(dim=1) > 1e-8  # marching tets' near-degenerate slivers have no direction
    assert big.float().mean() > 0.9 and ((n_old * n_new).sum(1)[big] > 1 - 1e-9).all()


def test_zero_times_returns_the_inputs_and_bad_arguments_are_named():
    v, f = torus(6)
    v0, f0 = subdivide_midpoint(v, f, 0)
    assert v0 is v and f0 is f
    with pytest.raises(ValueError, match="times"):
        subdivide_midpoint(v, f, -1)
    with pytest.raises(TypeError, match="times"):
        subdivide_midpoint(v, f, 1.0)
    with pytest.raises(TypeError, match="times"):
        subdivide_midpoint(v, f, True)
    with pytest.raises(ValueError, match="faces"):
        subdivide_midpoint(v, f + v.shape[0])
    with pytest.raises(ValueError, match="verts"):
        subdivide_midpoint(v[:, 0], f)
    with pytest.raises(TypeError, match="faces"):
        subdivide_midpoint(v, f.float())


def test_the_setting_is_bounded_and_frozen():
    from taichi_dr.recon.config import FROZEN_BEFORE_ADDED, ReconConfig

    assert ReconConfig().validate().refine_subdivide is None  # automatic: auto_subdivisions
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="refine_subdivide"):
            ReconConfig(refine_subdivide=bad).validate()
    # a checkpoint from before the setting refined its DMTet mesh as it was: --resume keeps that
    assert FROZEN_BEFORE_ADDED["refine_subdivide"] == 0


def test_auto_subdivisions_follow_the_face_budget():
    from taichi_dr.recon.subdivide import AUTO_FACE_BUDGET, auto_subdivisions

    assert auto_subdivisions(AUTO_FACE_BUDGET // 16) == 2  # the cow's 8,662 DMTet faces: 138,592 refined
    assert auto_subdivisions(AUTO_FACE_BUDGET // 16 + 1) == 1  # a bowl's 13,616: one (217,856 would be slow)
    assert auto_subdivisions(0) == 2 and auto_subdivisions(100, budget=1000) == 1


def test_a_finer_grid_keeps_the_default_grids_subdivisions():
    """A DMTet mesh has about grid² faces: the budget scales with (grid / default grid)² on a grid finer
    than the image size's default (the Mitsuba torus at grid 64: 15,452 faces, two subdivisions as at
    grid 40), up to AUTO_FACE_CAP, whether the user or the thin-parts rule chose it; the default grid
    and a coarser one keep the budget."""
    from types import SimpleNamespace

    from taichi_dr.recon.config import ReconConfig
    from taichi_dr.recon.loop import _Run
    from taichi_dr.recon.subdivide import AUTO_FACE_BUDGET, AUTO_FACE_CAP, auto_subdivisions

    assert auto_subdivisions(15_452) == 1 and auto_subdivisions(15_452, grid_scale=(64 / 40) ** 2) == 2
    assert auto_subdivisions(AUTO_FACE_CAP // 16, grid_scale=100.0) == 2
    assert auto_subdivisions(AUTO_FACE_CAP // 16 + 1, grid_scale=100.0) == 1  # grid 128: not millions
    assert auto_subdivisions(AUTO_FACE_BUDGET // 16 + 1, grid_scale=1.0) == 1
    for bad in (0.5, float("nan")):
        with pytest.raises(ValueError, match="grid_scale"):
            auto_subdivisions(10, grid_scale=bad)

    def scale(user, chosen, default):
        run = SimpleNamespace(cfg=ReconConfig(grid_res=user), grid_res=chosen,
                              grid_report={"default_grid_res": default})
        return _Run._grid_scale(run)

    assert scale(64, 64, 40) == pytest.approx((64 / 40) ** 2) and scale(96, 96, 64) == pytest.approx(2.25)
    assert scale(None, 64, 40) == scale(64, 64, 40)  # the thin-parts rule's 64 (the cow): same grid, same rule
    assert scale(None, 40, 40) == 1.0 and scale(32, 32, 40) == 1.0 and scale(40, 40, 40) == 1.0



def test_the_uv_atlas_is_split_with_the_mesh(monkeypatch):
    """start_material_pass unwraps the coarse mesh and splits the atlas with it: every split corner's UV
    has the same barycentric coordinates in its coarse parent's UV triangle as its position has in the
    parent's world triangle, so the bake and the refinement read the texture as if the fine mesh had
    been unwrapped. The mesh then comes in space order (mesh.spatial_order), each face with its own
    UV triangle (checked against the same split left in subdivision order)."""
    import taichi_dr.recon.texture_pass as tp
    from taichi_dr.recon.material import MaterialField
    from taichi_dr.recon.texture_pass import start_material_pass

    atlas = {}  # one unwrap for both calls, so that only the order differs
    real_unwrap = tp.unwrap
    monkeypatch.setattr(tp, "unwrap", lambda *a, **k: atlas.setdefault("a", real_unwrap(*a, **k)))
    in_place = lambda v, f: (v, f, torch.arange(v.shape[0]), torch.arange(f.shape[0]))  # noqa: E731

    # a regular torus (no needles: every parent has a UV triangle to solve in)
    n, m = 16, 8
    i, j = torch.meshgrid(torch.arange(n), torch.arange(m), indexing="ij")
    th, ph = 2 * torch.pi * i.reshape(-1) / n, 2 * torch.pi * j.reshape(-1) / m
    v = torch.stack([(0.6 + 0.3 * ph.cos()) * th.cos(), (0.6 + 0.3 * ph.cos()) * th.sin(), 0.3 * ph.sin()], 1)
    a, b = i.reshape(-1) * m + j.reshape(-1), ((i.reshape(-1) + 1) % n) * m + j.reshape(-1)
    c, d = i.reshape(-1) * m + (j.reshape(-1) + 1) % m, ((i.reshape(-1) + 1) % n) * m + (j.reshape(-1) + 1) % m
    f = torch.cat([torch.stack([a, b, d], 1), torch.stack([a, d, c], 1)]).int()
    F = f.shape[0]
    with monkeypatch.context() as mp:
        mp.setattr(tp, "spatial_order", in_place)
        v2, f2, mat = start_material_pass(MaterialField(torch.zeros(3), 1.2), v, f, (64, 64), subdivisions=2)
    v5, f5, mat5 = start_material_pass(MaterialField(torch.zeros(3), 1.2), v, f, (64, 64), subdivisions=2)
    corners = lambda v_, f_, m_: torch.unique(torch.cat([v_[f_.long()].reshape(-1, 9),  # noqa: E731
                                                         m_.uvs[m_.uv_faces.long()].reshape(-1, 6)], 1), dim=0)
    assert not torch.equal(f5, f2) and corners(v5, f5, mat5).shape[0] == f2.shape[0]
    assert torch.equal(corners(v5, f5, mat5), corners(v2, f2, mat))  # the same faces, each with its UVs
    assert f2.shape == (16 * F, 3) and f2.dtype == torch.int32 and mat.uv_faces.shape == f2.shape
    assert torch.equal(v2[:v.shape[0]], v)  # the old vertices stay first, unmoved
    # each split stacks its children block by block, (a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca):
    # fine face i has coarse parent i % F, and the parent's corner j is corner j of fine face j * 5F + k
    wf, uf = f2.long(), mat.uv_faces.long()
    par_w = torch.stack([v2[wf[j * 5 * F:j * 5 * F + F, j]] for j in range(3)], 1).double()  # [F, 3, 3]
    par_uv = torch.stack([mat.uvs[uf[j * 5 * F:j * 5 * F + F, j]] for j in range(3)], 1).double()  # [F, 3, 2]
    k = torch.arange(16 * F) % F
    e1, e2 = par_uv[:, 1] - par_uv[:, 0], par_uv[:, 2] - par_uv[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = det.abs()[k] > 1e-6
    assert bool(ok.all())
    for j in range(3):
        d = mat.uvs[uf[:, j]].double() - par_uv[k, 0]
        l1 = (d[:, 0] * e2[k, 1] - d[:, 1] * e2[k, 0]) / det[k]
        l2 = (e1[k, 0] * d[:, 1] - e1[k, 1] * d[:, 0]) / det[k]
        lam = torch.stack([1 - l1 - l2, l1, l2], 1)[ok]
        assert bool((lam > -1e-3).all())  # inside the parent's UV triangle
        w = (lam[:, :, None] * par_w[k[ok]]).sum(1)
        assert torch.allclose(w, v2[wf[ok, j]].double(), atol=1e-4)
    # per-vertex colours: the mesh is split the same way
    v3, f3, cols = start_material_pass(lambda p: torch.full_like(p, 0.5), v, f, (64, 64), subdivisions=1)
    assert f3.shape == (4 * F, 3) and cols.material().shape == (v3.shape[0], 3)

"""Topology-preserving carving on the tet lattice (taichi_dr/recon/topology.py)."""
import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.recon.topology import carve_keeping_topology, keep_topology, link_offsets, simple_table


def _betti(x: np.ndarray, grid: TetGrid):
    """(b0, b1, b2) of the full subcomplex of ``grid`` spanned by the vertices ``x [V] bool``: an
    independent reference (Euler characteristic of the simplices, components of the inside and of
    the outside along grid edges; b1 from Euler-Poincaré)."""
    n = grid.resolution + 1
    tets, edges = grid.tets.numpy(), grid.edges.numpy()
    tris = np.unique(np.sort(np.concatenate([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]],
                                             tets[:, [1, 2, 3]]]), axis=1), axis=0)
    chi = x.sum() - x[edges].all(1).sum() + x[tris].all(1).sum() - x[tets].all(1).sum()

    def labels(mask):
        e = edges[mask[edges].all(1)]
        return connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n ** 3,) * 2),
                                    directed=False)[1]
    border = np.zeros((n, n, n), bool)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    border = border.reshape(-1)
    b0 = len(np.unique(labels(x)[x]))
    out = labels(~x)
    b2 = len(set(out[~x]) - set(out[~x & border]))  # outside components that do not reach the border
    return b0, b0 + b2 - int(chi), b2


def test_link_is_the_kuhn_sphere():
    off = link_offsets()
    assert off.shape == (14, 3) and (np.abs(off) <= 1).all()
    assert {tuple(o) for o in off} == {tuple(-o) for o in off}  # ± the grid's 7 edge directions
    table = simple_table()
    assert not table[0]                 # an isolated point: removing it deletes a component
    assert not table[(1 << 14) - 1]     # a point inside the solid: removing it makes a cavity
    assert table[1]                     # the tip of a spike
    # two opposite neighbours only: the point joins a rod; removing it cuts it
    k = [i for i, o in enumerate(off) if tuple(o) == (1, 0, 0) or tuple(o) == (-1, 0, 0)]
    assert not table[(1 << k[0]) | (1 << k[1])]


def test_simple_points_never_change_the_topology():
    """Against the Betti numbers of the lattice subcomplex, on random neighbourhoods: removing a point
    the table calls simple changes none of them; most points it calls not simple change one."""
    grid = TetGrid.create(4, 2.0)
    n = 5
    centre = (2 * n + 2) * n + 2
    off, table = link_offsets(), simple_table()
    border = np.zeros((n, n, n), bool)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    border = border.reshape(-1)
    rng = np.random.default_rng(1)
    simple = changed_when_not_simple = not_simple = 0
    for _ in range(400):
        x = rng.random(n ** 3) < rng.uniform(0.2, 0.8)
        x[border], x[centre] = False, True
        code = sum(int(x[((2 + o[0]) * n + 2 + o[1]) * n + 2 + o[2]]) << k for k, o in enumerate(off))
        y = x.copy()
        y[centre] = False
        same = _betti(x, grid) == _betti(y, grid)
        if table[code]:
            simple += 1
            assert same
        else:
            not_simple += 1
            changed_when_not_simple += not same
    assert simple > 50 and changed_when_not_simple >= 0.95 * not_simple


def _genus(inside: torch.Tensor, grid: TetGrid) -> int:
    sdf = torch.where(inside, -0.5, 0.5).to(torch.float32)
    v, f = marching_tets(grid.verts, sdf, grid)
    return 1 - (v.shape[0] - f.shape[0] // 2) // 2  # closed surface: E = 3F/2, χ = V - F/2 = 2 - 2g


def test_carving_keeps_the_hull_topology():
    R = 12
    grid = TetGrid.create(R, 2.0)
    n = R + 1
    i, j, l = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    block = torch.from_numpy(((i >= 2) & (i <= 10) & (j >= 2) & (j <= 10) & (l >= 2) & (l <= 10)).reshape(-1))
    # a dent from the top face: a concavity, removed completely
    dent = torch.from_numpy(((i >= 5) & (i <= 7) & (j >= 5) & (j <= 7) & (l >= 8)).reshape(-1)) & block
    out, kept = carve_keeping_topology(block, block & ~dent, R)
    assert kept == 0 and torch.equal(out, block & ~dent) and _genus(out, grid) == 0
    # a shaft straight through the block would make a handle (genus 1): the carve stops short of it
    shaft = torch.from_numpy(((i >= 5) & (i <= 7) & (j >= 5) & (j <= 7)).reshape(-1)) & block
    assert _genus(block & ~shaft, grid) == 1
    out, kept = carve_keeping_topology(block, block & ~shaft, R)
    assert _genus(out, grid) == 0 and kept > 0
    assert int((block & ~out).sum()) > 0.8 * int(shaft.sum())  # most of the shaft is still dug
    # a hollow inside the block (a cavity, b2 = 1) is not made either
    core = torch.from_numpy(((i >= 5) & (i <= 7) & (j >= 5) & (j <= 7) & (l >= 5) & (l <= 7)).reshape(-1))
    out, kept = carve_keeping_topology(block, block & ~core, R)
    assert torch.equal(out, block) and kept == int(core.sum())


def test_keep_topology_adds_and_removes_but_never_changes_the_topology():
    """What the DMTet pass' end goes through: flips both ways toward a target, none that would make
    a separate piece or a handle."""
    R = 14
    grid = TetGrid.create(R, 2.0)
    n = R + 1
    i, j, l = (a.reshape(-1) for a in np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij"))
    box = lambda lo, hi: torch.from_numpy((i >= lo[0]) & (i <= hi[0]) & (j >= lo[1]) & (j <= hi[1])  # noqa: E731
                                          & (l >= lo[2]) & (l <= hi[2]))
    ref = box((3, 3, 3), (8, 8, 8))
    bump = box((9, 5, 5), (10, 6, 6))       # grows out of the block: allowed
    island = box((11, 11, 11), (12, 12, 12))  # a separate piece: refused
    dent = box((5, 5, 7), (6, 6, 8))        # a dent from the top: allowed
    target = (ref | bump | island) & ~dent
    out, kept = keep_topology(ref, target, R)
    assert torch.equal(out, (ref | bump) & ~dent) and kept == int(island.sum())
    # an arch from the block's top back to it (a handle) is added only up to the last point
    arch = box((4, 4, 9), (4, 4, 11)) | box((4, 4, 11), (7, 4, 11)) | box((7, 4, 9), (7, 4, 11))
    out, kept = keep_topology(ref, ref | arch, R)
    assert _genus(ref | arch, grid) == 1 and _genus(out, grid) == 0 and kept >= 1
    assert int((out & arch).sum()) >= int(arch.sum()) - 2


def test_carve_keeping_topology_rejects_bad_input():
    hull = torch.ones(27, dtype=torch.bool)
    with pytest.raises(ValueError, match="hull"):
        carve_keeping_topology(hull[:26], hull[:26], 2)
    with pytest.raises(ValueError, match="carved"):
        carve_keeping_topology(hull, torch.zeros(27), 2)
    with pytest.raises(ValueError, match="subset"):
        carve_keeping_topology(torch.zeros(27, dtype=torch.bool), hull, 2)
    with pytest.raises(ValueError, match="target"):
        keep_topology(hull, hull[:26], 2)


def test_shrink_moves_the_surface_inward_but_keeps_a_thin_ring():
    """A ball and a thin ring (tube radius 0.7 cells): shifting the SDF by 1.5 cells would delete the ring.
    shrink_keeping_topology moves the ball's surface in by exactly 1.5 cells and leaves the ring alone (it is
    thinner than min_depth); with min_depth 0 the ring is thinned to a loop of lattice points that the
    topology test keeps. The Betti numbers never change."""
    from taichi_dr.recon.topology import TOPOLOGY_EPS, shrink_keeping_topology

    R = 28
    grid = TetGrid.create(R, float(R))  # one world unit per cell, lattice points on integers
    p = grid.verts.double()
    ball = (p - torch.tensor([-9.0, 0.0, 0.0], dtype=torch.float64)).norm(dim=1) - 4.0  # 4 cells deep
    q = p - torch.tensor([8.0, 0.0, 0.0], dtype=torch.float64)
    # 8.8 cells from the ball: farther than the depth window reaches
    ring = torch.stack([q[:, :2].norm(dim=1) - 3.5, q[:, 2]], 1).norm(dim=1) - 0.7
    sdf = torch.minimum(ball, ring).float()
    before = _betti((sdf < 0).numpy(), grid)
    assert before == (2, 1, 0)
    assert _betti((sdf + 1.5 < 0).numpy(), grid)[0] == 1  # a plain shift loses the ring
    near_ring = ring < 2.0
    far = (ball < ring) & (ball < 2.0)  # the ball and its surroundings

    out, held = shrink_keeping_topology(sdf, 1.5, R)
    assert out.dtype == sdf.dtype and out.shape == sdf.shape
    assert held.dtype == torch.bool and held.shape == sdf.shape
    assert _betti((out < 0).numpy(), grid) == before
    assert torch.allclose(out[far], sdf[far] + 1.5)
    assert torch.equal(out[near_ring], sdf[near_ring]) and int(held.sum()) == 0  # too thin to shrink

    # without the depth guards the ring would be thinned to a loop of lattice points held by the topology test
    thin, kept = shrink_keeping_topology(sdf, 1.5, R, min_depth=0.0, full_depth=0.0)
    assert _betti((thin < 0).numpy(), grid) == before
    assert int(kept.sum()) > 0
    held = (thin < 0) & (sdf + 1.5 >= 0)
    assert torch.equal(kept, held)  # the points held are those a plain shift would have turned outside
    assert bool(held.any()) and bool((ring[held] < ball[held]).all())  # only the ring needed holding
    assert bool((thin[held] == -TOPOLOGY_EPS).all())
    assert torch.allclose(thin[far], sdf[far] + 1.5)
    assert torch.equal(shrink_keeping_topology(sdf, 0.0, R)[0], sdf)

    # below full_depth the shift scales with the part's depth: the ring (≤ 0.7 cells deep) moves by at most
    # 1.5 · 0.7 / 4 cells and needs fewer points held than without; the ball (4 deep) moves the whole 1.5
    held_before = int(kept.sum())
    prop, kept = shrink_keeping_topology(sdf, 1.5, R, min_depth=0.0, full_depth=4.0)
    shift = prop - sdf
    assert _betti((prop < 0).numpy(), grid) == before and int(kept.sum()) < held_before
    assert float(shift[near_ring].max()) <= 1.5 * 0.7 / 4 + 1e-5 and float(shift[near_ring].max()) > 0.1
    assert torch.allclose(prop[far], sdf[far] + 1.5)

    for bad in (dict(shrink=-1.0), dict(shrink=float("nan")), dict(min_depth=-0.5), dict(full_depth=-1.0)):
        args = {"shrink": 1.0, "min_depth": 1.0, "full_depth": 4.0, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            shrink_keeping_topology(sdf, args["shrink"], R, min_depth=args["min_depth"], full_depth=args["full_depth"])
    with pytest.raises(ValueError, match="sdf"):
        shrink_keeping_topology(sdf[:-1], 1.0, R)
    with pytest.raises(ValueError, match="sdf"):
        shrink_keeping_topology(sdf < 0, 1.0, R)


def test_a_thin_leg_on_a_thick_body_keeps_its_own_thickness():
    """A ball 5 cells deep with a leg 0.8 cells thick attached: the leg's depth is its own local thickness (the
    largest inscribed ball over it), not the ball's depth next to it, so the shrink moves the ball's surface by
    the full 1.5 cells and leaves the leg alone beyond its root. A plain shift, or a leg read as being as
    deep as the body it joins (the Mitsuba cow's legs, docs/08 round 16), loses the leg."""
    from taichi_dr.recon.topology import local_thickness, shrink_keeping_topology

    R = 28
    grid = TetGrid.create(R, float(R))
    p = grid.verts.double()
    ball = (p - torch.tensor([-6.0, 0.0, 0.0], dtype=torch.float64)).norm(dim=1) - 5.0
    axis = p[:, 0].clamp(-3.0, 9.0)  # the leg: a capsule along x, off the lattice lines
    leg = torch.stack([p[:, 0] - axis, p[:, 1] - 0.3, p[:, 2] - 0.2], 1).norm(dim=1) - 0.8
    sdf = torch.minimum(ball, leg).float()
    before = _betti((sdf < 0).numpy(), grid)
    assert before == (1, 0, 0)
    leg_far = (p[:, 0] > 1.0) & (leg < 1.0)  # the leg beyond its root, and the lattice points just outside it
    body = (p[:, 0] < -7.0) & (ball < 2.0)
    assert int((sdf[leg_far] < 0).sum()) >= 10 and int((sdf[leg_far] + 1.5 < 0).sum()) == 0

    n = R + 1
    local = torch.from_numpy(local_thickness(sdf.reshape(n, n, n).numpy(), 4.0).reshape(-1))
    assert float(local[leg_far].max()) <= 0.8 + 1e-5  # no deeper ball reaches past the root
    assert float(local[body].min()) >= 4.0  # the ball's 4-deep core covers its surface and the points outside

    out, held = shrink_keeping_topology(sdf, 1.5, R)
    assert _betti((out < 0).numpy(), grid) == before
    leg_in = leg_far & (sdf < 0)
    assert torch.equal(out[leg_in], sdf[leg_in])  # thinner than min_depth: its inside points do not move
    # the points just outside it keep the window's shift (as far out as before), which leaves the leg inside
    assert bool((out[leg_far & (sdf >= 0)] >= sdf[leg_far & (sdf >= 0)]).all())
    assert torch.allclose(out[body], sdf[body] + 1.5)
    # only the points the caller marks may keep their own thickness: with none marked the leg is shrunk
    none, _ = shrink_keeping_topology(sdf, 1.5, R, thin_parts=torch.zeros_like(sdf, dtype=torch.bool))
    assert not torch.equal(none[leg_in], sdf[leg_in])
    assert torch.equal(shrink_keeping_topology(sdf, 1.5, R, thin_parts=sdf < 0)[0], out)
    with pytest.raises(ValueError, match="thin_parts"):
        shrink_keeping_topology(sdf, 1.5, R, thin_parts=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="sdf"):
        local_thickness(sdf.numpy(), 4.0)
    with pytest.raises(ValueError, match="cap"):
        local_thickness(sdf.reshape(n, n, n).numpy(), -1.0)

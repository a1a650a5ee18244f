"""TetGrid, marching_tets and DMTet: grid validity, the 16 cases, sphere/torus references, gradients."""
import math

import numpy as np
import pytest
import torch

from taichi_dr import DMTet, TetGrid, marching_tets, sdf_reg_loss, sdf_reg_weight
from taichi_dr.geometry.dmtet import positional_encoding
from taichi_dr.geometry.marching_tets import NUM_TRIANGLES

UNIT_TET = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)


def tet_volumes(verts, tets):
    v = verts.double()[tets.long()]
    return torch.det(torch.stack([v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 3] - v[:, 0]], 1)) / 6


def mesh_stats(verts, faces):
    v = verts.double()[faces.long()]
    cr = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    area = float(cr.norm(dim=1).sum() / 2)
    volume = float((v[:, 0] * torch.linalg.cross(v[:, 1], v[:, 2])).sum() / 6)
    f = faces.long()
    e = torch.sort(torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)[0]
    uniq, counts = torch.unique(e, dim=0, return_counts=True)
    return area, volume, verts.shape[0] - uniq.shape[0] + faces.shape[0], counts


@pytest.mark.parametrize("res,scale", [(1, 1.0), (3, 2.0), (7, 0.5)])
def test_grid_is_valid_and_conforming(res, scale):
    g = TetGrid.create(res, scale)
    assert g.verts.shape == ((res + 1) ** 3, 3) and g.tets.shape == (6 * res ** 3, 4)
    vol = tet_volumes(g.verts, g.tets)
    assert bool((vol > 0).all())
    assert math.isclose(float(vol.sum()), scale ** 3, rel_tol=1e-6)
    assert float(g.verts.min()) == -scale / 2 and float(g.verts.max()) == scale / 2
    # each interior face is shared by exactly two tets, boundary faces by one
    t = g.tets.long()
    faces = torch.sort(torch.cat([t[:, [1, 2, 3]], t[:, [0, 2, 3]], t[:, [0, 1, 3]], t[:, [0, 1, 2]]]), 1)[0]
    _, counts = torch.unique(faces, dim=0, return_counts=True)
    assert set(counts.tolist()) <= {1, 2}
    assert int((counts == 1).sum()) == 6 * 2 * res * res  # two triangles per boundary square
    # edges unique with i < j, and tet_edges point at the right vertex pairs
    assert bool((g.edges[:, 0] < g.edges[:, 1]).all())
    assert torch.unique(g.edges, dim=0).shape[0] == g.edges.shape[0]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for k, (i, j) in enumerate(pairs):
        e = g.edges[g.tet_edges[:, k].long()]
        assert torch.equal(e[:, 0], torch.minimum(g.tets[:, i], g.tets[:, j]))
        assert torch.equal(e[:, 1], torch.maximum(g.tets[:, i], g.tets[:, j]))


def test_grid_save_load_roundtrip(tmp_path):
    g = TetGrid.create(4, 2.0)
    g.save(tmp_path / "g.npz")
    h = TetGrid.load(tmp_path / "g.npz")
    assert torch.equal(g.tets, h.tets) and torch.equal(g.edges, h.edges) and h.resolution == 4
    np.savez(tmp_path / "nv.npz", vertices=g.verts.numpy(), indices=g.tets.numpy())  # nvdiffrec's layout
    key = lambda e: sorted(map(tuple, e.tolist()))
    assert key(TetGrid.load(tmp_path / "nv.npz").edges) == key(g.edges)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        TetGrid.load(tmp_path / "bad.npz")


def test_single_tet_crossings_at_two_thirds():
    v, f = marching_tets(UNIT_TET, torch.tensor([-1, -1, 0.5, 0.5], dtype=torch.float64), torch.tensor([[0, 1, 2, 3]]))
    expected = torch.tensor([[0, 2 / 3, 0], [0, 0, 2 / 3], [1 / 3, 2 / 3, 0], [1 / 3, 0, 2 / 3]], dtype=torch.float64)
    assert torch.allclose(v, expected)
    assert f.tolist() == [[3, 0, 1], [3, 2, 0]]


@pytest.mark.parametrize("case", range(16))
def test_all_sixteen_cases_count_and_winding(case):
    sdf = torch.tensor([1.0 if case >> i & 1 else -1.0 for i in range(4)], dtype=torch.float64)
    sdf = sdf * torch.tensor([1.0, 0.7, 1.3, 0.9], dtype=torch.float64)  # generic magnitudes
    v, f = marching_tets(UNIT_TET, sdf, torch.tensor([[0, 1, 2, 3]]))
    assert f.shape[0] == NUM_TRIANGLES[case]
    inside = UNIT_TET[sdf < 0].mean(0) if bool((sdf < 0).any()) else None
    for tri in f.long():
        p = v[tri]
        n = torch.linalg.cross(p[1] - p[0], p[2] - p[0])
        # the normal points away from the negative (inside) vertices
        assert float((n * (p.mean(0) - inside)).sum()) > 0


def test_exact_zero_counts_as_outside_and_no_nan():
    v, f = marching_tets(UNIT_TET, torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([[0, 1, 2, 3]]))
    assert f.shape == (1, 3) and bool(torch.isfinite(v).all())
    assert torch.allclose(v, UNIT_TET[1:])  # crossing exactly at the zero vertices


def test_sphere_resolution_64_watertight_area_volume_radius():
    g = TetGrid.create(64, 2.2)
    r = 0.8
    v, f = marching_tets(g.verts, g.verts.norm(dim=1) - r, g.tets, g.edges, g.tet_edges)
    area, volume, chi, counts = mesh_stats(v, f)
    assert bool((counts == 2).all())  # every edge shared by exactly two faces
    assert chi == 2
    assert abs(area / (4 * math.pi * r * r) - 1) < 0.01
    assert abs(volume / (4 / 3 * math.pi * r ** 3) - 1) < 0.01  # positive: normals point outwards
    assert float((v.norm(dim=1) / r - 1).abs().max()) < 0.01


def test_torus_euler_characteristic_zero_and_empty_result():
    g = TetGrid.create(48, 2.2)
    p = g.verts
    q = torch.stack([p[:, [0, 2]].norm(dim=1) - 0.6, p[:, 1]], 1)
    v, f = marching_tets(g.verts, q.norm(dim=1) - 0.25, g.tets, g.edges, g.tet_edges)
    assert mesh_stats(v, f)[2] == 0
    v, f = marching_tets(g.verts, torch.ones(g.verts.shape[0]), g.tets)
    assert v.shape == (0, 3) and f.shape == (0, 3)


@pytest.mark.parametrize("res", [1, 2, 5, 12, 33])
def test_lattice_path_identical_to_general_path(res):
    """A grid from TetGrid.create passed whole takes the lattice path (indices from arithmetic, rows
    skipped); its vertices, faces (same order) and gradients must equal the general path's."""
    g = TetGrid.create(res, 2.0)
    gen = torch.Generator().manual_seed(res)
    V = g.verts.shape[0]
    fields = {
        "noise": torch.randn(V, generator=gen),
        "sphere": g.verts.norm(dim=1) - 0.61,
        "exact zeros": torch.randint(-1, 2, (V,), generator=gen).float(),  # 0 counts as outside
        "two spheres, f64": torch.minimum((g.verts.double() - 0.4).norm(dim=1), (g.verts.double() + 0.3).norm(dim=1)) - 0.35,
        "all outside": torch.rand(V, generator=gen) + 0.1,
    }
    for name, sdf in fields.items():
        outs = []
        for whole in (False, True):
            v = g.verts.to(sdf.dtype).clone().requires_grad_(True)
            s = sdf.clone().requires_grad_(True)
            mv, faces = marching_tets(v, s, g) if whole else marching_tets(v, s, g.tets, g.edges, g.tet_edges)
            w = torch.arange(mv.numel(), dtype=mv.dtype).reshape(mv.shape)
            (mv * w.sin()).sum().backward()
            outs.append((mv.detach(), faces, v.grad, s.grad))
        for a, b, what in zip(*outs, ("verts", "faces", "d/dverts", "d/dsdf")):
            # gradients are sums of atomic adds in thread order: equal up to rounding
            same = torch.equal(a, b) if what in ("verts", "faces") else torch.allclose(a, b, rtol=1e-5, atol=1e-6)
            assert same, f"{name}: {what} differ"


def test_grid_argument_general_grids_and_flags(tmp_path):
    g = TetGrid.create(3, 2.0)
    assert g.lattice and TetGrid.load(_saved(g, tmp_path)).lattice
    foreign = TetGrid.from_arrays(g.verts, g.tets, resolution=3, scale=2.0)  # same arrays, not create()'s
    assert not foreign.lattice
    sdf = g.verts.norm(dim=1) - 0.55
    a, b = marching_tets(g.verts, sdf, g), marching_tets(g.verts, sdf, foreign)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"verts: expected shape \[64, 3\]"):
        marching_tets(g.verts[:10], sdf[:10], g)
    m = DMTet(grid_resolution=4, mode="direct")
    with torch.no_grad():
        m.deform_param.copy_(torch.randn(m.deform_param.shape, generator=torch.Generator().manual_seed(3)))
    assert m.grid().lattice
    mv, faces = m.mesh()  # lattice path on the deformed grid
    mv2, faces2 = marching_tets(m.deformed_verts(), m()[0], m.tets, m.edges, m.tet_edges)
    assert torch.equal(faces, faces2) and torch.allclose(mv, mv2)


def _saved(g, tmp_path):
    g.save(tmp_path / "g.npz")
    return tmp_path / "g.npz"


def test_dmtet_forward_bounds_mesh_and_gradients():
    torch.manual_seed(0)
    m = DMTet(grid_resolution=12, scale=2.0, hidden_dim=32, num_layers=2)
    err = m.init_sphere(0.5, steps=250)
    assert err < 5e-3
    sdf, off = m()
    assert sdf.shape == (m.verts.shape[0],) and off.shape == m.verts.shape
    assert float(off.abs().max()) <= 0.5 * m.cell + 1e-7  # bounded to half a cell
    v, f = m.mesh()
    assert f.shape[0] > 0 and abs(float(v.norm(dim=1).mean()) - 0.5) < 0.05
    (v ** 2).sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.parameters())
    d = DMTet(grid_resolution=8, mode="direct")
    d.init_from_sdf(lambda p: p.norm(dim=-1) - 0.5)
    assert d.mesh()[1].shape[0] > 0


def test_dmtet_mlp_caches_the_grid_encoding_outside_checkpoints():
    """The MLP reads the grid's positional encoding from a buffer computed once: the same values as
    encoding the vertices each step, and no entry in the state dict (older checkpoints still load)."""
    m = DMTet(grid_resolution=6, scale=2.0, hidden_dim=16, num_layers=2, multires=3)
    assert torch.equal(m.encoding, positional_encoding(m.verts / (m.scale / 2), 3))
    sd = m.state_dict()
    assert "encoding" not in sd
    other = DMTet(grid_resolution=6, scale=2.0, hidden_dim=16, num_layers=2, multires=3)
    other.load_state_dict(sd)  # strict: the buffer is neither expected nor missing
    a, b = m(), other()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    direct = m.net(positional_encoding(m.verts / (m.scale / 2), 3))
    assert torch.equal(a[0], direct[:, 0])


def test_dmtet_grad_rows_same_values_and_gradient_of_the_surface():
    """forward(grad_rows=surface_rows): the network runs without autograd everywhere and with it on
    the ends of sign-changing edges only. Values equal the plain forward to the bit; the gradient of
    a loss on the marching-tets mesh (and of the SDF regulariser, which reads the same edges) equals
    the plain one to float64 rounding; a row outside the set gets no gradient, as documented."""
    torch.manual_seed(0)
    m = DMTet(grid_resolution=10, scale=2.0, hidden_dim=16, num_layers=2, multires=3).double()
    m.init_sphere(0.55, steps=200)

    def grads(grad_rows, extra=None):
        m.zero_grad()
        sdf, off = m(grad_rows=grad_rows)
        v, f = m.mesh(sdf, off)
        loss = (v ** 3).sum() + sdf_reg_loss(sdf, m.edges)
        if extra is not None:
            loss = loss + sdf[extra].sum()
        loss.backward()
        return sdf.detach().clone(), off.detach().clone(), [p.grad.clone() for p in m.parameters()]

    s0, o0, g0 = grads(None)
    rows = m.surface_rows(s0)
    # brute force: every vertex with an edge to a vertex of the other side (no exact zeros here)
    inside = s0 < 0
    e = m.edges.long()
    want = sorted(set(e[inside[e[:, 0]] != inside[e[:, 1]]].reshape(-1).tolist()))
    assert rows.dtype == torch.int64 and rows.tolist() == want and 0 < len(want) < s0.numel() // 2
    # an exact 0 among positives: no edge for marching tets (0 is outside), every edge at it for the
    # SDF regulariser (0 is inside): the rows are that vertex and its grid neighbours
    z = torch.ones_like(s0)
    z[int(rows[0])] = 0.0
    at = e[(e == int(rows[0])).any(1)]
    assert m.surface_rows(z).tolist() == sorted(set(at.reshape(-1).tolist()))
    s1, o1, g1 = grads(m.surface_rows)
    assert torch.equal(s0, s1) and torch.equal(o0, o1)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * float(a.abs().max()))
    far = int(torch.nonzero(~torch.isin(torch.arange(s0.numel()), rows))[0])
    _, _, g2 = grads(m.surface_rows, extra=far)  # the documented contract: no gradient from row `far`
    _, _, g3 = grads(None, extra=far)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12 * float(a.abs().max())) for a, b in zip(g1, g2))
    assert not all(torch.allclose(a, b) for a, b in zip(g2, g3))
    with pytest.raises(ValueError, match="sdf: expected shape"):
        m.surface_rows(s0[:-1])
    d = DMTet(grid_resolution=4, mode="direct")  # direct mode ignores grad_rows (nothing to save)
    assert torch.equal(d(grad_rows=d.surface_rows)[0], d()[0])


def test_sdf_reg_loss_and_schedule():
    sdf = torch.tensor([-1.0, 2.0, 0.5, -0.3], dtype=torch.float64, requires_grad=True)
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3]])
    loss = sdf_reg_loss(sdf, edges)
    # by hand: sign-changing edges (0,1) and (2,3)
    bce = lambda x, y: -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
    expected = (bce(-1, 1) + bce(-0.3, 1)) / 2 + (bce(2, 0) + bce(0.5, 0)) / 2
    assert math.isclose(float(loss), expected, rel_tol=1e-9)
    assert torch.autograd.gradcheck(lambda s: sdf_reg_loss(s, edges), (sdf,))
    assert float(sdf_reg_loss(torch.ones(4), edges)) == 0.0
    assert sdf_reg_weight(0, 100) == 0.2 and math.isclose(sdf_reg_weight(25, 100), 0.01)
    assert math.isclose(sdf_reg_weight(12.5, 100), 0.105) and sdf_reg_weight(90, 100) == 0.01


def test_geometry_bad_input():
    g = TetGrid.create(2)
    with pytest.raises(ValueError, match=r"sdf: expected shape \[27\]"):
        marching_tets(g.verts, torch.zeros(5), g.tets)
    with pytest.raises(ValueError, match=r"tets: expected indices in \[0, 27\)"):
        marching_tets(g.verts, torch.zeros(27), g.tets + 100)
    with pytest.raises(ValueError, match="sdf: expected finite"):
        marching_tets(g.verts, torch.full((27,), float("nan")), g.tets)
    with pytest.raises(ValueError, match="resolution"):
        TetGrid.create(0)
    with pytest.raises(TypeError, match="resolution"):
        TetGrid.create(2.5)
    with pytest.raises(TypeError, match="sdf: expected dtype"):
        marching_tets(g.verts, torch.zeros(27, dtype=torch.int32), g.tets)
    with pytest.raises(ValueError, match=r"edges: expected indices in \[0, 27\)"):
        marching_tets(g.verts, torch.zeros(27), g.tets, g.edges + 27, g.tet_edges)
    with pytest.raises(ValueError, match=r"tet_edges: expected indices in \[0, %d\)" % g.edges.shape[0]):
        marching_tets(g.verts, torch.zeros(27), g.tets, g.edges, g.tet_edges - 1)
    with pytest.raises(ValueError, match=r"tet_edges: expected shape \[48, 6\]"):
        marching_tets(g.verts, torch.zeros(27), g.tets, g.edges, g.tet_edges[:5])


@pytest.mark.parametrize("res", [2, 5])
def test_grid_closed_form_edges_match_sorted_unique(res):
    # test_grid_is_valid_and_conforming already checks that tet_edges name the right vertex pairs;
    # here: the closed-form edge list is exactly the set of tet edges (none missing, none unused),
    # E = 7R³ + 9R² + 3R, compared with the independent sort-and-unique path of from_arrays.
    g = TetGrid.create(res)
    h = TetGrid.from_arrays(g.verts, g.tets)
    assert g.edges.shape[0] == 7 * res ** 3 + 9 * res ** 2 + 3 * res == h.edges.shape[0]
    key = g.edges[:, 0].long() * g.verts.shape[0] + g.edges[:, 1].long()
    assert torch.equal(g.edges[torch.argsort(key)], h.edges)
    assert torch.equal(g.edges[g.tet_edges.long()], h.edges[h.tet_edges.long()])

"""marching_tets(): a signed distance on a tetrahedral grid -> a watertight triangle mesh.

Each tet's four SDF signs pick one of 16 cases (bit i set when vertex i is outside, s_i >= 0;
an exact 0 counts as outside, so no surface vertex ever sits on a grid vertex and nothing
divides by zero). A tet with one or three vertices outside is cut by one triangle, a tet with
two outside by a quad (two triangles), others not at all. Triangle corners are *grid edges*
whose end points have different signs, and each such edge gets exactly **one** surface vertex,
at the zero of the linear interpolant of the SDF along the edge:

    p = (v_a·s_b − v_b·s_a) / (s_b − s_a).

Because neighbouring tets share their edges, they share these vertices too: the mesh is
watertight and (for a generic SDF) manifold by construction.

The gradient of p is what lets DMTet move the surface (the SDF values) and the grid (positions):

    dp/dv_a = s_b/(s_b − s_a),       dp/dv_b = −s_a/(s_b − s_a),
    dp/ds_a = (p − v_b)/(s_b − s_a), dp/ds_b = (v_a − p)/(s_b − s_a).

Geometrically, raising s_a (making a more "outside") slides p along the edge towards a.

Kernels: ``classify`` (per tet: case, triangle count), ``mark`` (per edge: sign change), ``emit``
(per tet: faces, after a prefix sum over triangle counts gives each tet its output slot), and the
differentiable pair ``place``/``place_bwd`` (per surface vertex). Only the last pair carries
gradients; topology is index work. The triangle table lists local edges (01,02,03,12,13,23) and
is wound so that face normals point towards positive SDF (outside) for positively oriented tets.
"""
import functools
from typing import Optional, Tuple

import taichi as ti
import torch

from taichi_dr._checks import FLOATS, INTS, check_finite, check_tensor, shape_str
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["marching_tets", "TRIANGLE_TABLE", "NUM_TRIANGLES"]

NUM_TRIANGLES = [0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0]
TRIANGLE_TABLE = [
    [-1, -1, -1, -1, -1, -1], [1, 0, 2, -1, -1, -1], [4, 0, 3, -1, -1, -1], [1, 4, 2, 1, 3, 4],
    [3, 1, 5, -1, -1, -1], [2, 3, 0, 2, 5, 3], [1, 4, 0, 1, 5, 4], [4, 2, 5, -1, -1, -1],
    [4, 5, 2, -1, -1, -1], [4, 1, 0, 4, 5, 1], [3, 2, 0, 3, 5, 2], [1, 3, 5, -1, -1, -1],
    [4, 1, 2, 4, 3, 1], [3, 0, 4, -1, -1, -1], [2, 0, 1, -1, -1, -1], [-1, -1, -1, -1, -1, -1],
]


@functools.lru_cache(maxsize=None)
def _kernels(real):
    nd = ti.types.ndarray

    @ti.kernel
    def classify(sdf: nd(dtype=real, ndim=1), tets: nd(dtype=ti.i32, ndim=2), ntab: nd(dtype=ti.i32, ndim=1),
                 case: nd(dtype=ti.i32, ndim=1), ntri: nd(dtype=ti.i64, ndim=1)):
        for t in case:
            c = 0
            for i in ti.static(range(4)):
                if sdf[tets[t, i]] >= 0:
                    c |= 1 << i
            case[t] = c
            ntri[t] = ti.cast(ntab[c], ti.i64)

    @ti.kernel
    def mark(sdf: nd(dtype=real, ndim=1), edges: nd(dtype=ti.i32, ndim=2), crossing: nd(dtype=ti.i64, ndim=1)):
        for e in crossing:
            crossing[e] = ti.cast((sdf[edges[e, 0]] >= 0) != (sdf[edges[e, 1]] >= 0), ti.i64)

    @ti.kernel
    def emit(case: nd(dtype=ti.i32, ndim=1), first: nd(dtype=ti.i64, ndim=1), ttab: nd(dtype=ti.i32, ndim=2),
             ntab: nd(dtype=ti.i32, ndim=1), tet_edges: nd(dtype=ti.i32, ndim=2), edge_vert: nd(dtype=ti.i64, ndim=1),
             faces: nd(dtype=ti.i32, ndim=2)):
        for t in case:
            c = case[t]
            for k in ti.static(range(2)):
                if k < ntab[c]:
                    f = first[t] + k
                    for j in ti.static(range(3)):
                        faces[f, j] = ti.cast(edge_vert[tet_edges[t, ttab[c, 3 * k + j]]], ti.i32)

    @ti.kernel
    def place(verts: nd(dtype=real, ndim=2), sdf: nd(dtype=real, ndim=1), edges: nd(dtype=ti.i32, ndim=2),
              cross_edges: nd(dtype=ti.i64, ndim=1), out: nd(dtype=real, ndim=2)):
        for m in cross_edges:
            a, b = edges[cross_edges[m], 0], edges[cross_edges[m], 1]
            sa, sb = sdf[a], sdf[b]
            inv = 1.0 / (sb - sa)  # never 0: the signs differ
            for d in ti.static(range(3)):
                out[m, d] = (verts[a, d] * sb - verts[b, d] * sa) * inv

    @ti.kernel
    def place_bwd(verts: nd(dtype=real, ndim=2), sdf: nd(dtype=real, ndim=1), edges: nd(dtype=ti.i32, ndim=2),
                  cross_edges: nd(dtype=ti.i64, ndim=1), out: nd(dtype=real, ndim=2), g_out: nd(dtype=real, ndim=2),
                  g_verts: nd(dtype=real, ndim=2), g_sdf: nd(dtype=real, ndim=1)):
        for m in cross_edges:
            a, b = edges[cross_edges[m], 0], edges[cross_edges[m], 1]
            sa, sb = sdf[a], sdf[b]
            inv = 1.0 / (sb - sa)
            ga = ti.cast(0.0, real)
            gb = ti.cast(0.0, real)
            for d in ti.static(range(3)):
                g = g_out[m, d]
                g_verts[a, d] += g * sb * inv
                g_verts[b, d] -= g * sa * inv
                ga += g * (out[m, d] - verts[b, d]) * inv
                gb += g * (verts[a, d] - out[m, d]) * inv
            g_sdf[a] += ga
            g_sdf[b] += gb

    return classify, mark, emit, place, place_bwd


class _Place(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts, sdf, edges, cross_edges):
        place = _kernels(ti_real(verts.dtype))[3]
        verts, sdf = verts.detach().contiguous(), sdf.detach().contiguous()
        out = torch.empty((cross_edges.numel(), 3), dtype=verts.dtype, device=verts.device)
        if cross_edges.numel():
            place(verts, sdf, edges, cross_edges, out)
        ctx.save_for_backward(verts, sdf, edges, cross_edges, out)
        return out

    @staticmethod
    def backward(ctx, g_out):
        verts, sdf, edges, cross_edges, out = ctx.saved_tensors
        out = out.detach()  # a saved output carries our own grad_fn; Taichi must only see plain data
        g_verts, g_sdf = torch.zeros_like(verts), torch.zeros_like(sdf)
        if cross_edges.numel():
            _kernels(ti_real(verts.dtype))[4](verts, sdf, edges, cross_edges, out, g_out.detach().contiguous(), g_verts, g_sdf)
        return g_verts, g_sdf, None, None


def _tables(device):
    return (torch.tensor(TRIANGLE_TABLE, dtype=torch.int32, device=device),
            torch.tensor(NUM_TRIANGLES, dtype=torch.int32, device=device))


def marching_tets(verts: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor, edges: Optional[torch.Tensor] = None,
                  tet_edges: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Extract the zero level set of ``sdf`` on a tetrahedral grid.

    Args:
        verts: ``[V, 3]`` float32/float64 grid vertex positions (e.g. deformed DMTet vertices).
        sdf: ``[V]`` float32/float64 signed distance per vertex (> 0 outside, = 0 counts as outside).
        tets: ``[T, 4]`` int32/int64 positively oriented tetrahedra.
        edges, tet_edges: optional ``[E, 2]`` unique grid edges and ``[T, 6]`` per-tet edge ids, as in
            :class:`~taichi_dr.geometry.tetgrid.TetGrid` (pass them to skip recomputing them).

    Returns:
        mesh_verts: ``[M, 3]`` surface vertices (dtype of ``verts``/``sdf``, the wider of the two),
            one per sign-changing grid edge.
        faces: ``[F, 3]`` int32, wound so that normals point towards positive SDF. Both empty
            (``[0, 3]``) when the SDF does not change sign.

    Differentiable w.r.t. ``verts`` and ``sdf``.
    """
    ensure_init()
    check_tensor("verts", verts, ndim=2, last=3, dtypes=FLOATS, expected="[V, 3]")
    V = verts.shape[0]
    check_tensor("sdf", sdf, dtypes=FLOATS)
    if sdf.dim() != 1 or sdf.shape[0] != V:
        raise ValueError(f"sdf: expected shape [{V}] (one value per vertex), got {shape_str(sdf.shape)}")
    check_finite("sdf", sdf)
    check_finite("verts", verts)
    check_tensor("tets", tets, ndim=2, last=4, dtypes=INTS, expected="[T, 4]")
    if tets.numel() and (int(tets.min()) < 0 or int(tets.max()) >= V):
        raise ValueError(f"tets: expected indices in [0, {V}), got [{int(tets.min())}, {int(tets.max())}]")
    dev = verts.device
    dtype = torch.promote_types(verts.dtype, sdf.dtype)
    verts, sdf = verts.to(dtype), sdf.to(dtype)
    tets32 = tets.to(torch.int32).contiguous()
    if edges is None or tet_edges is None:
        from taichi_dr.geometry.tetgrid import TetGrid

        g = TetGrid.from_arrays(torch.zeros(V, 3), tets.cpu())
        edges, tet_edges = g.edges.to(dev), g.tet_edges.to(dev)
    edges32, tet_edges32 = edges.to(torch.int32).contiguous(), tet_edges.to(torch.int32).contiguous()
    classify, mark, emit, _, _ = _kernels(ti_real(dtype))
    sdf_c = sdf.detach().contiguous()
    T, E = tets32.shape[0], edges32.shape[0]
    empty = (torch.zeros((0, 3), dtype=dtype, device=dev) + verts.sum() * 0 + sdf.sum() * 0,
             torch.zeros((0, 3), dtype=torch.int32, device=dev))
    if T == 0 or E == 0:
        return empty
    ttab, ntab = _tables(dev)
    case = torch.empty(T, dtype=torch.int32, device=dev)
    ntri = torch.empty(T, dtype=torch.int64, device=dev)
    classify(sdf_c, tets32, ntab, case, ntri)
    crossing = torch.empty(E, dtype=torch.int64, device=dev)
    mark(sdf_c, edges32, crossing)
    cross_edges = torch.nonzero(crossing).squeeze(1).contiguous()
    if cross_edges.numel() == 0:
        return empty
    # prefix sums: output slot of each tet's first face, and surface-vertex id of each crossing edge
    first = (torch.cumsum(ntri, 0) - ntri).contiguous()
    F = int(ntri.sum())
    edge_vert = torch.full((E,), -1, dtype=torch.int64, device=dev)
    edge_vert[cross_edges] = torch.arange(cross_edges.numel(), device=dev)
    faces = torch.empty((F, 3), dtype=torch.int32, device=dev)
    emit(case, first, ttab, ntab, tet_edges32, edge_vert, faces)
    mesh_verts = _Place.apply(verts, sdf, edges32, cross_edges)
    return mesh_verts, faces

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

Kernels: ``classify`` (per tet: case, triangle count), ``mark`` (per edge: sign change),
``compact`` (numbers the crossing edges) and ``emit`` (per tet: faces, at an output slot from
per-block counts), and the
differentiable pair ``place``/``place_bwd`` (per surface vertex). Only the last pair carries
gradients; topology is index work. The triangle table lists local edges (01,02,03,12,13,23) and
is wound so that face normals point towards positive SDF (outside) for positively oriented tets.
"""
import functools
from types import SimpleNamespace
from typing import Optional, Tuple

import taichi as ti
import torch

from taichi_dr._checks import FLOATS, INTS, check_finite, check_tensor, shape_str
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["marching_tets", "TRIANGLE_TABLE", "NUM_TRIANGLES"]

BLOCK = 256  # tets (edges) per serial block of the compaction passes

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
    vec3 = ti.types.vector(3, real)
    vec2i = ti.types.vector(2, ti.i32)
    vec4i = ti.types.vector(4, ti.i32)

    # Index work uses int32 and flat range-for loops (struct-fors over ndarrays pay integer
    # divisions per element); tets and edges are read as one vector load each.

    # Compaction without a full-length prefix sum: the tets (edges) are cut into blocks of BLOCK;
    # a first pass counts per block, a tiny cumsum over the block counts gives each block its
    # output offset, and a second pass walks each block serially, writing in order. The output
    # order is the input order, whatever the threads do.

    @ti.kernel
    def classify(sdf: nd(dtype=real, ndim=1), tets: nd(dtype=vec4i, ndim=1), ntab: nd(dtype=ti.i32, ndim=1),
                 case: nd(dtype=ti.i8, ndim=1), block_tris: nd(dtype=ti.i32, ndim=1)):
        T = tets.shape[0]
        for b in range(block_tris.shape[0]):
            count = 0
            for t in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, T)):
                ids = tets[t]
                c = 0
                for i in ti.static(range(4)):
                    if sdf[ids[i]] >= 0:
                        c |= 1 << i
                case[t] = ti.cast(c, ti.i8)
                count += ntab[c]
            block_tris[b] = count

    @ti.kernel
    def mark(sdf: nd(dtype=real, ndim=1), edges: nd(dtype=vec2i, ndim=1), crossing: nd(dtype=ti.i8, ndim=1),
             block_verts: nd(dtype=ti.i32, ndim=1)):
        E = edges.shape[0]
        for b in range(block_verts.shape[0]):
            count = 0
            for e in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, E)):
                ab = edges[e]
                x = ti.cast((sdf[ab[0]] >= 0) != (sdf[ab[1]] >= 0), ti.i32)
                crossing[e] = ti.cast(x, ti.i8)
                count += x
            block_verts[b] = count

    @ti.kernel
    def compact(crossing: nd(dtype=ti.i8, ndim=1), block_end: nd(dtype=ti.i32, ndim=1),
                vid: nd(dtype=ti.i32, ndim=1), cross_edges: nd(dtype=ti.i32, ndim=1)):
        # number the crossing edges in order: vid[e] = surface vertex of edge e (only crossing
        # edges are ever read), cross_edges[m] = the edge of surface vertex m
        E = crossing.shape[0]
        for b in range(block_end.shape[0]):
            m = 0
            if b > 0:
                m = block_end[b - 1]
            # blocks without crossings (most of the grid) are skipped after one load
            for e in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, E) if block_end[b] > m else b * BLOCK):
                if crossing[e] != 0:
                    vid[e] = m
                    cross_edges[m] = e
                    m += 1

    @ti.kernel
    def emit(case: nd(dtype=ti.i8, ndim=1), block_end: nd(dtype=ti.i32, ndim=1), ttab: nd(dtype=ti.i32, ndim=2),
             ntab: nd(dtype=ti.i32, ndim=1), tet_edges: nd(dtype=ti.i32, ndim=2), vid: nd(dtype=ti.i32, ndim=1),
             faces: nd(dtype=ti.i32, ndim=2)):
        # each tet's 0-2 triangles, in tet order; corners are the surface vertices of its edges
        T = case.shape[0]
        for b in range(block_end.shape[0]):
            f = 0
            if b > 0:
                f = block_end[b - 1]
            for t in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, T) if block_end[b] > f else b * BLOCK):
                c = ti.cast(case[t], ti.i32)
                n = ntab[c]
                for k in range(n):
                    for j in ti.static(range(3)):
                        faces[f, j] = vid[tet_edges[t, ttab[c, 3 * k + j]]]
                    f += 1

    @ti.kernel
    def place(verts: nd(dtype=vec3, ndim=1), sdf: nd(dtype=real, ndim=1), edges: nd(dtype=vec2i, ndim=1),
              cross_edges: nd(dtype=ti.i32, ndim=1), out: nd(dtype=vec3, ndim=1)):
        for m in range(cross_edges.shape[0]):
            ab = edges[cross_edges[m]]
            sa, sb = sdf[ab[0]], sdf[ab[1]]
            inv = 1.0 / (sb - sa)  # never 0: the signs differ
            out[m] = (verts[ab[0]] * sb - verts[ab[1]] * sa) * inv

    @ti.kernel
    def place_bwd(verts: nd(dtype=vec3, ndim=1), sdf: nd(dtype=real, ndim=1), edges: nd(dtype=vec2i, ndim=1),
                  cross_edges: nd(dtype=ti.i32, ndim=1), out: nd(dtype=vec3, ndim=1), g_out: nd(dtype=vec3, ndim=1),
                  g_verts: nd(dtype=real, ndim=2), g_sdf: nd(dtype=real, ndim=1)):
        for m in range(cross_edges.shape[0]):
            ab = edges[cross_edges[m]]
            a, b = ab[0], ab[1]
            sa, sb = sdf[a], sdf[b]
            inv = 1.0 / (sb - sa)
            g = g_out[m]
            p = out[m]
            for d in ti.static(range(3)):
                g_verts[a, d] += g[d] * sb * inv
                g_verts[b, d] -= g[d] * sa * inv
            g_sdf[a] += g.dot(p - verts[b]) * inv
            g_sdf[b] += g.dot(verts[a] - p) * inv

    return SimpleNamespace(classify=classify, mark=mark, compact=compact, emit=emit, place=place, place_bwd=place_bwd)


class _Place(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts, sdf, edges, cross_edges):
        k = _kernels(ti_real(verts.dtype))
        verts, sdf = verts.detach().contiguous(), sdf.detach().contiguous()
        out = torch.empty((cross_edges.numel(), 3), dtype=verts.dtype, device=verts.device)
        if cross_edges.numel():
            k.place(verts, sdf, edges, cross_edges, out)
        ctx.save_for_backward(verts, sdf, edges, cross_edges, out)
        return out

    @staticmethod
    def backward(ctx, g_out):
        verts, sdf, edges, cross_edges, out = ctx.saved_tensors
        out = out.detach()  # a saved output carries our own grad_fn; Taichi must only see plain data
        g_verts, g_sdf = torch.zeros_like(verts), torch.zeros_like(sdf)
        if cross_edges.numel():
            _kernels(ti_real(verts.dtype)).place_bwd(verts, sdf, edges, cross_edges, out, g_out.detach().contiguous(),
                                                     g_verts, g_sdf)
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
    if tets.numel():
        lo, hi = (int(v) for v in torch.aminmax(tets))
        if lo < 0 or hi >= V:
            raise ValueError(f"tets: expected indices in [0, {V}), got [{lo}, {hi}]")
    dev = verts.device
    dtype = torch.promote_types(verts.dtype, sdf.dtype)
    verts, sdf = verts.to(dtype), sdf.to(dtype)
    tets32 = tets.to(torch.int32).contiguous()
    if edges is None or tet_edges is None:
        from taichi_dr.geometry.tetgrid import TetGrid

        g = TetGrid.from_arrays(torch.zeros(V, 3), tets.cpu())
        edges, tet_edges = g.edges.to(dev), g.tet_edges.to(dev)
    edges32, tet_edges32 = edges.to(torch.int32).contiguous(), tet_edges.to(torch.int32).contiguous()
    k = _kernels(ti_real(dtype))
    sdf_c = sdf.detach().contiguous()
    T, E = tets32.shape[0], edges32.shape[0]
    empty = (torch.zeros((0, 3), dtype=dtype, device=dev) + verts.sum() * 0 + sdf.sum() * 0,
             torch.zeros((0, 3), dtype=torch.int32, device=dev))
    if T == 0 or E == 0:
        return empty
    ttab, ntab = _tables(dev)
    nb_t, nb_e = (T + BLOCK - 1) // BLOCK, (E + BLOCK - 1) // BLOCK
    case = torch.empty(T, dtype=torch.int8, device=dev)
    block_tris = torch.empty(nb_t, dtype=torch.int32, device=dev)
    k.classify(sdf_c, tets32, ntab, case, block_tris)
    crossing = torch.empty(E, dtype=torch.int8, device=dev)
    block_verts = torch.empty(nb_e, dtype=torch.int32, device=dev)
    k.mark(sdf_c, edges32, crossing, block_verts)
    # int32 offsets suffice: a grid with 2^31 tets would not fit in memory
    verts_end = torch.cumsum(block_verts, 0, dtype=torch.int32)
    M = int(verts_end[-1])
    if M == 0:
        return empty
    vid = torch.empty(E, dtype=torch.int32, device=dev)
    cross_edges = torch.empty(M, dtype=torch.int32, device=dev)
    k.compact(crossing, verts_end, vid, cross_edges)
    tris_end = torch.cumsum(block_tris, 0, dtype=torch.int32)
    faces = torch.empty((int(tris_end[-1]), 3), dtype=torch.int32, device=dev)
    k.emit(case, tris_end, ttab, ntab, tet_edges32, vid, faces)
    mesh_verts = _Place.apply(verts, sdf, edges32, cross_edges)
    return mesh_verts, faces

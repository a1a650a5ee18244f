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

Kernels: ``count`` (per tet: case and triangle count; per edge: sign change; both per block),
``fill`` (numbers the crossing edges, then writes each tet's faces at an output slot from the
per-block counts), and the differentiable pair ``place``/``place_bwd`` (per surface vertex).
Only the last pair carries gradients; topology is index work. The triangle table lists local
edges (01,02,03,12,13,23) and is wound so that face normals point towards positive SDF (outside)
for positively oriented tets.

**Lattice path.** Given a grid made by :meth:`TetGrid.create` itself (``marching_tets(verts, sdf,
grid)``), every vertex, tet and edge index is a closed-form function of lattice coordinates, so
the topology passes read only the SDF (1 MB at R = 64) instead of 25 MB of tets and 15 MB of
edges, and skip whole rows of the lattice: a row of vertices along z whose SDF has one sign
everywhere cannot make a cube or an edge next to it cross unless a neighbouring row has the other
sign. The blocks are rows, numbered in the same order as the tets and edges, so the output is
*identical* to the general path (same vertex and face order), only faster.

The kernels live in :mod:`taichi_dr.geometry._marching_kernels`; this module holds the autograd
wrapper, the host-side steps between kernels (block cumsums, output allocation) and the checks.
"""
from typing import Optional, Tuple, Union

import torch

from taichi_dr._checks import (FLOATS, INTS, as_index32, check_finite, check_index, check_device, check_tensor,
                               shape_str)
from taichi_dr.geometry._marching_kernels import BLOCK, DIRS, NUM_TRIANGLES, TRIANGLE_TABLE
from taichi_dr.geometry._marching_kernels import kernels as _kernels
from taichi_dr.geometry._marching_kernels import lattice_kernels as _lattice_kernels
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["marching_tets", "TRIANGLE_TABLE", "NUM_TRIANGLES"]


class _Place(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts, sdf, ends):
        k = _kernels(ti_real(verts.dtype))
        verts, sdf = verts.detach().contiguous(), sdf.detach().contiguous()
        out = torch.empty((ends.shape[0], 3), dtype=verts.dtype, device=verts.device)
        if ends.shape[0]:
            k.place(verts, sdf, ends, out)
        ctx.save_for_backward(verts, sdf, ends, out)
        return out

    @staticmethod
    def backward(ctx, g_out):
        verts, sdf, ends, out = ctx.saved_tensors
        out = out.detach()  # a saved output carries our own grad_fn; Taichi must only see plain data
        g_verts, g_sdf = torch.zeros_like(verts), torch.zeros_like(sdf)
        if ends.shape[0]:
            _kernels(ti_real(verts.dtype)).place_bwd(verts, sdf, ends, out, g_out.detach().contiguous(),
                                                     g_verts, g_sdf)
        return g_verts, g_sdf, None


def _topology(sdf, tets32, edges32, tet_edges32):
    """General grids: (ends [M, 2] int32 grid vertices of each surface vertex's edge, faces [F, 3] int32)."""
    k = _kernels(ti_real(sdf.dtype))
    dev = sdf.device
    T, E = tets32.shape[0], edges32.shape[0]
    case = torch.empty(T, dtype=torch.int8, device=dev)
    crossing = torch.empty(E, dtype=torch.int8, device=dev)
    block_tris = torch.empty((T + BLOCK - 1) // BLOCK, dtype=torch.int32, device=dev)
    block_verts = torch.empty((E + BLOCK - 1) // BLOCK, dtype=torch.int32, device=dev)
    k.count(sdf, tets32, edges32, case, crossing, block_tris, block_verts)
    # int32 offsets suffice: a grid with 2^31 tets would not fit in memory
    verts_end = torch.cumsum(block_verts, 0, dtype=torch.int32)
    M = int(verts_end[-1]) if E else 0
    if M == 0:
        return None
    tris_end = torch.cumsum(block_tris, 0, dtype=torch.int32)
    vid = torch.empty(E, dtype=torch.int32, device=dev)
    ends = torch.empty((M, 2), dtype=torch.int32, device=dev)
    faces = torch.empty((int(tris_end[-1]), 3), dtype=torch.int32, device=dev)
    k.fill(crossing, verts_end, edges32, vid, ends, case, tris_end, tet_edges32, faces)
    return ends, faces


def _topology_lattice(sdf, R):
    """The same for a :meth:`TetGrid.create` grid of resolution R, from lattice arithmetic alone."""
    k = _lattice_kernels(ti_real(sdf.dtype))
    dev = sdf.device
    n = R + 1
    flag = torch.empty(n * n, dtype=torch.int8, device=dev)
    cube_mask = torch.empty(R ** 3, dtype=torch.int8, device=dev)  # written and read only in rows that cross
    block_tris = torch.empty(6 * R * R, dtype=torch.int32, device=dev)
    block_verts = torch.empty(sum((n - dx) * (n - dy) for dx, dy, _ in DIRS), dtype=torch.int32, device=dev)
    k.count(sdf, R, flag, cube_mask, block_tris, block_verts)
    verts_end = torch.cumsum(block_verts, 0, dtype=torch.int32)
    M = int(verts_end[-1])
    if M == 0:
        return None
    row_slot = torch.cumsum(block_verts > 0, 0, dtype=torch.int32) - 1  # read only for rows that cross
    vid = torch.empty((int(row_slot[-1]) + 1) * n, dtype=torch.int32, device=dev)
    ends = torch.empty((M, 2), dtype=torch.int32, device=dev)
    tris_end = torch.cumsum(block_tris, 0, dtype=torch.int32)
    faces = torch.empty((int(tris_end[-1]), 3), dtype=torch.int32, device=dev)
    k.fill(sdf, R, verts_end, row_slot, vid, ends, cube_mask, tris_end, faces)
    return ends, faces


def marching_tets(verts: torch.Tensor, sdf: torch.Tensor, tets: Union[torch.Tensor, TetGrid],
                  edges: Optional[torch.Tensor] = None,
                  tet_edges: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Extract the zero level set of ``sdf`` on a tetrahedral grid.

    Args:
        verts: ``[V, 3]`` float32/float64 grid vertex positions (e.g. deformed DMTet vertices).
        sdf: ``[V]`` float32/float64 signed distance per vertex (> 0 outside, = 0 counts as outside).
        tets: ``[T, 4]`` int32/int64 positively oriented tetrahedra, or a :class:`TetGrid` (its
            ``tets``, ``edges`` and ``tet_edges`` are used; a grid from :meth:`TetGrid.create` takes
            the faster lattice path, with identical output).
        edges, tet_edges: optional ``[E, 2]`` unique grid edges and ``[T, 6]`` per-tet edge ids, as in
            :class:`~taichi_dr.geometry.tetgrid.TetGrid` (pass them to skip recomputing them; they
            must describe ``tets``).

    Returns:
        mesh_verts: ``[M, 3]`` surface vertices (dtype of ``verts``/``sdf``, the wider of the two),
            one per sign-changing grid edge, in edge order.
        faces: ``[F, 3]`` int32, in tet order, wound so that normals point towards positive SDF.
            Both empty (``[0, 3]``) when the SDF does not change sign.

    Differentiable w.r.t. ``verts`` and ``sdf``.
    """
    ensure_init()
    check_device(verts=verts, sdf=sdf, tets=tets, edges=edges, tet_edges=tet_edges)
    check_tensor("verts", verts, ndim=2, last=3, dtypes=FLOATS, expected="[V, 3]")
    V = verts.shape[0]
    check_tensor("sdf", sdf, dtypes=FLOATS)
    if sdf.dim() != 1 or sdf.shape[0] != V:
        raise ValueError(f"sdf: expected shape [{V}] (one value per vertex), got {shape_str(sdf.shape)}")
    check_finite("sdf", sdf)
    check_finite("verts", verts)
    lattice = 0
    if isinstance(tets, TetGrid):
        grid = tets
        if grid.verts.shape[0] != V:
            raise ValueError(f"verts: expected shape [{grid.verts.shape[0]}, 3] (the grid's vertex count), "
                             f"got {shape_str(verts.shape)}")
        tets, edges, tet_edges = grid.tets, grid.edges, grid.tet_edges
        if grid.lattice:
            lattice = grid.resolution  # arrays are create()'s own: indices are in range by construction
    check_tensor("tets", tets, ndim=2, last=4, dtypes=INTS, expected="[T, 4]")
    if not lattice:
        check_index("tets", tets, V, ndim=2, last=4, expected="[T, 4]")
        check_device(verts=verts, tets=tets)
    dev = verts.device
    dtype = torch.promote_types(verts.dtype, sdf.dtype)
    verts, sdf = verts.to(dtype), sdf.to(dtype)
    # differentiable empty result, so that a loss on an empty mesh still backpropagates (zeros)
    empty = lambda: (verts[:0] * 0 + sdf[:0, None] * 0, torch.zeros((0, 3), dtype=torch.int32, device=dev))  # noqa: E731
    if tets.shape[0] == 0:
        return empty()
    sdf_c = sdf.detach().contiguous()
    if lattice:
        topo = _topology_lattice(sdf_c, lattice)
    else:
        if edges is None or tet_edges is None:
            g = TetGrid.from_arrays(torch.zeros(V, 3), tets.cpu())
            edges, tet_edges = g.edges.to(dev), g.tet_edges.to(dev)
        else:
            check_index("edges", edges, V, ndim=2, last=2, expected="[E, 2]")
            check_index("tet_edges", tet_edges, edges.shape[0], ndim=2, last=6, expected=f"[{tets.shape[0]}, 6]")
            if tet_edges.shape[0] != tets.shape[0]:
                raise ValueError(f"tet_edges: expected shape [{tets.shape[0]}, 6] (one row per tet), "
                                 f"got {shape_str(tet_edges.shape)}")
            check_device(verts=verts, tets=tets, edges=edges, tet_edges=tet_edges)
        topo = _topology(sdf_c, as_index32(tets), as_index32(edges), as_index32(tet_edges))
    if topo is None:
        return empty()
    ends, faces = topo
    return _Place.apply(verts, sdf, ends), faces

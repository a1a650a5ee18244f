"""Taichi kernels of marching_tets(): topology (which edges cross, which faces) and the
differentiable vertex placement with its hand-written adjoint.

See :mod:`taichi_dr.geometry.marching_tets` for the method and the math. Two kernel sets:

* ``kernels(real)`` — any tet mesh, reading ``tets``/``edges``/``tet_edges``: ``count`` (per block
  of tets: cases and triangle counts; per block of edges: sign changes), ``fill`` (numbers the
  crossing edges, writes the faces) and ``place``/``place_bwd``;
* ``lattice_kernels(real)`` — a :meth:`TetGrid.create` grid, every index in closed form:
  ``count`` and ``fill`` over rows of the lattice.
"""
import functools
from types import SimpleNamespace

import taichi as ti

from taichi_dr.geometry.tetgrid import _DIRS, LOCAL_EDGES, cube_tet_corners, cube_tet_edges

__all__ = ["kernels", "lattice_kernels", "TRIANGLE_TABLE", "NUM_TRIANGLES", "BLOCK", "DIRS"]

BLOCK = 256  # tets (edges) per serial block of the compaction passes

NUM_TRIANGLES = [0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0]
TRIANGLE_TABLE = [
    [-1, -1, -1, -1, -1, -1], [1, 0, 2, -1, -1, -1], [4, 0, 3, -1, -1, -1], [1, 4, 2, 1, 3, 4],
    [3, 1, 5, -1, -1, -1], [2, 3, 0, 2, 5, 3], [1, 4, 0, 1, 5, 4], [4, 2, 5, -1, -1, -1],
    [4, 5, 2, -1, -1, -1], [4, 1, 0, 4, 5, 1], [3, 2, 0, 3, 5, 2], [1, 3, 5, -1, -1, -1],
    [4, 1, 2, 4, 3, 1], [3, 0, 4, -1, -1, -1], [2, 0, 1, -1, -1, -1], [-1, -1, -1, -1, -1, -1],
]


# TRIANGLE_TABLE packed for the kernels: case c's six local-edge numbers (0-5), 3 bits each.
PACKED_TABLE = [sum((max(e, 0) & 7) << (3 * k) for k, e in enumerate(row)) for row in TRIANGLE_TABLE]


@ti.func
def _num_triangles(c):
    # NUM_TRIANGLES[c] without a table: one or three vertices outside -> 1, two -> 2, else 0
    pc = (c & 1) + ((c >> 1) & 1) + ((c >> 2) & 1) + ((c >> 3) & 1)
    return ti.select(pc == 2, 2, pc & 1)


@ti.func
def crosses(c, k: ti.template()):
    # local edge k of a tet in case c crosses the surface: its two end points' bits differ
    return ((c >> LOCAL_EDGES[k][0]) ^ (c >> LOCAL_EDGES[k][1])) & 1


@ti.func
def _emit_case(c, e, faces: ti.template(), f):
    """Write case c's triangles at faces[f], [f+1]; ``e`` = surface vertex of each of the tet's 6
    local edges (only the crossing ones are valid, and only those are read). Returns the next f."""
    packed = ti.Vector(PACKED_TABLE)[c]  # a constant table, indexed in registers
    for q in range(_num_triangles(c)):
        for j in ti.static(range(3)):
            faces[f, j] = e[(packed >> (3 * (3 * q + j))) & 7]
        f += 1
    return f


@functools.lru_cache(maxsize=None)
def kernels(real):
    nd = ti.types.ndarray
    vec3 = ti.types.vector(3, real)
    vec2i = ti.types.vector(2, ti.i32)
    vec4i = ti.types.vector(4, ti.i32)

    # Index work uses int32 and flat range-for loops (struct-fors over ndarrays pay integer
    # divisions per element); tets and edges are read as one vector load each.

    # Compaction without a full-length prefix sum: the tets (edges) are cut into blocks of BLOCK;
    # ``count`` counts per block, a tiny cumsum over the block counts gives each block its output
    # offset, and ``fill`` walks each block serially, writing in order. The output order is the
    # input order, whatever the threads do. (Each kernel runs its top-level loops one after the
    # other; fusing the passes saves Python launch overhead, which costs as much as small grids.)

    @ti.kernel
    def count(sdf: nd(dtype=real, ndim=1), tets: nd(dtype=vec4i, ndim=1), edges: nd(dtype=vec2i, ndim=1),
              case: nd(dtype=ti.i8, ndim=1), crossing: nd(dtype=ti.i8, ndim=1),
              block_tris: nd(dtype=ti.i32, ndim=1), block_verts: nd(dtype=ti.i32, ndim=1)):
        T, E = tets.shape[0], edges.shape[0]
        for b in range(block_tris.shape[0]):  # per tet: case and triangle count
            n = 0
            for t in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, T)):
                ids = tets[t]
                c = 0
                for i in ti.static(range(4)):
                    if sdf[ids[i]] >= 0:
                        c |= 1 << i
                case[t] = ti.cast(c, ti.i8)
                n += _num_triangles(c)
            block_tris[b] = n
        for b in range(block_verts.shape[0]):  # per edge: sign change
            n = 0
            for e in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, E)):
                ab = edges[e]
                x = ti.cast((sdf[ab[0]] >= 0) != (sdf[ab[1]] >= 0), ti.i32)
                crossing[e] = ti.cast(x, ti.i8)
                n += x
            block_verts[b] = n

    @ti.kernel
    def fill(crossing: nd(dtype=ti.i8, ndim=1), verts_end: nd(dtype=ti.i32, ndim=1), edges: nd(dtype=vec2i, ndim=1),
             vid: nd(dtype=ti.i32, ndim=1), ends: nd(dtype=vec2i, ndim=1), case: nd(dtype=ti.i8, ndim=1),
             tris_end: nd(dtype=ti.i32, ndim=1), tet_edges: nd(dtype=ti.i32, ndim=2), faces: nd(dtype=ti.i32, ndim=2)):
        E, T = crossing.shape[0], case.shape[0]
        # 1. number the crossing edges in order: vid[e] = surface vertex of edge e (only crossing
        # edges are ever read), ends[m] = the grid vertices of surface vertex m's edge
        for b in range(verts_end.shape[0]):
            m = 0
            if b > 0:
                m = verts_end[b - 1]
            # blocks without crossings (most of the grid) are skipped after one load
            for e in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, E) if verts_end[b] > m else b * BLOCK):
                if crossing[e] != 0:
                    vid[e] = m
                    ends[m] = edges[e]
                    m += 1
        # 2. each tet's 0-2 triangles, in tet order; corners are the surface vertices of its edges
        for b in range(tris_end.shape[0]):
            f = 0
            if b > 0:
                f = tris_end[b - 1]
            for t in range(b * BLOCK, ti.min(b * BLOCK + BLOCK, T) if tris_end[b] > f else b * BLOCK):
                c = ti.cast(case[t], ti.i32)
                if c != 0 and c != 15:
                    e = ti.Vector([0, 0, 0, 0, 0, 0])
                    for k in ti.static(range(6)):
                        if crosses(c, k):
                            e[k] = vid[tet_edges[t, k]]
                    f = _emit_case(c, e, faces, f)

    @ti.kernel
    def place(verts: nd(dtype=vec3, ndim=1), sdf: nd(dtype=real, ndim=1), ends: nd(dtype=vec2i, ndim=1),
              out: nd(dtype=vec3, ndim=1)):
        for m in range(ends.shape[0]):
            ab = ends[m]
            sa, sb = sdf[ab[0]], sdf[ab[1]]
            inv = 1.0 / (sb - sa)  # never 0: the signs differ
            out[m] = (verts[ab[0]] * sb - verts[ab[1]] * sa) * inv

    @ti.kernel
    def place_bwd(verts: nd(dtype=vec3, ndim=1), sdf: nd(dtype=real, ndim=1), ends: nd(dtype=vec2i, ndim=1),
                  out: nd(dtype=vec3, ndim=1), g_out: nd(dtype=vec3, ndim=1),
                  g_verts: nd(dtype=real, ndim=2), g_sdf: nd(dtype=real, ndim=1)):
        for m in range(ends.shape[0]):
            ab = ends[m]
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

    return SimpleNamespace(count=count, fill=fill, place=place, place_bwd=place_bwd)


DIRS = tuple(tuple(int(c) for c in d) for d in _DIRS)  # the 7 edge directions, in edge-id order
CORNERS = cube_tet_corners()  # [6][4] cube corner (4·ox + 2·oy + oz) of each tet's local vertex
TET_EDGES = cube_tet_edges()  # [6][6] (ox, oy, oz, d): local edge k of tet p, from corner o along DIRS[d]


@functools.lru_cache(maxsize=None)
def lattice_kernels(real):
    """Topology kernels for a :meth:`TetGrid.create` grid with n = R + 1 lattice points per axis.

    Numbering (see tetgrid.py): vertex (i, j, l) is ``(i·n + j)·n + l``; tet π of the cube with
    lower corner (i, j, l) is ``π·R³ + (i·R + j)·R + l``; the edge from p along direction d is
    ``first[d] + x-major index of p in the box (n−dx, n−dy, n−dz)``. A *row* is a run along z
    (the fastest index): vertex row (i, j), cube row (i, j) of tet π, edge row (d, i, j). Each row is
    a contiguous range of ids, and rows are visited in id order, so per-row counts + a cumsum give
    exactly the general path's output slots.
    """
    nd = ti.types.ndarray
    vec2i = ti.types.vector(2, ti.i32)

    @ti.func
    def outside(sdf: ti.template(), v):
        return ti.cast(sdf[v] >= 0, ti.i32)

    @ti.func
    def uniform(flag: ti.template(), a, b):
        # two vertex rows that both have one sign, the same one: nothing between them crosses
        fa = flag[a]
        return fa != 2 and flag[b] == fa

    @ti.func
    def tet_case(mask, p: ti.template()):
        # case of cube tet p from the cube's 8-bit corner mask: its 4 corners' bits, constant shifts
        c = 0
        for k in ti.static(range(4)):
            c |= ((mask >> CORNERS[p][k]) & 1) << k
        return c

    @ti.func
    def edge_row(row, n):
        # edge row -> (lower end's vertex row, the other end's vertex row, dz, id of the row's first
        # edge, row length). Rows are grouped by direction, (n−dx)(n−dy) rows of n−dz edges each.
        a, b, dz, e0, length = 0, 0, 0, 0, 0
        start_row, start_edge = 0, 0
        for d in ti.static(range(7)):
            DX, DY, DZ = ti.static(DIRS[d])
            rows = (n - DX) * (n - DY)
            if row >= start_row and row < start_row + rows:
                q = row - start_row
                i = q // (n - DY)
                j = q - i * (n - DY)
                a, b, dz = i * n + j, (i + DX) * n + j + DY, DZ
                e0, length = start_edge + q * (n - DZ), n - DZ
            start_row += rows
            start_edge += rows * (n - DZ)
        return ti.Vector([a, b, dz, e0, length])

    @ti.kernel
    def count(sdf: nd(dtype=real, ndim=1), R: ti.i32, flag: nd(dtype=ti.i8, ndim=1),
              cube_mask: nd(dtype=ti.i8, ndim=1), block_tris: nd(dtype=ti.i32, ndim=1),
              block_verts: nd(dtype=ti.i32, ndim=1)):
        n = R + 1
        # 1. per vertex row: 0 = all inside, 1 = all outside, 2 = mixed
        for r in range(n * n):
            pos = 0
            for l in range(n):
                pos += outside(sdf, r * n + l)
            flag[r] = ti.cast(ti.select(pos == 0, 0, ti.select(pos == n, 1, 2)), ti.i8)
        # 2. per cube row: triangles of each of the 6 tet types
        for row in range(R * R):
            i = row // R
            j = row - i * R
            r00 = i * n + j  # vertex rows of the 4 cube edges along z: (i,j), (i,j+1), (i+1,j), (i+1,j+1)
            counts = ti.Vector([0, 0, 0, 0, 0, 0])
            if not (uniform(flag, r00, r00 + 1) and uniform(flag, r00, r00 + n)
                    and uniform(flag, r00, r00 + n + 1)):
                # 8-bit corner mask of cube l: bit 4·ox + 2·oy + oz = corner (i+ox, j+oy, l+oz) is
                # outside. Slide along z: the z = l+1 face of cube l is the z = l face of cube l+1.
                v00, v01, v10, v11 = r00 * n, (r00 + 1) * n, (r00 + n) * n, (r00 + n + 1) * n
                below = outside(sdf, v00) | outside(sdf, v01) << 2 | outside(sdf, v10) << 4 | outside(sdf, v11) << 6
                for l in range(R):
                    z = l + 1
                    above = (outside(sdf, v00 + z) | outside(sdf, v01 + z) << 2 | outside(sdf, v10 + z) << 4
                             | outside(sdf, v11 + z) << 6)
                    mask = below | above << 1
                    below = above
                    cube_mask[row * R + l] = ti.cast(mask, ti.i8)
                    if mask != 0 and mask != 255:
                        for p in ti.static(range(6)):
                            counts[p] += _num_triangles(tet_case(mask, p))
            for p in ti.static(range(6)):
                block_tris[p * R * R + row] = counts[p]
        # 3. per edge row: crossing edges
        for row in range(block_verts.shape[0]):
            r = edge_row(row, n)
            m = 0
            if not uniform(flag, r[0], r[1]):
                for l in range(r[4]):
                    m += outside(sdf, r[0] * n + l) ^ outside(sdf, r[1] * n + l + r[2])
            block_verts[row] = m

    @ti.kernel
    def fill(sdf: nd(dtype=real, ndim=1), R: ti.i32, verts_end: nd(dtype=ti.i32, ndim=1),
             row_slot: nd(dtype=ti.i32, ndim=1), vid: nd(dtype=ti.i32, ndim=1), ends: nd(dtype=vec2i, ndim=1),
             cube_mask: nd(dtype=ti.i8, ndim=1), tris_end: nd(dtype=ti.i32, ndim=1), faces: nd(dtype=ti.i32, ndim=2)):
        n, RR = R + 1, R * R
        # 1. Surface vertex ids live in a row-compact map: the s-th edge row that crosses at all
        # keeps n slots, vid[s·n + l]. (An E-sized map would touch every page of a 7 MB array at
        # R = 64, and fresh pages cost more than the work.) ends[m] = grid vertices of vertex m's edge.
        for row in range(verts_end.shape[0]):
            m = 0
            if row > 0:
                m = verts_end[row - 1]
            if verts_end[row] > m:
                r = edge_row(row, n)
                base = row_slot[row] * n
                for l in range(r[4]):
                    a, b = r[0] * n + l, r[1] * n + l + r[2]
                    if outside(sdf, a) != outside(sdf, b):
                        vid[base + l] = m
                        ends[m] = ti.Vector([a, b])
                        m += 1
        # 2. Faces. One walk along a cube row serves all 6 tet types: block (p, row) of the output
        # holds type p's faces of this row, from cursor f[p] on.
        for row in range(RR):
            row_first = ti.Vector([0, 0, 0, 0, 0, 0, 0])  # first edge row of each direction
            for d in ti.static(range(1, 7)):
                row_first[d] = row_first[d - 1] + (n - DIRS[d - 1][0]) * (n - DIRS[d - 1][1])
            f = ti.Vector([0, 0, 0, 0, 0, 0])
            busy = 0
            for p in ti.static(range(6)):
                b = p * RR + row
                if b > 0:
                    f[p] = tris_end[b - 1]
                if tris_end[b] > f[p]:
                    busy = 1
            if busy:
                i = row // R
                j = row - i * R
                for l in range(R):
                    mask = ti.cast(cube_mask[row * R + l], ti.i32) & 255
                    if mask != 0 and mask != 255:
                        for p in ti.static(range(6)):
                            c = tet_case(mask, p)
                            if c != 0 and c != 15:
                                # each local edge's edge row (direction d, lower end's (x, y)) and
                                # position along z are closed-form; only crossing edges have a slot
                                # in the row-compact map (the others' rows may have none)
                                e = ti.Vector([0, 0, 0, 0, 0, 0])
                                for k in ti.static(range(6)):
                                    ox, oy, oz, d = ti.static(TET_EDGES[p][k])
                                    if crosses(c, k):
                                        er = row_first[d] + (i + ox) * (n - DIRS[d][1]) + j + oy
                                        e[k] = vid[row_slot[er] * n + l + oz]
                                f[p] = _emit_case(c, e, faces, f[p])

    return SimpleNamespace(count=count, fill=fill)

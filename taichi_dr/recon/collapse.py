"""Edge collapses that remove the faces no training view sees without opening the surface.

Marching tets puts a vertex on every sign-changing grid edge, so where the surface passes near a
grid vertex the triangles around it are needles and caps far smaller than a pixel: they fall
between pixel centres of every view and own no pixel, although they lie in the visible surface.
:func:`~taichi_dr.recon.cleanup.collapse_short_edges` merges the closest vertices (< 0.2 cells);
what still owns no pixel afterwards is removed here by collapsing one of its edges (deleting it,
as :func:`~taichi_dr.recon.cleanup.clean_faces` does with hidden surfaces, would punch a hole).
Topology is checked with the link condition, geometry by refusing collapses that turn a face over,
and the vertex map and surviving face rows are returned so that per-vertex colours and the UV
atlas's ``uv_faces`` follow the mesh.

A surface that no view sees at all (the underside of an object filmed from above) also owns no
pixel, but it is not a sliver: collapsing it shrinks it into a few large faces, a cap that cuts a
chord through the object and into what the low views do see (a torus filmed from its upper
hemisphere: Chamfer 1.5e-5 → 3.0e-3). ``max_error`` bounds how far the collapses may move the
surface: every vertex carries the Garland–Heckbert quadric of the input faces around it, summed
over the vertices merged into it, and a collapse whose merged vertex lies farther from those
planes (RMS) is refused. The reconstruction sets it to half a training pixel
(:data:`COLLAPSE_MAX_ERROR_PX`), far above what a sliver's collapse moves, for faces no raster
size sees, and to a pixel (:data:`COLLAPSE_MAX_ERROR_SEEN_PX`) for faces that own pixels at some
size: surface the views do see, between pixel centres at the others (a hole's wall that two views
see edge-on, whose faces can be several pixels across). Before a collapse is refused, the point of
the edge nearest the accumulated planes is tried too.

A sliver next to a vertex of valence 3 cannot be collapsed (the link condition refuses every one of
its edges: the two ends share a third neighbour). :func:`flip_invisible` flips its longest edge
instead: the two triangles on that edge become the two on the other diagonal of their quad, which
on Spot's leftovers own dozens of pixels each (measured: 4 of 4 such faces, docs/08). A flip
changes which face owns the pixel centres near the quad, so one that takes the last pixel from any
other face is undone.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.sparse import coo_matrix

from taichi_dr.recon.cleanup import (CleanupReport, _check_resolutions, _edge_keys, _face_adjacency,
                                     _face_id_images, face_pixels, surviving_faces)

__all__ = ["collapse_invisible", "flip_invisible", "merge_vertex_data", "COLLAPSE_ROUNDS", "COLLAPSE_MAX_ERROR_PX",
           "COLLAPSE_MAX_ERROR_SEEN_PX"]

COLLAPSE_ROUNDS = 16  # collapse_invisible's default limit on rounds (each one visibility pass per raster size)
# the reconstruction's bound on how far a collapse may move the surface, in training pixels (the
# world size of a pixel at the object): a sub-pixel sliver's collapse stays far below it (beast,
# 118k -> 11k faces: the same mesh with or without it), an unseen underside's shrinking into a cap
# does not (docs/08 round 29)
COLLAPSE_MAX_ERROR_PX = 0.5
# the looser bound for collapsing faces that some raster size sees (slivers between pixel centres at
# the training size, walls seen at grazing angles several pixels across): a face in a hole's wall
# that two views see edge-on stayed at 0.5 px, owning no pixel at the training size (docs/08 round 30)
COLLAPSE_MAX_ERROR_SEEN_PX = 1.0


def merge_vertex_data(x: torch.Tensor, vmap: torch.Tensor, n: int) -> torch.Tensor:
    """Per-vertex data after a collapse: each new vertex takes the mean of the old ones merged into it.

    Args:
        x: ``[V, ...]`` float per-vertex data of the old mesh; vmap: ``[V]`` int64 old -> new vertex
            (``-1``: the vertex is gone), as returned by :func:`collapse_invisible`; n: new vertex count.

    Returns:
        ``[n, ...]`` like ``x``.
    """
    if vmap.shape != (x.shape[0],):
        raise ValueError(f"vmap: expected shape [{x.shape[0]}] (one entry per row of x), got {list(vmap.shape)}")
    vm = vmap.to(x.device).long()
    ok = vm >= 0
    acc = torch.zeros((n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device).index_add_(0, vm[ok], x[ok])
    cnt = torch.bincount(vm[ok], minlength=n).clamp(min=1).to(x.dtype)
    return acc / cnt.reshape((n,) + (1,) * (x.dim() - 1))


def _stars(f: np.ndarray, V: int, vs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Faces around each vertex of ``vs``: ``(owner [P] index into vs, face [P])``."""
    inc_v = f.reshape(-1)
    order = np.argsort(inc_v, kind="stable")
    inc_f = order // 3  # row-major [F, 3]: flat position // 3 is the face
    start = np.searchsorted(inc_v[order], np.arange(V + 1))
    deg = start[vs + 1] - start[vs]
    owner = np.repeat(np.arange(len(vs)), deg)
    pos = np.arange(int(deg.sum())) - np.repeat(np.cumsum(deg) - deg, deg) + np.repeat(start[vs], deg)
    return owner, inc_f[pos]


def _cross(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise cross product of ``[P, 3]`` arrays (``np.cross`` is several times slower on long, thin arrays)."""
    return np.stack([u[:, 1] * w[:, 2] - u[:, 2] * w[:, 1], u[:, 2] * w[:, 0] - u[:, 0] * w[:, 2],
                     u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]], axis=1)


def _dot(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise dot product of ``[P, 3]`` arrays."""
    return np.einsum("ij,ij->i", u, w)


def _normals(p: np.ndarray) -> np.ndarray:
    """``[P, 3]`` twice-area normals of the triangles ``p [P, 3 corners, 3]``."""
    return _cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])


def _plane_quadrics(v: np.ndarray, f: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Garland–Heckbert quadrics of the input surface: per vertex, the area-weighted sum over its faces
    of ``[n, d][n, d]ᵀ`` (unit normal ``n``, plane ``n·x + d = 0``) as ``[V, 10]`` (the upper triangle
    of the symmetric 4×4, row-major), and the summed area ``[V]``. ``x̄ᵀ Q x̄ / area`` is the
    area-weighted mean squared distance of ``x`` to those planes."""
    fn = _normals(v[f])
    area = 0.5 * np.sqrt(_dot(fn, fn))
    n = fn / np.maximum(2.0 * area, 1e-300)[:, None]
    p = np.concatenate([n, -_dot(n, v[f[:, 0]])[:, None]], 1)  # [F, 4]
    iu = np.triu_indices(4)
    k = (p[:, iu[0]] * p[:, iu[1]]) * area[:, None]  # [F, 10]
    V = v.shape[0]
    q = np.zeros((V, 10))
    for c in range(3):
        np.add.at(q, f[:, c], k)
    return q, np.bincount(f.reshape(-1), np.repeat(area, 3), V)


def _quadric_matrices(q: np.ndarray) -> np.ndarray:
    """``[E, 4, 4]`` symmetric matrices ``Q`` of the quadrics ``q [E, 10]`` (:func:`_plane_quadrics`):
    ``x̄ᵀ Q x̄ / area`` (``x̄ = [x, 1]``) is the mean squared distance of ``x`` to their planes."""
    iu = np.triu_indices(4)
    m = np.zeros((q.shape[0], 4, 4))
    m[:, iu[0], iu[1]] = q
    m[:, iu[1], iu[0]] = q
    return m


def _collapse_candidates(v: np.ndarray, f: np.ndarray, cand: np.ndarray, min_cos: float,
                         bound: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
                         stats: Optional[Dict[str, int]] = None):
    """The edges of the faces ``cand [F] bool`` and whether (and where) each may be collapsed.

    An edge qualifies if its collapse keeps the mesh manifold and turns no surviving face over, and
    with ``bound = (q [V, 10], w [V], e_max [F])`` if the merged vertex stays within an RMS distance
    of the input surface's planes that its two ends accumulated (:func:`_plane_quadrics`): the
    smallest ``e_max`` of the edge's own faces; ``stats["refused_far"]`` (if given) counts the
    edges that only the bound refused.

    Returns:
        ``(a [E], b [E], t [E], own [P], star [P])``: the edges' end vertices (``a < b``), the
        merged position ``a + t (b - a)`` (``nan``: no collapse allowed), and the faces around
        either end of each edge (``star``; edge ``own``, ascending; a face of both ends appears twice).
    """
    V = v.shape[0]
    e_all = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    k_all, n_all = np.unique(e_all[:, 0] * V + e_all[:, 1], return_counts=True)
    fc = f[cand]
    ck = np.unique(np.sort(np.concatenate([fc[:, [0, 1]], fc[:, [1, 2]], fc[:, [2, 0]]]), axis=1) @ [V, 1])
    a, b = ck // V, ck % V
    nface = n_all[np.searchsorted(k_all, ck)]
    # link condition: a closed surface stays a 2-manifold iff the endpoints' only common neighbours
    # are the two vertices opposite the edge (another one would fuse two edges into a 4-face edge)
    adj = coo_matrix((np.ones(2 * len(e_all)), (np.r_[e_all[:, 0], e_all[:, 1]], np.r_[e_all[:, 1], e_all[:, 0]])),
                     shape=(V, V)).tocsr()
    adj.data[:] = 1.0
    common = np.asarray(adj[a].multiply(adj[b]).sum(axis=1)).reshape(-1)
    # (on a hole's rim: an inner edge may have one end on the rim, a rim edge only its one opposite
    # vertex in common; never near a non-manifold edge)
    rim, nonman = np.zeros(V, dtype=bool), np.zeros(V, dtype=bool)
    rim[np.r_[k_all[n_all == 1] // V, k_all[n_all == 1] % V]] = True
    nonman[np.r_[k_all[n_all > 2] // V, k_all[n_all > 2] % V]] = True
    ok = ((nface == 2) & (common == 2) & ~(rim[a] & rim[b])) | ((nface == 1) & (common == 1))
    ok &= ~(nonman[a] | nonman[b])
    # where the merged vertex goes: of the point of the edge closest to the planes of the faces
    # around it (least squares), the midpoint and either end, the one closest to those planes
    # (area-weighted quadric error, as in Garland & Heckbert's simplification) that turns no
    # surviving face over. For a sliver all are within its tiny size; for a face seen only at
    # grazing angles (the inside of a hole) the midpoint would cut a chord into a curved surface.
    (own_a, sf_a), (own_b, sf_b) = _stars(f, V, a), _stars(f, V, b)
    # (edge, face of its star), grouped by edge (shared faces twice): _select_collapses reduces per edge
    own, sf = np.r_[own_a, own_b], np.r_[sf_a, sf_b]
    order = np.argsort(own, kind="stable")
    own, sf = own[order], sf[order]
    E = len(ck)
    tri = f[sf]
    is_ab = (tri == a[own, None]) | (tri == b[own, None])
    # per face once (a face lies in the stars of many edges): its twice-area normal, the quadric's
    # weight (its length), and its plane's offset along the unit normal
    fn = _normals(v[f])
    fl = np.sqrt(_dot(fn, fn))
    fu = fn / np.maximum(fl, 1e-300)[:, None]
    foff = _dot(fu, v[f[:, 0]])
    l_old, unit = fl[sf], fu[sf]
    va, vb = v[a], v[b]
    d_a = _dot(unit, va[own]) - foff[sf]  # a's distance to each plane ...
    k = _dot(unit, (vb - va)[own])  # ... and its rate of change along the edge
    t_best = np.clip(-np.bincount(own, l_old * d_a * k, E) / np.maximum(np.bincount(own, l_old * k * k, E), 1e-300),
                     0.0, 1.0)
    # the faces that survive the collapse (one end of the edge in them; a face of exactly zero area has
    # no orientation to lose: it is itself a sliver). Their moved corner x = a + t (b - a) and the two
    # others p1, p2 (in the face's order) give the new normal (p1 - x) x (p2 - x) = p1 x p2 + x x (p1 - p2):
    # linear in t, n0 + t n1, so each trial position costs a few vector operations
    n_ab = is_ab[:, 0].astype(np.int8) + is_ab[:, 1] + is_ab[:, 2]
    si = np.nonzero((n_ab == 1) & (l_old > 0))[0]
    j = is_ab[si].argmax(1)
    ts = tri[si]
    rs = np.arange(len(si))
    p1, p2 = v[ts[rs, (j + 1) % 3]], v[ts[rs, (j + 2) % 3]]
    dp = p1 - p2
    o_s = own[si]
    n0 = _cross(p1, p2) + _cross(va[o_s], dp)
    n1 = _cross((vb - va)[o_s], dp)
    no, lo = fn[sf[si]], l_old[si]
    c0, c1 = _dot(no, n0), _dot(no, n1)  # n_old . n_new, linear in t
    q0, q1, q2 = _dot(n0, n0), 2.0 * _dot(n0, n1), _dot(n1, n1)  # |n_new|^2, quadratic in t
    trials = [t_best, np.full(E, 0.5), np.zeros(E), np.ones(E)]
    if bound is not None:
        # the bound measures the distance to the planes the two ends accumulated (the input surface),
        # quadratic along the edge: (A + 2 B t + C t²) / area. Its minimiser is a last trial position,
        # taken only where none of the others is near enough, so that a collapse is refused only if no
        # position both keeps the faces' orientation and stays near the input surface (the current
        # star's planes, which place the others, drift from the input's as collapses accumulate)
        qa = _quadric_matrices(bound[0][a] + bound[0][b])
        xa = np.concatenate([va, np.ones((E, 1))], 1)
        dx = np.concatenate([vb - va, np.zeros((E, 1))], 1)
        qx = np.einsum("eij,ej->ei", qa, xa)
        qA, qB, qC = _dot(xa, qx), _dot(dx, qx), np.einsum("ei,eij,ej->e", dx, qa, dx)
        trials.append(np.clip(-qB / np.maximum(qC, 1e-300), 0.0, 1.0))
        e_edge = np.full(E, np.inf)
        mine = n_ab == 2  # the rows of each edge's own faces
        np.minimum.at(e_edge, own[mine], bound[2][sf[mine]])
        near_max = e_edge ** 2 * (bound[1][a] + bound[1][b])  # e_max² × area
    t, best = np.full(E, np.nan), np.full(E, np.inf)  # merged position a + t (b - a); nan: none is valid
    unbounded = np.zeros(E, dtype=bool)  # some trial keeps the orientation (before the bound)
    for i, t_try in enumerate(trials):
        tt = t_try[o_s]
        ln = np.sqrt(np.maximum(q0 + tt * (q1 + tt * q2), 0.0))
        cos = (c0 + tt * c1) / np.maximum(lo * ln, 1e-300)
        err = np.bincount(own, l_old * (d_a + t_try[own] * k) ** 2, E)
        good = np.bincount(o_s[cos <= min_cos], minlength=E) == 0
        unbounded |= good
        if bound is not None:  # how far the merged vertex lies from the surface the collapses started from
            good &= qA + t_try * (2.0 * qB + t_try * qC) <= near_max
        good &= (err < best) if i < 4 else np.isnan(t)  # the bound's own position: only where none other is near
        t[good], best[good] = t_try[good], err[good]
    t[~ok] = np.nan
    if stats is not None and bound is not None:
        stats["refused_far"] = stats.get("refused_far", 0) + int((ok & unbounded & np.isnan(t)).sum())
    return a, b, t, own, sf


def _select_collapses(v: np.ndarray, f: np.ndarray, cand: np.ndarray, min_cos: float,
                      bound: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
                      stats: Optional[Dict[str, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Edges of the faces ``cand [F] bool`` to collapse this round: ``[K, 2]`` int64 vertex pairs
    ``(a, b)`` and ``[K]`` float where on the edge they merge (``a + t (b - a)``).

    Of the edges :func:`_collapse_candidates` allows, a maximal set whose stars (faces around either
    end) are disjoint is taken, shortest first, so that every check made on the current mesh stays
    true when all of them are applied at once.
    """
    V = v.shape[0]
    a, b, t, own, sf = _collapse_candidates(v, f, cand, min_cos, bound, stats)
    ok = ~np.isnan(t)
    # independent set, shortest first: an edge wins when no active edge touching its star is shorter
    big = np.iinfo(np.int64).max
    rank = np.full(len(a), big)
    idx = np.nonzero(ok)[0]
    rank[idx[np.argsort(np.linalg.norm(v[a[idx]] - v[b[idx]], axis=1), kind="stable")]] = np.arange(len(idx))
    active, chosen = ok.copy(), np.zeros(len(a), dtype=bool)
    star = f[sf]  # [P, 3] vertices of each (edge, star face) row; rows are grouped by edge
    s0, s1, s2 = (np.ascontiguousarray(star[:, q]) for q in range(3))
    first = np.searchsorted(own, np.arange(len(a)))  # every edge has >= 2 rows (its own faces, twice)
    while active.any():
        vmin = np.full(V, big)
        np.minimum.at(vmin, a[active], rank[active])
        np.minimum.at(vmin, b[active], rank[active])
        emin = np.minimum.reduceat(np.minimum(np.minimum(vmin[s0], vmin[s1]), vmin[s2]), first)
        win = active & (emin == rank)
        chosen |= win
        locked = np.zeros(V, dtype=bool)
        locked[star[win[own]].reshape(-1)] = True  # every vertex of a winner's star
        active &= ~(locked[a] | locked[b])
    return np.stack([a[chosen], b[chosen]], axis=1), t[chosen]


def _apply_collapses(v: np.ndarray, f: np.ndarray, pairs: np.ndarray, t: np.ndarray,
                     summed: Sequence[np.ndarray] = ()):
    """Merge each pair ``[K, 2]`` at ``a + t (b - a)``; drop degenerate faces, duplicate-face pairs and
    unused vertices. Returns ``(v', f', vmap [V] old -> new or -1, rows [F'] surviving face rows)``,
    then each per-vertex array of ``summed`` (``[V, ...]``) with the merged vertices' rows added up."""
    V = v.shape[0]
    v = v.copy()
    a, b = pairs[:, 0], pairs[:, 1]
    v[a] = v[a] + t[:, None] * (v[b] - v[a])
    summed = [x.copy() for x in summed]
    for x in summed:
        x[a] += x[b]
    lab = np.arange(V)
    lab[b] = a
    nf = lab[f]
    rows = surviving_faces(nf)
    used = np.zeros(V, dtype=bool)
    used[nf[rows].reshape(-1)] = True
    remap = np.full(V, -1)
    remap[used] = np.arange(int(used.sum()))
    return (v[used], remap[nf[rows]], remap[lab], rows) + tuple(x[used] for x in summed)


@torch.no_grad()
def collapse_invisible(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor,
                       resolutions: Sequence[Tuple[int, int]], keep_patch: Optional[int] = None,
                       rounds: int = COLLAPSE_ROUNDS,
                       min_cos: float = 0.0, report: Optional[CleanupReport] = None,
                       max_error: Optional[float] = None, max_error_seen: Optional[float] = None):
    """Collapse the small patches of faces that own no pixel, so that the mesh stays closed.

    Each round rasterizes the mesh from every view at every raster size in ``resolutions``; a face
    is visible only if it owns at least one pixel at each of them. The invisible faces (outside
    patches of more than ``keep_patch`` faces that no resolution sees, if given) propose their
    edges, shortest first; an
    edge is collapsed (both ends -> the point of the edge with the least quadric error, else the
    midpoint or either end) unless that would make the surface non-manifold (link condition) or
    turn a surviving face around it over (cosine between its old and new normal ``<= min_cos``),
    and at most one collapse touches any face per round. Collapsing removes the face (and its
    neighbour across the edge) instead of deleting it, which would leave a hole. Rounds repeat (the
    faces around a collapse change) until no invisible face is left, none can be collapsed, or
    ``rounds`` ran.

    Args:
        verts: ``[V, 3]`` float; faces: ``[F, 3]`` int, a manifold (on a hole's rim, an inner edge
            with both ends on the rim is never collapsed; near a non-manifold edge, nothing is).
        mvp: ``[N, 4, 4]`` float cameras; resolutions: ``(H, W)`` raster sizes (the training size
            and twice it: a scorer may rasterize at either).
        keep_patch: edge-connected patches of faces hidden at every resolution that are larger than
            this are left alone; ``None``: none is (after :func:`~taichi_dr.recon.cleanup.clean_faces`,
            every hidden patch borders the seen surface, e.g. a wall no camera looks into, and
            collapsing it keeps the mesh closed where deleting it would not).
        rounds: most collapse rounds (each costs one visibility pass per resolution).
        min_cos: a collapse that leaves a face's normal at or below this cosine to its old one is refused.
        max_error: if given (world units), a collapse whose merged vertex lies farther than this (RMS,
            area-weighted) from the planes of the input faces around everything merged into it is
            refused (Garland–Heckbert quadrics, summed over the collapses). Slivers between pixel
            centres collapse with errors far below a pixel; what the bound stops is a large patch no
            view sees (the underside of an object filmed from above) shrinking into a few big faces
            that cut a chord through the surface and into what the views do see.
        max_error_seen: the bound instead for collapsing an edge whose faces each own a pixel at some
            of the raster sizes (surface the views see between pixel centres at the others: a sliver,
            or a wall seen only at grazing angles, which can be several pixels across); ``None``:
            ``max_error``. Needs ``max_error``.
        report: a :class:`CleanupReport` to fill (``collapsed_edges``, ``collapsed_faces``,
            ``refused_far``, ``invisible_left``, ``faces_out``); a new one by default.

    Returns:
        ``(verts [V', 3], faces [F', 3] int32, vmap [V] int64, rows [F'] int64, report)``: ``vmap``
        maps each input vertex to its output vertex (``-1`` if it is gone; per-vertex data follows
        with :func:`merge_vertex_data`), ``rows`` gives each output face's row in ``faces`` (per-face
        data follows as ``data[rows]``). Output vertices keep the input's dtype and device.
    """
    res = _check_resolutions(resolutions)
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    if rounds < 0 or (keep_patch is not None and keep_patch < 0):
        raise ValueError(f"rounds, keep_patch: expected >= 0, got {rounds}, {keep_patch}")
    rep = report if report is not None else CleanupReport(faces_in=int(faces.shape[0]))
    for name, e in (("max_error", max_error), ("max_error_seen", max_error_seen)):
        if e is not None and not (e >= 0 and np.isfinite(e)):
            raise ValueError(f"{name}: expected a finite number >= 0 or None, got {e!r}")
    if max_error_seen is not None and max_error is None:
        raise ValueError("max_error_seen: needs max_error (the bound for surface no raster size sees)")
    v = verts.detach().cpu().double().numpy()
    f = faces.detach().cpu().long().numpy()
    vmap, rows = np.arange(v.shape[0]), np.arange(f.shape[0])
    quad = _plane_quadrics(v, f) if max_error is not None else None  # (q [V, 10], area [V])
    for r in range(rounds + 1):
        if f.shape[0] == 0:
            zero = np.zeros((len(res), 0), dtype=bool)
            break
        pix = face_pixels(torch.from_numpy(v).to(verts.device, verts.dtype),
                          torch.from_numpy(f).to(faces.device, torch.int32), mvp, res)
        zero = (pix == 0).numpy()
        cand = zero.any(axis=0)
        hidden = zero.all(axis=0)
        if hidden.any() and keep_patch is not None:  # the caller's limit on hidden patches
            idx, lab = _face_adjacency(f, hidden, by_edge=True)
            cand[idx[np.bincount(lab)[lab] > keep_patch]] = False
        if r == rounds or not cand.any():
            break
        stats = {}
        bound = None
        if quad is not None:  # per face: the strict bound where no raster size sees it
            seen_bound = max_error if max_error_seen is None else max_error_seen
            bound = quad + (np.where(hidden, float(max_error), float(seen_bound)),)
        pairs, t = _select_collapses(v, f, cand, min_cos, bound, stats)
        rep.refused_far += stats.get("refused_far", 0)
        if len(pairs) == 0:
            break
        n_before = f.shape[0]
        v, f, vm, rw, *acc = _apply_collapses(v, f, pairs, t, () if quad is None else quad)
        quad = tuple(acc) if quad is not None else None
        vmap = np.where(vmap >= 0, vm[np.maximum(vmap, 0)], -1)
        rows = rows[rw]
        rep.collapsed_edges += len(pairs)
        rep.collapsed_faces += n_before - f.shape[0]
    rep.invisible_left = {f"{h}x{w}": int(z.sum()) for (h, w), z in zip(res, zero)}
    rep.faces_out = int(f.shape[0])
    out_v = torch.from_numpy(v).to(verts.device, verts.dtype)
    out_f = torch.from_numpy(f).to(faces.device, torch.int32)
    return out_v, out_f, torch.from_numpy(vmap.astype(np.int64)), torch.from_numpy(rows.astype(np.int64)), rep


def _flip_candidates(v: np.ndarray, f: np.ndarray, uv: Optional[np.ndarray], bad: np.ndarray, min_cos: float):
    """The flips :func:`flip_invisible` makes this round for the faces ``bad [B]`` (in that order, a
    face taking part in at most one): ``(i [K], o [K], new [K, 2, 3], new_uv [K, 2, 3] or None)``, the
    face, its neighbour across its longest edge, and the two faces (and UV faces) replacing them."""
    V = v.shape[0]
    flat = _edge_keys(f, V)  # [3F], corner-major
    keys = flat.reshape(3, -1).T  # [F, 3]: key of the edge starting at each corner
    order = np.argsort(flat, kind="stable")
    sk = flat[order]
    owner_face = order % f.shape[0]  # the face of each sorted key ([3F] is corner-major)
    valence = np.bincount(f.reshape(-1), minlength=V)  # faces around each vertex
    p = v[f[bad]]  # [B, 3, 3]
    length = np.linalg.norm(p[:, [1, 2, 0]] - p, axis=2)  # edge from corner j to j + 1
    kk = length.argmax(1)
    rows = np.arange(len(bad))
    a, b, c = f[bad, kk], f[bad, (kk + 1) % 3], f[bad, (kk + 2) % 3]
    # the neighbour across ab: the edge's key must belong to exactly two faces
    lo_, hi_ = np.searchsorted(sk, keys[bad, kk], "left"), np.searchsorted(sk, keys[bad, kk], "right")
    ok = hi_ - lo_ == 2
    pos = np.where(ok, lo_, 0)
    f1, f2_ = owner_face[pos], owner_face[np.minimum(pos + 1, len(sk) - 1)]
    o = np.where(f1 == bad, f2_, f1)
    # the neighbour must be (b, a, d) in its cyclic order, d not c, and the edge cd must not exist yet
    fo = f[o]
    ko = ((fo != a[:, None]) & (fo != b[:, None])).argmax(1)
    d = fo[rows, ko]
    ok &= (d != c) & (fo[rows, (ko + 1) % 3] == b)
    cd = np.minimum(c, d).astype(np.int64) * V + np.maximum(c, d)
    at = np.minimum(np.searchsorted(sk, cd), len(sk) - 1)
    ok &= sk[at] != cd
    ok &= np.minimum(valence[a], valence[b]) > 3  # else a or b would keep two faces: a fold over itself
    # both new normals against the pair's area-weighted normal (a sliver's own normal means little)
    new = np.stack([np.stack([c, a, d], 1), np.stack([c, d, b], 1)], 1)  # [B, 2, 3]
    n_old = _normals(p) + _normals(v[fo])
    n_new = [_normals(v[new[:, q]]) for q in range(2)]
    l_o = np.linalg.norm(n_old, axis=1)
    for n in n_new:
        l_n = np.linalg.norm(n, axis=1)
        ok &= (l_n > 0) & (l_o > 0)
        ok &= _dot(n, n_old) > min_cos * np.maximum(l_n * l_o, 1e-300)
    new_uv = None
    if uv is not None:  # a and b must carry the same UV vertices in both faces
        ui, uo = uv[bad], uv[o]
        ua_a, ua_b, ua_c = ui[rows, kk], ui[rows, (kk + 1) % 3], ui[rows, (kk + 2) % 3]
        ub_d, ub_b, ub_a = uo[rows, ko], uo[rows, (ko + 1) % 3], uo[rows, (ko + 2) % 3]
        ok &= (ua_a == ub_a) & (ua_b == ub_b)
        new_uv = np.stack([np.stack([ua_c, ua_a, ub_d], 1), np.stack([ua_c, ub_d, ua_b], 1)], 1)
    # first come, first served (``bad``'s order): a face takes part in one flip per round
    used, take = set(), []
    for r in np.nonzero(ok)[0].tolist():
        i, j_ = int(bad[r]), int(o[r])
        if i in used or j_ in used:
            continue
        used.update((i, j_))
        take.append(r)
    take = np.asarray(take, dtype=np.int64)
    return bad[take], o[take], new[take], None if new_uv is None else new_uv[take]


def _new_owners(verts: torch.Tensor, old: np.ndarray, new: np.ndarray, mvp: torch.Tensor,
                resolutions: Sequence[Tuple[int, int]], rows: np.ndarray) -> np.ndarray:
    """Face rows of ``new`` that own, at some raster size, a pixel that one of ``rows`` owned in ``old``
    (both ``[F, 3]`` over ``verts``): who took a face's pixels."""
    lost = np.zeros(old.shape[0] + 1, dtype=bool)
    lost[rows + 1] = True
    lost_t = torch.from_numpy(lost)
    tri_old, tri_new = torch.from_numpy(old), torch.from_numpy(new)
    takers = [id_new[lost_t[id_old]].numpy() - 1
              for hw in resolutions
              for (_, id_old), (_, id_new) in zip(_face_id_images(verts, tri_old, mvp, hw),
                                                   _face_id_images(verts, tri_new, mvp, hw))]
    t = np.concatenate(takers) if takers else np.zeros(0, dtype=np.int64)
    return np.unique(t[t >= 0])


def flip_invisible(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor,
                   resolutions: Sequence[Tuple[int, int]], uv_faces: Optional[torch.Tensor] = None,
                   min_pixels: int = 2, min_cos: float = 0.5, rounds: int = 2,
                   report: Optional[CleanupReport] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """Flip the longest edge of faces that own (almost) no pixel, where both new faces then own some.

    For a face ``(a, b, c)`` whose longest edge ``ab`` borders face ``(b, a, d)``, the pair becomes
    ``(c, a, d), (c, d, b)`` (same orientation) if the edge ``cd`` does not exist yet, ``a`` and
    ``b`` keep at least three faces each, both new
    normals keep a cosine above ``min_cos`` with the pair's area-weighted normal (no fold), and, with ``uv_faces``,
    both old faces give ``a`` and ``b`` the same UV vertices (no flip across a UV seam). Candidates
    are the faces owning fewer than ``min_pixels`` pixels at some resolution: a sliver that owns one
    pixel centre lying on its edge may own none once the OBJ's 7 significant digits move its
    vertices (Spot: 0 such faces in memory, 1–2 in three of six exported meshes). Flips whose faces
    are disjoint run together; one after which either new face owns fewer than ``min_pixels`` at
    some resolution, or that takes the last pixel at a resolution from another face, is undone. The
    vertices do not move, so per-vertex data needs no update.

    Args:
        verts: ``[V, 3]`` float; faces: ``[F, 3]`` int (a manifold); mvp: ``[N, 4, 4]`` cameras;
            resolutions: raster sizes, as for :func:`collapse_invisible`.
        uv_faces: optional ``[F, 3]`` int per-corner indices that follow the flips (a UV atlas).
        min_pixels: the fewest pixels (over all views, at each resolution) a face should own.
        min_cos: the fold limit; rounds: at most this many passes.
        report: a :class:`CleanupReport` whose ``invisible_left`` and ``flipped_edges`` are updated.

    Returns:
        ``(faces' [F, 3] int32, uv_faces' or None, flips kept)``; the face count is unchanged.
    """
    res = _check_resolutions(resolutions)
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    if uv_faces is not None and uv_faces.shape != faces.shape:
        raise ValueError(f"uv_faces: expected shape {list(faces.shape)} (one row per face), got {list(uv_faces.shape)}")
    if min_pixels < 1:
        raise ValueError(f"min_pixels: expected >= 1, got {min_pixels}")
    v = verts.detach().cpu().double().numpy()
    f = faces.detach().cpu().long().numpy().copy()
    uv = None if uv_faces is None else uv_faces.detach().cpu().long().numpy().copy()
    V, kept = v.shape[0], 0

    def pixels(ff):
        return face_pixels(verts.detach(), torch.from_numpy(ff).to(faces.device, torch.int32), mvp, res).numpy()

    pix = pixels(f) if f.shape[0] else np.zeros((len(res), 0), dtype=np.int64)
    ref = pix.copy()  # what each face row owned before any flip (a kept flip's rows: after it)
    for _ in range(rounds):
        bad = np.nonzero((pix < min_pixels).any(axis=0))[0]
        if bad.size == 0:
            break
        fi, fo, new, new_uv = _flip_candidates(v, f, uv, bad, min_cos)
        if len(fi) == 0:
            break
        f2 = f.copy()
        f2[fi], f2[fo] = new[:, 0], new[:, 1]
        uv2 = None
        if uv is not None:
            uv2 = uv.copy()
            uv2[fi], uv2[fo] = new_uv[:, 0], new_uv[:, 1]
        pix2 = pixels(f2)
        # undo what did not help ...
        bad_pair = (pix2[:, fi] < min_pixels).any(axis=0) | (pix2[:, fo] < min_pixels).any(axis=0)
        undone = np.zeros_like(bad_pair)
        while True:
            back = np.r_[fi[bad_pair & ~undone], fo[bad_pair & ~undone]]
            undone |= bad_pair
            f2[back] = f[back]
            if uv2 is not None:
                uv2[back] = uv[back]
            if len(back):  # an undone pair changes which of its neighbours' pixels it occludes
                pix2 = pixels(f2)
            # ... and what took the last pixel at a size from another face (the new diagonal can take
            # a pixel centre that lay on a neighbour's edge, or cover one in front of a face behind),
            # until none does
            lost = ((pix2 == 0) & (ref > 0)).any(axis=0)
            lost[np.r_[fi[~bad_pair], fo[~bad_pair]]] = False  # judged by their own pixels above
            if not lost.any():
                break
            took = np.zeros(f.shape[0], dtype=bool)  # the faces that now own those pixels (rare: rasterize)
            took[_new_owners(verts, f, f2, mvp, res, np.nonzero(lost)[0])] = True
            culprit = ~bad_pair & (took[fi] | took[fo])
            if not culprit.any():
                break
            bad_pair |= culprit
        n_kept = int((~bad_pair).sum())
        kept += n_kept
        if n_kept == 0:
            break
        rows = np.r_[fi[~bad_pair], fo[~bad_pair]]
        ref[:, rows] = pix2[:, rows]
        f, uv, pix = f2, uv2, pix2
    if report is not None:
        report.invisible_left = {f"{h}x{w}": int((p == 0).sum()) for (h, w), p in zip(res, pix)}
        report.flipped_edges += kept
    out_uv = None if uv is None else torch.from_numpy(uv).to(uv_faces.device, uv_faces.dtype)
    return torch.from_numpy(f).to(faces.device, torch.int32), out_uv, kept

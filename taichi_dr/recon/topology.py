"""Carving that keeps the visual hull's topology: only *simple* lattice points are removed.

Why: photo and stereo carving (recon/carve.py, recon/stereo.py) decide point by point, from noisy
colour evidence, which lattice points lie outside the object. Where a concavity's wall is a cell or
two thick, a few wrong decisions punch a tunnel through it, and marching tets turns the tunnel into
a handle: the Mitsuba bowl (genus 0) came out with genus 1, the cup (genus 0) with genus 8. Each
handle is a fold of tiny faces that no camera sees and that Chamfer, normals and a user's mesh
tools all notice. The silhouettes decide the topology (the hull of a torus has its hole); carving
only digs into concavities, which never need a new handle or cavity.

A lattice vertex ``v`` is *simple* for a set ``X`` of inside vertices when removing it from ``X``
does not change the topology of the inside region of marching tets (the full subcomplex of the
tet grid spanned by ``X``, homotopy equivalent to the region ``sdf < 0``). On a triangulated
3-manifold that holds iff the part of ``v``'s *link* spanned by its inside neighbours is
contractible. The link of a vertex of this grid (6 Kuhn tets per cube, the same around every
vertex) is a triangulated sphere with 14 vertices (the neighbours along ±the 7 edge directions) and
24 triangles (the faces opposite ``v`` of its 24 tets); a full subcomplex of a sphere is
contractible iff it is non-empty, connected and has Euler characteristic 1. That is a function of
14 bits, tabulated once (2¹⁴ entries).

Points of the same parity (``i, j, l mod 2``) are never neighbours, so all simple points of one
parity class can be flipped at once; the classes take turns until nothing changes. The same
projection (:func:`keep_topology`, flips both ways) puts the DMTet pass' final signs back on the
starting topology when the pass made handles or pieces: free SDF values can flip a point anywhere
(the Mitsuba mug, genus 1, ended the pass with genus 2).
"""
import functools
import math
from typing import Optional, Tuple

import numpy as np
import torch

from taichi_dr.geometry.tetgrid import TetGrid

__all__ = ["TOPOLOGY_EPS", "link_offsets", "simple_table", "lattice_border", "keep_topology",
           "carve_keeping_topology", "local_thickness", "shrink_keeping_topology"]

# grid cells: the SDF value a lattice point gets when its sign is set by a topology decision (near
# zero, so the surface passes close to the point; not zero, so the sign is unambiguous)
TOPOLOGY_EPS = 0.05


@functools.lru_cache(maxsize=1)
def _link() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(offsets [14, 3] int, edges [E, 2], triangles [24, 3])`` of the link of a lattice vertex,
    read off the grid's own tets (so it cannot drift from :class:`TetGrid`)."""
    g = TetGrid.create(2, 2.0)
    n = 3
    center = (1 * n + 1) * n + 1
    tets = g.tets.cpu().numpy()
    around = tets[(tets == center).any(axis=1)]
    tris = np.sort(around[around != center].reshape(-1, 3), axis=1)
    ids = np.unique(tris)
    lat = np.stack(np.unravel_index(ids, (n, n, n)), axis=1) - 1  # x-major ids -> offsets
    local = np.searchsorted(ids, tris)
    e = np.unique(np.sort(np.concatenate([local[:, [0, 1]], local[:, [1, 2]], local[:, [0, 2]]]), axis=1), axis=0)
    return lat.astype(np.int64), e, local


def link_offsets() -> np.ndarray:
    """``[14, 3]`` int64 lattice offsets of a vertex's neighbours in the tet grid (bit ``k`` of a
    :func:`simple_table` index is neighbour ``k``)."""
    return _link()[0].copy()


@functools.lru_cache(maxsize=1)
def simple_table() -> np.ndarray:
    """``[2¹⁴]`` bool: is a vertex simple, given which of its 14 neighbours are inside (bit ``k``:
    neighbour ``k`` of :func:`link_offsets`)."""
    _, edges, tris = _link()
    codes = np.arange(1 << 14, dtype=np.int64)
    bits = ((codes[:, None] >> np.arange(14)) & 1).astype(bool)  # [C, 14]
    n_v = bits.sum(1)
    e_in = bits[:, edges[:, 0]] & bits[:, edges[:, 1]]
    t_in = bits[:, tris[:, 0]] & bits[:, tris[:, 1]] & bits[:, tris[:, 2]]
    euler = n_v - e_in.sum(1) + t_in.sum(1)
    # connected components of the inside neighbours along inside link edges (label propagation)
    lab = np.where(bits, np.arange(14), 14)
    for _ in range(14):
        before = lab.copy()
        for k, (i, j) in enumerate(edges):
            m = np.where(e_in[:, k], np.minimum(lab[:, i], lab[:, j]), 14)
            lab[:, i] = np.minimum(lab[:, i], m)
            lab[:, j] = np.minimum(lab[:, j], m)
        if np.array_equal(before, lab):
            break
    # a component's label is its smallest vertex: count the vertices that are their own label
    n_comp = (bits & (lab == np.arange(14))).sum(1)
    return (n_v > 0) & (n_comp == 1) & (euler == 1)


def lattice_border(resolution: int) -> torch.Tensor:
    """``[(resolution + 1)³]`` bool: the lattice points on the grid box's faces (x-major)."""
    n = resolution + 1
    i = torch.arange(n)
    edge = (i == 0) | (i == n - 1)
    return (edge[:, None, None] | edge[None, :, None] | edge[None, None, :]).reshape(-1)


def keep_topology(reference: torch.Tensor, target: torch.Tensor, resolution: int,
                  max_rounds: int = 200) -> Tuple[torch.Tensor, int]:
    """The inside set closest to ``target`` that ``reference``'s topology allows.

    Starting from ``reference``, every lattice point where ``target`` differs is flipped (removed
    or added) when it is simple, one parity class at a time, until nothing changes. A simple point
    stays simple whichever way it is flipped (the test only reads its neighbours), so the result
    has the topology of ``reference`` and differs from ``target`` only where a flip would have
    made or closed a tunnel, a handle, a cavity or a separate piece.

    Args:
        reference, target: ``[V]`` bool inside points (``V = (resolution + 1)³``, x-major).
        resolution: the grid's cells per axis.
        max_rounds: most rounds over the 8 parity classes (a round flips one layer of points).

    Returns:
        ``(inside [V] bool, kept)``: the result and the number of points where it still differs
        from ``target``.
    """
    n = resolution + 1
    for name, x in (("reference", reference), ("target", target)):
        if x.shape != (n ** 3,) or x.dtype != torch.bool:
            raise ValueError(f"{name}: expected a bool tensor of shape [{n ** 3}], got {x.dtype} {list(x.shape)}")
    cur = np.pad(reference.cpu().numpy().reshape(n, n, n), 1)  # a border of outside points
    goal = np.pad(target.cpu().numpy().reshape(n, n, n), 1)
    table, offs = simple_table(), link_offsets()
    weights = (1 << np.arange(14)).astype(np.int64)
    for _ in range(max_rounds):
        changed = False
        # where cur still differs, once per round: flipping one parity class leaves the others' entries
        diff = np.argwhere(cur != goal)
        cls = (diff % 2) @ np.array([4, 2, 1])
        for parity in range(8):
            idx = diff[cls == parity]
            if len(idx) == 0:
                continue
            nb = cur[tuple((idx[:, None, :] + offs[None]).transpose(2, 0, 1))]  # [P, 14]
            ok = table[nb.astype(np.int64) @ weights]
            if ok.any():
                flip = tuple(idx[ok].T)
                cur[flip] = goal[flip]
                changed = True
        if not changed:
            break
    inside = torch.from_numpy(cur[1:-1, 1:-1, 1:-1].reshape(-1).copy()).to(reference.device)
    return inside, int((cur != goal).sum())


def carve_keeping_topology(hull: torch.Tensor, carved: torch.Tensor, resolution: int,
                           max_rounds: int = 200) -> Tuple[torch.Tensor, int]:
    """Remove from ``hull`` the points ``carved`` removes, as far as that keeps its topology.

    Args:
        hull: ``[V]`` bool inside points before carving (``V = (resolution + 1)³``, x-major).
        carved: ``[V]`` bool the same after carving (a subset of ``hull``).
        resolution: the grid's cells per axis.
        max_rounds: most rounds over the 8 parity classes (a round removes one layer of points).

    Returns:
        ``(inside [V] bool, kept)``: ``hull`` minus the simple points of the carved set, removed
        from the outside in (:func:`keep_topology`), and how many carved points had to stay (each
        would have made a tunnel, a handle or a cavity).
    """
    n = resolution + 1
    for name, x in (("hull", hull), ("carved", carved)):
        if x.shape != (n ** 3,) or x.dtype != torch.bool:
            raise ValueError(f"{name}: expected a bool tensor of shape [{n ** 3}], got {x.dtype} {list(x.shape)}")
    if bool((carved & ~hull).any()):
        raise ValueError("carved: expected a subset of hull (carving only removes points)")
    return keep_topology(hull, carved, resolution, max_rounds)


THICKNESS_STEP = 0.25  # cells between the depth levels of local_thickness
THICKNESS_SLACK = 1.0  # cells a lattice point may lie beyond an inscribed ball and still count as under it


def local_thickness(sdf: np.ndarray, cap: float, step: float = THICKNESS_STEP,
                    slack: float = THICKNESS_SLACK) -> np.ndarray:
    """The radius of the largest inscribed ball over each lattice point (Hildebrand & Rüegsegger's
    local thickness, in cells; balls deeper than the first level at or above ``cap`` are not
    searched for, so a value below ``cap`` is exact to the level step).

    A point ``q`` at depth ``r`` (its distance to the surface) is the centre of a ball of radius ``r``
    inside the part; a point under that ball belongs to a part at least ``r`` thick. Level by level
    (``k = step, 2·step, ...``): every point within ``r + slack`` cells of its nearest point ``q`` at
    least ``k`` deep gets at least ``q``'s depth ``r`` (a point outside, ``e`` cells from the
    surface, within ``r + slack + e``: the lattice points just outside a part, which set where the
    surface crosses the grid's edges, share its value). Unlike the deepest depth in a window, this
    keeps a thin part's value low next to a thick one (a leg stays thin beyond ``slack`` from the
    body it joins). The slack covers the lattice: the nearest point ``k`` deep to a surface point
    sits up to about a cell off its normal (a diagonal normal).

    Args:
        sdf: ``[n, n, n]`` float signed distance in cells (> 0 outside).
        cap: the largest level worth resolving (the caller's answer is the same above it).
        step: cells between levels; slack: see above.

    Returns:
        ``[n, n, n]`` float32 local thickness (at least the point's own depth; 0 outside where no ball
        reaches).
    """
    from scipy.ndimage import distance_transform_edt

    if not isinstance(sdf, np.ndarray) or sdf.ndim != 3 or sdf.dtype.kind != "f":
        raise ValueError(f"sdf: expected a float [n, n, n] numpy array, got "
                         f"{getattr(sdf, 'dtype', type(sdf).__name__)} {list(getattr(sdf, 'shape', []))}")
    for name, value, low in (("cap", cap, 0.0), ("step", step, 1e-3), ("slack", slack, 0.0)):
        if not math.isfinite(value) or value < low:
            raise ValueError(f"{name}: expected a finite value >= {low:g}, got {value!r}")
    depth, out = np.clip(-sdf, 0, None), np.clip(sdf, 0, None)
    local = depth.astype(np.float32)  # every inside point is the centre of its own ball
    for k in step * np.arange(1, math.ceil(cap / step - 1e-9) + 1):  # up to the first level >= cap
        core = depth >= k
        if not core.any():
            break
        # the nearest point at least k deep (EDT of the complement) and the ball it is the centre of
        dist, nearest = distance_transform_edt(~core, return_indices=True)
        radius = depth[tuple(nearest)]
        np.maximum(local, np.where(dist <= radius + slack + out, radius, 0), out=local)
    return local


def shrink_keeping_topology(sdf: torch.Tensor, shrink: float, resolution: int,
                            min_depth: float = 1.0, full_depth: float = 4.0,
                            thin_parts: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move the zero level of a lattice SDF up to ``shrink`` cells inward, keeping its topology and thin parts.

    Why: the visual hull holds the object, and where no view sees past the object (a concave fold
    under a rim, the inside of a torus' hole next to its tube, a cast shadow) nothing in the images
    pulls the hull back: dark hull walls in a shadow look like dark object walls, and a pass without
    shadows has no reason to move them. Starting a little inside the hull trades this unobserved
    excess for a deficit the passes *can* see: the silhouettes and the mask loss grow the surface
    back out where the cameras show it (measured: docs/08, round 14).

    Two things a plain ``sdf + shrink`` would break are kept. *Thin parts*: a part whose deepest
    lattice point (within ``ceil(max(shrink, full_depth)) + 2`` cells) lies less than ``shrink +
    min_depth`` cells inside moves in only by its depth − ``min_depth`` (not at all when thinner): the
    DMTet pass grows a part back from its inside lattice points, and a part whose points all sit near
    zero is lost to the SDF regulariser (in one run without this guard, the Mitsuba mug's handle was
    cut that way). A point inside a part that thin — its local thickness, the largest inscribed
    ball over it (:func:`local_thickness`), is below ``shrink + min_depth`` — takes that thickness
    instead of the deepest point nearby: a thin part joined to a thick one (the Mitsuba cow's legs,
    the teapot's spout) otherwise reads the thick one's depth and is shrunk away (docs/08, round 16).
    Thicker parts keep the window's depth: the thickness reads them a little thinner (the torus'
    tube 3.6 cells, not the clamp's 4), so less shift, and used everywhere it kept more hull excess
    (box with a hole +36 %, knot +11 %).
    Below ``full_depth`` cells of depth the shift also scales with the depth (``shrink · depth /
    full_depth``): a uniform shift takes a share ∝ shrink / radius of a tube's silhouette, which the
    passes do not fully grow back on thin tubes (Mitsuba knot, tubes 2.3 cells deep: test IoU 0.978
    with a uniform 0.59-cell shift, 0.984 with this; docs/08 round 15). The default, 4 cells, is
    where :func:`~taichi_dr.recon.model.hull_sdf` clamps the depth: every part it measures as thick
    moves the whole ``shrink``.
    *Topology*: a lattice point that turns outside is only let go when it is *simple*
    (:func:`carve_keeping_topology`); one that must stay gets ``-TOPOLOGY_EPS``, like every point
    whose sign a topology decision sets, so the surface passes close to it.

    Args:
        sdf: ``[V]`` float signed distance in cells (> 0 outside; ``V = (resolution + 1)³``, x-major).
        shrink: the most cells to move inward (>= 0).
        resolution: the grid's cells per axis.
        min_depth: cells of depth the shrink leaves under a part's deepest point (>= 0).
        full_depth: parts at least this many cells deep move the whole ``shrink``, thinner ones in
            proportion to their depth (>= 0; 0 = no proportional reduction).
        thin_parts: ``[V]`` bool, the points that may take their own thickness (default: every point
            inside). The reconstruction passes the points the masks show on a thin part
            (:func:`~taichi_dr.recon.model.thin_in_masks`): thin *hull excess*, such as the lip the
            visual hull leaves at a torus' hole, is thin too, and kept it grows back (torus 4.0e-5 →
            5.1e-5 when every inside point could).

    Returns:
        ``(sdf [V], held [V] bool)``: the shifted SDF (same dtype and device) and the lattice points that
        stayed inside only to keep the topology (at ``-TOPOLOGY_EPS``; on ``sdf``'s device).
    """
    from scipy.ndimage import maximum_filter

    n = resolution + 1
    if sdf.shape != (n ** 3,) or not sdf.is_floating_point():
        raise ValueError(f"sdf: expected a float tensor of shape [{n ** 3}], got {sdf.dtype} {list(sdf.shape)}")
    for name, value in (("shrink", shrink), ("min_depth", min_depth), ("full_depth", full_depth)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")
    if thin_parts is not None and (thin_parts.shape != sdf.shape or thin_parts.dtype != torch.bool):
        raise ValueError(f"thin_parts: expected a bool tensor of shape {list(sdf.shape)}, got "
                         f"{thin_parts.dtype} {list(thin_parts.shape)}")
    grid = sdf.detach().reshape(n, n, n).cpu().numpy()
    depth = np.clip(-grid, 0, None)
    # ±(ceil(max(shrink, full_depth)) + 2) cells: from a point near the surface to the axis of the part it
    # lies on, as deep as the depth that counts
    reach = 2 * int(math.ceil(max(shrink, full_depth))) + 5
    local = maximum_filter(depth, size=reach, mode="constant")
    # ... unless the point lies inside a part thin enough to be guarded: then that part's own thickness
    # (points outside keep the window's value: it keeps them as far out as before, and hull excess
    # they border, such as the lip of the torus' hole, is no easier to grow back)
    thin = shrink + min_depth
    thickness = local_thickness(grid, thin)
    own = (thickness < thin) & (grid < 0)
    if thin_parts is not None:
        own &= thin_parts.detach().cpu().numpy().reshape(n, n, n)
    local = torch.from_numpy(np.where(own, thickness, local).reshape(-1)).to(sdf)
    shift = (local - min_depth).clamp(0.0, shrink)
    if full_depth > 0:
        shift = torch.minimum(shift, shrink * local / full_depth)
    shifted = sdf + shift
    inside, _ = carve_keeping_topology(sdf < 0, shifted < 0, resolution)
    held = inside.to(sdf.device) & (shifted >= 0)
    return torch.where(held, torch.full_like(sdf, -TOPOLOGY_EPS), shifted), held

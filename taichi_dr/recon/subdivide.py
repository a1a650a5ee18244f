"""Midpoint subdivision of the DMTet mesh before the refinement pass.

The refinement pass moves a fixed mesh's vertices. After the DMTet pass and its cleanup that mesh
has about one vertex per grid cell (grid 64 at 128²: edges ~1.3 training pixels long), so a curve
in the target that bends within one edge cannot be followed: the refinement fits the outlines with
straight chords and flat facets. Splitting every triangle into four at its edges' midpoints
leaves the surface exactly where it was (every new vertex lies on an old edge) and gives the
refinement four times the faces to place. Measured at 128² (docs/08 round 19): Chamfer-L2 cow
4.46e-5 -> 3.90e-5, rocker arm 5.36e-4 -> 4.52e-4 (test IoU 0.979 -> 0.982), box 1.96e-4 ->
1.67e-4, 17 of 18 datasets better, at up to 1.45x the run's time; the bowl, whose base and dish
are unlit, drifts (9.75e-5 -> 1.30e-4). A second subdivision gains again where the shape has
detail within a cell (round 20: bunny 1.57e-4 -> 6.1e-5, rocker arm 4.52e-4 -> 1.91e-4, cow
3.90e-5 -> 2.70e-5), but the refinement's time grows about linearly with its faces, so
:func:`auto_subdivisions` (``ReconConfig.refine_subdivide=None``, the default) takes two only while
the refined mesh stays within :data:`AUTO_FACE_BUDGET` faces.

Why midpoints and not Loop or Catmull-Clark: smoothing schemes move the old vertices towards their
neighbours and shrink convex parts by a fraction of an edge, i.e. of a pixel, which the mask loss
would then have to undo; the refinement's own smooth steps (recon/large_steps.py) already damp the
new vertices' noise.
"""
from typing import Tuple

import torch

from taichi_dr._checks import FLOATS, check_index, check_tensor
from taichi_dr.mesh import unique_edges

__all__ = ["subdivide_midpoint", "auto_subdivisions", "AUTO_FACE_BUDGET", "AUTO_FACE_CAP"]

# faces the refinement may get from the automatic choice: two subdivisions (16 faces per face) of a
# DMTet mesh of up to 10,000 faces. Each refinement step costs about linearly in the faces; at 128² the
# bunny's 145,696 took 242 s for the whole run alone on 2 CPU cores, within #15's 5 minutes. A bowl
# (13,616 -> 217,856) or the 800² gadget (30,896 -> 494,336) would take far longer, and the bowl
# gained nothing from two (docs/08 rounds 19-20).
AUTO_FACE_BUDGET = 160_000
# the most faces two subdivisions may give on a grid finer than the image size's default (below)
AUTO_FACE_CAP = 640_000


def auto_subdivisions(num_faces: int, budget: int = AUTO_FACE_BUDGET, grid_scale: float = 1.0) -> int:
    """``refine_subdivide=None``: 2 if ``16 * num_faces <= budget * grid_scale`` and within
    :data:`AUTO_FACE_CAP` (or within ``budget`` where a caller's budget is the larger), else 1 (never
    0: one subdivision gains on every dataset measured but the unlit bowl; docs/08 round 19).

    ``grid_scale`` is ``(grid_res / default grid)²`` for a grid finer than the image size's default
    (a user's, or the automatic 64 for thin parts), else 1. A DMTet mesh has about grid² faces, so
    without it a finer grid's mesh crossed the budget and its refinement got one subdivision where
    the default grid's got two: coarser refinement steps than the defaults', and a worse result
    (torus at grid 64: Chamfer 2.87e-5 against the defaults' 2.50e-5; with two subdivisions
    2.37e-5; docs/08 round 25). The user who picks the finer grid pays its time; the cap keeps grid
    128 from reaching millions of faces.
    """
    if not grid_scale >= 1.0:
        raise ValueError(f"grid_scale: expected a number >= 1, got {grid_scale!r}")
    faces = 16 * int(num_faces)
    return 2 if faces <= budget * grid_scale and faces <= max(AUTO_FACE_CAP, budget) else 1


def subdivide_midpoint(verts: torch.Tensor, faces: torch.Tensor, times: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split every triangle into four at its edges' midpoints, ``times`` times.

    Each edge gets one new vertex shared by the faces on both sides, so a closed manifold stays
    closed and manifold, the Euler characteristic (genus, components) is unchanged, and each face
    ``(a, b, c)`` becomes ``(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)`` with the same
    orientation. The surface (and so its area) does not move.

    Args:
        verts: ``[V, D]`` float32/float64 positions (``D = 3``) or any per-vertex attribute that
            varies linearly along an edge, e.g. the UVs ``[T, 2]`` of an atlas with its ``uv_faces``:
            the children of a face come out in the same order whatever the vertex numbering.
        faces: ``[F, 3]`` int32/int64 indices into ``verts``.
        times: number of subdivisions (``0`` returns the inputs), an int ``>= 0``.

    Returns:
        ``(verts [V + E, D], faces [4F, 3])`` for one subdivision (E: the number of distinct edges),
        same dtypes and devices as the inputs; the first ``V`` vertices are the old ones.

    Raises:
        TypeError: ``verts``/``faces`` are not tensors of a supported dtype, or ``times`` is not an int.
        ValueError: wrong shapes, indices out of range, or ``times < 0``.
    """
    check_tensor("verts", verts, ndim=2, dtypes=FLOATS, expected="[V, D]")
    check_index("faces", faces, verts.shape[0], expected="[F, 3]")
    if isinstance(times, bool) or not isinstance(times, int):
        raise TypeError(f"times: expected an int >= 0, got {type(times).__name__}")
    if times < 0:
        raise ValueError(f"times: expected an int >= 0, got {times}")
    for _ in range(times):
        f = faces.long()
        nv, nf = verts.shape[0], f.shape[0]
        # one midpoint per undirected edge: both faces on an edge map it to the same new vertex
        uniq, which = unique_edges(f)
        mid = 0.5 * (verts[uniq[:, 0]] + verts[uniq[:, 1]])
        ab, bc, ca = (which[k * nf:(k + 1) * nf] + nv for k in range(3))
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        faces = torch.cat([torch.stack(t, dim=1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))]
                          ).to(faces.dtype)
        verts = torch.cat([verts, mid])
    return verts, faces

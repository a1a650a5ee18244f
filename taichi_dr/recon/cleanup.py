"""Mesh cleanup after DMTet: drop geometry the training images cannot see or do not support.

Why DMTet leaves hidden geometry: the image and mask losses only receive gradients from surfaces
that own pixels in some view. A pocket of negative SDF inside the object (a bubble), or a sheet
where two fronts of the SDF meet inside the volume, is covered by the outer surface from every
camera, so nothing pulls it away. The SDF regulariser (BCE between neighbouring signs) does
penalise every sign change, but it is weighted to a small value after the first quarter of the
pass (otherwise it erodes thin parts and concavities of the visible surface), and its gradient per
edge is the same for a hidden sign change as for a visible one, so hidden surfaces shrink only as
fast as the regulariser also smooths the real surface. A finer grid has more such edges per unit of
area, more room for bubbles between the fronts and more parameters that no image constrains, which
is why interior surfaces grew with the grid resolution.

So the output is cleaned with the same evidence the optimisation used, the training views:

1. :func:`face_visibility` rasterizes the mesh with :func:`~taichi_dr.render.rasterize.rasterize`
   from every training camera (at ``oversample`` × the training resolution, so that thin visible
   faces are not mistaken for hidden ones) and counts the pixels each face owns after the z-test.
2. :func:`clean_mesh` removes faces that own no pixel in any view (except small patches inside
   visible surface: slivers that fall between pixel centres, which would leave holes), then
   connected components that the images do not support: too few pixels compared with the largest
   component, or mostly outside the target masks (floaters).
3. :func:`~taichi_dr.recon.collapse.collapse_invisible` (recon/collapse.py) then makes those small
   invisible patches disappear by edge collapse (deleting them would open the surface).
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from taichi_dr.camera import nearest_pixel, transform_pos
from taichi_dr.render.interpolate import interpolate
from taichi_dr.render.rasterize import rasterize

__all__ = ["face_visibility", "face_pixels", "points_views", "face_components", "clean_faces", "compact", "clean_mesh",
           "collapse_short_edges", "surviving_faces", "nonmanifold_vertices", "components_genus", "CleanupReport"]


@dataclass
class CleanupReport:
    """What :func:`clean_faces` removed and :func:`~taichi_dr.recon.collapse.collapse_invisible`
    collapsed (counts of faces).

    ``invisible_faces``: faces deleted as invisible (closed patches bordering no visible face);
    ``collapsed_edges`` / ``collapsed_faces``: edge collapses and the faces they removed;
    ``flipped_edges``: edges flipped so that a sliver's pair of faces both own pixels;
    ``invisible_left``: faces owning no pixel afterwards, per resolution (``"HxW"`` -> count);
    ``refused_far``: collapses refused because they would move the surface more than the error bound
    (summed over the rounds; an edge refused in several rounds counts in each): where it is > 0, the
    faces left owning no pixel lie on surface no view sees, kept in its shape;
    ``faces_out``: faces after the last step that filled the report.
    """

    faces_in: int = 0
    invisible_faces: int = 0
    components_in: int = 0
    removed_components: int = 0
    removed_component_faces: int = 0
    faces_out: int = 0
    collapsed_edges: int = 0
    collapsed_faces: int = 0
    flipped_edges: int = 0
    refused_far: int = 0
    invisible_left: Dict[str, int] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> Dict[str, object]:
        return {prefix + k: v for k, v in dataclasses.asdict(self).items()}


@torch.no_grad()
def _face_id_images(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor, resolution: Tuple[int, int],
                   chunk: int = 4) -> Iterator[Tuple[int, torch.Tensor]]:
    """Which face each pixel shows (after the depth test), ``chunk`` views at a time.

    Args:
        verts: ``[V, 3]`` float world positions; faces: ``[F, 3]`` int triangles.
        mvp: ``[N, 4, 4]`` float projection · model-view of each view; resolution: ``(H, W)``.

    Yields:
        ``(first view, ids [n, H, W] int64 on the CPU)``: the face row + 1 per pixel, 0 = background.
    """
    tri = faces.int().contiguous()
    for s in range(0, mvp.shape[0], chunk):
        clip = transform_pos(mvp[s:s + chunk].float(), verts.detach().float())
        rast, _ = rasterize(clip, tri.to(clip.device), tuple(resolution), grad_db=False)
        yield s, rast[..., 3].round().long().cpu()


def face_visibility(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor, resolution: Tuple[int, int],
                    alpha: Optional[torch.Tensor] = None, chunk: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixels owned by each face over all views (after the depth test).

    Args:
        verts: ``[V, 3]`` float world positions; faces: ``[F, 3]`` int triangles.
        mvp: ``[N, 4, 4]`` float projection · model-view of each view.
        resolution: ``(H, W)`` raster size.
        alpha: optional ``[N, h, w]`` target coverage (any size; resampled to ``(H, W)``), to count
            how many of each face's pixels lie inside the target masks.
        chunk: views rasterized at once.

    Returns:
        ``(pixels [F] int64, in_mask [F] int64)``: pixels owned, and of those inside ``alpha >= 0.5``
        (zeros without ``alpha``).
    """
    if verts.dim() != 2 or verts.shape[-1] != 3:
        raise ValueError(f"verts: expected shape [V, 3], got {list(verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    if mvp.dim() != 3 or mvp.shape[1:] != (4, 4):
        raise ValueError(f"mvp: expected shape [N, 4, 4], got {list(mvp.shape)}")
    F_ = faces.shape[0]
    pixels = torch.zeros(F_ + 1, dtype=torch.int64)
    inside = torch.zeros(F_ + 1, dtype=torch.int64)
    if F_ == 0:
        return pixels[1:], inside[1:]
    H, W = resolution
    for s, ids in _face_id_images(verts, faces, mvp, (H, W), chunk):
        pixels += torch.bincount(ids.reshape(-1), minlength=F_ + 1)
        if alpha is not None:
            a = alpha[s:s + chunk].float().unsqueeze(1)
            a = torch.nn.functional.interpolate(a, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
            inside += torch.bincount(ids[a.cpu() >= 0.5].reshape(-1), minlength=F_ + 1)
    pixels[0] = inside[0] = 0
    return pixels[1:], inside[1:]


def _edge_keys(faces: np.ndarray, n_verts: int) -> np.ndarray:
    """``[3F]`` int64 key of each face edge (all first edges, then all second, then all third)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1).astype(np.int64)
    return e[:, 0] * n_verts + e[:, 1]


def _face_adjacency(faces: np.ndarray, mask: Optional[np.ndarray] = None, by_edge: bool = False):
    """Sparse face graph: faces sharing a vertex (or an edge with ``by_edge``), among ``mask`` faces."""
    F_ = faces.shape[0]
    idx = np.arange(F_) if mask is None else np.nonzero(mask)[0]
    f = faces[idx]
    if by_edge:
        _, node = np.unique(_edge_keys(f, int(faces.max()) + 1), return_inverse=True)
    else:
        node = f.reshape(-1)
    owner = np.tile(np.arange(len(idx)), 3) if by_edge else np.repeat(np.arange(len(idx)), 3)
    # bipartite graph face <-> shared element; components of it are components of the faces
    n_nodes = int(node.max()) + 1 if node.size else 0
    g = coo_matrix((np.ones(node.size), (owner, len(idx) + node)), shape=(len(idx) + n_nodes,) * 2)
    _, lab = connected_components(g, directed=False)
    _, lab = np.unique(lab[:len(idx)], return_inverse=True)  # contiguous labels over the faces only
    return idx, lab.reshape(-1)


def face_components(faces: torch.Tensor) -> Tuple[int, torch.Tensor]:
    """Connected components of a triangle mesh (faces sharing a vertex): ``(count, labels [F] int64)``."""
    f = faces.detach().cpu().long().numpy()
    if f.shape[0] == 0:
        return 0, torch.zeros(0, dtype=torch.int64)
    _, lab = _face_adjacency(f)
    return int(lab.max()) + 1, torch.from_numpy(lab.astype(np.int64))


def compact(verts: torch.Tensor, faces: torch.Tensor, keep: torch.Tensor, *extra: torch.Tensor):
    """Keep the faces ``keep [F] bool`` and drop the vertices no kept face uses.

    Args:
        verts: ``[V, 3]``; faces: ``[F, 3]`` int; keep: ``[F]`` bool; extra: per-vertex tensors
            ``[V, ...]`` (e.g. colours) compacted like ``verts``.

    Returns:
        ``(verts [V', 3], faces [F', 3] int32, *extra')``.
    """
    if keep.shape != (faces.shape[0],) or keep.dtype != torch.bool:
        raise ValueError(f"keep: expected a bool tensor of shape [{faces.shape[0]}], got {keep.dtype} "
                         f"{list(keep.shape)}")
    f = faces[keep.to(faces.device)].long()
    used = torch.zeros(verts.shape[0], dtype=torch.bool)
    used[f.reshape(-1).cpu()] = True
    remap = torch.full((verts.shape[0],), -1, dtype=torch.int64)
    remap[used] = torch.arange(int(used.sum()))
    out_f = remap[f.cpu()].to(torch.int32).to(faces.device)
    return (verts[used.to(verts.device)], out_f) + tuple(x[used.to(x.device)] for x in extra)


@torch.no_grad()
def clean_faces(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor, resolution: Tuple[int, int],
                alpha: Optional[torch.Tensor] = None, min_component_fraction: float = 0.002,
                min_mask_support: float = 0.5) -> Tuple[torch.Tensor, CleanupReport]:
    """Which faces to keep: those some training view sees, in components the images support.

    Args:
        verts: ``[V, 3]`` float; faces: ``[F, 3]`` int32.
        mvp: ``[N, 4, 4]`` training cameras; resolution: ``(H, W)`` raster size (use ≥ the
            training resolution).
        alpha: optional ``[N, h, w]`` training masks (enables the mask-support test).
        min_component_fraction: a component owning fewer pixels than this fraction of the most
            visible component's pixels is removed (floaters, dust). Small on purpose: a thin
            separate part (a rod, an antenna, a spoke) owns only ~1-3 % of a scene's pixels and is
            real; what the masks do not support goes by the next test whatever its size.
        min_mask_support: a component with less than this fraction of its pixels inside the target
            masks is removed (geometry in front of the background).

    Returns:
        ``(keep [F] bool, report)``; apply with :func:`compact`.
    """
    rep = CleanupReport(faces_in=int(faces.shape[0]))
    if faces.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=faces.device), rep
    pix, inm = face_visibility(verts, faces, mvp, resolution, alpha)
    f_np = faces.detach().cpu().long().numpy()
    visible = (pix > 0).numpy()
    keep = visible.copy()
    if (~visible).any():
        # an edge-connected patch of invisible faces that borders a visible face is part of the seen
        # surface (slivers between pixel centres, a wall no camera looks into): deleting it would
        # open the mesh, so it stays for collapse_invisible. A patch bordering none is a closed
        # surface behind the seen one (DMTet's inner shells) and goes.
        idx, lab = _face_adjacency(f_np, ~visible, by_edge=True)
        n_v = int(f_np.max()) + 1
        seen_edges = np.unique(_edge_keys(f_np[visible], n_v))
        borders = np.isin(_edge_keys(f_np[idx], n_v), seen_edges).reshape(3, -1).any(axis=0)
        attached = np.bincount(lab, weights=borders.astype(np.float64)) > 0
        keep[idx[attached[lab]]] = True
    rep.invisible_faces = int((~keep).sum())
    # components of what is left, judged by the pixels they own and by the masks
    kept = np.nonzero(keep)[0]
    if kept.size:
        _, lab = _face_adjacency(f_np, keep)
        n = int(lab.max()) + 1
        comp_pix = np.bincount(lab, weights=pix.numpy()[kept], minlength=n)
        comp_in = np.bincount(lab, weights=inm.numpy()[kept], minlength=n)
        bad = comp_pix < min_component_fraction * comp_pix.max()
        if alpha is not None:
            bad |= comp_in < min_mask_support * np.maximum(comp_pix, 1)
        bad &= comp_pix < comp_pix.max()  # never remove the best-supported component
        rep.components_in = n
        rep.removed_components = int(bad.sum())
        drop = bad[lab]
        rep.removed_component_faces = int(drop.sum())
        keep[kept[drop]] = False
    rep.faces_out = int(keep.sum())
    return torch.from_numpy(keep).to(faces.device), rep


def clean_mesh(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor, resolution: Tuple[int, int],
               alpha: Optional[torch.Tensor] = None, extra: Tuple[torch.Tensor, ...] = (), **kwargs):
    """:func:`clean_faces` then :func:`compact`: ``(verts', faces', *extra', report)``.

    ``extra``: per-vertex tensors ``[V, ...]`` compacted along with ``verts``; ``kwargs`` go to
    :func:`clean_faces`.
    """
    keep, rep = clean_faces(verts, faces, mvp, resolution, alpha, **kwargs)
    return compact(verts, faces, keep, *extra) + (rep,)


def components_genus(faces: torch.Tensor) -> Tuple[int, float]:
    """``(components, total genus)`` of a closed triangle mesh ``faces [F, 3]`` (int), from its
    Euler characteristic ``χ = V − E + F = 2 (components − genus)`` (V: vertices that faces use)."""
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    if faces.shape[0] == 0:
        return 0, 0.0
    f = faces.detach().cpu().long().numpy()
    n_v = int(f.max()) + 1
    chi = np.unique(f).size - np.unique(_edge_keys(f, n_v)).size + f.shape[0]
    comps = face_components(faces)[0]
    return comps, (2 * comps - chi) / 2


def nonmanifold_vertices(faces: np.ndarray, n_verts: int) -> np.ndarray:
    """``[n_verts]`` bool: vertices whose faces do not form one fan (two sheets pinched together), or
    that end an edge with more than two faces. ``faces``: ``[F, 3]`` int (numpy)."""
    f = np.asarray(faces, dtype=np.int64)
    if f.ndim != 2 or f.shape[-1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(f.shape)}")
    if f.size and (f.min() < 0 or f.max() >= n_verts):
        raise ValueError(f"faces: expected indices in [0, {n_verts}), got [{f.min()}, {f.max()}]")
    bad = np.zeros(n_verts, dtype=bool)
    if f.size == 0:
        return bad
    keys = _edge_keys(f, n_verts)
    uk, cnt = np.unique(keys, return_counts=True)
    over = uk[cnt > 2]
    bad[np.r_[over // n_verts, over % n_verts]] = True
    # wedges (vertex, neighbour); the face (a, b, c) joins a's wedges to b and c (likewise for b, c):
    # a vertex in one fan has all its wedges in one component of that graph
    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    centre = np.r_[a, b, c]
    w1, w2 = centre * n_verts + np.r_[b, c, a], centre * n_verts + np.r_[c, a, b]
    ids, inv = np.unique(np.r_[w1, w2], return_inverse=True)
    m = len(w1)
    g = coo_matrix((np.ones(m), (inv[:m], inv[m:])), shape=(len(ids), len(ids)))
    _, comp = connected_components(g, directed=False)
    owner = ids // n_verts
    fans = np.bincount(np.unique(np.stack([owner, comp], 1), axis=0)[:, 0], minlength=n_verts)
    bad |= fans > 1
    return bad


@torch.no_grad()
def collapse_short_edges(verts: torch.Tensor, faces: torch.Tensor, min_length: float
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge vertices joined by edges shorter than ``min_length`` (each cluster -> its centroid).

    Marching tets puts a vertex on every sign-changing grid edge; where the surface passes close to
    a grid vertex, the vertices on its edges nearly coincide and the triangles between them are
    slivers. They own no pixel (so they read as "invisible"), and their random normals make the
    refinement's regularisers and shading noisy. Faces that collapse to a line or point, and pairs
    of faces that become the same triangle, are removed; the mesh stays closed.

    Args:
        verts: ``[V, 3]`` float; faces: ``[F, 3]`` int; min_length: world units.

    Returns:
        ``(verts [V', 3], faces [F', 3] int32)``.
    """
    if faces.shape[0] == 0 or not min_length > 0:
        return verts, faces.to(torch.int32)
    f = faces.detach().cpu().long()
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    v = verts.detach().cpu()
    short = e[(v[e[:, 0]] - v[e[:, 1]]).norm(dim=1) < min_length].numpy()
    V = v.shape[0]
    g = coo_matrix((np.ones(len(short)), (short[:, 0], short[:, 1])), shape=(V, V))
    _, lab = connected_components(g, directed=False)
    f_np = f.numpy()
    # a cluster can span two sheets that pass close to one grid vertex (a thin wall, a narrow gap):
    # merging it pinches them into a non-manifold vertex. Such clusters, and those around them, are
    # left unmerged (a few rounds, each undoing more, until the result is a manifold again).
    for _ in range(8):
        nf_np = lab[f_np]
        bad_new = nonmanifold_vertices(nf_np[surviving_faces(nf_np)], int(lab.max()) + 1)
        if not bad_new.any():
            break
        near = bad_new.copy()  # the bad vertices and their neighbours in the merged mesh
        hit = bad_new[nf_np].any(axis=1)
        near[nf_np[hit].reshape(-1)] = True
        undo = near[lab]
        lab[undo] = lab.max() + 1 + np.arange(int(undo.sum()))
        _, lab = np.unique(lab, return_inverse=True)
    lab_t = torch.from_numpy(lab.astype(np.int64).reshape(-1))
    n = int(lab_t.max()) + 1
    cnt = torch.zeros(n, dtype=v.dtype).index_add_(0, lab_t, torch.ones(V, dtype=v.dtype))
    new_v = torch.zeros(n, 3, dtype=v.dtype).index_add_(0, lab_t, v) / cnt.unsqueeze(1)
    nf = lab_t[f]
    nf = nf[torch.from_numpy(surviving_faces(nf.numpy()))]
    out_v, out_f = compact(new_v, nf.to(torch.int32), torch.ones(nf.shape[0], dtype=torch.bool))
    return out_v.to(verts.device, verts.dtype), out_f.to(faces.device)


@torch.no_grad()
def face_pixels(verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor,
                resolutions: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Pixels each face owns over all views, at each of several raster sizes.

    Args:
        verts: ``[V, 3]`` float; faces: ``[F, 3]`` int; mvp: ``[N, 4, 4]`` float.
        resolutions: ``(H, W)`` raster sizes, e.g. the training resolution and twice it.

    Returns:
        ``[R, F]`` int64 (R = ``len(resolutions)``): see :func:`face_visibility`.
    """
    res = _check_resolutions(resolutions)
    return torch.stack([face_visibility(verts, faces, mvp, r)[0] for r in res])


def points_views(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor, mvp: torch.Tensor,
                 resolution: Tuple[int, int]) -> torch.Tensor:
    """How many views see each point *on* a mesh's surface: a depth test per view.

    In each view the mesh's camera-space depth ``w`` (clip w: the distance along the view axis) is
    rasterized, and a point counts as seen where it projects into the image and its depth is at
    most the largest covered depth of the 3×3 pixels around its own plus two pixel widths at that
    depth: the neighbourhood and the margin take up the depth a grazing surface spans within a
    pixel (points within about a pixel of an outline, where the depth changes fastest, are
    decided either way). Unlike pixel ownership (:func:`face_visibility`) this does not depend on
    the tessellation: a visible face smaller than a pixel owns none.

    Args:
        points: ``[S, 3]`` float points on the surface of ``verts``/``faces`` (``[V, 3]``, ``[F, 3]``).
        mvp: ``[N, 4, 4]`` float perspective projection · model-view per view.
        resolution: ``(H, W)`` raster size.

    Returns:
        ``[S]`` int64, the number of views that see each point (0: unseen).
    """
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape [S, 3], got {list(points.shape)}")
    if mvp.dim() != 3 or mvp.shape[1:] != (4, 4):
        raise ValueError(f"mvp: expected shape [N, 4, 4], got {list(mvp.shape)}")
    H, W = _check_resolutions([resolution])[0]
    views = torch.zeros(points.shape[0], dtype=torch.int64)
    p = points.float().cpu()
    tri = faces.int().contiguous()
    for i in range(mvp.shape[0]):
        m = mvp[i].float()
        clip = transform_pos(m.unsqueeze(0), verts.detach().float())
        rast, _ = rasterize(clip, tri, (H, W), grad_db=False)
        w, _ = interpolate(clip[0, :, 3:].contiguous(), rast, tri)
        covered = rast[0, ..., 3] > 0
        depth = torch.where(covered, w[0, ..., 0], torch.full_like(w[0, ..., 0], -float("inf"))).cpu()
        far = torch.nn.functional.max_pool2d(depth[None, None], 3, stride=1, padding=1)[0, 0]
        iy, ix, ok, wp = nearest_pixel(m.cpu(), p, (H, W), with_depth=True)
        # one pixel's height in world units at depth wp: row 1 of P·MV is f·(MV's unit row 1) for a
        # perspective P (f = cot(fovy / 2)), so its norm is f whatever the camera's rotation
        pixel = 2.0 * wp / (float(m[1, :3].norm()) * H)
        views += (ok & (wp <= far[iy, ix] + 2.0 * pixel)).long()
    return views


def _check_resolutions(resolutions) -> list:
    try:
        res = [(int(h), int(w)) for h, w in resolutions]
    except (TypeError, ValueError):
        raise TypeError(f"resolutions: expected a sequence of (H, W) pairs, got {resolutions!r}") from None
    if not res or any(h < 1 or w < 1 for h, w in res):
        raise ValueError(f"resolutions: expected at least one (H, W) with positive sizes, got {resolutions!r}")
    return res


def surviving_faces(faces: np.ndarray) -> np.ndarray:
    """Rows ``[F']`` int64 of ``faces [F, 3]`` that are still triangles after vertices were merged:
    not degenerate (two corners on one vertex) and not one of two faces on the same three vertices
    (such a pair encloses nothing, so both go and the surface stays closed). Shared by
    :func:`collapse_short_edges` and :func:`~taichi_dr.recon.collapse.collapse_invisible`."""
    rows = np.nonzero((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0]))[0]
    if rows.size == 0:
        return rows
    _, inv, cnt = np.unique(np.sort(faces[rows], axis=1), axis=0, return_inverse=True, return_counts=True)
    return rows[cnt[inv.reshape(-1)] == 1]

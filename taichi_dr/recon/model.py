"""What the reconstruction optimises: DMTet geometry, a colour field and a simple light.

* Geometry: :class:`~taichi_dr.geometry.dmtet.DMTet` on a grid placed around the object. The grid
  is fitted to the *visual hull* (space carving): a grid point is inside only if it projects
  inside the foreground mask of every training view. This costs one pass over the images and
  starts the optimisation from a watertight shell that already has the right silhouettes, so the
  image loss spends its iterations on concavities, holes and detail rather than on finding the
  object at all.
* Colour: a small MLP on a positional encoding of world position -> linear albedo (sigmoid),
  evaluated at the mesh vertices.
* Light: learnable ambient + one directional light (:class:`~taichi_dr.render.light.DirectionalLight`,
  ``light='simple'``, the default: cheapest, and enough for diffuse objects), or a learnable
  environment cube map with split-sum GGX shading and one learnable roughness (``light='env'``,
  :class:`~taichi_dr.render.light.EnvironmentLight`, nvdiffrec's model; slower on CPU).
"""
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taichi_dr.camera import rig_target, transform_pos
from taichi_dr.geometry.dmtet import DMTet, mlp, positional_encoding
from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid
from taichi_dr.recon.cleanup import components_genus, face_components
from taichi_dr.recon.carve import photo_carve
from taichi_dr.recon.stereo import stereo_carve
from taichi_dr.recon.topology import TOPOLOGY_EPS, carve_keeping_topology, shrink_keeping_topology
from taichi_dr.recon.material import MaterialField
from taichi_dr.render.light import DirectionalLight

__all__ = ["ColorField", "LearnedLight", "LearnedEnvLight", "ReconModel", "cut_views", "hull_views", "visual_hull",
           "hull_bounds", "hull_sdf", "silhouette_sdf", "pixel_footprint", "hull_topology", "thin_in_masks"]


class ColorField(nn.Module):
    """Albedo ``[P, 3]`` in (0, 1) of world positions ``[P, 3]`` (normalised by the grid box)."""

    def __init__(self, center: torch.Tensor, half: float, hidden: int = 64, layers: int = 2, multires: int = 5):
        super().__init__()
        self.register_buffer("center", center.clone().float())
        self.half, self.multires = float(half), multires
        self.net = mlp([3 + 6 * multires] + [hidden] * layers + [3])

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        x = (p - self.center) / self.half
        return torch.sigmoid(self.net(positional_encoding(x, self.multires)))


class LearnedLight(nn.Module):
    """Ambient + directional light with positive intensities (softplus) and a free direction."""

    def __init__(self):
        super().__init__()
        self.direction = nn.Parameter(torch.tensor([0.3, 1.0, 0.3]))
        self.ambient_raw = nn.Parameter(torch.full((3,), -0.5))
        self.diffuse_raw = nn.Parameter(torch.full((3,), 0.0))

    def forward(self) -> DirectionalLight:
        # colour π·diffuse: on a Lambertian kd the key light adds kd·diffuse·max(0, n·l)
        return DirectionalLight(self.direction, math.pi * F.softplus(self.diffuse_raw), F.softplus(self.ambient_raw))


class LearnedEnvLight(nn.Module):
    """Learnable environment light + one global roughness (dielectric, metallic = 0).

    Calling the module returns itself, a light with the common ``shade(pos, normal, kd, ks, campos)``
    of :mod:`taichi_dr.render.light`.
    """

    def __init__(self, resolution: int = 16, init: float = 0.6):
        super().__init__()
        from taichi_dr.render.light import EnvironmentLight

        self.env = EnvironmentLight(resolution, init=init)
        self.roughness_raw = nn.Parameter(torch.tensor(1.0))  # sigmoid -> ~0.73: mostly diffuse start

    def forward(self) -> "LearnedEnvLight":
        return self

    def shade(self, pos: torch.Tensor, normal: torch.Tensor, kd: torch.Tensor, ks: Optional[torch.Tensor],
              campos: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, 3]`` linear radiance of surface points (``[N, H, W, 3]`` inputs, campos ``[N, 3]``).

        ``ks`` ``[N, H, W, 3]`` = (occlusion, roughness, metallic) per pixel, or ``None`` for the
        light's own global roughness, occlusion and metallic 0; the radiance is scaled by (1 − occlusion)
        (nvdiffrec's convention, see :mod:`taichi_dr.render.light`).
        """
        if ks is None:
            zero = torch.zeros(pos.shape[:-1] + (1,), dtype=pos.dtype, device=pos.device)
            ks = torch.cat([zero, torch.sigmoid(self.roughness_raw).to(pos.dtype) + zero, zero], -1)
        return self.env.shade(pos, normal, kd, ks, campos)


@torch.no_grad()
def cut_views(alpha: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: views whose mask reaches the image border (some coverage in the outermost rows or
    columns), i.e. the object may extend beyond the frame. Such a view says nothing about points
    outside its image; a view that shows the whole object says they are empty.

    Args:
        alpha: ``[N, H, W]`` coverage in [0, 1].
    """
    edge = torch.cat([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], 1)
    return (edge > 0.02).any(1)


def _has_foreground(alpha: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: the views whose mask ``alpha [N, H, W]`` has a pixel over half covered."""
    return (alpha > 0.5).flatten(1).any(1)


def hull_views(alpha: torch.Tensor) -> torch.Tensor:
    """``[M]`` int64: the views the visual hull intersects, those whose mask has a pixel over 0.5.

    A view without one sees the object thinner than half a pixel (a sheet edge-on: its alpha is
    0 or a faint line) or not at all (out of frame). Its empty mask would empty every point of the
    hull, so it gets no vote there (its mask still trains the mask loss). Views that show a sheet
    nearly edge-on, as a broken line, keep their vote: leaving them out, or growing their masks,
    joined the alligator's hull but made its mesh a thicker slab (docs/08 round 31). When more than
    half the views are empty, the data is more likely broken than thin, and every view is returned,
    so that :func:`hull_bounds` stops with an error naming the empty ones.

    Args:
        alpha: ``[N, H, W]`` coverage in [0, 1].
    """
    if alpha.dim() != 3 or alpha.shape[0] == 0:
        raise ValueError(f"alpha: expected masks [N, H, W] with N >= 1, got shape {list(alpha.shape)}")
    has = _has_foreground(alpha)
    if 2 * int(has.sum()) < alpha.shape[0]:
        return torch.arange(alpha.shape[0], device=alpha.device)
    return has.nonzero()[:, 0]


def _in_image(clip: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """NDC ``[n, P, 2]`` of clip positions ``[n, P, 4]`` and ``[n, P]`` bool: in front of the camera
    and inside the image."""
    w = clip[..., 3:4]
    ndc = clip[..., :2] / torch.where(w > 1e-8, w, torch.ones_like(w))
    return ndc, (w[..., 0] > 1e-8) & (ndc.abs() <= 1).all(-1)


@torch.no_grad()
def visual_hull(points: torch.Tensor, mvp: torch.Tensor, alpha: torch.Tensor, chunk_views: int = 8) -> torch.Tensor:
    """Soft occupancy ``[P]`` in [0, 1]: the minimum over views of the mask sampled (bilinearly) at
    each point's projection. A point behind a camera or outside its image is empty if that view
    shows the whole object, and gets no vote from a view whose mask reaches the border
    (:func:`cut_views`: the object may continue beyond the frame); a point fewer than two views see
    is empty (nothing bounds it).

    Args:
        points: ``[P, 3]`` world positions; mvp: ``[N, 4, 4]``; alpha: ``[N, H, W]`` masks (bottom-up).
    """
    occ = torch.ones(points.shape[0], dtype=torch.float32, device=points.device)
    seen = torch.zeros(points.shape[0], dtype=torch.int64, device=points.device)
    cut = cut_views(alpha).to(points.device)
    for s in range(0, mvp.shape[0], chunk_views):
        clip = transform_pos(mvp[s:s + chunk_views].float(), points.float())  # [n, P, 4]
        ndc, vis = _in_image(clip)
        # grid_sample's y axis points down the tensor rows; our row 0 is the bottom (NDC y = -1)
        a = alpha[s:s + chunk_views].float().unsqueeze(1)  # [n, 1, H, W]
        samp = F.grid_sample(a, ndc.unsqueeze(1), mode="bilinear", padding_mode="border", align_corners=False)
        samp = samp[:, 0, 0]  # [n, P]
        unseen = cut[s:s + chunk_views, None].float().expand_as(samp)  # 1: no vote, 0: empty
        samp = torch.where(vis, samp, unseen)
        occ = torch.minimum(occ, samp.min(0)[0])
        seen += vis.sum(0)
    return torch.where(seen >= min(2, mvp.shape[0]), occ, torch.zeros_like(occ))


@torch.no_grad()
def hull_bounds(mvp: torch.Tensor, alpha: torch.Tensor, campos: torch.Tensor, res: int = 48
                ) -> Tuple[torch.Tensor, float]:
    """Centre and half-size of a cube holding the visual hull (searched inside the camera rig).

    The search samples a ``res``³ lattice centred on what the cameras look at (:func:`rig_target`;
    a rig centred on the world origin, as NeRF-synthetic's, searches about the origin exactly) and
    reaching 0.9 of the nearest camera's distance from it; an object thinner than its step (a pole, a
    shovel's handle) can fall between the lattice points, and then :func:`_thin_hull_points` searches
    again near the masks. The cube's margin is two lattice steps either way.
    """
    target = rig_target(campos, mvp[:, 3, :3])
    R = float(campos.norm(dim=1).min()) * 0.9
    if float(target.norm()) > R / (res - 1):  # more than half a step off the origin: an off-centre scene
        R = float((campos.double().cpu() - target).norm(dim=1).min()) * 0.9
    else:
        target = torch.zeros(3, dtype=torch.float64)
    t = target.to(device=mvp.device, dtype=torch.float32)
    lin = torch.linspace(-R, R, res, device=mvp.device)
    pts = torch.stack(torch.meshgrid(lin + t[0], lin + t[1], lin + t[2], indexing="ij"), -1).reshape(-1, 3)
    step = 2 * R / (res - 1)
    occ = visual_hull(pts, mvp, alpha)
    inside = pts[occ > 0.5]
    if inside.shape[0] == 0:
        inside = _thin_hull_points(pts, step, mvp, alpha, res, t)
    if inside.shape[0] == 0:
        empty = torch.nonzero(~_has_foreground(alpha))[:, 0].tolist()
        why = (f"; training view(s) {', '.join(map(str, empty[:8]))}{' …' if len(empty) > 8 else ''} of "
               f"{alpha.shape[0]} have no foreground pixel (alpha > 0.5): the object is out of frame, or "
               "thinner than a pixel there, e.g. a flat sheet seen edge-on" if empty else "")
        raise ValueError("dataset: the foreground masks have no common intersection (check the camera poses "
                         f"and the alpha channel of the images){why}")
    lo, hi = inside.min(0)[0], inside.max(0)[0]
    center = (lo + hi) / 2
    half = float((hi - lo).max()) / 2 + 2 * step
    return center, half


@torch.no_grad()
def _thin_hull_points(pts: torch.Tensor, step: float, mvp: torch.Tensor, alpha: torch.Tensor, res: int,
                      target: torch.Tensor) -> torch.Tensor:
    """Points ``[P, 3]`` of the visual hull of an object thinner than the lattice ``pts`` (spacing
    ``step``), which none of its points hit.

    Every mask is first dilated by the projection of half a lattice diagonal (at the depth of
    ``target``, what the cameras look at), so the lattice points near the object survive; their
    box, one step wider each way, is then sampled again at ``res``³ against the masks themselves.
    Only points inside the masks themselves count: masks that meet only when grown are more likely
    wrong poses than a thin object, and get the error.

    Args:
        pts: ``[Q, 3]`` the lattice; step: its spacing (world units); mvp: ``[N, 4, 4]``;
        alpha: ``[N, H, W]`` masks (bottom-up); res: the lattice's points per axis; target: ``[3]``
        the lattice's centre.
    """
    hw = (alpha.shape[1], alpha.shape[2])
    px = pixel_footprint(mvp, hw, target)
    if not (math.isfinite(px) and px > 0):  # the target behind the cameras (wrong poses): nothing to grow
        return pts[:0]
    radius = min(math.ceil(0.5 * math.sqrt(3.0) * step / px) + 1, max(hw))
    grown = F.max_pool2d(alpha.float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius)[:, 0]
    near = pts[visual_hull(pts, mvp, grown) > 0.5]
    if near.shape[0] == 0:
        return near
    lo, hi = near.min(0)[0] - step, near.max(0)[0] + step
    t = torch.linspace(0.0, 1.0, res, device=pts.device)
    axes = [lo[k] + (hi[k] - lo[k]) * t for k in range(3)]
    fine = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return fine[visual_hull(fine, mvp, alpha) > 0.5]


class ReconModel(nn.Module):
    """DMTet + colour field + light, with the grid fitted around the visual hull."""

    def __init__(self, grid_res: int, center: torch.Tensor, half: float, sdf_mode: str = "direct",
                 light: str = "simple", material: str = "field", smoothing: float = 0.0, mlp_frequencies: int = 4):
        super().__init__()
        # the grid is built on the CPU; .to() moves the model
        self.dmtet = DMTet(grid=_cube_grid(grid_res, center, half), mode=sdf_mode, smoothing=smoothing,
                           multires=mlp_frequencies)
        if material not in ("field", "vertex"):
            raise ValueError(f"material: expected 'field' or 'vertex', got {material!r}")
        # 'field': per-pixel kd/ks from a hash-grid field (recon/material.py); 'vertex': per-vertex albedo
        self.material_mode = material
        self.color = MaterialField(center, half) if material == "field" else ColorField(center, half)
        if light not in ("simple", "env"):
            raise ValueError(f"light: expected 'simple' or 'env', got {light!r}")
        self.light = LearnedLight() if light == "simple" else LearnedEnvLight()

    def material_for(self, verts: torch.Tensor):
        """What :func:`render_mesh_views` takes as ``colors`` for the mesh ``verts``: the field itself
        (evaluated per pixel) or per-vertex albedo ``[V, 3]``."""
        return self.color if self.material_mode == "field" else self.color(verts)

    def init_from_hull(self, mvp: torch.Tensor, alpha: torch.Tensor, steps: int = 400,
                       images: Optional[torch.Tensor] = None, campos: Optional[torch.Tensor] = None,
                       stereo: bool = True, shrink: float = 0.0, max_genus: Optional[float] = None) -> float:
        """Set the SDF to the signed distance of the visual hull, in grid cells (clamped to ±4).

        A true distance (rather than a ±1 step) makes the surface move by the same amount for the
        same change of SDF anywhere, and it is smooth, so the MLP mode can fit it closely. Also
        stores ``outside_hull [V] bool``: vertices at least one cell outside the hull, where the
        object cannot be (used by the hull loss of the DMTet pass). With ``images [N, H, W, 4]``
        (linear RGBA) and ``campos [N, 3]`` the hull is first carved where the views disagree about
        its colour (:func:`~taichi_dr.recon.carve.photo_carve`: concavities no silhouette shows)
        and then, with ``stereo``, in front of multi-view stereo depths
        (:func:`~taichi_dr.recon.stereo.stereo_carve`: the rest of a deep concavity);
        ``carve_report`` holds what was carved. With ``shrink`` > 0 (cells) the start surface then
        moves up to that far inward, keeping its topology and thin parts
        (:func:`~taichi_dr.recon.topology.shrink_keeping_topology`). With ``max_genus`` (the genus
        of the hull on a coarser grid, :func:`hull_topology`), lattice points the shrink held only for
        the topology are then let go, a 26-connected cluster at a time, while the start's genus is
        above it and letting go lowers it without adding a piece: a handle the coarse hull does not
        have is a phantom of the fine lattice (docs/08, round 15). Returns the fit's MSE (cells²).
        """
        occ = visual_hull(self.dmtet.verts, mvp, alpha)
        lattice = hull_sdf(occ, self.dmtet.resolution)
        # the zero level from the masks' sub-pixel silhouettes, not midway between lattice vertices:
        # the midpoint rule made the torus's grid-40 hull 0.40 px too large along the training
        # silhouettes (a silhouette is the outermost of many quantised surface points), and the
        # passes kept ~40 % of that excess in the test views (docs/08)
        sdf = silhouette_sdf(self.dmtet.verts, mvp, alpha) / self.dmtet.cell
        sdf = sdf.clamp(-4.0, 4.0).to(lattice.device)
        self.outside_hull = sdf >= 1.0  # of the uncarved hull: the passes may refill a carved point
        self.carve_report = {"carved_points": 0, "carve_sweeps": 0, "carve_window_px": 0, "carve_undone": 0}
        if images is not None and campos is not None:
            hull = occ >= 0.5
            inside, self.carve_report = photo_carve(hull, self.dmtet.grid(), images, mvp, campos)
            fused = None
            if stereo:
                # seeded by photo carving: it only deepens concavities the colour ranges opened
                inside, fused, rep = stereo_carve(inside, self.dmtet.grid(), images, mvp, campos,
                                                  seeds=hull.to(inside.device) & ~inside)
                self.carve_report.update(rep)
            # no tunnel, handle or cavity the silhouettes do not show (recon/topology.py); the stereo
            # surface's sub-cell distance may move lattice points out too, under the same rule
            if fused is not None:
                inside = inside & ~(fused.isfinite() & (fused > 0)).to(inside.device)
            inside, kept = carve_keeping_topology(hull, inside, self.dmtet.resolution)
            self.carve_report["topology_kept_points"] = kept
            carved = hull_sdf(inside.float(), self.dmtet.resolution)
            # where carving moved the surface, its lattice distance; elsewhere the silhouettes'
            sdf = torch.where(carved > lattice, carved, sdf)
            if fused is not None:
                # around a carved concavity, the stereo depths' sub-cell distance where two views know
                # it (stereo_carve leaves ``fused`` NaN everywhere else), with the sign of ``inside``
                # at the lattice points: marching tets takes its topology from those signs
                f = fused.to(sdf.device)
                f = torch.where(inside.to(sdf.device), f.clamp(max=-TOPOLOGY_EPS), f.clamp(min=TOPOLOGY_EPS))
                sdf = torch.where(fused.isfinite().to(sdf.device), f, sdf)
        kept = released = 0
        if shrink > 0:
            # thin parts the masks show keep their own thickness (not thin hull excess; docs/08 round 16)
            px = self.dmtet.cell / pixel_footprint(mvp, tuple(alpha.shape[1:]), self.dmtet.verts.mean(0))
            thin = thin_in_masks(self.dmtet.verts, mvp, alpha, (shrink + 1.0) * px)
            sdf, held = shrink_keeping_topology(sdf, shrink, self.dmtet.resolution, thin_parts=thin.to(sdf.device))
            kept = int(held.sum())
            if max_genus is not None and kept > 0:
                sdf, released = self._release_phantom_handles(sdf, held, max_genus)
        self.carve_report.update(hull_shrink_cells=round(float(shrink), 4), hull_shrink_kept_points=kept,
                                 phantom_handle_points=released)
        # the topology the DMTet pass must end with (recon/topology.py: keep_topology)
        self.start_inside = (sdf < 0).to(self.dmtet.verts.device)
        return self.dmtet.fit_sdf_values(sdf, steps=steps)

    def _release_phantom_handles(self, sdf: torch.Tensor, held: torch.Tensor, max_genus: float
                                 ) -> Tuple[torch.Tensor, int]:
        """``(sdf [V], points let go)`` of the ``held [V] bool`` points: see :meth:`init_from_hull`
        (``max_genus``)."""
        from scipy.ndimage import label

        n = self.dmtet.resolution + 1
        clusters, count = label(held.reshape(n, n, n).cpu().numpy(), structure=np.ones((3, 3, 3), dtype=bool))
        clusters = torch.from_numpy(clusters.reshape(-1)).to(sdf.device)
        grid = self.dmtet.grid()
        comps, genus = components_genus(marching_tets(self.dmtet.verts, sdf, grid)[1])
        released = 0
        for c in range(1, count + 1):
            if genus <= max_genus:
                break
            trial = torch.where(clusters == c, torch.full_like(sdf, TOPOLOGY_EPS), sdf)
            c_new, g_new = components_genus(marching_tets(self.dmtet.verts, trial, grid)[1])
            if g_new < genus and c_new <= comps:
                sdf, comps, genus = trial, c_new, g_new
                released += int((clusters == c).sum())
        return sdf, released


def hull_topology(mvp: torch.Tensor, alpha: torch.Tensor, resolution: int, center: torch.Tensor,
                  half: float) -> Tuple[int, float]:
    """Pieces and total genus of the visual hull's surface on a ``resolution`` grid over the cube
    ``center ± half`` (the lattice signs of :func:`silhouette_sdf`, as :meth:`ReconModel.init_from_hull`
    sets them).

    The grid decides both. A coarse grid loses parts thinner than its cell (the Mitsuba cow at 128²,
    grid 40: 4 pieces, its legs cut; grid 64: 1). A finer grid resolves the hull's thin sheets, and
    where two silhouette cones leave a sheet with a gap thinner than the coarse cell, the fine hull has
    a handle the object need not have (torus at 128², grid 64: genus 3, grid 40: 1). The reconstruction
    compares the two (``loop.choose_grid_res``).

    A piece around a single lattice point is not counted: where silhouette cones cross, one point can
    fall inside all of them apart from the rest (the Mitsuba trefoil knot at 128²: two such pieces on
    grid 40, none or one on grid 64, depending on the render's samples). Such a speck is no part
    that a grid resolves, and the DMTet cleanup removes it as a floater; counted, it would decide the
    grid by chance (docs/08 round 30).

    Args:
        mvp: ``[N, 4, 4]`` float cameras; alpha: ``[N, H, W]`` float masks (rows bottom-up).
        resolution: cells per axis.
        center: ``[3]`` float cube centre; half: the cube's half size (world units).

    Returns:
        ``(pieces, genus)``: connected components larger than one lattice point's star of faces and
        the total genus (a float from the Euler characteristic); ``(0, 0.0)`` for an empty hull.
    """
    grid = _cube_grid(int(resolution), center, float(half))
    sdf = silhouette_sdf(grid.verts, mvp.to(grid.verts.device), alpha.to(grid.verts.device))
    faces = marching_tets(grid.verts, sdf, grid)[1]
    pieces, genus = components_genus(faces)
    if pieces > 1:
        # one inside point makes one triangle per tet around it: at most its star's tet count
        star = int(torch.bincount(grid.tets.reshape(-1).long()).max())
        pieces = int((torch.bincount(face_components(faces)[1]) > star).sum())
    return pieces, genus


def _cube_grid(resolution: int, center: torch.Tensor, half: float) -> TetGrid:
    """The tet grid over the cube ``center [3] ± half`` with ``resolution`` cells per axis (on the CPU):
    the reconstruction's grid and :func:`hull_topology`'s share it, so their hulls compare."""
    grid = TetGrid.create(resolution, 2.0 * half)
    grid.verts += center.float().to(grid.verts.device)
    return grid


def hull_sdf(occ: torch.Tensor, resolution: int, clamp: float = 4.0) -> torch.Tensor:
    """Signed distance ``[V]`` (cells, > 0 outside) of the set ``occ >= 0.5`` on the lattice of a
    :meth:`TetGrid.create` grid (``V = (resolution + 1)³``, x-major), clamped to ``±clamp``.

    Exact Euclidean distance transforms of inside and outside, shifted by half a cell so that the
    zero level lies between the last inside and the first outside vertex.
    """
    from scipy.ndimage import distance_transform_edt

    n = resolution + 1
    if occ.shape != (n ** 3,):
        raise ValueError(f"occ: expected shape [{n ** 3}] (the lattice of grid_res {resolution}), "
                         f"got {list(occ.shape)}")
    inside = (occ >= 0.5).reshape(n, n, n).cpu().numpy()
    d_out = distance_transform_edt(~inside)  # outside vertex -> nearest inside vertex
    d_in = distance_transform_edt(inside)    # inside vertex -> nearest outside vertex
    sdf = torch.from_numpy(d_out - d_in).float().reshape(-1)
    sdf = torch.where(sdf > 0, sdf - 0.5, sdf + 0.5)
    return sdf.clamp(-clamp, clamp).to(occ.device)


def thin_in_masks(points: torch.Tensor, mvp: torch.Tensor, alpha: torch.Tensor, max_px: float,
                  chunk_views: int = 8) -> torch.Tensor:
    """``[P]`` bool: points that some view shows on a thin part of its mask, i.e. within a pixel of
    the mask's medial axis where the mask is at most ``2 · max_px`` wide (a ridge pixel of its
    inside distance, 0.5 to ``max_px`` px from the silhouette).

    Why: a thin part the images show (a leg, a spout) and thin hull excess (the lip the visual hull
    leaves at a torus' hole, inside the silhouettes of the views that do not look through it) are
    both thin on the lattice; only the first is thin in the masks.

    Args:
        points: ``[P, 3]`` world positions; mvp: ``[N, 4, 4]`` cameras; alpha: ``[N, H, W]`` masks
            (rows bottom-up); max_px: the widest half-width that counts as thin (pixels).
    """
    from scipy.ndimage import maximum_filter

    if alpha.dim() != 3 or mvp.shape != (alpha.shape[0], 4, 4):
        raise ValueError(f"alpha, mvp: expected [N, H, W] and [N, 4, 4], got {list(alpha.shape)} and "
                         f"{list(mvp.shape)}")
    depth = -_mask_distance_px(alpha).numpy()  # > 0 inside
    peak = np.stack([maximum_filter(d, size=3) for d in depth])
    ridge = (depth >= 0.5) & (depth <= max_px) & (depth >= peak - 1e-6)
    ridge = np.stack([maximum_filter(r, size=3) for r in ridge])  # a pixel's tolerance
    ridge = torch.from_numpy(ridge).float().unsqueeze(1)  # [N, 1, H, W]
    pts = points.detach().float().cpu()
    out = torch.zeros(pts.shape[0], dtype=torch.bool)
    for s in range(0, mvp.shape[0], chunk_views):
        # the pixel under each projection, sampled as visual_hull samples the masks (rows bottom-up)
        ndc, vis = _in_image(transform_pos(mvp[s:s + chunk_views].float().cpu(), pts))
        on = F.grid_sample(ridge[s:s + chunk_views], ndc.unsqueeze(1), mode="nearest", padding_mode="border",
                           align_corners=False)[:, 0, 0] > 0.5  # [n, P]
        out |= (vis & on).any(0)
    return out.to(points.device)


def _mask_distance_px(alpha: torch.Tensor) -> torch.Tensor:
    """Signed distance ``[N, H, W]`` in pixels (> 0 outside) of each pixel centre to the silhouette
    ``alpha = 0.5``: ``0.5 − alpha`` on partly covered pixels (a box-filtered straight edge's
    coverage is linear in the centre's distance to it), beyond them the distance to the nearest
    partly covered (or opposite) pixel plus that pixel's value (exact distance transforms)."""
    from scipy.ndimage import distance_transform_edt

    a = alpha.detach().float().cpu().numpy()
    out = (0.5 - a).copy()
    for k in range(a.shape[0]):
        for region, sign in ((a[k] <= 0.02, 1.0), (a[k] >= 0.98, -1.0)):
            if not region.any() or region.all():
                continue
            # beyond the band: the distance to the nearest pixel outside the region plus that pixel's own
            dist, (iy, ix) = distance_transform_edt(region, return_indices=True)
            near = 0.5 - a[k][iy, ix]
            out[k][region] = (near + sign * dist)[region]
    return torch.from_numpy(out)


def pixel_footprint(mvp: torch.Tensor, hw: Tuple[int, int], point: torch.Tensor) -> float:
    """World size of one pixel at ``point``, averaged over the views: depth / focal length.

    Args:
        mvp: ``[N, 4, 4]`` pinhole cameras (OpenGL clip space); hw: the images' ``(H, W)`` in pixels;
        point: ``[3]`` world position (in front of the cameras).
    """
    if mvp.dim() != 3 or mvp.shape[1:] != (4, 4):
        raise ValueError(f"mvp: expected shape [N, 4, 4], got {list(mvp.shape)}")
    depth = transform_pos(mvp.float().cpu(), point.detach().float().cpu().view(1, 3))[:, 0, 3]  # clip w
    return float((depth / _focal_px(mvp.cpu(), hw).float()).mean())


def _focal_px(mvp: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Focal length ``[N]`` in pixels of pinhole ``mvp = P · [R|t]`` (P: OpenGL perspective): row 3
    of the 3×3 part is −(camera z axis), row 0 is fx·x_axis + c·z_axis (likewise row 1)."""
    m = mvp[:, :3, :3].double()
    z = -mvp[:, 3, :3].double()
    fs = []
    for row, size in ((0, hw[1]), (1, hw[0])):
        r = m[:, row]
        c = (r * z).sum(-1, keepdim=True) / (z * z).sum(-1, keepdim=True)
        fs.append((r - c * z).norm(dim=-1) / z.norm(dim=-1) * size / 2)
    return (fs[0] + fs[1]) / 2


@torch.no_grad()
def silhouette_sdf(points: torch.Tensor, mvp: torch.Tensor, alpha: torch.Tensor, chunk_views: int = 8,
                   far: float = 1e3) -> torch.Tensor:
    """Signed distance ``[P]`` (world units, > 0 outside) of points to the visual hull of the masks:
    the maximum over views of the point's sub-pixel distance to that view's silhouette, scaled by
    depth / focal length (the distance to the silhouette cone; exact near the hull's surface, a lower
    bound of the outside distance elsewhere). Points behind a camera or outside an image are ``far``
    outside, or get no vote from a view whose mask reaches the border, as in :func:`visual_hull`.

    Args:
        points: ``[P, 3]`` world positions; mvp: ``[N, 4, 4]`` pinhole cameras; alpha: ``[N, H, W]``
            coverage in [0, 1] (rows bottom-up).
    """
    if alpha.dim() != 3 or mvp.shape != (alpha.shape[0], 4, 4):
        raise ValueError(f"alpha, mvp: expected [N, H, W] and [N, 4, 4], got {list(alpha.shape)} and "
                         f"{list(mvp.shape)}")
    H, W = alpha.shape[1:]
    dist = _mask_distance_px(alpha).unsqueeze(1)
    focal = _focal_px(mvp.cpu(), (H, W)).float()
    cut = cut_views(alpha).cpu()
    # one pixel of padding so that bilinear taps in an edge pixel's outer half read something sane:
    # far outside for a view that shows the whole object, the edge's own value for a cut view
    dist = torch.where(cut.view(-1, 1, 1, 1), F.pad(dist, (1, 1, 1, 1), mode="replicate"),
                       F.pad(dist, (1, 1, 1, 1), value=far))  # [N, 1, H + 2, W + 2]
    scale = torch.tensor([W / (W + 2.0), H / (H + 2.0)])
    pts = points.detach().float().cpu()
    sdf = torch.full((pts.shape[0],), -far)
    seen = torch.zeros(pts.shape[0], dtype=torch.int64)
    for s in range(0, mvp.shape[0], chunk_views):
        clip = transform_pos(mvp[s:s + chunk_views].float().cpu(), pts)  # [n, P, 4]
        ndc, vis = _in_image(clip)
        d = F.grid_sample(dist[s:s + chunk_views], (ndc * scale).unsqueeze(1), mode="bilinear",
                          padding_mode="border", align_corners=False)[:, 0, 0]  # [n, P] pixels
        d = d * clip[..., 3] / focal[s:s + chunk_views, None]
        # not seen: far outside for a view that shows the whole object, no vote (-far) for a cut one
        unseen = torch.where(cut[s:s + chunk_views, None], -far, far).expand_as(d)
        sdf = torch.maximum(sdf, torch.where(vis, d, unseen).max(0)[0])
        seen += vis.sum(0)
    sdf = torch.where(seen >= min(2, mvp.shape[0]), sdf, torch.full_like(sdf, far))
    return sdf.to(points.device)

"""antialias(): analytic edge antialiasing, the source of silhouette (visibility) gradients.

Rasterization is piecewise constant in the vertex positions: moving a vertex by a hair changes
which pixels a triangle covers only at the moment a pixel centre is crossed, so the gradient of
the image w.r.t. the silhouette is zero almost everywhere. nvdiffrast's antialiasing (Laine et
al. 2020) replaces that step by a ramp that depends continuously on the geometry:

1. For every pair of neighbouring pixels (right and up) whose triangle ids differ, pick the
   triangle T that is in front (the covered pixel, or the nearer of the two). Its pixel is
   "home"; the other is the neighbour.
2. Walk from the home pixel centre towards the neighbour's: the edge of T we leave through is
   found by intersecting T's edges with that axis; d ∈ [0, 1] is where it crosses, in pixels.
3. That edge is a *silhouette* only if the triangle across it (the "wing", found with a
   topology table from edge -> opposite vertices) folds away behind it, or does not exist; an
   interior edge between two front-facing triangles is not a discontinuity of the surface.
4. The crossing splits the pixel pair: the home pixel really shows T only on a (½ + d) part of
   its width, so it takes (½ − d) of the neighbour's colour if d < ½; otherwise the neighbour
   takes (d − ½) of T's colour. With α = s·(½ − d) (s = ±1 for home = first/second pixel):
       out[P0] += α·(c1 − c0)  if α > 0,   out[P1] += α·(c1 − c0)  otherwise.
5. Because d is a smooth function of the edge's projected end points, the image now has a
   gradient w.r.t. x, y, w of those two vertices:  dL/dx_c = −Σ_ch g·(c1 − c0), with
   x_c = (x_a y_b − x_b y_a)/(y_b − y_a) in coordinates centred on the home pixel.

Only edges more perpendicular than 45° to the pair direction are handled by that pair (flatter
edges are the other direction's job), and crossings beyond the pixel pair are ignored.

Step 3 depends only on the triangle, so ``silhouettes`` evaluates it once per triangle (a bit
per edge); the pixel-pair pass then skips every pair whose front triangle has no silhouette edge
after a single load — on a dense mesh nearly all of them. The forward and backward kernels
share one ``ti.func`` (``_pair``) that redoes steps 1, 2 and 4 for a pixel pair; the backward pass is hand-written (atomic scatter to the two edge vertices), because
the forward kernel accumulates into ``out`` with atomics, which Taichi's autodiff can't reverse.
"""
import functools
import threading
import weakref
from collections import OrderedDict
from typing import Optional

import torch

from taichi_dr._checks import (FLOATS, INTS, as_index32, check_device, check_tensor, deferred_checks, raise_bad_rast,
                               shape_str, verify_deferred)
from taichi_dr.render._antialias_kernels import kernels
from taichi_dr.render._pixel_loops import row_piece
from taichi_dr.runtime import ensure_init, ti_real

__all__ = ["antialias", "antialias_construct_topology_hash", "TopologyHash"]


class TopologyHash:
    """Edge topology of a triangle mesh: for each triangle edge, the vertex opposite to it in the
    neighbouring triangle (the "wing"), or -1 on a boundary edge.

    Attributes:
        tri: ``[T, 3]`` int32 triangles the table was built for (a copy).
        wing: ``[T, 3]`` int32; ``wing[t, k]`` belongs to the edge opposite ``tri[t, k]``.
    """

    def __init__(self, tri: torch.Tensor, wing: torch.Tensor, source: Optional[torch.Tensor] = None):
        self.tri, self.wing = tri, wing
        # the tensor it was built from and its version counter (bumped by every in-place change)
        self._source = None if source is None else (weakref.ref(source), source._version)

    def built_for(self, tri: torch.Tensor) -> bool:
        """Whether this table describes ``tri``: free when it was built from this very tensor and
        nothing modified it since; otherwise one comparison of the indices (~50 µs for 80k
        triangles on a CPU core, where a rebuild costs 10-60 ms)."""
        if self.tri.shape != tri.shape or self.tri.device != tri.device:
            return False
        if self._source is not None:
            ref, version = self._source
            if ref() is tri and tri._version == version:
                return True
        same = bool(torch.equal(self.tri, tri.to(torch.int32)))
        if same:
            self._source = (weakref.ref(tri), tri._version)  # the next call with this tensor is free
        return same

    def __repr__(self) -> str:
        return f"TopologyHash(triangles={self.tri.shape[0]}, boundary_edges={int((self.wing < 0).sum())})"


def antialias_construct_topology_hash(tri: torch.Tensor) -> TopologyHash:
    """Build the edge -> opposite-vertex table used by :func:`antialias` (reuse it across calls).

    Args:
        tri: ``[T, 3]`` int32 (int64 accepted) triangle vertex indices.

    Returns:
        A :class:`TopologyHash`.
    """
    check_tensor("tri", tri, ndim=2, last=3, dtypes=INTS, expected="[T, 3]")
    t64 = tri.to(torch.int64)
    T = t64.shape[0]
    wing = torch.full((T, 3), -1, dtype=torch.int64, device=tri.device)
    if T:
        # half-edge k of triangle t is the edge opposite vertex k: (v[k+1], v[k+2])
        a = torch.stack([t64[:, 1], t64[:, 2], t64[:, 0]], 1).reshape(-1)
        b = torch.stack([t64[:, 2], t64[:, 0], t64[:, 1]], 1).reshape(-1)
        opp = t64.reshape(-1)
        base = int(t64.max()) + 1
        key = torch.minimum(a, b) * base + torch.maximum(a, b)
        order = torch.argsort(key, stable=True)
        ks = key[order]
        same = torch.nonzero(ks[1:] == ks[:-1]).squeeze(1)
        # pair consecutive half-edges with the same key (exactly two for a manifold edge)
        flat = wing.reshape(-1)
        flat[order[same]] = opp[order[same + 1]]
        flat[order[same + 1]] = opp[order[same]]
    return TopologyHash(tri.to(torch.int32).contiguous(), wing.to(torch.int32).contiguous(), source=tri)


# Tables built by antialias() calls without a topology_hash, most recently used last: the common
# call (the same mesh every frame or iteration) then costs no rebuild after the first. This
# cache is the module's only state; entries are validated with TopologyHash.built_for on use.
_CACHE: "OrderedDict[int, TopologyHash]" = OrderedDict()
_CACHE_SIZE = 8
_cache_lock = threading.Lock()


def _cached_topology_hash(tri: torch.Tensor) -> TopologyHash:
    with _cache_lock:
        for key in reversed(_CACHE):
            if _CACHE[key].built_for(tri):
                _CACHE.move_to_end(key)
                return _CACHE[key]
    h = antialias_construct_topology_hash(tri)
    with _cache_lock:
        _CACHE[id(h)] = h
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return h


def _kernels(real):
    return kernels(real, row_piece())


class _Antialias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, color, rast, pos3, tri, wing, per_instance, boost, checks, verify):
        fwd = _kernels(ti_real(color.dtype)).forward
        color_c, rast_c, pos_c = color.detach().contiguous(), rast.detach().contiguous(), pos3.detach().contiguous()
        sil = torch.empty(pos_c.shape[0] * tri.shape[0], dtype=torch.int32, device=color.device)
        out = color_c.clone()  # the kernel adds the blends (a torch copy is ~10x faster than a Taichi loop)
        bad = torch.zeros(1, dtype=torch.int32, device=color.device)
        fwd(color_c, rast_c, pos_c, tri, wing, per_instance, sil, out, bad)
        # the op's one host sync: the kernel's check of rast and the deferred input checks
        vals = torch.cat([bad.to(torch.int64), checks]).tolist()
        verify(vals[1:])
        if vals[0]:
            raise_bad_rast("rast", rast_c, tri.shape[0])
        ctx.save_for_backward(color_c, rast_c, pos_c, tri, sil)
        ctx.per_instance, ctx.boost = per_instance, boost
        return out

    @staticmethod
    def backward(ctx, g_out):
        color, rast, pos3, tri, sil = ctx.saved_tensors
        bwd = _kernels(ti_real(color.dtype)).backward
        g_out = g_out.contiguous()
        g_color = g_out.clone()  # identity part: out = color + blends
        g_pos = torch.zeros_like(pos3)
        bwd(color, rast, pos3, tri, sil, ctx.per_instance, g_out, float(ctx.boost), g_color, g_pos)
        return g_color, None, g_pos, None, None, None, None, None, None


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology_hash: Optional[TopologyHash] = None, pos_gradient_boost: float = 1.0) -> torch.Tensor:
    """Antialias silhouette edges analytically, making the image differentiable w.r.t. them.

    Args:
        color: ``[N, H, W, C]`` float32/float64 image to antialias (e.g. shaded colours).
        rast: ``[N, H, W, 4]`` output of :func:`rasterize` for the same geometry.
        pos: clip-space positions given to :func:`rasterize`: ``[N, V, 4]``, or ``[V, 4]`` (range
            mode, or shared by all images).
        tri: ``[T, 3]`` int32 (int64 accepted) triangles given to :func:`rasterize`.
        topology_hash: from :func:`antialias_construct_topology_hash`. ``None``: built on the first
            call for a ``tri`` and reused by later calls with the same triangles (a small cache
            keyed on the tensor and its version counter, content-checked otherwise).
        pos_gradient_boost: factor applied to the gradient w.r.t. ``pos``.

    Returns:
        ``[N, H, W, C]`` antialiased image, same dtype as ``color``.

    Gradients flow to ``color`` and to x, y, w of the two vertices of every silhouette edge.
    """
    ensure_init()
    check_device(color=color, rast=rast, pos=pos, tri=tri)
    check_tensor("color", color, ndim=4, dtypes=FLOATS, expected="[N, H, W, C]")
    check_tensor("rast", rast, ndim=4, last=4, dtypes=FLOATS, expected="[N, H, W, 4]")
    if rast.shape[:3] != color.shape[:3]:
        raise ValueError(f"rast: expected shape [{', '.join(map(str, color.shape[:3]))}, 4] to match color, "
                         f"got {shape_str(rast.shape)}")
    check_tensor("pos", pos, ndim=(2, 3), last=4, dtypes=FLOATS, expected="[N, V, 4] or [V, 4]")
    for name, t in (("rast", rast), ("pos", pos)):
        if t.dtype != color.dtype:
            raise TypeError(f"{name}: expected dtype {color.dtype} (same as color), got {t.dtype}")
    N = color.shape[0]
    if pos.dim() == 3 and pos.shape[0] != N:
        raise ValueError(f"pos: expected shape [{N}, V, 4] to match color's batch, got {shape_str(pos.shape)}")
    V = pos.shape[-2]
    check_tensor("tri", tri, ndim=2, last=3, dtypes=INTS, expected="[T, 3]")
    # color and pos finite, tri in [0, V): computed on the device, read after the kernel (one sync)
    finite = [("color", color), ("pos", pos)]
    checks = deferred_checks([t for _, t in finite], tri)
    verify = functools.partial(verify_deferred, finite=finite, index=("tri", tri, V))
    if topology_hash is None:
        topology_hash = _cached_topology_hash(tri)
    elif not isinstance(topology_hash, TopologyHash):
        raise TypeError(f"topology_hash: expected a TopologyHash, got {type(topology_hash).__name__}")
    elif not topology_hash.built_for(tri):
        raise ValueError(f"topology_hash: expected a TopologyHash built for this tri ([{tri.shape[0]}, 3]), got one "
                         f"built for {'other triangles' if topology_hash.tri.shape == tri.shape else 'tri of shape ' + shape_str(topology_hash.tri.shape)}")
    pos3, per_instance = (pos, 1) if pos.dim() == 3 else (pos.unsqueeze(0), 0)
    return _Antialias.apply(color, rast, pos3, as_index32(tri), topology_hash.wing, per_instance,
                            float(pos_gradient_boost), checks, verify)

"""Lights. Every light has one method, ``shade(pos, normal, kd, ks, campos) -> [N, H, W, 3]``:
the linear radiance that surface points send towards their camera.

* :class:`DirectionalLight` (+ optional ambient term) and :class:`PointLight`: Lambert + GGX,
  evaluated by one fused Taichi kernel (:func:`~taichi_dr.render.shading.analytic_shade`);
* :class:`EnvironmentLight`: a learnable HDR cube map with split-sum image-based lighting
  (:func:`~taichi_dr.render.shading.split_sum_shade`).

Conventions (one set for the package): ``DirectionalLight.direction`` points from the surface
*towards* the light; ``pos``, ``normal``, ``kd``, ``ks`` are ``[N, H, W, 3]`` per pixel, ``ks`` =
(occlusion, roughness, metallic) as in nvdiffrec (``ks=None``: a purely Lambertian material, no
specular lobe), ``campos`` ``[N, 3]`` the camera centres. Occlusion o scales environment / ambient
light by (1 − o).

Split-sum (Karis 2013, as in nvdiffrec): the specular integral of a GGX lobe against an
environment L is approximated by the product of two precomputable factors,

    ∫ L(l) f(l, v) cos θ_l dl  ≈  [∫ L(l) D(h) cos θ_l dl / ∫ D cos]  ·  [F0·A(n·v, r) + B(n·v, r)],

the first a *prefiltered* environment looked up in the reflected direction (one map per
roughness knot, coarser when rougher), the second a 2-D table of the BRDF's directional albedo
(scale A and bias B of F0), which we integrate ourselves with GGX importance sampling. Diffuse
light is the cosine-weighted irradiance map. Every filter is a fixed linear map of the learnable
cube map; all of them are stacked into one sparse (CSR) matrix, built once per resolution and
cached, and applied by a Taichi gather kernel whose adjoint is the same kernel with the transposed
matrix. The shading kernels read the maps with a one-texel border per face copied from the
neighbouring faces (a cached gather index, :func:`_pad_index`), so that a bilinear lookup is four
plain taps.
"""
import dataclasses
import functools
import math
import os
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taichi_dr.render.shading import analytic_shade, check_shade_inputs, ggx_ndf, split_sum_shade
from taichi_dr.render.texture import cube_face_coords, texture
from taichi_dr.runtime import current_arch, ensure_init, ti_real

__all__ = ["EnvironmentLight", "DirectionalLight", "PointLight", "brdf_lut", "cube_directions"]

IRRADIANCE_RES = 8  # face size of the irradiance map (a cosine lobe needs no more)


def _vec3(name: str, t, dtype, device) -> torch.Tensor:
    """A light parameter as a ``[3]`` tensor of the shading dtype (differentiable cast)."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.shape != (3,):
        raise ValueError(f"{name}: expected shape [3], got {list(t.shape)}")
    return t.to(device=device, dtype=dtype)


@dataclasses.dataclass
class DirectionalLight:
    """Light from a distant source: radiance ``color`` arriving from ``direction``, plus ``ambient``.

    Attributes (``[3]`` tensors; they may require grad):
        direction: direction *towards* the light (normalised when shading).
        color: radiance of the light (a white Lambertian surface facing it reflects color/π).
        ambient: uniform ambient radiance reflected as kd·(1 − m)(1 − o)·ambient (None = 0).
    """

    direction: torch.Tensor
    color: torch.Tensor
    ambient: Optional[torch.Tensor] = None

    @staticmethod
    def default(device="cpu") -> "DirectionalLight":
        """The light of the demo dataset: ambient 0.35, a key light of Lambert strength 0.75 from above."""
        return DirectionalLight(torch.tensor([0.4, 0.8, 0.45], device=device), torch.full((3,), 0.75 * math.pi,
                                device=device), torch.full((3,), 0.35, device=device))

    def shade(self, pos: torch.Tensor, normal: torch.Tensor, kd: torch.Tensor, ks: Optional[torch.Tensor],
              campos: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, 3]`` radiance (see the module docstring for the arguments)."""
        return _shade_analytic(self.direction, self.color, self.ambient, False, pos, normal, kd, ks, campos)


@dataclasses.dataclass
class PointLight:
    """Isotropic point light at ``position`` with intensity ``color`` (falls off as 1/d², d ≥ 1e-4),
    plus an optional ``ambient`` term as for :class:`DirectionalLight`. ``[3]`` tensors."""

    position: torch.Tensor
    color: torch.Tensor
    ambient: Optional[torch.Tensor] = None

    def shade(self, pos: torch.Tensor, normal: torch.Tensor, kd: torch.Tensor, ks: Optional[torch.Tensor],
              campos: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, 3]`` radiance (see the module docstring for the arguments)."""
        return _shade_analytic(self.position, self.color, self.ambient, True, pos, normal, kd, ks, campos)


def _shade_analytic(vec, color, ambient, point, pos, normal, kd, ks, campos):
    dt = check_shade_inputs(pos, normal, kd, ks, campos)
    name = "position" if point else "direction"
    v = _vec3(name, vec, dt, pos.device)
    if not point and float(v.detach().norm()) == 0.0:
        raise ValueError("direction: expected a non-zero vector, got [0, 0, 0]")
    amb = torch.zeros(3, dtype=dt, device=pos.device) if ambient is None else _vec3("ambient", ambient, dt, pos.device)
    light = torch.stack([v, _vec3("color", color, dt, pos.device), amb])
    return analytic_shade(pos, normal, kd, ks, campos, light, point)


def _face_directions(c: torch.Tensor) -> torch.Tensor:
    """Directions ``[6, n, n, 3]`` (|major axis| = 1, not normalised) of the face-plane points
    (s, t) = (c[column], c[row]) of each cube face (OpenGL faces, as ``cube_dir`` of the kernels)."""
    tc, sc = torch.meshgrid(c, c, indexing="ij")
    one = torch.ones_like(sc)
    faces = [(one, -tc, -sc), (-one, -tc, sc), (sc, one, tc), (sc, -one, -tc), (sc, -tc, one), (-sc, -tc, -one)]
    return torch.stack([torch.stack(f, -1) for f in faces])


def cube_directions(S: int, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit directions of the texel centres ``[6, S, S, 3]`` of a cube map (OpenGL faces, our
    texel layout: row = t, column = s) and each texel's solid angle ``[6, S, S]``."""
    d = _face_directions((torch.arange(S, dtype=torch.float64) + 0.5) / S * 2 - 1)
    # solid angle of a texel ~ area / r³ on the unit cube face (area (2/S)²)
    r2 = (d * d).sum(-1)
    omega = (2.0 / S) ** 2 / r2 ** 1.5
    return F.normalize(d, dim=-1).to(dtype), omega.to(dtype)


def _pad_index(S: int) -> torch.Tensor:
    """Gather index ``[6·(S + 2)²]`` int64 from a cube map ``[6·S·S]`` to its padded layout (see
    :mod:`taichi_dr.render._shading_kernels`): texel (i, j) of face f, i, j ∈ [−1, S], sits at
    (f·(S + 2) + j + 1)·(S + 2) + i + 1 and holds, off the face, the texel its centre's direction
    projects to on the neighbouring face (floor of the face coordinate, clamped: the seamless
    bilinear convention of ``texture(boundary_mode='cube')``)."""
    d = _face_directions((torch.arange(-1, S + 1, dtype=torch.float64) + 0.5) / S * 2 - 1)
    face, st = cube_face_coords(d)
    ij = torch.floor(st * S).long().clamp(0, S - 1)
    idx = (face.long() * S + ij[..., 1]) * S + ij[..., 0]
    # texels on the face hold themselves (exactly, whatever the rounding of the projection)
    idx[:, 1:S + 1, 1:S + 1] = torch.arange(6 * S * S).reshape(6, S, S)
    return idx.reshape(-1)


@functools.lru_cache(maxsize=None)
def brdf_lut(size: int = 32, samples: int = 512) -> torch.Tensor:
    """Split-sum GGX table ``[size, size, 2]`` float32: (A, B) for (row = roughness, column = n·v),
    by GGX importance sampling with height-correlated Smith G (the same BSDF as ``ggx_specular``)."""
    nv = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    rough = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    i = torch.arange(samples, dtype=torch.float64)
    u1 = (i + 0.5) / samples
    u2 = torch.tensor([int(bin(k)[2:].zfill(32)[::-1], 2) / 2 ** 32 for k in range(samples)], dtype=torch.float64)
    R, NV = torch.meshgrid(rough, nv, indexing="ij")
    a = (R.clamp(min=0.08) ** 2)[..., None]
    v = torch.stack([torch.sqrt(1 - NV ** 2), torch.zeros_like(NV), NV], -1)[..., None, :]
    # sample h from D(h)·cos θ_h
    cos_t = torch.sqrt((1 - u1) / (1 + (a * a - 1) * u1))
    sin_t = torch.sqrt(1 - cos_t ** 2)
    phi = 2 * math.pi * u2
    h = torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t.expand_as(sin_t)], -1)
    vh = (v * h).sum(-1)
    l = 2 * vh[..., None] * h - v
    nl, nh = l[..., 2].clamp(min=0), h[..., 2]
    a2 = a * a
    lam = lambda c: 0.5 * (torch.sqrt(1 + a2 * (1 - c * c) / (c * c).clamp(min=1e-12)) - 1)
    g = 1 / (1 + lam(nl.clamp(min=1e-6)) + lam(NV[..., None]))
    # estimator of ∫ f cos = G·(v·h) / ((n·h)(n·v)) per sample (D cancels with the pdf)
    w = torch.where(nl > 0, g * vh.clamp(min=0) / (nh * NV[..., None]).clamp(min=1e-12), torch.zeros_like(nl))
    fc = (1 - vh.clamp(0, 1)) ** 5
    A, B = (w * (1 - fc)).mean(-1), (w * fc).mean(-1)
    return torch.stack([A, B], -1).float()



@functools.lru_cache(maxsize=None)
def _filter_csr(S_in: int, rough: Tuple[float, ...]):
    """The stacked prefilter of a base cube map of face size ``S_in``: one block of rows per
    specular level k (roughness ``rough[k]``, face size max(S_in >> k, 4)), then the irradiance
    map (cosine lobe, face size 8). Each row: normalised weights (n·l)·D(h)·dω (or (n·l)·dω) with
    n = v = r (the split-sum assumption), weights < 1e-5 dropped, renormalised.

    Returns float64 CSR arrays (rowptr, col, val), the same for the transpose, and the per-map
    (offset, face size) table ``meta``.
    """
    d_in, om = cube_directions(S_in, torch.float64)
    d_in, om = d_in.reshape(-1, 3), om.reshape(-1)
    sizes = [max(S_in >> k, 4) for k in range(len(rough))] + [IRRADIANCE_RES]
    rows, cols, vals, meta, off = [], [], [], [], 0
    for So, r in zip(sizes, list(rough) + [-1.0]):
        d_out, _ = cube_directions(So, torch.float64)
        d_out = d_out.reshape(-1, 3)
        for s in range(0, d_out.shape[0], 1024):
            cos = d_out[s:s + 1024] @ d_in.T
            w = cos.clamp(min=0) * om
            if r >= 0:  # GGX lobe, h halfway between n and l
                w = w * ggx_ndf(max(r, 0.08) ** 4, torch.sqrt(((1 + cos) / 2).clamp(min=0)))
            w = w / w.sum(1, keepdim=True)
            w = torch.where(w > 1e-5, w, torch.zeros_like(w))
            w = w / w.sum(1, keepdim=True)  # renormalise after dropping the negligible tail
            idx = w.nonzero()
            rows.append(idx[:, 0] + off + s)
            cols.append(idx[:, 1])
            vals.append(w[idx[:, 0], idx[:, 1]])
        meta.append((off, So))
        off += d_out.shape[0]
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)

    def csr(r_, c_, v_, n_rows):
        order = torch.argsort(r_, stable=True)
        ptr = torch.zeros(n_rows + 1, dtype=torch.int64)
        ptr[1:] = torch.cumsum(torch.bincount(r_, minlength=n_rows), 0)
        return ptr.int(), c_[order].int(), v_[order]
    fwd = csr(row, col, val, off)
    bwd = csr(col, row, val, d_in.shape[0])
    return fwd, bwd, torch.tensor(meta, dtype=torch.int32)


class _Filters(NamedTuple):
    """Everything the split-sum shading of one base-map size needs besides the map itself (cached)."""

    fwd: Tuple[torch.Tensor, ...]  # W as CSR: rowptr [R + 1] int32, col [nnz] int32, val [nnz] (dtype)
    bwd: Tuple[torch.Tensor, ...]  # Wᵀ as CSR
    meta: torch.Tensor  # [K + 1, 2] int32: (offset, face size) of each map in the packed maps [R, 3]
    pad: torch.Tensor  # [R_pad] int64: gather index from the packed maps to the padded maps
    pmeta: torch.Tensor  # [K + 1, 2] int32: (offset, face size) of each map in the padded maps [R_pad, 3]
    knots: torch.Tensor  # [K] roughness of each specular level (dtype)
    lut: torch.Tensor  # [n, n, 2] BRDF table (dtype)


@functools.lru_cache(maxsize=8)
def _filter_on(S_in: int, rough: Tuple[float, ...], dtype: torch.dtype, device: str) -> _Filters:
    """:func:`_filter_csr` in ``dtype`` on ``device``, the padding of the maps, the BRDF table and
    the roughness knots."""
    fwd, bwd, meta = _filter_csr(S_in, rough)
    conv = lambda csr: (csr[0].to(device), csr[1].to(device), csr[2].to(device=device, dtype=dtype))  # noqa: E731
    pads, pmeta, off = [], [], 0
    for o, S in meta.tolist():
        pads.append(_pad_index(S) + o)
        pmeta.append((off, S))
        off += pads[-1].shape[0]
    lut = brdf_lut().to(device=device, dtype=dtype).contiguous()
    return _Filters(conv(fwd), conv(bwd), meta.to(device), torch.cat(pads).to(device),
                    torch.tensor(pmeta, dtype=torch.int32, device=device), torch.tensor(rough, dtype=dtype, device=device),
                    lut)


class _Prefilter(torch.autograd.Function):
    """y = W·x for the stacked prefilter W (CSR); the adjoint is Wᵀ·g, the same gather kernel."""

    @staticmethod
    def forward(ctx, base_flat, fwd, bwd):
        from taichi_dr.render._env_kernels import kernels

        out = base_flat.new_empty(fwd[0].shape[0] - 1, 3)
        kernels(ti_real(base_flat.dtype)).spmv(*fwd, base_flat.detach().contiguous(), out, current_arch() == "cpu")
        ctx.bwd = bwd
        return out

    @staticmethod
    def backward(ctx, g):
        from taichi_dr.render._env_kernels import kernels

        out = g.new_empty(ctx.bwd[0].shape[0] - 1, 3)
        kernels(ti_real(g.dtype)).spmv(*ctx.bwd, g.detach().contiguous(), out, current_arch() == "cpu")
        return out, None, None


class EnvironmentLight(nn.Module):
    """A learnable HDR environment (cube map ``[6, S, S, 3]``) with split-sum shading.

    Args:
        resolution: cube face size S of the learnable base map (a power of two ≥ 4).
        init: initial constant radiance.
        roughness_levels: roughness knots of the prefiltered specular maps (increasing, ≥ 2);
            level k has face size max(S >> k, 4), and a pixel's roughness picks the level by
            piecewise-linear interpolation between the knots (clamped to the first and last).
    """

    def __init__(self, resolution: int = 32, init: float = 0.5,
                 roughness_levels: Sequence[float] = (0.08, 0.25, 0.5, 0.75, 1.0)):
        super().__init__()
        if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution: expected a power of two >= 4, got {resolution}")
        levels = tuple(float(r) for r in roughness_levels)
        if len(levels) < 2 or any(b <= a for a, b in zip(levels, levels[1:])) or levels[0] < 0:
            raise ValueError(f"roughness_levels: expected >= 2 increasing values >= 0, got {levels}")
        self.base = nn.Parameter(torch.full((6, resolution, resolution, 3), float(init)))
        self.roughness_levels = levels

    def _packed(self, dtype: torch.dtype):
        """All prefiltered maps packed ``[R, 3]`` (specular levels, then irradiance) and the cached tables."""
        ensure_init()
        fl = _filter_on(self.base.shape[1], self.roughness_levels, dtype, str(self.base.device))
        return _Prefilter.apply(self.base.reshape(-1, 3).to(dtype), fl.fwd, fl.bwd), fl

    def _unpack(self, k: int, dtype=None) -> torch.Tensor:
        flat, fl = self._packed(dtype or self.base.dtype)
        off, S = (int(x) for x in fl.meta[k])
        return flat[off:off + 6 * S * S].reshape(6, S, S, 3)

    def specular_maps(self) -> List[torch.Tensor]:
        """Prefiltered maps, one per roughness level, each ``[6, S_k, S_k, 3]`` (coarser when rougher)."""
        return [self._unpack(k) for k in range(len(self.roughness_levels))]

    def irradiance(self) -> torch.Tensor:
        """Cosine-convolved (diffuse) map ``[6, 8, 8, 3]`` (divided by π: multiply by albedo)."""
        return self._unpack(len(self.roughness_levels))

    def shade(self, pos: torch.Tensor, normal: torch.Tensor, kd: torch.Tensor, ks: Optional[torch.Tensor],
              campos: torch.Tensor) -> torch.Tensor:
        """Split-sum shading of surface points: ``[N, H, W, 3]`` linear radiance towards the camera.

        Args:
            pos: ``[N, H, W, 3]`` world positions; normal: ``[N, H, W, 3]`` unit shading normals.
            kd: ``[N, H, W, 3]`` base colour; ks: ``[N, H, W, 3]`` (occlusion, roughness, metallic)
                or None (Lambertian: irradiance·kd).
            campos: ``[N, 3]`` camera positions.

        Gradients reach the cube map, pos, normal, kd and ks.
        """
        dt = check_shade_inputs(pos, normal, kd, ks, campos)
        if self.base.device != pos.device:
            raise ValueError(f"pos: expected device {self.base.device} (as the light), got {pos.device}")
        flat, fl = self._packed(dt)
        # the border of the padded maps: one gather (its adjoint, a scatter-add, is torch's)
        return split_sum_shade(flat.index_select(0, fl.pad), fl.pmeta, fl.knots, fl.lut, pos, normal, kd, ks, campos)

    # ------------------------------------------------------------------ lat-long conversion, files
    @torch.no_grad()
    def to_latlong(self, height: int = 64) -> torch.Tensor:
        """Equirectangular image ``[height, 2·height, 3]`` (row 0 = bottom, looking down −y)."""
        th = (torch.arange(height, dtype=torch.float64) + 0.5) / height * math.pi  # from −y up to +y
        ph = (torch.arange(2 * height, dtype=torch.float64) + 0.5) / (2 * height) * 2 * math.pi
        T, P = torch.meshgrid(th, ph, indexing="ij")
        d = torch.stack([torch.sin(T) * torch.sin(P), -torch.cos(T), -torch.sin(T) * torch.cos(P)], -1)
        return texture(self.base.detach()[None].double(), d[None].contiguous(), filter_mode="linear",
                       boundary_mode="cube")[0].to(self.base.dtype)

    @torch.no_grad()
    def load_latlong(self, img: torch.Tensor) -> None:
        """Set the cube map from an equirectangular image ``[H, 2H, 3]`` (layout of :meth:`to_latlong`)."""
        if img.dim() != 3 or img.shape[2] != 3:
            raise ValueError(f"img: expected shape [H, W, 3], got {list(img.shape)}")
        d, _ = cube_directions(self.base.shape[1], torch.float64)
        theta = torch.acos((-d[..., 1]).clamp(-1, 1))
        phi = torch.atan2(d[..., 0], -d[..., 2]) % (2 * math.pi)
        uv = torch.stack([phi / (2 * math.pi), theta / math.pi], -1)
        out = texture(img[None].double().contiguous(), uv.reshape(1, 6, -1, 2).contiguous(), filter_mode="linear",
                      boundary_mode="wrap")
        self.base.copy_(out.reshape(self.base.shape).to(self.base.dtype))

    @classmethod
    def from_latlong(cls, img: torch.Tensor, resolution: int = 32) -> "EnvironmentLight":
        """A new light whose cube map (face size ``resolution``) resamples the lat-long ``img`` [H, 2H, 3]."""
        env = cls(resolution)
        env.load_latlong(img)
        return env

    def save(self, path: str) -> None:
        """Save the lat-long environment as ``.npy`` (HDR, exact) or ``.png`` (8-bit, clamped)."""
        from taichi_dr.mesh import atomic_write

        img = self.to_latlong().cpu().numpy()
        if path.endswith(".npy"):
            atomic_write(path, lambda tmp: np.save(tmp, img))
        else:
            import imageio.v3 as iio

            u8 = (np.clip(img[::-1], 0, 1) * 255 + 0.5).astype(np.uint8)
            atomic_write(path, lambda tmp: iio.imwrite(tmp, u8, extension=os.path.splitext(path)[1]))

    def load(self, path: str) -> None:
        """Load a lat-long environment from ``.npy`` or an image file (top row first)."""
        if not os.path.isfile(path):
            raise ValueError(f"path: no such file {path!r}")
        if path.endswith(".npy"):
            img = torch.from_numpy(np.load(path))
        else:
            import imageio.v3 as iio

            a = np.asarray(iio.imread(path))[..., :3]
            img = torch.from_numpy(np.ascontiguousarray(a[::-1]).astype(np.float32) / 255.0)
        self.load_latlong(img.float())

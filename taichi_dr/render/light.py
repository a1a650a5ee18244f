"""Lights: a learnable environment map with split-sum image-based lighting, and analytic lights.

Split-sum (Karis 2013, as in nvdiffrec): the specular integral of a GGX lobe against an
environment L is approximated by the product of two precomputable factors,

    ∫ L(l) f(l, v) cos θ_l dl  ≈  [∫ L(l) D(h) cos θ_l dl / ∫ D cos]  ·  [F0·A(n·v, r) + B(n·v, r)],

the first a *prefiltered* environment looked up in the reflected direction (one map per
roughness), the second a 2-D table of the BRDF's directional albedo (scale A and bias B of F0),
which we integrate ourselves with GGX importance sampling. Diffuse light is the cosine-weighted
irradiance map. Every filter is a fixed linear map of the learnable cube map, stored as a sparse
matrix, so gradients reach the cube map through plain autograd.
"""
import dataclasses
import functools
import math
import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taichi_dr.render.shading import safe_normalize
from taichi_dr.render.texture import texture

__all__ = ["EnvironmentLight", "DirectionalLight", "PointLight", "brdf_lut", "cube_directions"]


@dataclasses.dataclass
class DirectionalLight:
    """Light from direction ``direction`` ([3], towards the light) with radiance ``color`` ([3])."""

    direction: torch.Tensor
    color: torch.Tensor


@dataclasses.dataclass
class PointLight:
    """Point light at ``position`` ([3]) with intensity ``color`` ([3]), falling off as 1/d²."""

    position: torch.Tensor
    color: torch.Tensor


def cube_directions(S: int, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit directions of the texel centres ``[6, S, S, 3]`` of a cube map (OpenGL faces, our
    texel layout: row = t, column = s) and each texel's solid angle ``[6, S, S]``."""
    c = (torch.arange(S, dtype=torch.float64) + 0.5) / S * 2 - 1
    tc, sc = torch.meshgrid(c, c, indexing="ij")
    one = torch.ones_like(sc)
    faces = [(one, -tc, -sc), (-one, -tc, sc), (sc, one, tc), (sc, -one, -tc), (sc, -tc, one), (-sc, -tc, -one)]
    d = torch.stack([torch.stack(f, -1) for f in faces])
    # solid angle of a texel ~ area / r³ on the unit cube face (area (2/S)²)
    r2 = (d * d).sum(-1)
    omega = (2.0 / S) ** 2 / r2 ** 1.5
    return F.normalize(d, dim=-1).to(dtype), omega.to(dtype)


def _ggx_d(alpha2, cos_h):
    d = cos_h * cos_h * (alpha2 - 1) + 1
    return alpha2 / (math.pi * d * d)


@functools.lru_cache(maxsize=None)
def _filter_matrix(S_out: int, S_in: int, roughness: float) -> torch.Tensor:
    """Sparse [6·S_out², 6·S_in²] GGX prefilter (roughness < 0) = cosine irradiance, rows normalised."""
    d_out, _ = cube_directions(S_out, torch.float64)
    d_in, om = cube_directions(S_in, torch.float64)
    d_out, d_in, om = d_out.reshape(-1, 3), d_in.reshape(-1, 3), om.reshape(-1)
    rows, cols, vals = [], [], []
    for s in range(0, d_out.shape[0], 1024):
        cos = d_out[s:s + 1024] @ d_in.T  # n·l with n = v = r (the split-sum assumption)
        if roughness < 0:  # diffuse irradiance: cosine lobe
            w = cos.clamp(min=0) * om
        else:
            a2 = max(roughness, 0.08) ** 4
            cos_h = torch.sqrt(((1 + cos) / 2).clamp(min=0))  # h halfway between n and l
            w = _ggx_d(a2, cos_h) * cos.clamp(min=0) * om
        w = w / w.sum(1, keepdim=True)
        keep = w > 1e-5
        idx = keep.nonzero()
        rows.append(idx[:, 0] + s)
        cols.append(idx[:, 1])
        vals.append(w[keep])
    ind = torch.stack([torch.cat(rows), torch.cat(cols)])
    v = torch.cat(vals)
    # renormalise after dropping the negligible tail
    sums = torch.zeros(d_out.shape[0], dtype=v.dtype).index_add_(0, ind[0], v)
    v = v / sums[ind[0]]
    return torch.sparse_coo_tensor(ind, v, (d_out.shape[0], d_in.shape[0])).coalesce()


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


class EnvironmentLight(nn.Module):
    """A learnable HDR environment (cube map ``[6, S, S, 3]``) with split-sum shading.

    Args:
        resolution: cube face size S of the learnable base map (a power of two ≥ 16).
        init: initial constant radiance.
        roughness_levels: roughness of the prefiltered specular maps.
    """

    def __init__(self, resolution: int = 32, init: float = 0.5,
                 roughness_levels: Sequence[float] = (0.08, 0.25, 0.5, 0.75, 1.0)):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution: expected a power of two >= 4, got {resolution}")
        self.base = nn.Parameter(torch.full((6, resolution, resolution, 3), float(init)))
        self.roughness_levels = tuple(float(r) for r in roughness_levels)

    def _level_res(self, k: int) -> int:
        return max(self.base.shape[1] >> k, 4)

    def _filter(self, mat: torch.Tensor, src: torch.Tensor, S_out: int) -> torch.Tensor:
        m = mat.to(src.dtype).to(src.device)
        return torch.sparse.mm(m, src.reshape(-1, 3)).reshape(6, S_out, S_out, 3)

    def specular_maps(self) -> List[torch.Tensor]:
        """Prefiltered maps, one per roughness level, each ``[6, S_k, S_k, 3]`` (coarser when rougher)."""
        S = self.base.shape[1]
        out = []
        for k, r in enumerate(self.roughness_levels):
            So = self._level_res(k)
            out.append(self._filter(_filter_matrix(So, S, r), self.base, So))
        return out

    def irradiance(self) -> torch.Tensor:
        """Cosine-convolved (diffuse) map ``[6, 8, 8, 3]`` (divided by π: multiply by albedo)."""
        return self._filter(_filter_matrix(8, self.base.shape[1], -1.0), self.base, 8)

    def shade(self, pos: torch.Tensor, normal: torch.Tensor, kd: torch.Tensor, roughness: torch.Tensor,
              metallic: torch.Tensor, campos: torch.Tensor) -> torch.Tensor:
        """Split-sum shading of surface points.

        Args:
            pos: ``[N, H, W, 3]`` world positions; normal: ``[N, H, W, 3]`` unit normals.
            kd: ``[N, H, W, 3]`` base colour; roughness, metallic: ``[N, H, W, 1]``.
            campos: ``[N, 3]`` camera positions.

        Returns:
            ``[N, H, W, 3]`` linear radiance towards the camera.
        """
        if roughness.numel() and bool((roughness < 0).any()):
            raise ValueError("roughness: expected values >= 0")
        N = pos.shape[0]
        dt = self.base.dtype
        wo = safe_normalize(campos.view(N, 1, 1, 3).to(pos.dtype) - pos)
        nv = (normal * wo).sum(-1, keepdim=True)
        refl = safe_normalize(2 * nv * normal - wo)
        irr = texture(self.irradiance()[None].to(pos.dtype), normal.contiguous(), filter_mode="linear",
                      boundary_mode="cube")
        diffuse = irr * kd * (1 - metallic)
        # blend the two prefiltered maps around the roughness (piecewise-linear in roughness)
        levels = torch.tensor(self.roughness_levels, dtype=pos.dtype, device=pos.device)
        r = roughness.clamp(levels[0], levels[-1])[..., 0]
        idx = torch.clamp(torch.searchsorted(levels, r.detach().contiguous(), right=True) - 1, 0, len(levels) - 2)
        lo, hi = levels[idx], levels[idx + 1]
        t = ((r - lo) / (hi - lo)).unsqueeze(-1)
        spec_maps = self.specular_maps()
        spec = torch.zeros_like(pos)
        for k, m in enumerate(spec_maps):
            val = texture(m[None].to(pos.dtype), refl.contiguous(), filter_mode="linear", boundary_mode="cube")
            w = torch.where((idx == k).unsqueeze(-1), 1 - t, torch.zeros_like(t)) + \
                torch.where((idx == k - 1).unsqueeze(-1), t, torch.zeros_like(t))
            spec = spec + w * val
        lut = brdf_lut().to(pos.dtype).to(pos.device)[None]
        uv = torch.cat([nv.clamp(1e-4, 1.0), roughness.clamp(0.0, 1.0)], -1).contiguous()
        ab = texture(lut, uv, filter_mode="linear", boundary_mode="clamp")
        f0 = 0.04 * (1 - metallic) + kd * metallic
        return diffuse + spec * (f0 * ab[..., :1] + ab[..., 1:2])

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

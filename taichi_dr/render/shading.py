"""Shading math as pure, differentiable torch functions: normals, Lambert, GGX microfacet BSDF.

All direction arguments are ``[..., 3]`` unit vectors pointing *away* from the surface (towards
the light / the viewer), broadcastable against each other.

GGX (Trowbridge–Reitz) specular, as in nvdiffrec, with α = roughness² (≥ 0.08²):

    f_spec = F·D·G / (4 (n·l)(n·v)),
    D(h)  = α² / (π ((n·h)²(α² − 1) + 1)²),
    G     = 1 / (1 + Λ(l) + Λ(v)),  Λ(x) = ½(√(1 + α² tan²θ_x) − 1)   (height-correlated Smith),
    F     = F0 + (1 − F0)(1 − v·h)⁵                                    (Schlick),

with F0 = 0.04·(1 − metallic) + kd·metallic and diffuse kd·(1 − metallic)/π. Cosines are clamped
to [1e-4, 1 − 1e-4] so that grazing angles give finite gradients.
"""
import math

import torch

from taichi_dr._checks import check_index, check_tensor, FLOATS

__all__ = ["face_normals", "vertex_normals", "lambert", "ggx_ndf", "smith_g", "fresnel_schlick", "ggx_specular",
           "ggx_bsdf", "safe_normalize"]

_EPS = 1e-4


def safe_normalize(x: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    return x / torch.sqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps))


def face_normals(verts: torch.Tensor, faces: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Face normals ``[F, 3]`` (right-hand rule of the winding); unnormalised = 2·area·n."""
    check_tensor("verts", verts, ndim=2, last=3, dtypes=FLOATS, expected="[V, 3]")
    check_index("faces", faces, verts.shape[0], expected="[F, 3]")
    f = faces.long()
    v0, v1, v2 = verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]]
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    return safe_normalize(n) if normalize else n


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals ``[V, 3]``: the sum of the unnormalised normals of incident faces
    (each is 2·area·n), normalised. Vertices with no faces get (0, 0, 1)."""
    n = face_normals(verts, faces, normalize=False)
    f = faces.long()
    acc = torch.zeros_like(verts)
    for k in range(3):
        acc = acc.index_add(0, f[:, k], n)
    length2 = (acc * acc).sum(-1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=verts.dtype, device=verts.device).expand_as(acc)
    return torch.where(length2 > 1e-30, safe_normalize(acc), fallback)


def _check_roughness(roughness: torch.Tensor) -> None:
    if isinstance(roughness, torch.Tensor) and roughness.numel() and bool((roughness < 0).any()):
        raise ValueError(f"roughness: expected values >= 0, got min {float(roughness.min()):.4g}")


def lambert(normal: torch.Tensor, light_dir: torch.Tensor) -> torch.Tensor:
    """Clamped cosine max(0, n·l): ``[..., 1]``."""
    return torch.clamp((normal * light_dir).sum(-1, keepdim=True), min=0.0)


def ggx_ndf(alpha2: torch.Tensor, cos_h: torch.Tensor) -> torch.Tensor:
    d = (cos_h * alpha2 - cos_h) * cos_h + 1.0
    return alpha2 / (d * d * math.pi)


def _lambda(alpha2: torch.Tensor, cos_t: torch.Tensor) -> torch.Tensor:
    c2 = cos_t * cos_t
    tan2 = (1.0 - c2) / c2
    return 0.5 * (torch.sqrt(1.0 + alpha2 * tan2) - 1.0)


def smith_g(alpha2: torch.Tensor, cos_l: torch.Tensor, cos_v: torch.Tensor) -> torch.Tensor:
    """Height-correlated Smith masking-shadowing G2."""
    return 1.0 / (1.0 + _lambda(alpha2, cos_l) + _lambda(alpha2, cos_v))


def fresnel_schlick(f0: torch.Tensor, cos_d: torch.Tensor) -> torch.Tensor:
    return f0 + (1.0 - f0) * (1.0 - cos_d) ** 5


def ggx_specular(normal: torch.Tensor, view_dir: torch.Tensor, light_dir: torch.Tensor, roughness: torch.Tensor,
                 f0: torch.Tensor) -> torch.Tensor:
    """GGX specular BSDF times the cosine, f_spec·(n·l): ``[..., C]`` (C from ``f0``)."""
    _check_roughness(roughness)
    alpha = torch.clamp(roughness, min=0.08) ** 2
    alpha2 = alpha * alpha
    h = safe_normalize(view_dir + light_dir)
    cos_l = torch.clamp((normal * light_dir).sum(-1, keepdim=True), _EPS, 1 - _EPS)
    cos_v = torch.clamp((normal * view_dir).sum(-1, keepdim=True), _EPS, 1 - _EPS)
    cos_h = torch.clamp((normal * h).sum(-1, keepdim=True), _EPS, 1 - _EPS)
    cos_d = torch.clamp((view_dir * h).sum(-1, keepdim=True), _EPS, 1 - _EPS)
    spec = fresnel_schlick(f0, cos_d) * ggx_ndf(alpha2, cos_h) * smith_g(alpha2, cos_l, cos_v) / (4.0 * cos_v)
    front = ((normal * light_dir).sum(-1, keepdim=True) > 0).to(spec.dtype)
    return spec * front


def ggx_bsdf(kd: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor, normal: torch.Tensor,
             view_dir: torch.Tensor, light_dir: torch.Tensor) -> torch.Tensor:
    """Diffuse + GGX specular reflectance times the cosine, ``[..., 3]``: multiply by light radiance.

    Args:
        kd: ``[..., 3]`` base colour; roughness, metallic: ``[..., 1]``.
    """
    _check_roughness(roughness)
    f0 = 0.04 * (1.0 - metallic) + kd * metallic
    diffuse = kd * (1.0 - metallic) / math.pi * lambert(normal, light_dir)
    return diffuse + ggx_specular(normal, view_dir, light_dir, roughness, f0)

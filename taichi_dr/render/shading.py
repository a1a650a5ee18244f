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
           "ggx_bsdf", "safe_normalize", "shade_directional_light", "shade_point_light"]

_EPS = 1e-4


def safe_normalize(x: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """x / |x| along the last axis, ``[..., D]``; the clamp keeps zero vectors finite (→ 0)."""
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
    if isinstance(roughness, torch.Tensor) and roughness.numel() and bool((roughness.detach() < 0).any()):
        raise ValueError(f"roughness: expected values >= 0, got min {float(roughness.detach().min()):.4g}")


def _check_dirs(**dirs: torch.Tensor) -> None:
    """Direction arguments must be float tensors ``[..., 3]`` (broadcasting is left to torch)."""
    for name, d in dirs.items():
        check_tensor(name, d, last=3, dtypes=FLOATS, expected="[..., 3]")


def lambert(normal: torch.Tensor, light_dir: torch.Tensor) -> torch.Tensor:
    """Clamped cosine max(0, n·l).

    Args:
        normal, light_dir: ``[..., 3]`` unit vectors (broadcastable).

    Returns:
        ``[..., 1]``.
    """
    _check_dirs(normal=normal, light_dir=light_dir)
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
    """GGX specular BSDF times the cosine, f_spec·(n·l) = F·D·G / (4 n·v).

    Args:
        normal, view_dir, light_dir: ``[..., 3]`` unit vectors pointing away from the surface.
        roughness: ``[..., 1]`` (or broadcastable) perceptual roughness ≥ 0; α = max(r, 0.08)².
        f0: ``[..., C]`` reflectance at normal incidence (C = 1 or 3).

    Returns:
        ``[..., C]``; zero where the light is below the surface.

    Raises:
        ValueError: negative roughness or a direction whose last dimension is not 3.
    """
    _check_dirs(normal=normal, view_dir=view_dir, light_dir=light_dir)
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
        kd: ``[..., 3]`` base colour (linear).
        roughness, metallic: ``[..., 1]``.
        normal, view_dir, light_dir: ``[..., 3]`` unit vectors pointing away from the surface.

    Returns:
        ``[..., 3]`` = kd(1−m)/π·(n·l) + f_spec·(n·l) with F0 = 0.04(1−m) + kd·m.
    """
    check_tensor("kd", kd, last=3, dtypes=FLOATS, expected="[..., 3]")
    _check_dirs(normal=normal, view_dir=view_dir, light_dir=light_dir)
    _check_roughness(roughness)
    f0 = 0.04 * (1.0 - metallic) + kd * metallic
    diffuse = kd * (1.0 - metallic) / math.pi * lambert(normal, light_dir)
    return diffuse + ggx_specular(normal, view_dir, light_dir, roughness, f0)


def shade_directional_light(kd: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor, normal: torch.Tensor,
                            view_dir: torch.Tensor, light_dir: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Outgoing radiance ``[..., 3]`` under a directional light of radiance ``color`` ``[3]``.

    ``light_dir`` ``[..., 3]`` points from the surface *towards* the light (it is normalised here),
    i.e. the opposite of a ``DirectionalLight.direction`` that says where light travels.
    """
    return ggx_bsdf(kd, roughness, metallic, normal, view_dir, safe_normalize(light_dir)) * color


def shade_point_light(kd: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor, normal: torch.Tensor,
                      pos: torch.Tensor, cam_pos: torch.Tensor, light_pos: torch.Tensor,
                      color: torch.Tensor) -> torch.Tensor:
    """Outgoing radiance ``[..., 3]`` at surface points ``pos`` ``[..., 3]`` seen from ``cam_pos``
    ``[..., 3]`` and lit by an isotropic point light at ``light_pos`` ``[..., 3]`` of intensity
    ``color`` ``[3]``: irradiance falls off as 1/d² (d clamped ≥ 1e-4 to stay finite)."""
    _check_dirs(pos=pos, cam_pos=cam_pos, light_pos=light_pos)
    to_light = light_pos - pos
    dist2 = torch.clamp((to_light * to_light).sum(-1, keepdim=True), min=1e-8)
    bsdf = ggx_bsdf(kd, roughness, metallic, normal, safe_normalize(cam_pos - pos), safe_normalize(to_light))
    return bsdf * color / dist2

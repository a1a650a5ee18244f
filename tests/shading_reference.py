"""The slow, obvious torch reference of the fused shading kernels (the code the kernels replaced).

Element-wise torch ops and library ``texture()`` lookups, differentiated by autograd; the tests
compare the fused kernels (:mod:`taichi_dr.render._analytic_kernels`, :mod:`taichi_dr.render._env_kernels`)
against it, values and gradients. Material
``ks`` = (occlusion, roughness, metallic) as in nvdiffrec; ``ks=None`` is pure Lambert.
"""
import math

import torch

from taichi_dr.render.light import brdf_lut, cube_directions
from taichi_dr.render.shading import ggx_bsdf, safe_normalize
from taichi_dr.render.texture import texture

__all__ = ["shade_analytic", "filter_matrix", "prefiltered", "shade_env"]


def shade_analytic(pos, normal, kd, ks, campos, vec, color, ambient, point):
    """Directional (``vec`` = direction towards the light) or point (``vec`` = position) light:
    bsdf·color (/ d² for a point light) + ambient·kd(1 − m)(1 − o). All per-pixel ``[N, H, W, 3]``."""
    N = pos.shape[0]
    cam = campos.view(N, 1, 1, 3).to(pos.dtype)
    if point:
        to_light = vec - pos
        inv = 1.0 / torch.clamp((to_light * to_light).sum(-1, keepdim=True), min=1e-8)
        l = safe_normalize(to_light)
    else:
        inv, l = 1.0, safe_normalize(vec).expand_as(pos)
    if ks is None:
        o = m = torch.zeros_like(pos[..., :1])
        bsdf = kd / math.pi * torch.clamp((normal * l).sum(-1, keepdim=True), min=0.0)
    else:
        o, r, m = ks[..., 0:1], ks[..., 1:2], ks[..., 2:3]
        bsdf = ggx_bsdf(kd, r, m, normal, safe_normalize(cam - pos), l)
    return bsdf * color * inv + ambient * kd * (1 - m) * (1 - o)


def filter_matrix(S_out, S_in, roughness):
    """Dense [6·S_out², 6·S_in²] GGX prefilter (roughness < 0: cosine irradiance), rows normalised,
    weights below 1e-5 dropped."""
    d_out, _ = cube_directions(S_out, torch.float64)
    d_in, om = cube_directions(S_in, torch.float64)
    cos = d_out.reshape(-1, 3) @ d_in.reshape(-1, 3).T
    if roughness < 0:
        w = cos.clamp(min=0) * om.reshape(-1)
    else:
        a2 = max(roughness, 0.08) ** 4
        cos_h = torch.sqrt(((1 + cos) / 2).clamp(min=0))
        d = cos_h * cos_h * (a2 - 1) + 1
        w = a2 / (math.pi * d * d) * cos.clamp(min=0) * om.reshape(-1)
    w = w / w.sum(1, keepdim=True)
    w = torch.where(w > 1e-5, w, torch.zeros_like(w))
    return w / w.sum(1, keepdim=True)


def prefiltered(base, levels):
    """The specular maps (one per roughness level, face size max(S >> k, 4)) and the 8² irradiance."""
    S = base.shape[1]
    flat = base.reshape(-1, 3)
    spec = []
    for k, r in enumerate(levels):
        So = max(S >> k, 4)
        spec.append((filter_matrix(So, S, r).to(base.dtype) @ flat).reshape(6, So, So, 3))
    irr = (filter_matrix(8, S, -1.0).to(base.dtype) @ flat).reshape(6, 8, 8, 3)
    return spec, irr


def shade_env(base, levels, pos, normal, kd, ks, campos):
    """Split-sum shading as before the kernels: five full-image lookups blended by roughness."""
    N = pos.shape[0]
    spec_maps, irr_map = prefiltered(base, levels)
    irr = texture(irr_map[None].to(pos.dtype), normal.contiguous(), filter_mode="linear", boundary_mode="cube")
    if ks is None:
        return irr * kd
    o, roughness, metallic = ks[..., 0:1], ks[..., 1:2], ks[..., 2:3]
    wo = safe_normalize(campos.view(N, 1, 1, 3).to(pos.dtype) - pos)
    nv = (normal * wo).sum(-1, keepdim=True)
    refl = safe_normalize(2 * nv * normal - wo)
    diffuse = irr * kd * (1 - metallic)
    lv = torch.tensor(levels, dtype=pos.dtype)
    r = roughness.clamp(lv[0], lv[-1])[..., 0]
    idx = torch.clamp(torch.searchsorted(lv, r.detach().contiguous(), right=True) - 1, 0, len(levels) - 2)
    t = ((r - lv[idx]) / (lv[idx + 1] - lv[idx])).unsqueeze(-1)
    spec = torch.zeros_like(pos)
    for k, mp in enumerate(spec_maps):
        val = texture(mp[None].to(pos.dtype), refl.contiguous(), filter_mode="linear", boundary_mode="cube")
        w = torch.where((idx == k).unsqueeze(-1), 1 - t, torch.zeros_like(t)) + \
            torch.where((idx == k - 1).unsqueeze(-1), t, torch.zeros_like(t))
        spec = spec + w * val
    lut = brdf_lut().to(pos.dtype)[None]
    uv = torch.cat([nv.clamp(1e-4, 1.0), roughness.clamp(0.0, 1.0)], -1).contiguous()
    ab = texture(lut, uv, filter_mode="linear", boundary_mode="clamp")
    f0 = 0.04 * (1 - metallic) + kd * metallic
    return (diffuse + spec * (f0 * ab[..., :1] + ab[..., 1:2])) * (1 - o)

"""Shading: normals, the material model (Lambert + GGX microfacet BSDF), and the fused shading ops.

Two layers:

* pure, differentiable **torch** functions of the BSDF (``lambert``, ``ggx_bsdf``, …) for any
  ``[..., 3]`` shapes: readable, and what the tests take as the reference;
* the **fused per-pixel ops** used by the lights' ``shade`` (:func:`analytic_shade`,
  :func:`split_sum_shade`): one Taichi kernel per light type evaluates the whole material model of
  a pixel, with a hand-written adjoint (:mod:`taichi_dr.render._analytic_kernels`,
  :mod:`taichi_dr.render._env_kernels`).

Conventions, once for the package: every direction points *away* from the surface — towards the
light, towards the viewer (a :class:`~taichi_dr.render.light.DirectionalLight`'s ``direction``
points towards the light). The material of a pixel is nvdiffrec's: base colour ``kd`` and
``ks`` = (occlusion o, roughness r, metallic m); the occlusion darkens the light that comes from
everywhere (the environment, an ambient term) by (1 − o), not direct light.

GGX (Trowbridge–Reitz) specular, as in nvdiffrec, with α = roughness² (≥ 0.08²):

    f_spec = F·D·G / (4 (n·l)(n·v)),
    D(h)  = α² / (π ((n·h)²(α² − 1) + 1)²),
    G     = 1 / (1 + Λ(l) + Λ(v)),  Λ(x) = ½(√(1 + α² tan²θ_x) − 1)   (height-correlated Smith),
    F     = F0 + (1 − F0)(1 − v·h)⁵                                    (Schlick),

with F0 = 0.04·(1 − metallic) + kd·metallic and diffuse kd·(1 − metallic)/π. Cosines are clamped
to [1e-4, 1 − 1e-4] so that grazing angles give finite gradients.
"""
import math
from typing import Optional

import torch

from taichi_dr._checks import FLOATS, check_index, check_device, check_tensor, shape_str
from taichi_dr._sparse import csr, csr_matmul
from taichi_dr.runtime import current_arch, ensure_init, ti_real

__all__ = ["face_normals", "VertexNormalOperator", "vertex_normals", "lambert", "ggx_ndf", "smith_g", "fresnel_schlick",
           "ggx_specular", "ggx_bsdf", "safe_normalize", "perturb_normal", "check_shade_inputs", "analytic_shade",
           "split_sum_shade"]

_EPS = 1e-4
_ENV_BLOCKS = 32  # CPU: pixel blocks of the environment backward, each with its own gradient maps
_ENV_PIXEL_BLOCK = 64  # CPU: pixels of one view per iteration of the environment forward (one camera read)


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


class VertexNormalOperator:
    """:func:`vertex_normals` of one fixed topology as three sparse products.

    The two edge vectors of every face (``[F, V]`` matrices with entries ±1) and the sum of the face
    normals into their corners (``[V, F]``), each stored with its transpose for the gradient. Built
    once where the faces stay fixed for many calls (the refinement pass), it replaces three gathers
    and three ``index_add`` scatters (and, backward, their scatters and gathers): 131k faces,
    forward + backward 22 -> 11 ms on 2 CPU cores (``benchmarks/bench_shading.py``).

    Args:
        faces: ``[F, 3]`` int triangles.
        num_verts: ``V``.
        dtype, device: of the positions it will take.
    """

    def __init__(self, faces: torch.Tensor, num_verts: int, dtype: torch.dtype = torch.float32, device=None):
        check_index("faces", faces, num_verts, expected="[F, 3]")
        f = faces.long().to(device)
        F_, fid = f.shape[0], torch.arange(f.shape[0], device=f.device)
        one = torch.ones(F_, dtype=dtype, device=f.device)
        self.edges = []
        for k in (1, 2):  # e_k = p_k − p_0 (a degenerate face's two entries cancel in coalesce)
            rows, cols, vals = fid.repeat(2), torch.cat([f[:, k], f[:, 0]]), torch.cat([one, -one])
            self.edges.append((csr(rows, cols, vals, (F_, num_verts)), csr(cols, rows, vals, (num_verts, F_))))
        rows, cols = f.t().reshape(-1), fid.repeat(3)
        self.corner_sum = (csr(rows, cols, one.repeat(3), (num_verts, F_)),
                           csr(cols, rows, one.repeat(3), (F_, num_verts)))
        self.num_verts, self.num_faces, self.dtype = num_verts, F_, dtype

    def __call__(self, verts: torch.Tensor) -> torch.Tensor:
        """Unnormalised vertex normals ``[V, 3]`` (the sum of 2·area·n over incident faces)."""
        check_tensor("verts", verts, ndim=2, last=3, dtypes=FLOATS, expected=f"[{self.num_verts}, 3]")
        if verts.shape[0] != self.num_verts or verts.dtype != self.dtype:
            raise ValueError(f"verts: expected [{self.num_verts}, 3] {self.dtype} (the operator's vertices and "
                             f"dtype), got {shape_str(verts.shape)} {verts.dtype}")
        e1, e2 = (csr_matmul(m, verts, mt) for m, mt in self.edges)
        return csr_matmul(self.corner_sum[0], torch.linalg.cross(e1, e2), self.corner_sum[1])


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor,
                   operator: Optional[VertexNormalOperator] = None) -> torch.Tensor:
    """Area-weighted vertex normals ``[V, 3]``: the sum of the unnormalised normals of incident faces
    (each is 2·area·n), normalised. Vertices with no faces get (0, 0, 1).

    Args:
        verts: ``[V, 3]`` float positions; faces: ``[F, 3]`` int triangles.
        operator: optional :class:`VertexNormalOperator` of these faces (a fixed topology called
            many times); without it, gathers and ``index_add`` scatters.
    """
    if operator is None:
        n = face_normals(verts, faces, normalize=False)
        f = faces.long()
        acc = torch.zeros_like(verts)
        for k in range(3):
            acc = acc.index_add(0, f[:, k], n)
    else:
        if faces.shape[0] != operator.num_faces:
            raise ValueError(f"operator: expected one built for these {faces.shape[0]} faces, "
                             f"got one for {operator.num_faces}")
        acc = operator(verts)
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


def ggx_ndf(alpha2, cos_h):
    """GGX normal distribution D = α²/(π((n·h)²(α² − 1) + 1)²) (tensors or floats, broadcast)."""
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


def perturb_normal(normal: torch.Tensor, tangent: torch.Tensor, normal_ts: torch.Tensor) -> torch.Tensor:
    """Shading normal from a tangent-space normal map (OpenGL convention, as nvdiffrec).

    With the bitangent B = normalize(T × N): n = normalize(T·x − B·y + N·max(z, 0)), i.e. x along
    the tangent, y along N × T ("up" in an OpenGL normal map), z along the surface normal.

    Args:
        normal: ``[..., 3]`` interpolated unit normals N.
        tangent: ``[..., 3]`` tangents T (orthogonal to N, not necessarily unit).
        normal_ts: ``[..., 3]`` tangent-space normals (x, y, z), e.g. a map in [−1, 1] (z ≥ 0).

    Returns:
        ``[..., 3]`` unit shading normals (differentiable w.r.t. all three inputs).
    """
    _check_dirs(normal=normal, tangent=tangent, normal_ts=normal_ts)
    bitangent = safe_normalize(torch.linalg.cross(tangent, normal.expand_as(tangent)))
    n = (tangent * normal_ts[..., 0:1] - bitangent * normal_ts[..., 1:2]
         + normal * torch.clamp(normal_ts[..., 2:3], min=0.0))
    return safe_normalize(n)


# ---------------------------------------------------------------------- fused per-pixel shading ops
def check_shade_inputs(pos, normal, kd, ks, campos) -> torch.dtype:
    """Validate the per-pixel inputs of ``light.shade``; return their dtype.

    ``pos``, ``normal``, ``kd``, ``ks`` (or None): ``[N, H, W, 3]`` of one float dtype and device;
    ``campos``: ``[N, 3]``; roughness ``ks[..., 1]`` ≥ 0.
    """
    check_tensor("pos", pos, 4, 3, FLOATS, "[N, H, W, 3]")
    for name, t in (("normal", normal), ("kd", kd), ("ks", ks)):
        if t is None and name == "ks":
            continue
        check_tensor(name, t, 4, 3, FLOATS, "[N, H, W, 3]")
        if t.shape != pos.shape:
            raise ValueError(f"{name}: expected shape {shape_str(pos.shape)} (as pos), got {shape_str(t.shape)}")
        if t.dtype != pos.dtype:
            raise TypeError(f"{name}: expected dtype {pos.dtype} (as pos), got {t.dtype}")
    check_tensor("campos", campos, 2, 3, FLOATS, f"[{pos.shape[0]}, 3]")
    if campos.shape[0] != pos.shape[0]:
        raise ValueError(f"campos: expected shape [{pos.shape[0]}, 3], got {shape_str(campos.shape)}")
    check_device(pos=pos, normal=normal, kd=kd, ks=ks, campos=campos)
    if ks is not None:
        _check_roughness(ks[..., 1])
    return pos.dtype


def _flat(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``[P, 3]`` contiguous view (a copy only if needed); a 1-row dummy for None."""
    return like.new_zeros(1, 3) if t is None else t.detach().reshape(-1, 3).contiguous()


def _pixel_args(pos, normal, kd, ks, campos) -> list:
    """The per-pixel arguments both shading kernels start with: the flat ``[P, 3]`` pos, normal,
    kd, ks (dummy if None), the ``[N, 3]`` camera positions and H·W (pixels per view)."""
    N, H, W, _ = pos.shape
    return [_flat(t, pos) for t in (pos, normal, kd, ks)] + [campos.detach().to(pos.dtype).contiguous(), H * W]


def _pixel_grads(pos: torch.Tensor, has_ks: bool):
    """Output buffers of both backward kernels: ``[P, 3]`` gradients of pos, normal, kd, ks (ks a
    1-row dummy when the material has none); every row is written by the kernel."""
    g_ks = torch.empty_like(pos) if has_ks else pos.new_zeros(1, 3)
    return torch.empty_like(pos), torch.empty_like(pos), torch.empty_like(pos), g_ks


class _AnalyticShade(torch.autograd.Function):
    """A directional / point light + ambient on every pixel: ``_analytic_kernels``."""

    @staticmethod
    def forward(ctx, light, pos, normal, kd, ks, campos, point):
        from taichi_dr.render._analytic_kernels import kernels

        ctx.set_materialize_grads(False)
        args = _pixel_args(pos, normal, kd, ks, campos) + [light.detach().contiguous(), point, ks is not None]
        out = torch.empty_like(pos)
        kernels(ti_real(pos.dtype)).fwd(*args, out.view(-1, 3))
        ctx.args, ctx.has_ks = args, ks is not None
        return out

    @staticmethod
    def backward(ctx, g_out):
        from taichi_dr.render._analytic_kernels import kernels

        if g_out is None:
            return (None,) * 7
        pos = ctx.args[0]
        g_pos, g_nrm, g_kd, g_ks = _pixel_grads(pos, ctx.has_ks)
        g_light = pos.new_zeros(3, 3)
        kernels(ti_real(pos.dtype)).bwd(*ctx.args, g_out.detach().reshape(-1, 3).contiguous(), g_pos, g_nrm,
                                        g_kd, g_ks, g_light)
        shape = g_out.shape
        return (g_light, g_pos.view(shape), g_nrm.view(shape), g_kd.view(shape),
                g_ks.view(shape) if ctx.has_ks else None, None, None)


def analytic_shade(pos: torch.Tensor, normal: torch.Tensor, kd: torch.Tensor, ks: Optional[torch.Tensor],
                   campos: torch.Tensor, light: torch.Tensor, point: bool) -> torch.Tensor:
    """Radiance ``[N, H, W, 3]`` of a directional or point light plus an ambient term, per pixel.

        out = f(l, v)·(n·l)·color·s + ambient·kd·(1 − m)(1 − o),

    f the Lambert + GGX BSDF of :func:`ggx_bsdf` (pure Lambert kd/π when ``ks`` is None),
    s = 1 for a directional light, 1/max(d², 1e-8) for a point light.

    Args:
        pos, normal, kd, ks, campos: as in :func:`check_shade_inputs` (already checked).
        light: ``[3, 3]`` rows (direction towards the light | position, color, ambient).
        point: whether row 0 is a position.

    Gradients reach pos, normal, kd, ks and ``light``; not campos.
    """
    ensure_init()
    return _AnalyticShade.apply(light.to(pos.dtype), pos, normal, kd, ks, campos, bool(point))


class _EnvShade(torch.autograd.Function):
    """Split-sum environment shading of every pixel: ``_env_kernels``."""

    @staticmethod
    def forward(ctx, env, pos, normal, kd, ks, campos, meta, knots, lut):
        from taichi_dr.render._env_kernels import kernels

        ctx.set_materialize_grads(False)
        args = _pixel_args(pos, normal, kd, ks, campos) + [env.detach().contiguous(), meta, knots, lut.reshape(-1, 2),
                                                           lut.shape[0], ks is not None]
        out = torch.empty_like(pos)
        kernels(ti_real(pos.dtype)).fwd(*args, out.view(-1, 3), _ENV_PIXEL_BLOCK if current_arch() == "cpu" else 1)
        ctx.args, ctx.has_ks = args, ks is not None
        return out

    @staticmethod
    def backward(ctx, g_out):
        from taichi_dr.render._env_kernels import kernels

        if g_out is None:
            return (None,) * 9
        pos, env = ctx.args[0], ctx.args[6]
        g_pos, g_nrm, g_kd, g_ks = _pixel_grads(pos, ctx.has_ks)
        # CPU: one private copy of the map gradients per block of pixels (no atomics), summed here
        private = current_arch() == "cpu"
        g_env = env.new_zeros(_ENV_BLOCKS if private else 1, *env.shape)
        kernels(ti_real(pos.dtype)).bwd(*ctx.args, g_out.detach().reshape(-1, 3).contiguous(), g_pos, g_nrm, g_kd,
                                        g_ks, g_env.view(-1, 3), private)
        g_env = g_env.sum(0)
        shape = g_out.shape
        return (g_env, g_pos.view(shape), g_nrm.view(shape), g_kd.view(shape),
                g_ks.view(shape) if ctx.has_ks else None, None, None, None, None)


def split_sum_shade(env: torch.Tensor, meta: torch.Tensor, knots: torch.Tensor, lut: torch.Tensor,
                    pos: torch.Tensor, normal: torch.Tensor, kd: torch.Tensor, ks: Optional[torch.Tensor],
                    campos: torch.Tensor) -> torch.Tensor:
    """Split-sum image-based shading ``[N, H, W, 3]`` of every pixel, one kernel launch:

        out = (irr(n)·kd(1 − m) + spec(reflect(v, n), r)·(F0·A + B))·(1 − o),  F0 = 0.04(1 − m) + kd·m,

    irr(n) = irradiance cube map at the normal (bilinear), spec = one trilinear lookup in the
    prefiltered chain (level = piecewise-linear in r between ``knots``), (A, B) = ``lut`` at
    (n·v, r). With ``ks`` None: irr(n)·kd.

    Args:
        env: ``[R, 3]`` packed, padded cube maps (layout of :mod:`taichi_dr.render._shading_kernels`:
            each face of size S stored as (S + 2)² texels, the border copied from the neighbouring
            faces): the K specular levels, then the irradiance map.
        meta: ``[K + 1, 2]`` int32 (texel offset, face size S) of each map in ``env``.
        knots: ``[K]`` roughness of each specular level (increasing), dtype of ``pos``.
        lut: ``[n, n, 2]`` BRDF table (row = roughness, column = n·v), dtype of ``pos``.
        pos, normal, kd, ks, campos: as in :func:`check_shade_inputs` (already checked).

    Gradients reach env, pos, normal, kd and ks; not campos.
    """
    ensure_init()
    return _EnvShade.apply(env.to(pos.dtype), pos, normal, kd, ks, campos, meta, knots, lut)

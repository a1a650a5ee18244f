"""nvdiffrec's material field: kd, ks (and an optional normal perturbation) of any world position.

Pass 1 of :func:`~taichi_dr.recon.reconstruct` cannot use 2-D textures (the DMTet mesh, hence any
UV layout, changes every iteration), so the material is a function of 3-D position, evaluated
*per pixel* on the interpolated surface position of the covered pixels only:

    x = (p − box_min) / box_size ∈ [0, 1]³
    e = HashGrid(x)                     L levels × F features, trilinear in each level's cell
    y = MLP(e)                          2 hidden ReLU layers, 32 wide (nvdiffrec's sizes)
    kd  = sigmoid(y[0:3])                                      ∈ [0, 1]
    ks  = min + sigmoid(y[3:6])·(max − min), min = (0, 0.08, 0), max = (1, 1, 1)
          (occlusion o, roughness, metallic: nvdiffrec's ks; o = 0 is unoccluded, see render/light.py)
    n_t = (tanh(y[6:8]), 1) normalised  (optional tangent-space normal)

The hash grid (Müller et al. 2022, as tiny-cuda-nn's ``HashGrid``) is written in plain torch: level
``l`` has resolution ``R_l = floor(base · s^l)``; a level whose ``(R_l+1)³`` corners fit in the table
is indexed densely (no collisions), a finer one by the spatial hash ``(x·1 ⊕ y·2654435761 ⊕
z·805459861) mod T``. All levels are looked up in one gather from one table so that the backward
is one ``index_add`` — on a CPU the cost is the 8·L gathers per pixel, which is why the field is
evaluated on covered pixels only (see :func:`~taichi_dr.render.pipeline.render_mesh_views`).
"""
import math
from typing import Optional

import torch
from torch import nn

from taichi_dr.recon._hashgrid_kernels import kernels as _kernels
from taichi_dr.runtime import current_arch, ensure_init, ti_real

__all__ = ["HashGridEncoding", "MaterialField", "KS_MIN", "KS_MAX"]

KS_MIN = (0.0, 0.08, 0.0)   # occlusion, roughness, metallic (nvdiffrec's limits)
KS_MAX = (1.0, 1.0, 1.0)
_PRIMES = (1, 2654435761, 805459861)
# the 8 corners of a cell, bit k of the corner id = offset along axis k
_CORNERS = torch.tensor([[(c >> k) & 1 for k in range(3)] for c in range(8)], dtype=torch.int64)


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding of points in [0, 1]³.

    Args:
        levels: number of resolutions L.
        features: features per level F.
        log2_table: log2 of the table size per level T (a level with (R+1)³ ≤ T is dense).
        base_res: coarsest resolution; max_res: finest resolution (geometric in between).

    Input ``[P, 3]`` float32/float64 in [0, 1] (clamped), output ``[P, L·F]`` in the table's dtype.
    """

    def __init__(self, levels: int = 12, features: int = 2, log2_table: int = 16, base_res: int = 16,
                 max_res: int = 512):
        super().__init__()
        for name, v, lo in (("levels", levels, 1), ("features", features, 1), ("log2_table", log2_table, 4),
                            ("base_res", base_res, 1), ("max_res", max_res, 1)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if max_res < base_res:
            raise ValueError(f"max_res: expected >= base_res ({base_res}), got {max_res}")
        scale = math.exp(math.log(max_res / base_res) / max(levels - 1, 1))
        res = [int(math.floor(base_res * scale ** l)) for l in range(levels)]
        T = 1 << log2_table
        sizes = [min(T, (r + 1) ** 3) for r in res]
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.levels, self.features = levels, features
        self.register_buffer("res", torch.tensor(res, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("dense", torch.tensor([(r + 1) ** 3 <= T for r in res]), persistent=False)
        # tiny initial features (tiny-cuda-nn: U(−1e-4, 1e-4)) so the MLP starts from a constant
        self.table = nn.Parameter((torch.rand(sum(sizes), features) * 2 - 1) * 1e-4)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def _meta(self) -> torch.Tensor:
        return torch.stack([self.res, self.sizes, self.offsets, self.dense.long()], 1).to(torch.int32).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` ``[P, 3]`` (Taichi kernels; gradients reach the table only, not ``x``)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != 3:
            raise ValueError(f"x: expected a tensor of shape [P, 3], got {getattr(x, 'shape', type(x).__name__)}")
        return _HashGridFn.apply(x.detach().to(self.table.dtype).contiguous(), self.table, self._meta(), self.features)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same encoding in plain torch (slow; differentiable in ``x`` too): the tests' reference."""
        if x.dim() != 2 or x.shape[1] != 3:
            raise ValueError(f"x: expected shape [P, 3], got {list(x.shape)}")
        P = x.shape[0]
        pos = x.to(self.table.dtype).clamp(0.0, 1.0).unsqueeze(1) * self.res.to(self.table.dtype).view(1, -1, 1)
        cell = torch.floor(pos.detach()).long().clamp(max=self.res.view(1, -1, 1) - 1)  # [P, L, 3]
        frac = pos - cell.to(pos.dtype)  # [P, L, 3], differentiable in x
        corner = cell.unsqueeze(2) + _CORNERS.to(x.device).view(1, 1, 8, 3)  # [P, L, 8, 3]
        r1 = (self.res + 1).view(1, -1, 1)
        dense_idx = corner[..., 0] + r1 * (corner[..., 1] + r1 * corner[..., 2])
        hashed = (corner[..., 0] * _PRIMES[0]) ^ (corner[..., 1] * _PRIMES[1]) ^ (corner[..., 2] * _PRIMES[2])
        idx = torch.where(self.dense.view(1, -1, 1), dense_idx, hashed % self.sizes.view(1, -1, 1))
        idx = idx + self.offsets.view(1, -1, 1)
        # trilinear weights: product over the axes of frac (offset 1) or 1 − frac (offset 0)
        c = _CORNERS.to(x.device).view(1, 1, 8, 3).to(pos.dtype)
        w = (c * frac.unsqueeze(2) + (1 - c) * (1 - frac.unsqueeze(2))).prod(-1)  # [P, L, 8]
        feats = self.table.index_select(0, idx.reshape(-1)).view(P, self.levels, 8, self.features)
        return (feats * w.unsqueeze(-1)).sum(2).reshape(P, self.levels * self.features)


class _HashGridFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, meta, F):
        ensure_init()
        fwd, _ = _kernels(ti_real(table.dtype), F, current_arch() == "cpu")
        out = torch.empty((x.shape[0], meta.shape[0] * F), dtype=table.dtype, device=table.device)
        if x.shape[0]:
            fwd(x, table.detach().contiguous(), meta, out)
        ctx.save_for_backward(x, meta)
        ctx.shape, ctx.F = table.shape, F
        return out

    @staticmethod
    def backward(ctx, g_out):
        x, meta = ctx.saved_tensors
        _, bwd = _kernels(ti_real(g_out.dtype), ctx.F, current_arch() == "cpu")
        g_table = torch.zeros(ctx.shape, dtype=g_out.dtype, device=g_out.device)
        if x.shape[0]:
            bwd(x, g_out.contiguous(), meta, g_table)
        return None, g_table, None, None


class MaterialField(nn.Module):
    """kd, ks (and optionally a tangent-space normal) of world positions, from a hash grid + MLP.

    Args:
        center: ``[3]`` centre of the box the field covers; half: its half size (positions outside
            are clamped to the box).
        normal: also predict a tangent-space normal perturbation (channels 6:9).
        levels, log2_table, max_res: hash-grid size (see :class:`HashGridEncoding`).
        hidden: MLP width (two hidden layers).

    Calling it on ``[P, 3]`` positions returns ``[P, C]`` float32 channels: kd (3), ks (3:
    occlusion, roughness, metallic) and, with ``normal=True``, a unit tangent-space normal (3),
    all inside nvdiffrec's bounds (module docstring).
    """

    def __init__(self, center: torch.Tensor, half: float, normal: bool = False, levels: int = 8,
                 log2_table: int = 15, max_res: int = 512, hidden: int = 32):
        super().__init__()
        if not float(half) > 0:
            raise ValueError(f"half: expected a positive box half size, got {half!r}")
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32).clone().view(3))
        self.half, self.normal = float(half), bool(normal)
        self.encoding = HashGridEncoding(levels=levels, log2_table=log2_table, max_res=max_res)
        self.channels = 9 if normal else 6
        out = 8 if normal else 6
        self.net = nn.Sequential(nn.Linear(self.encoding.out_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))
        self.register_buffer("ks_min", torch.tensor(KS_MIN), persistent=False)
        self.register_buffer("ks_max", torch.tensor(KS_MAX), persistent=False)
        with torch.no_grad():  # start as a mid-grey, rough, non-metallic, unoccluded surface
            self.net[-1].bias.zero_()
            self.net[-1].bias[3] = -4.0  # occlusion ≈ 0.02 (o scales ambient/environment light by 1 − o)
            self.net[-1].bias[4] = 1.0   # roughness ≈ 0.75
            self.net[-1].bias[5] = -4.0  # metallic ≈ 0.02

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if p.dim() != 2 or p.shape[1] != 3:
            raise ValueError(f"p: expected world positions [P, 3], got {list(p.shape)}")
        x = (p.to(self.center.dtype) - self.center) / (2 * self.half) + 0.5
        y = self.net(self.encoding(x).to(self.net[0].weight.dtype))
        kd = torch.sigmoid(y[:, 0:3])
        ks = self.ks_min.to(y.dtype) + torch.sigmoid(y[:, 3:6]) * (self.ks_max - self.ks_min).to(y.dtype)
        if not self.normal:
            return torch.cat([kd, ks], 1)
        n = torch.cat([torch.tanh(y[:, 6:8]), torch.ones_like(y[:, :1])], 1)
        return torch.cat([kd, ks, n / n.norm(dim=1, keepdim=True)], 1)

    def kd(self, p: torch.Tensor) -> torch.Tensor:
        """``[P, 3]`` albedo only (per-vertex colours for previews / the old vertex-colour path)."""
        return self.forward(p)[:, :3]

    def smoothness_loss(self, p: torch.Tensor, generator: Optional[torch.Generator] = None,
                        sigma: float = 0.01) -> torch.Tensor:
        """nvdiffrec's kd smoothness term: mean |kd(p + ε) − kd(p)|, ε ~ N(0, (σ·box)²), on ``[P, 3]`` points."""
        eps = torch.randn(p.shape, generator=generator, dtype=p.dtype) * (sigma * 2 * self.half)
        v = self.forward(torch.cat([p, p + eps.to(p.device)]))
        return (v[:p.shape[0], :3] - v[p.shape[0]:, :3]).abs().mean()

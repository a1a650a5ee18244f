"""DMTet: a deformable tetrahedral grid whose SDF and vertex offsets are learned.

Two parametrisations of the per-vertex SDF ``s`` and offset ``δ``:

* ``mode="mlp"`` (default): a small MLP on a positional encoding of each grid vertex,
  ``[s, δ_raw] = MLP(γ(x))`` with γ(x) = (x, sin(2^k π x), cos(2^k π x)). Neighbouring vertices
  share weights, so the SDF is smooth and a coarse fit generalises between vertices.
* ``mode="direct"``: ``s`` and ``δ_raw`` are free tensors, one value per vertex (as nvdiffrec does).

Either way the offset is bounded to half a grid cell, ``δ = (h/2)·tanh(δ_raw)``: a vertex can
move towards the surface to fit it better, but never past its neighbours, so tets never invert
and marching tets stays valid. The mesh is extracted by :func:`marching_tets` on the deformed
grid, and is differentiable w.r.t. everything above.
"""
import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from taichi_dr.geometry.lattice_smooth import LatticeSmoother
from taichi_dr.geometry.marching_tets import marching_tets
from taichi_dr.geometry.tetgrid import TetGrid

__all__ = ["DMTet", "sdf_reg_weight", "positional_encoding", "mlp"]


def sdf_reg_weight(it: int, total: int, start: float = 0.2, end: float = 0.01) -> float:
    """nvdiffrec's SDF-regulariser weight: linear from ``start`` to ``end`` over the first quarter
    of ``total`` iterations, then constant ``end``."""
    if total <= 0:
        raise ValueError(f"total: expected > 0 iterations, got {total}")
    t = 4.0 * it / total
    return end if t >= 1.0 else start + (end - start) * t


def positional_encoding(x: torch.Tensor, multires: int) -> torch.Tensor:
    """γ(x) = (x, sin(2^k π x), cos(2^k π x) for k < multires): ``[..., 3] -> [..., 3 + 6·multires]``."""
    feats = [x]
    for k in range(multires):
        feats += [torch.sin((2.0 ** k) * math.pi * x), torch.cos((2.0 ** k) * math.pi * x)]
    return torch.cat(feats, -1)


def mlp(dims) -> nn.Sequential:
    """Linear layers of sizes ``dims[0] -> ... -> dims[-1]`` with ReLU between them."""
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DMTet(nn.Module):
    """Deformable tetrahedral grid with a learned SDF.

    Args:
        grid_resolution: cells per axis of the :class:`TetGrid`.
        scale: side of the cube ``[-scale/2, scale/2]³`` covered by the grid.
        hidden_dim: MLP width.
        num_layers: number of hidden layers.
        multires: positional-encoding frequencies.
        mode: ``"mlp"`` or ``"direct"`` (free per-vertex parameters).
        grid: use this grid instead of creating one.
        smoothing: direct mode on a lattice grid only: λ of smooth steps (``LatticeSmoother``): the
            parameters are ``u = (I + λL)·[s, δ_raw]``, so an optimiser's step on them moves the SDF and
            offsets by a smooth field (``0``: free per-vertex values).
    """

    def __init__(self, grid_resolution: int = 64, scale: float = 2.0, hidden_dim: int = 64, num_layers: int = 3,
                 multires: int = 4, mode: str = "mlp", grid: Optional[TetGrid] = None, smoothing: float = 0.0):
        super().__init__()
        if mode not in ("mlp", "direct"):
            raise ValueError(f"mode: expected 'mlp' or 'direct', got {mode!r}")
        grid = grid if grid is not None else TetGrid.create(grid_resolution, scale)
        self.mode, self.multires = mode, multires
        self.resolution, self.scale, self.lattice = grid.resolution, grid.scale, grid.lattice
        self.register_buffer("verts", grid.verts.clone())
        self.register_buffer("tets", grid.tets.clone())
        self.register_buffer("edges", grid.edges.clone())
        self.register_buffer("tet_edges", grid.tet_edges.clone())
        V = grid.verts.shape[0]
        if mode == "mlp":
            self.net = mlp([3 + 6 * multires] + [hidden_dim] * num_layers + [4])
            # the grid never moves (offsets are outputs), so its encoding is computed once: its sin/cos
            # were ~13 % of each step's network time at grid 64 (274,625 vertices); not saved in checkpoints
            self.register_buffer("encoding", positional_encoding(self.verts / (self.scale / 2), multires),
                                 persistent=False)
        else:
            self.sdf_param = nn.Parameter(torch.rand(V) - 0.1)  # nvdiffrec's init: mostly outside
            self.deform_param = nn.Parameter(torch.zeros(V, 3))
        if smoothing and (mode != "direct" or not grid.lattice):
            raise ValueError(f"smoothing: needs mode='direct' on a TetGrid.create grid, got mode={mode!r}, "
                             f"lattice={grid.lattice}")
        self.smoother = LatticeSmoother(grid.resolution + 1, smoothing) if smoothing else None

    @property
    def cell(self) -> float:
        """Grid cell size h."""
        return self.scale / self.resolution

    def grid(self) -> TetGrid:
        return TetGrid(self.verts, self.tets, self.edges, self.tet_edges, self.resolution, self.scale, self.lattice)

    def forward(self, grad_rows: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(sdf [V], offsets [V, 3])`` (float32), offsets bounded by half a cell.

        Args:
            grad_rows: MLP mode only (ignored in direct mode): a function of the SDF ``[V]`` (no
                gradient) returning the ``[K]`` int64 grid vertices whose outputs the loss can
                reach, e.g. :meth:`surface_rows` (marching tets reads only the two ends of each
                sign-changing edge). The network then runs on every vertex without autograd and
                again, with it, on those K only: the values are the same to the bit, and so is the
                gradient of any loss that reads no other vertex; a loss that does read one gets no
                gradient from it. ``None``: autograd over every vertex.
        """
        if self.mode == "mlp":
            if grad_rows is None:
                out = self.net(self.encoding)
            else:
                # why: on grid 40 the surface touches ~1 vertex in 6, and the network's backward
                # (and the activations autograd keeps for it) over all of them was ~1/5 of a step
                with torch.no_grad():
                    full = self.net(self.encoding)
                rows = grad_rows(full[:, 0])
                sub = self.net(self.encoding[rows])
                # full[rows] + (sub - sub) keeps the network-wide values bit for bit (the K rows
                # alone may round differently) while the gradient flows through sub
                out = full.index_put((rows,), full[rows] + (sub - sub.detach()))
            sdf, raw = out[:, 0], out[:, 1:]
        else:
            sdf, raw = self.sdf_param, self.deform_param
            if self.smoother is not None:
                x = self.smoother(torch.cat([sdf[:, None], raw], 1))
                sdf, raw = x[:, 0], x[:, 1:]
        return sdf, 0.5 * self.cell * torch.tanh(raw)

    def surface_rows(self, sdf: torch.Tensor) -> torch.Tensor:
        """The grid vertices at either end of a sign-changing edge: ``[K]`` int64, ascending. ``sdf``: ``[V]``.

        An exact 0 counts on either side: :func:`marching_tets` counts it as outside (``sdf < 0``
        is inside) and :func:`~taichi_dr.losses.sdf_reg_loss` as inside (``sdf > 0`` is outside), so
        the rows cover the edges both read.
        """
        if sdf.shape != (self.verts.shape[0],):
            raise ValueError(f"sdf: expected shape [{self.verts.shape[0]}], got {list(sdf.shape)}")
        neg, pos = (sdf < 0)[self.edges], (sdf > 0)[self.edges]
        changes = (neg[:, 0] != neg[:, 1]) | (pos[:, 0] != pos[:, 1])
        return torch.unique(self.edges[changes].long())

    def deformed_verts(self, offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
        if offsets is None:
            offsets = self.forward()[1]
        return self.verts + offsets

    def mesh(self, sdf: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Marching tets on the deformed grid: ``(verts [M, 3], faces [F, 3] int32)``, differentiable."""
        if sdf is None or offsets is None:
            sdf, offsets = self.forward()
        return marching_tets(self.verts + offsets, sdf, self.grid())

    def fit_sdf_values(self, target: torch.Tensor, steps: int = 300, lr: float = 1e-2, band: float = 1.5,
                       others: int = 16384, seed: int = 0) -> float:
        """Make the SDF equal ``target [V]`` at the grid vertices (direct mode: copy; MLP: fit).

        The MLP fit is what makes the MLP mode start where the direct mode starts: every step uses
        all vertices within ``band`` of the zero level (weighted 10×: their signs *are* the mesh)
        plus ``others`` random ones, with Adam and a cosine-decaying learning rate; the offsets are
        fitted to zero (no initial deformation, as in direct mode).
        Returns the final weighted mean squared error over all vertices.
        """
        if target.shape != (self.verts.shape[0],):
            raise ValueError(f"target: expected shape [{self.verts.shape[0]}], got {list(target.shape)}")
        if self.mode == "direct":
            with torch.no_grad():
                self.sdf_param.copy_(target if self.smoother is None else self.smoother.inverse(target))
                self.deform_param.zero_()
            return 0.0
        target = target.to(self.verts.device).float()
        near = torch.nonzero(target.abs() < band)[:, 0]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        enc = self.encoding
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * 0.01)
        for _ in range(steps):
            rnd = torch.randint(0, target.shape[0], (min(others, target.shape[0]),), generator=gen).to(near.device)
            idx = torch.cat([near, rnd])
            w = torch.cat([torch.full((near.numel(),), 10.0), torch.ones(rnd.numel())]).to(target.device)
            out = self.net(enc[idx])
            # the offsets are fitted to 0 too, so the grid starts undeformed
            loss = torch.sum(w * ((out[:, 0] - target[idx]) ** 2 + (out[:, 1:] ** 2).sum(-1))) / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            return float(torch.mean((self.forward()[0] - target) ** 2))

    def init_from_sdf(self, fn: Callable[[torch.Tensor], torch.Tensor], steps: int = 300, lr: float = 3e-3,
                      batch: int = 32768, seed: int = 0) -> float:
        """Fit the SDF to ``fn(points [P, 3]) -> [P]`` (direct mode: copy it). Returns the final MSE."""
        if self.mode == "direct":
            return self.fit_sdf_values(fn(self.verts).detach().float())
        gen = torch.Generator(device="cpu").manual_seed(seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        loss = torch.zeros(())
        for _ in range(steps):
            # grid vertices plus jittered points, so the MLP is right between vertices too
            idx = torch.randint(0, self.verts.shape[0], (min(batch, self.verts.shape[0]),), generator=gen)
            p = self.verts[idx.to(self.verts.device)]
            jitter = (torch.rand(p.shape, generator=gen) - 0.5).to(p.device) * self.cell
            p = torch.cat([p, p + jitter])
            pred = self.net(positional_encoding(p / (self.scale / 2), self.multires))[:, 0]
            loss = torch.mean((pred - fn(p).detach()) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    def init_sphere(self, radius: float = 0.5, steps: int = 300) -> float:
        """Initialise to a sphere of ``radius`` centred at the origin."""
        return self.init_from_sdf(lambda p: p.norm(dim=-1) - radius, steps=steps)

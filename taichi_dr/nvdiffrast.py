"""nvdiffrast compatibility: ``import taichi_dr.nvdiffrast as dr`` runs nvdiffrast code on any device.

The contexts are accepted and ignored (there is no OpenGL or CUDA rasterizer state to hold: the
Taichi kernels are compiled once per process), and the ops take nvdiffrast's arguments::

    glctx = dr.RasterizeCudaContext()
    rast, rast_db = dr.rasterize(glctx, pos, tri, resolution=[256, 256])
    out, _ = dr.interpolate(col, rast, tri)
    out = dr.antialias(out, rast, pos, tri)
"""
from typing import Optional, Sequence

import torch

from taichi_dr.render.antialias import antialias, antialias_construct_topology_hash
from taichi_dr.render.interpolate import interpolate
from taichi_dr.render.rasterize import rasterize as _rasterize

__all__ = ["RasterizeCudaContext", "RasterizeGLContext", "rasterize", "interpolate", "texture",
           "texture_construct_mip", "antialias", "antialias_construct_topology_hash"]


class RasterizeCudaContext:
    """Accepted for compatibility; holds nothing. ``device`` is ignored (ops follow their inputs)."""

    def __init__(self, device: Optional[torch.device] = None):
        self.device = device
        self.output_db = True


class RasterizeGLContext(RasterizeCudaContext):
    """Deprecated in nvdiffrast too; accepted and ignored."""

    def __init__(self, output_db: bool = True, mode: str = "automatic", device: Optional[torch.device] = None):
        super().__init__(device)
        self.output_db, self.mode = output_db, mode


def _check_ctx(glctx):
    if not isinstance(glctx, RasterizeCudaContext):
        raise TypeError(f"glctx: expected RasterizeCudaContext or RasterizeGLContext, got {type(glctx).__name__}")


def rasterize(glctx, pos: torch.Tensor, tri: torch.Tensor, resolution: Sequence[int],
              ranges: Optional[torch.Tensor] = None, grad_db: bool = True):
    """nvdiffrast's ``rasterize(glctx, pos, tri, resolution, ranges=None, grad_db=True)``."""
    _check_ctx(glctx)
    rast, db = _rasterize(pos, tri, tuple(resolution), ranges=ranges, grad_db=grad_db)
    if not glctx.output_db:
        db = torch.zeros_like(rast[..., :0])
    return rast, db


def texture(tex, uv, uv_da=None, mip_level_bias=None, mip=None, filter_mode="auto", boundary_mode="wrap",
            max_mip_level=None):
    """nvdiffrast's ``texture(...)`` (see :func:`taichi_dr.texture`)."""
    from taichi_dr.render.texture import texture as _texture

    return _texture(tex, uv, uv_da=uv_da, mip_level_bias=mip_level_bias, mip=mip, filter_mode=filter_mode,
                    boundary_mode=boundary_mode, max_mip_level=max_mip_level)


def texture_construct_mip(tex, max_mip_level=None, cube_mode=False):
    """nvdiffrast's ``texture_construct_mip(...)`` (see :func:`taichi_dr.texture_construct_mip`)."""
    from taichi_dr.render.texture import texture_construct_mip as _mip

    return _mip(tex, max_mip_level=max_mip_level, cube_mode=cube_mode)

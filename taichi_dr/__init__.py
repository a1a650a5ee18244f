"""taichi_dr: a readable differentiable renderer and DMTet reconstruction in Python + Taichi.

Public names are imported lazily (PEP 562 ``__getattr__``): ``import taichi_dr`` loads neither
Taichi nor any kernel, and Taichi is initialised on the first op (see ``taichi_dr.runtime``).
"""
from __future__ import annotations

import importlib
from typing import Dict

__version__ = "0.1.0"

# public name -> module that defines it (one line per module; keep in pipeline order)
_EXPORTS: Dict[str, str] = {}
for _mod, _names in [
    ("runtime", "init current_arch"),
    ("render.rasterize", "rasterize"),
    ("render.interpolate", "interpolate"),
    ("render.texture", "texture texture_construct_mip"),
    ("render.antialias", "antialias antialias_construct_topology_hash"),
    ("render.shading", "vertex_normals face_normals lambert ggx_specular ggx_bsdf perturb_normal"),
    ("render.light", "EnvironmentLight DirectionalLight PointLight"),
    ("geometry.tetgrid", "TetGrid"),
    ("geometry.marching_tets", "marching_tets"),
    ("geometry.dmtet", "DMTet sdf_reg_weight"),
    ("camera", "perspective look_at orbit_views nerf_c2w_to_mv fovy_from_fovx transform_pos"),
    ("mesh", "Mesh load_obj save_obj"),
    ("losses", "tonemap_srgb image_loss mask_loss sdf_reg_loss albedo_guide_loss laplacian_loss linear_to_srgb "
               "srgb_to_linear"),
    ("metrics", "psnr mask_iou chamfer_distance normal_consistency"),
    ("data.nerf", "load_nerf NerfDataset write_nerf_dataset"),
    ("recon", "reconstruct ReconConfig"),
]:
    for _n in _names.split():
        _EXPORTS[_n] = _mod
del _mod, _names, _n

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taichi_dr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"taichi_dr.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))

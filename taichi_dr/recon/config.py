"""ReconConfig: every setting of a reconstruction in one dataclass."""
import dataclasses
from typing import Optional

__all__ = ["ReconConfig"]


@dataclasses.dataclass
class ReconConfig:
    """Settings of :func:`reconstruct` (defaults: the demo on a 2-core CPU in a few minutes)."""

    iters: int = 200               # DMTet pass iterations
    refine_iters: int = 100        # mesh refinement iterations (0 = off)
    grid_res: int = 40             # tet grid cells per axis
    train_res: Optional[int] = None  # resample images to this size (None = as stored)
    batch: int = 4                 # views per iteration
    seed: int = 0
    lr_geometry: float = 0.03      # DMTet SDF / offsets
    lr_color: float = 0.01         # colour MLP and light
    lr_refine: float = 2e-3        # vertex positions in the refinement pass
    sdf_mode: str = "direct"       # "direct" (free per-vertex values, nvdiffrec) or "mlp"
    light: str = "simple"          # "simple" (ambient + directional, Lambert) or "env" (split-sum IBL)
    laplacian_weight: float = 50.0
    loss: str = "logl1"
    checkpoint_every: int = 100
    eval_res: Optional[int] = None  # test render size (None = dataset size)
    turntable_frames: int = 36
    turntable_res: int = 192
    chamfer_samples: int = 200_000

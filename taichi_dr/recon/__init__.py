"""The reconstruction application layer: config, loop, model, outputs and the built-in demo.

``from taichi_dr.recon import reconstruct, ReconConfig`` (also re-exported by ``taichi_dr``).
"""
from taichi_dr.recon.config import ReconConfig
from taichi_dr.recon.loop import reconstruct

__all__ = ["ReconConfig", "reconstruct"]

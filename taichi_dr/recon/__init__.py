"""The reconstruction application layer: config, checks, loop, model, outputs and the built-in demo.

``from taichi_dr.recon import reconstruct, ReconConfig`` (also re-exported by ``taichi_dr``).
``reconstruct`` is imported lazily, so reading a :class:`ReconConfig` (the CLI's ``--help``) loads
neither torch nor Taichi.
"""
from taichi_dr.recon.config import ReconConfig

__all__ = ["ReconConfig", "reconstruct"]


def __getattr__(name: str):
    if name == "reconstruct":
        from taichi_dr.recon.loop import reconstruct

        return reconstruct
    raise AttributeError(f"module 'taichi_dr.recon' has no attribute {name!r}")

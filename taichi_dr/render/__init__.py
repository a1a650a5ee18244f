"""Rendering ops: rasterize, interpolate, texture, antialias, shading, lights."""

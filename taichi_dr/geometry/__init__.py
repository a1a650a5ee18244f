"""Geometry: tetrahedral grids, marching tetrahedra, DMTet."""

"""Finite-difference cases for the whole render, :func:`~taichi_dr.render.pipeline.render_mesh_views`
(rasterize → interpolate → shade → composite → antialias, then the supersampling box filter),
w.r.t. the vertex positions and the per-vertex albedo."""
import torch

from taichi_dr.gradcheck import Case

__all__ = ["cases"]

D = torch.float64


def _scene():
    from taichi_dr.render.light import DirectionalLight

    # a tetrahedron seen at an angle from a perspective camera: silhouette edges and shaded faces;
    # at 7×9 (×2: 14×18) no pixel centre lies within 1e-6 of an edge
    v = torch.tensor([[-0.55, -0.45, 0.1], [0.6, -0.5, -0.2], [-0.1, 0.62, 0.05], [0.12, -0.05, 0.7]], dtype=D)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=torch.int32)
    kd = torch.tensor([[0.8, 0.3, 0.2], [0.2, 0.7, 0.4], [0.3, 0.3, 0.9], [0.6, 0.6, 0.1]], dtype=D)
    t = 0.6  # tan(fovy / 2)
    proj = torch.tensor([[1 / t, 0, 0, 0], [0, 1 / t, 0, 0], [0, 0, -1.002, -0.2002], [0, 0, -1, 0]], dtype=D)
    mv = torch.eye(4, dtype=D)
    mv[2, 3] = -1.7  # the camera 1.7 units up +z, looking down -z
    light = DirectionalLight(torch.tensor([0.3, 0.5, 0.8], dtype=D), torch.full((3,), 2.0, dtype=D),
                             torch.full((3,), 0.2, dtype=D))
    bg = torch.rand(1, 7, 9, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    return v, f, kd, (proj @ mv)[None], torch.tensor([[0.0, 0.0, 1.7]], dtype=D), light, bg


def _build(k, index):
    def build():
        from taichi_dr.render.pipeline import render_mesh_views

        v, f, kd, mvp, campos, light, bg = _scene()
        return (lambda x, c: render_mesh_views(x, f, c, mvp, campos, (7, 9), light, bg, supersample=k)), (v, kd), index
    return build


def cases():
    return [Case(f"render_mesh_views k={k}", name, _build(k, i), atol=1e-5, rtol=1e-3)
            for k in (1, 2) for i, name in enumerate(("verts", "albedo"))]

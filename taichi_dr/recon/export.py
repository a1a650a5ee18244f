"""Write a reconstruction as files that open everywhere: OBJ + MTL + PNG textures, glTF 2.0 binary, light.

``export_mesh(out_dir, verts, faces, material, light)`` writes

* ``mesh.obj`` / ``mesh.mtl`` — positions, UVs (``vt``, OBJ convention: v = 0 is the bottom row of
  the image), ``map_Kd texture_kd.png`` (sRGB-encoded albedo, as image viewers and DCC tools expect)
  and ``map_Ks texture_ks.png`` (linear occlusion, roughness, metallic in R, G, B: glTF's ORM packing,
  whose R is the fraction of ambient light that arrives, i.e. 1 − nvdiffrec's occlusion o) and
  ``norm texture_n.png`` (tangent-space normals as (n + 1)/2, OpenGL convention);
* ``mesh.glb`` — glTF 2.0 (via ``trimesh``): baseColorTexture = ``texture_kd``, metallicRoughnessTexture
  and occlusionTexture = ``texture_ks``, normalTexture = ``texture_n`` (glTF reads roughness from G, metallic from B, occlusion from R);
* ``light.png`` (8-bit lat-long preview) + ``light.npy`` (float32, exact) for an environment light,
  ``light.json`` for the simple (ambient + directional) light.

With per-vertex colours (``material = 'vertex'``) ``mesh.obj`` carries ``v x y z r g b`` lines and
``mesh.glb`` vertex colours. A material field (pass 1 only, no texture pass) is baked to textures
first. :func:`load_textured_obj` reads ``mesh.obj`` back as something our renderer draws.
"""
import json
import os
from typing import Dict, Tuple

import numpy as np
import torch

from taichi_dr.losses import linear_to_srgb, srgb_to_linear
from taichi_dr.image import save_png, to_srgb_u8
from taichi_dr.mesh import Mesh, atomic_write, atomic_write_text, load_obj, obj_text, save_obj
from taichi_dr.recon.texture_pass import TexturedMaterial, dilate, make_textured_material

__all__ = ["export_mesh", "load_textured_obj", "save_light", "load_light"]


def _u8(img: np.ndarray) -> np.ndarray:
    """Linear data in [0, 1] (not colour: no sRGB encoding) -> uint8."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_light(out_dir: str, light) -> Dict[str, str]:
    """``light.png`` + ``light.npy`` (environment light) or ``light.json`` (ambient + directional)."""
    env = getattr(light, "env", light)
    if hasattr(env, "save") and hasattr(env, "to_latlong"):
        env.save(os.path.join(out_dir, "light.npy"))
        env.save(os.path.join(out_dir, "light.png"))
        return {"light": "light.npy", "light_preview": "light.png"}
    data = {k: [float(x) for x in torch.as_tensor(getattr(light, k)).detach().reshape(-1)]
            for k in ("direction", "color", "ambient") if getattr(light, k, None) is not None}
    atomic_write_text(os.path.join(out_dir, "light.json"), json.dumps(data, indent=2) + "\n")
    return {"light": "light.json"}


def _uv_vertices(verts: torch.Tensor, faces: torch.Tensor, uv_faces: torch.Tensor, n_uv: int) -> torch.Tensor:
    """Positions ``[Vt, 3]`` of the UV vertices (a position is repeated along the seams)."""
    pos = torch.zeros((n_uv, 3), dtype=torch.float32)
    # everything on the CPU: a CUDA run hands over CUDA faces (indexing across devices fails)
    pos[uv_faces.long().reshape(-1).cpu()] = verts.detach().float().cpu()[faces.long().reshape(-1).cpu()]
    return pos


def _write_glb(path: str, verts: np.ndarray, faces: np.ndarray, uvs=None, kd=None, ks=None, colors=None,
               nrm=None) -> None:
    import trimesh
    from PIL import Image

    if uvs is not None:
        mat = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(kd), metallicRoughnessTexture=Image.fromarray(ks),
            occlusionTexture=Image.fromarray(ks), metallicFactor=1.0, roughnessFactor=1.0,
            normalTexture=Image.fromarray(nrm) if nrm is not None else None)
        visual = trimesh.visual.TextureVisuals(uv=uvs, material=mat)
    else:
        visual = trimesh.visual.ColorVisuals(vertex_colors=colors)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, visual=visual, process=False)
    data = mesh.export(file_type="glb")
    atomic_write(path, lambda tmp: open(tmp, "wb").write(data))


@torch.no_grad()
def export_mesh(out_dir: str, verts: torch.Tensor, faces: torch.Tensor, material, light,
                image_hw: Tuple[int, int] = (512, 512)) -> Dict[str, str]:
    """Write ``mesh.obj``, ``mesh.mtl``, ``texture_kd.png``, ``texture_ks.png``, ``mesh.glb`` and the light.

    Args:
        out_dir: output folder.
        verts: ``[V, 3]``; faces: ``[F, 3]`` int32.
        material: ``[V, 3]`` per-vertex albedo, a :class:`TexturedMaterial`, or a material field
            (callable ``[P, 3] -> [P, ≥6]``, baked here at the resolution chosen for ``image_hw``).
        light: the learned light (``LearnedEnvLight``/``EnvironmentLight`` or a ``SimpleLight``).

    Returns:
        ``{role: file name}`` of what was written.
    """
    os.makedirs(out_dir, exist_ok=True)
    written = {"mesh": "mesh.obj", "glb": "mesh.glb"}
    if faces.shape[0] == 0:
        save_obj(os.path.join(out_dir, "mesh.obj"), Mesh(verts.detach().float().cpu(), faces.cpu()))
        return {"mesh": "mesh.obj", **save_light(out_dir, light)}
    if isinstance(material, torch.Tensor):
        col = material.detach().float().cpu()
        save_obj(os.path.join(out_dir, "mesh.obj"), Mesh(verts.detach().float().cpu(), faces.cpu(), colors=col))
        srgb = _u8(linear_to_srgb(col).numpy())
        _write_glb(os.path.join(out_dir, "mesh.glb"), verts.detach().float().cpu().numpy(), faces.cpu().numpy(),
                   colors=np.concatenate([srgb, np.full_like(srgb[:, :1], 255)], 1))
        return {**written, **save_light(out_dir, light)}
    if not isinstance(material, TexturedMaterial):  # a field: bake it (pass 1 without a texture pass)
        faces, material = make_textured_material(verts, faces, material, image_hw)
    tex = dilate(material.tex.detach()[0].cpu(), material.mask.cpu())  # re-pad the chart borders
    kd = to_srgb_u8(tex[..., 0:3])  # sRGB albedo, top row first as image files are
    orm = torch.cat([1 - tex[..., 3:4], tex[..., 4:6]], -1)  # glTF occlusion: 1 = unoccluded = 1 − o
    ks = _u8(orm.numpy()[::-1])
    save_png(os.path.join(out_dir, "texture_kd.png"), kd)
    save_png(os.path.join(out_dir, "texture_ks.png"), ks)
    nrm = None
    if tex.shape[-1] >= 9:  # tangent-space normals, (n + 1) / 2 as in every normal map
        nrm = _u8(((tex[..., 6:9] + 1) / 2).numpy()[::-1])
        save_png(os.path.join(out_dir, "texture_n.png"), nrm)
    uvs, uvf = material.uvs.cpu(), material.uv_faces.cpu()
    obj = Mesh(verts.detach().float().cpu(), faces.cpu(), uvs=uvs, uv_faces=uvf)
    atomic_write_text(os.path.join(out_dir, "mesh.obj"), obj_text(obj, "mesh.mtl"))
    # illum 2: diffuse + specular; Ks/map_Ks hold the ORM texture (nvdiffrec's convention)
    atomic_write_text(os.path.join(out_dir, "mesh.mtl"), "newmtl material0\nillum 2\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\n"
                "map_Kd texture_kd.png\nmap_Ks texture_ks.png\n" + ("norm texture_n.png\n" if nrm is not None else ""))
    pos_uv = _uv_vertices(verts, faces, uvf, uvs.shape[0]).numpy()
    _write_glb(os.path.join(out_dir, "mesh.glb"), pos_uv, uvf.numpy(), uvs=uvs.numpy(), kd=kd, ks=ks, nrm=nrm)
    written.update(mtl="mesh.mtl", texture_kd="texture_kd.png", texture_ks="texture_ks.png")
    if nrm is not None:
        written["texture_n"] = "texture_n.png"
    return {**written, **save_light(out_dir, light)}


def load_textured_obj(path: str) -> Tuple[torch.Tensor, torch.Tensor, TexturedMaterial]:
    """Read a ``mesh.obj`` written by :func:`export_mesh` (with textures) for our renderer.

    Returns:
        verts ``[V, 3]``, faces ``[F, 3]`` int32 and a :class:`TexturedMaterial` (kd decoded from sRGB,
        ks = (1 − R, G, B) of ``texture_ks.png`` next to the OBJ, a missing ks texture means (0, 1, 0);
        ``texture_n.png``, when present, becomes the normal map).
    """
    import imageio.v3 as iio

    mesh = load_obj(path)
    if mesh.uvs is None or mesh.texture is None:
        raise ValueError(f"path: {path!r} has no UVs or no map_Kd texture (expected a textured OBJ)")
    kd = srgb_to_linear(mesh.texture.float())
    ks_path = os.path.join(os.path.dirname(os.path.abspath(path)), "texture_ks.png")
    if os.path.isfile(ks_path):
        orm = torch.from_numpy(np.ascontiguousarray(np.asarray(iio.imread(ks_path))[::-1, :, :3])).float() / 255.0
        ks = torch.cat([1 - orm[..., 0:1], orm[..., 1:3]], -1)
    else:
        ks = torch.tensor([0.0, 1.0, 0.0]).expand(kd.shape[0], kd.shape[1], 3)
    if ks.shape[:2] != kd.shape[:2]:
        raise ValueError(f"{ks_path}: expected size {tuple(kd.shape[:2])} (as texture_kd), got {tuple(ks.shape[:2])}")
    n_path = os.path.join(os.path.dirname(os.path.abspath(path)), "texture_n.png")
    parts = [kd, ks]
    if os.path.isfile(n_path):
        n8 = torch.from_numpy(np.ascontiguousarray(np.asarray(iio.imread(n_path))[::-1, :, :3])).float() / 255.0
        parts.append(n8 * 2 - 1)
    tex = torch.cat(parts, -1)[None]
    mask = torch.ones(kd.shape[:2], dtype=torch.bool)
    return mesh.verts, mesh.faces, TexturedMaterial(tex, mesh.uvs, mesh.uv_faces, mask)


def load_light(out_dir: str):
    """The light saved by :func:`save_light` in ``out_dir``: an ``EnvironmentLight`` (``light.npy``)
    or a ``SimpleLight`` (``light.json``)."""
    npy, js = os.path.join(out_dir, "light.npy"), os.path.join(out_dir, "light.json")
    if os.path.isfile(npy):
        from taichi_dr.render.light import EnvironmentLight

        img = torch.from_numpy(np.load(npy)).float()
        size = 1 << max(2, int(round(np.log2(max(img.shape[0] // 2, 4)))))
        return EnvironmentLight.from_latlong(img, resolution=size)
    if os.path.isfile(js):
        from taichi_dr.render.pipeline import SimpleLight

        with open(js, encoding="utf-8") as fh:
            d = json.load(fh)
        return SimpleLight(torch.tensor(d["direction"]), torch.tensor(d["color"]),
                           torch.tensor(d["ambient"]) if "ambient" in d else None)
    raise ValueError(f"out_dir: no light.npy or light.json in {out_dir!r}")

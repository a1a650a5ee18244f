"""Triangle meshes and Wavefront OBJ input/output.

OBJ support: ``v x y z [r g b]`` (vertex colours, a common extension), ``vt``, ``vn``, faces
``f a``, ``f a/b``, ``f a//c``, ``f a/b/c`` with negative (relative) indices, polygons triangulated
as fans, ``mtllib`` + ``usemtl`` with a ``map_Kd`` texture. Files are written atomically (temp file,
then rename) so an interrupted save never leaves half a mesh.
"""
import dataclasses
import math
import os
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["Mesh", "unique_edges", "spatial_order", "load_obj", "save_obj", "obj_text", "read_texture", "atomic_write", "atomic_write_text"]

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class Mesh:
    """A triangle mesh.

    Attributes:
        verts: ``[V, 3]`` float32 positions.
        faces: ``[F, 3]`` int32 vertex indices.
        colors: optional ``[V, 3]`` float32 vertex colours in [0, 1].
        normals: optional ``[Vn, 3]`` float32 normals, indexed by ``normal_faces [F, 3]``.
        uvs: optional ``[Vt, 2]`` float32 texture coordinates, indexed by ``uv_faces [F, 3]``.
        texture: optional ``[Ht, Wt, 3]`` float32 kd texture (rows bottom-up, like all our images).
    """

    verts: torch.Tensor
    faces: torch.Tensor
    colors: Optional[torch.Tensor] = None
    normals: Optional[torch.Tensor] = None
    normal_faces: Optional[torch.Tensor] = None
    uvs: Optional[torch.Tensor] = None
    uv_faces: Optional[torch.Tensor] = None
    texture: Optional[torch.Tensor] = None

    def edges(self) -> torch.Tensor:
        """Unique undirected edges ``[E, 2]`` int64 with i < j."""
        return unique_edges(self.faces)[0]

    def bbox(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.verts.min(0)[0], self.verts.max(0)[0]

    def normalized(self, extent: float = 1.0) -> "Mesh":
        """Copy centred at the origin and scaled so its largest side is ``2·extent``."""
        lo, hi = self.bbox()
        c, s = (lo + hi) / 2, float((hi - lo).max()) / 2
        return dataclasses.replace(self, verts=(self.verts - c) * (extent / max(s, 1e-12)))


def unique_edges(faces: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The undirected edges of a triangle list, each once, and which one every face edge is.

    Args:
        faces: ``[F, 3]`` int vertex indices (not checked here: callers validate their inputs).

    Returns:
        ``(edges [E, 2], inverse [3F])``, both int64 on ``faces``' device: ``edges`` sorted
        lexicographically with ``i < j`` in each row; ``inverse[k * F + t]`` is the row of face
        ``t``'s ``k``-th edge, the edges taken as ``(v0, v1), (v1, v2), (v2, v0)``.
    """
    f = faces.long()
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
    edges, inverse = torch.unique(e, dim=0, return_inverse=True)
    return edges, inverse.reshape(-1)


def _morton(p: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """``[P]`` int64 Z-order (Morton) codes of ``[P, 3]`` points on a 2^bits lattice over their box."""
    lo, hi = p.min(0).values, p.max(0).values
    q = ((p - lo) / (hi - lo).clamp(min=1e-30) * (2 ** bits - 1)).long()
    code = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
    for b in range(bits):
        for ax in range(3):
            code |= ((q[:, ax] >> b) & 1) << (3 * b + ax)
    return code


def spatial_order(verts: torch.Tensor, faces: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same mesh with its vertices and faces renumbered along a Z-order curve through space.

    Why: the rasterizer, interpolation and antialiasing read each face's three vertices and write
    the pixels it covers, in face order. When consecutive faces lie far apart (midpoint subdivision
    lists every face's first child, then every second child, ...; collapses and compaction shuffle
    further) every read and z-buffer write misses the caches: on a 137k-face refinement mesh at
    256² (four views, 2-core CPU) rasterizing took 49-52 ms as numbered and 14 ms in this order, and
    rasterize + interpolate + antialias forward and backward 111 ms against 40 ms.

    Args:
        verts: ``[V, 3]`` float positions; faces: ``[F, 3]`` int indices into ``verts``.

    Returns:
        ``(verts [V, 3], faces [F, 3], vert_order [V], face_order [F])``: new vertex ``i`` is old vertex
        ``vert_order[i]`` (carry per-vertex data as ``x[vert_order]``), new face ``j`` is old face
        ``face_order[j]`` with its indices renumbered, corners in the same order (per-face data:
        ``y[face_order]``). Faces sort by the code of their centroid; ties keep the input order.
        dtypes and devices as the inputs; orders int64.
    """
    if verts.dim() != 2 or verts.shape[-1] != 3:
        raise ValueError(f"verts: expected shape [V, 3], got {list(verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    V = verts.shape[0]
    if V == 0 or faces.shape[0] == 0:
        idx = lambda n: torch.arange(n, device=verts.device)  # noqa: E731
        return verts, faces, idx(V), idx(faces.shape[0])
    p = verts.detach().to(torch.float64)
    vert_order = torch.sort(_morton(p), stable=True).indices
    new_id = torch.empty_like(vert_order)
    new_id[vert_order] = torch.arange(V, device=verts.device)
    f = new_id[faces.long()]
    face_order = torch.sort(_morton(p[vert_order][f].mean(1)), stable=True).indices
    return verts[vert_order], f[face_order].to(faces.dtype), vert_order, face_order


def atomic_write(path: PathLike, write) -> None:
    """Call ``write(tmp_path)`` then atomically rename the result to ``path``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    atomic_write(path, write)


def _index(tok: str, count: int, path: str, lineno: int) -> int:
    i = int(tok)
    i = i - 1 if i > 0 else count + i
    if not 0 <= i < count:
        raise ValueError(f"{path}:{lineno}: index {tok} out of range (have {count})")
    return i


def load_obj(path: PathLike) -> Mesh:
    """Load a Wavefront OBJ as a :class:`Mesh` (see the module docstring for what is supported).

    Raises:
        ValueError: missing file, unparsable line, NaN/Inf coordinate, index out of range, or no
            faces (naming the file and line).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory (expected a Wavefront OBJ file)")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (expected a Wavefront OBJ file)")
    v, vc, vt, vn, fv, ft, fn = [], [], [], [], [], [], []
    mtllib = None
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                tag = parts[0]
                if tag in ("v", "vt", "vn") and not all(math.isfinite(float(x)) for x in parts[1:]):
                    raise ValueError("expected finite numbers, got NaN/Inf")
                if tag == "v":
                    v.append([float(x) for x in parts[1:4]])
                    if len(v[-1]) != 3:
                        raise ValueError("expected 3 coordinates")
                    if len(parts) >= 7:
                        vc.append([float(x) for x in parts[4:7]])
                elif tag == "vt":
                    vt.append([float(x) for x in parts[1:3]])
                elif tag == "vn":
                    vn.append([float(x) for x in parts[1:4]])
                elif tag == "f":
                    corners = [c.split("/") for c in parts[1:]]
                    if len(corners) < 3:
                        raise ValueError("a face needs at least 3 corners")
                    iv = [_index(c[0], len(v), path, lineno) for c in corners]
                    it = [_index(c[1], len(vt), path, lineno) if len(c) > 1 and c[1] else -1 for c in corners]
                    inn = [_index(c[2], len(vn), path, lineno) if len(c) > 2 and c[2] else -1 for c in corners]
                    for k in range(1, len(corners) - 1):  # fan triangulation
                        fv.append([iv[0], iv[k], iv[k + 1]])
                        ft.append([it[0], it[k], it[k + 1]])
                        fn.append([inn[0], inn[k], inn[k + 1]])
                elif tag == "mtllib":
                    mtllib = " ".join(parts[1:])
            except ValueError as e:
                msg = str(e)
                raise ValueError(msg if msg.startswith(path) else f"{path}:{lineno}: cannot parse {line.strip()!r} ({e})") from None
    if not fv:
        raise ValueError(f"{path}: no faces found")
    mesh = Mesh(torch.tensor(v, dtype=torch.float32), torch.tensor(fv, dtype=torch.int32))
    if vc and len(vc) == len(v):
        mesh.colors = torch.tensor(vc, dtype=torch.float32)
    ft_t, fn_t = torch.tensor(ft), torch.tensor(fn)
    if vt and bool((ft_t >= 0).all()):
        mesh.uvs, mesh.uv_faces = torch.tensor(vt, dtype=torch.float32), ft_t.to(torch.int32)
    if vn and bool((fn_t >= 0).all()):
        mesh.normals, mesh.normal_faces = torch.tensor(vn, dtype=torch.float32), fn_t.to(torch.int32)
    if mtllib:
        mesh.texture = _load_mtl_texture(os.path.join(os.path.dirname(path), mtllib))
    return mesh


def _load_mtl_texture(mtl_path: str) -> Optional[torch.Tensor]:
    if not os.path.isfile(mtl_path):
        return None
    with open(mtl_path, "r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if parts and parts[0] == "map_Kd":
                return read_texture(os.path.join(os.path.dirname(mtl_path), " ".join(parts[1:])))
    return None


def read_texture(path: str) -> torch.Tensor:
    """An 8- or 16-bit image file as a kd texture ``[H, W, 3]`` float32 in [0, 1], values as stored
    (sRGB-encoded for PNG albedo maps), rows bottom-up like all our images (row 0 is v = 0).

    Raises:
        ValueError: the file cannot be read as an image with at least 3 channels.
    """
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read texture ({e})") from None
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"{path}: expected an RGB or RGBA image, got array of shape {list(img.shape)}")
    img = img[..., :3].astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    return torch.from_numpy(np.ascontiguousarray(img[::-1]))  # bottom-up


def obj_text(mesh: Mesh, mtllib: Optional[str] = None) -> str:
    """The Wavefront OBJ text of ``mesh``: ``v`` (with ``r g b`` when it has colours), ``vt``, ``vn``
    and ``f`` lines (1-based ``v/vt/vn`` indices); with ``mtllib`` (an MTL file name) the faces use its
    ``material0``. The one OBJ formatter: :func:`save_obj` and the reconstruction's export use it."""
    lines = [f"# taichi_dr mesh: {mesh.verts.shape[0]} vertices, {mesh.faces.shape[0]} faces"]
    if mtllib is not None:
        lines.append(f"mtllib {mtllib}")
    # positions with 9 significant digits, which give every float32 back exactly: with 7 a sliver's
    # one pixel centre on its edge could fall outside it in the file while the mesh in memory owns
    # it (the cleanup checks pixel ownership in memory; a scorer rasterizes the file; docs/08 round 30)
    V = mesh.verts.detach().cpu().numpy()
    if mesh.colors is not None:
        C = mesh.colors.detach().cpu().numpy()
        lines += [f"v {a:.9g} {b:.9g} {c:.9g} {r:.5g} {g:.5g} {bb:.5g}" for (a, b, c), (r, g, bb) in zip(V, C)]
    else:
        lines += [f"v {a:.9g} {b:.9g} {c:.9g}" for a, b, c in V]
    has_t, has_n = mesh.uvs is not None and mesh.uv_faces is not None, mesh.normals is not None and mesh.normal_faces is not None
    if has_t:
        lines += [f"vt {a:.7g} {b:.7g}" for a, b in mesh.uvs.detach().cpu().numpy()]
    if has_n:
        lines += [f"vn {a:.7g} {b:.7g} {c:.7g}" for a, b, c in mesh.normals.detach().cpu().numpy()]
    if mtllib is not None:
        lines.append("usemtl material0")
    F = mesh.faces.cpu().numpy() + 1
    Ft = mesh.uv_faces.cpu().numpy() + 1 if has_t else None
    Fn = mesh.normal_faces.cpu().numpy() + 1 if has_n else None
    for i, f in enumerate(F):
        if has_t and has_n:
            lines.append("f " + " ".join(f"{f[k]}/{Ft[i][k]}/{Fn[i][k]}" for k in range(3)))
        elif has_t:
            lines.append("f " + " ".join(f"{f[k]}/{Ft[i][k]}" for k in range(3)))
        elif has_n:
            lines.append("f " + " ".join(f"{f[k]}//{Fn[i][k]}" for k in range(3)))
        else:
            lines.append(f"f {f[0]} {f[1]} {f[2]}")
    return "\n".join(lines) + "\n"


def save_obj(path: PathLike, mesh: Mesh) -> None:
    """Write ``mesh`` as OBJ (+ MTL and ``<name>_kd.png`` when it has a texture), atomically."""
    path = os.fspath(path)
    base = os.path.splitext(os.path.basename(path))[0]
    text = obj_text(mesh, f"{base}.mtl" if mesh.texture is not None else None)
    if mesh.texture is not None:
        import imageio.v3 as iio

        folder = os.path.dirname(os.path.abspath(path))
        tex = (np.clip(mesh.texture.detach().cpu().numpy()[::-1], 0, 1) * 255 + 0.5).astype(np.uint8)
        atomic_write(os.path.join(folder, f"{base}_kd.png"), lambda tmp: iio.imwrite(tmp, tex, extension=".png"))
        mtl = f"newmtl material0\nKd 1 1 1\nmap_Kd {base}_kd.png\n"
        atomic_write_text(os.path.join(folder, f"{base}.mtl"), mtl)
    atomic_write_text(path, text)

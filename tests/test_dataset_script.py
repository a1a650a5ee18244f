"""scripts/make_mitsuba_dataset.py without Mitsuba: the mesh preparation and the baked texture.

Mitsuba is not a dependency, so the renders are not tested here; what decides whether a dataset
matches its ``gt.obj`` is: the OBJ's placement (centred, scaled, turned Z-up), smooth normals that
point out, and a texture whose UV lookup gives back the procedural albedo at the surface point.
"""
import importlib.util
import os

import numpy as np
import pytest
import torch

from taichi_dr.losses import srgb_to_linear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_mitsuba_dataset",
                                                  os.path.join(ROOT, "scripts", "make_mitsuba_dataset.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _box_obj(path, sx, sy, sz, offset=(5.0, -2.0, 1.0)):
    corners = np.array([[x, y, z] for x in (0, sx) for y in (0, sy) for z in (0, sz)], dtype=float) + offset
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    with open(path, "w") as fh:
        fh.writelines(f"v {x} {y} {z}\n" for x, y, z in corners)
        for a, b, c, d in quads:
            fh.write(f"f {a + 1} {b + 1} {c + 1}\nf {a + 1} {c + 1} {d + 1}\n")


def test_an_obj_is_centred_scaled_and_turned_z_up(script, tmp_path):
    path = str(tmp_path / "box.obj")
    _box_obj(path, 1.0, 3.0, 2.0)  # longest along the file's y
    for up, extent in (("z", (1.0, 3.0, 2.0)), ("y", (1.0, 2.0, 3.0))):
        mesh = script.load_source_mesh(path, size=1.6, up=up)
        lo, hi = mesh.verts.min(0)[0], mesh.verts.max(0)[0]
        assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-6)
        assert torch.allclose(hi - lo, torch.tensor(extent) * 1.6 / 3.0, atol=1e-5), (up, hi - lo)
    # turned, not mirrored: the file's +y becomes +z (a right-handed rotation keeps the winding)
    mesh = script.load_source_mesh(path, size=1.6, up="y")
    ref = script.load_source_mesh(path, size=1.6, up="z")
    assert _volume(mesh) == pytest.approx(_volume(ref), rel=1e-6)


def _volume(mesh) -> float:
    """Signed volume Σ v0 · (v1 × v2) / 6 (positive when the faces wind outward); written apart from
    the script's own sign test in load_source_mesh, so that these tests check it."""
    v, f = mesh.verts.double(), mesh.faces.long()
    return float((v[f[:, 0]] * torch.cross(v[f[:, 1]], v[f[:, 2]], dim=1)).sum()) / 6


def test_a_closed_obj_wound_inward_is_turned_outward(script, tmp_path):
    """A closed mesh whose faces wind inward (negative volume) would render black in Mitsuba (one-sided
    diffuse): load_source_mesh turns it outward; an open one (no inside to tell by) stays as it is."""
    out, inward = str(tmp_path / "out.obj"), str(tmp_path / "in.obj")
    _box_obj(out, 1.0, 3.0, 2.0)
    with open(out) as fh, open(inward, "w") as g:  # the same box, every face reversed
        for line in fh:
            p = line.split()
            g.write(f"f {p[1]} {p[3]} {p[2]}\n" if p[0] == "f" else line)
    ref = script.load_source_mesh(out)
    assert _volume(ref) > 0
    mesh = script.load_source_mesh(inward)
    assert _volume(mesh) == pytest.approx(_volume(ref), rel=1e-6)
    with open(inward) as fh, open(str(tmp_path / "open.obj"), "w") as g:  # an open box (one face less)
        g.writelines(fh.readlines()[:-1])
    assert _volume(script.load_source_mesh(str(tmp_path / "open.obj"))) < 0


def _sphere(script, res=20):
    v, f, n = script.shape_mesh(lambda p: p.norm(dim=-1) - 0.71, res)
    from taichi_dr.mesh import Mesh

    return Mesh(torch.from_numpy(v).float(), torch.from_numpy(f).int()), n


def test_the_upper_layout_keeps_every_camera_above_the_object(script):
    for layout, lowest, highest in (("sphere", -45.0, 55.0), ("upper", 3.0, 65.0)):
        c2w = np.stack(script.train_cameras(24, layout))
        eye = c2w[:, :3, 3]
        elevation = np.degrees(np.arcsin(eye[:, 2] / np.linalg.norm(eye, axis=1)))
        assert np.allclose(np.linalg.norm(eye, axis=1), script.RADIUS)
        assert elevation.min() < lowest if layout == "sphere" else elevation.min() > lowest  # below / none below
        assert elevation.max() > highest
        # each looks at the origin: its -Z axis points from the eye to the centre
        assert np.allclose(-c2w[:, :3, 2], -eye / np.linalg.norm(eye, axis=1, keepdims=True), atol=1e-6)
        assert len(np.unique(np.round(eye, 6), axis=0)) == 24
    with pytest.raises(ValueError, match="layout"):
        script.train_cameras(24, "lower")


def test_the_sky_map_puts_the_sun_where_mitsuba_will_look_for_it(script):
    """``--light sky``: Mitsuba's envmap reads pixel (u, v) for the map-frame direction with
    atan2(x, −z) = 2πu and acos(y) = πv; the map's to_world turns that frame Z-up. So the brightest
    pixel, taken through that mapping and SKY_TO_WORLD, must be the sun's world direction, and the
    sun disc must deliver its stated irradiance."""
    width = 1024
    env = script.sky_envmap(width).astype(np.float64)
    h = width // 2
    assert env.shape == (h, width, 3) and env.min() > 0.0
    # pixel centres -> the map frame as Mitsuba reads it (checked against its inverse) -> world
    th = (np.arange(h) + 0.5) / h * np.pi
    ph = (np.arange(width) + 0.5) / width * 2.0 * np.pi
    T, P = np.meshgrid(th, ph, indexing="ij")
    local = np.stack([np.sin(T) * np.sin(P), np.cos(T), -np.sin(T) * np.cos(P)], -1)
    assert np.allclose(np.arctan2(local[..., 0], -local[..., 2]) % (2 * np.pi), P)
    assert np.allclose(np.arccos(np.clip(local[..., 1], -1, 1)), T)
    dirs = local @ script.SKY_TO_WORLD[:3, :3].T
    d_omega = (np.pi / h) * (2.0 * np.pi / width) * np.sin(T)  # per pixel
    # the sun: the centroid of the brightest pixels
    bright = env.sum(2) > 0.5 * env.sum(2).max()
    centroid = (dirs[bright] * d_omega[bright][:, None]).sum(0)
    centroid /= np.linalg.norm(centroid)
    el, az = np.radians(script.SUN_ELEVATION_DEG), np.radians(script.SUN_AZIMUTH_DEG)
    sun = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    assert np.degrees(np.arccos(np.clip(centroid @ sun, -1.0, 1.0))) < 0.5
    # the disc's irradiance at normal incidence: ∫ (L − sky) cos over the map's pixels near the sun
    cos = dirs @ sun
    near = cos > np.cos(np.radians(script.SUN_RADIUS_DEG + 2.0))
    ring = (cos > np.cos(np.radians(script.SUN_RADIUS_DEG + 6.0))) & ~near  # the sky around the sun
    excess = env.mean(2) - env.mean(2)[ring].mean()
    irradiance = float((np.clip(excess, 0, None) * cos * d_omega)[near].sum())
    assert abs(irradiance / script.SUN_IRRADIANCE - 1.0) < 0.1, irradiance
    # sky above the horizon, a darker ground below it
    up, down = env[: h // 4].mean(), env[3 * h // 4:].mean()
    assert down < 0.5 * up


def test_the_normals_given_to_mitsuba_are_smooth_and_point_out(script):
    mesh, analytic = _sphere(script)
    n = script.vertex_normals(mesh.verts.double(), mesh.faces).numpy()  # as main() passes them
    radial = mesh.verts.double().numpy() / np.linalg.norm(mesh.verts.double().numpy(), axis=1, keepdims=True)
    used = np.unique(mesh.faces.long().numpy())  # marching tets may leave a vertex no face uses
    cos = (n * radial).sum(1)[used]
    assert cos.min() > 0.98 and np.median(cos) > 0.999


def test_the_baked_texture_gives_back_the_procedural_albedo(script):
    mesh, _ = _sphere(script)
    tex_mesh = script.baked_dots_texture(mesh, resolution=512)
    R = tex_mesh.texture.shape[0]
    g = torch.Generator().manual_seed(0)
    faces, uvf, uvs, v = tex_mesh.faces.long(), tex_mesh.uv_faces.long(), tex_mesh.uvs.double(), tex_mesh.verts.double()
    k = torch.randint(0, faces.shape[0], (4000,), generator=g)
    b = torch.rand(4000, 2, generator=g, dtype=torch.float64)
    b = torch.where((b.sum(1) > 1).unsqueeze(1), 1 - b, b)
    w = torch.cat([1 - b.sum(1, keepdim=True), b], 1)  # barycentrics
    p = (w.unsqueeze(2) * v[faces[k]]).sum(1)
    uv = (w.unsqueeze(2) * uvs[uvf[k]]).sum(1)
    want = script.dots_albedo(p.float()).double()

    def lookup(uv):  # nearest texel, rows bottom-up: row 0 is v = 0
        ix = (uv[:, 0] * R).long().clamp(0, R - 1)
        iy = (uv[:, 1] * R).long().clamp(0, R - 1)
        return srgb_to_linear(tex_mesh.texture[iy, ix]).double()

    err = (lookup(uv) - want).abs().max(1)[0]
    flipped = (lookup(torch.stack([uv[:, 0], 1 - uv[:, 1]], 1)) - want).abs().max(1)[0]
    assert float(err.median()) < 0.01 and float((err < 0.05).double().mean()) > 0.95, float(err.median())
    assert float(flipped.median()) > 5 * float(err.median()) + 0.02  # the check can tell a flipped texture
    # the albedo has texture to match (dots) and plain parts, inside (0, 1)
    assert 0.0 < float(want.min()) and float(want.max()) < 1.0 and float(want.std(0).mean()) > 0.03


@pytest.mark.parametrize("argv, message", [
    (["--texture", "x.png"], "--texture: only with --obj"),
    (["--obj", "/nonexistent/mesh.obj"], "--obj: no such file"),
    (["--spp", "10"], "--spp: expected a square number"),
])
def test_bad_arguments_exit_2_with_one_line(script, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        script.main(["--out", str(tmp_path / "out")] + argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_texture_needs_texture_coordinates(script, tmp_path, capsys):
    path = str(tmp_path / "box.obj")
    _box_obj(path, 1.0, 1.0, 1.0)
    png = tmp_path / "t.png"
    import imageio.v3 as iio

    iio.imwrite(png, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(SystemExit) as e:
        script.main(["--out", str(tmp_path / "out"), "--obj", path, "--texture", str(png)])
    assert e.value.code == 2 and "has no texture coordinates" in capsys.readouterr().err


def test_an_unreadable_texture_exits_2_with_one_line(script, tmp_path, capsys):
    path = str(tmp_path / "box.obj")
    with open(path, "w") as fh:  # a quad with texture coordinates
        fh.write("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n")
    bad = tmp_path / "t.png"
    bad.write_text("not an image")
    with pytest.raises(SystemExit) as e:
        script.main(["--out", str(tmp_path / "out"), "--obj", path, "--texture", str(bad)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--texture:" in err and "cannot read texture" in err


def test_render_info_records_the_command_versions_and_source(script, tmp_path):
    """render_info.json ties a dataset to what made its pixels: the command, the settings, the
    package versions (None for one not installed) and the source file's SHA-256; written atomically."""
    import hashlib
    import json

    src = tmp_path / "box.obj"
    _box_obj(str(src), 1.0, 1.0, 1.0)
    argv = ["--out", str(tmp_path / "d"), "--obj", str(src), "--up", "y"]
    args = script.argparse.Namespace(out=str(tmp_path / "d"), obj=str(src), up="y", res=128)
    script.write_render_info(str(tmp_path / "d"), args, argv, source=str(src))
    info = json.loads((tmp_path / "d" / "render_info.json").read_text())
    assert info["command"][1:] == argv and info["settings"]["up"] == "y" and info["settings"]["res"] == 128
    assert info["versions"]["numpy"] == np.__version__ and info["versions"]["torch"] == torch.__version__
    assert set(info["versions"]) >= {"mitsuba", "drjit", "xatlas", "taichi", "taichi-dr"}
    assert info["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["render_info.json"]  # no temporary left

"""texture(): NumPy references, mip behaviour, cube faces and seams, float64 gradients, bad input."""
import numpy as np
import pytest
import torch

from taichi_dr import texture, texture_construct_mip
from taichi_dr.render.texture import cube_face_coords

GEN = torch.Generator().manual_seed(0)
TEX = torch.rand(1, 5, 7, 3, dtype=torch.float64, generator=GEN)
UV = torch.rand(1, 4, 6, 2, dtype=torch.float64, generator=GEN) * 1.6 - 0.3  # also outside [0, 1]


def numpy_bilinear(tex, uv, mode):
    t = tex[0].numpy()
    H, W = t.shape[:2]
    out = np.zeros(uv.shape[1:3] + (t.shape[2],))
    for y in range(uv.shape[1]):
        for x in range(uv.shape[2]):
            px, py = uv[0, y, x, 0].item() * W - 0.5, uv[0, y, x, 1].item() * H - 0.5
            x0, y0 = int(np.floor(px)), int(np.floor(py))
            fx, fy = px - x0, py - y0
            for dy in (0, 1):
                for dx in (0, 1):
                    i, j = x0 + dx, y0 + dy
                    if mode == "wrap":
                        i, j = i % W, j % H
                    else:
                        i, j = min(max(i, 0), W - 1), min(max(j, 0), H - 1)
                    out[y, x] += (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * t[j, i]
    return out


@pytest.mark.parametrize("mode", ["wrap", "clamp"])
def test_bilinear_matches_numpy(mode):
    out = texture(TEX, UV, filter_mode="linear", boundary_mode=mode)
    assert np.abs(out[0].numpy() - numpy_bilinear(TEX, UV, mode)).max() < 1e-12


def test_nearest_texel_centres_and_zero_boundary():
    # sampling exactly at texel centres returns the texels
    ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(7.0), indexing="ij")
    uv = torch.stack([(xs + 0.5) / 7, (ys + 0.5) / 5], -1)[None].double()
    for fm in ("nearest", "linear"):
        assert torch.allclose(texture(TEX, uv, filter_mode=fm), TEX)
    far = torch.full((1, 1, 1, 2), 3.0, dtype=torch.float64)
    assert float(texture(TEX, far, filter_mode="linear", boundary_mode="zero").abs().max()) == 0.0


def test_trilinear_checkerboard_under_wide_footprint_is_its_mean():
    cb = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).double()[None, ..., None]
    uv = torch.rand(1, 8, 8, 2, dtype=torch.float64, generator=GEN)
    da = torch.zeros(1, 8, 8, 4, dtype=torch.float64)
    da[..., 0] = da[..., 3] = 0.5  # half the texture per pixel
    out = texture(cb, uv, da, filter_mode="linear-mipmap-linear")
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-9)
    sharp = texture(cb, uv, filter_mode="linear")  # no mips: aliasing, far from the mean
    assert float((sharp - 0.5).abs().max()) > 0.2


def test_non_power_of_two_mips_and_max_level():
    tex = torch.rand(1, 12, 20, 2, dtype=torch.float64, generator=GEN)
    mip = texture_construct_mip(tex)
    assert [tuple(l.shape[2:4]) for l in mip.levels] == [(12, 20), (6, 10), (3, 5), (1, 2), (1, 1)]
    assert torch.allclose(mip.levels[1][0, 0, 0, 0], tex[0, :2, :2].mean((0, 1)))
    assert len(texture_construct_mip(tex, max_mip_level=1).levels) == 2
    uv = torch.rand(1, 3, 3, 2, dtype=torch.float64, generator=GEN)
    bias = torch.full((1, 3, 3), 10.0, dtype=torch.float64)  # clamps to the last level: the mean
    out = texture(tex, uv, mip_level_bias=bias, mip=mip, filter_mode="linear-mipmap-linear")
    last = mip.levels[-1][0, 0, 0, 0]
    assert torch.allclose(out, last.expand_as(out))


def test_cube_axis_directions_hit_their_faces_and_seams_are_continuous():
    axes = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
    for i, d in enumerate(axes):
        c = torch.zeros(1, 6, 4, 4, 1, dtype=torch.float64)
        c[0, i] = 1
        assert float(texture(c, torch.tensor(d, dtype=torch.float64).view(1, 1, 1, 3), boundary_mode="cube")) == 1.0
    # a cube map of a smooth function of direction is reproduced everywhere, edges included
    S = 32
    f = lambda d: (d[..., :1] * 0.5 + d[..., 1:2] * 0.3 - d[..., 2:3] * 0.2)
    idx = (torch.arange(S, dtype=torch.float64) + 0.5) / S * 2 - 1
    tv, sv = torch.meshgrid(idx, idx, indexing="ij")
    faces = []
    one = torch.ones_like(sv)
    for fdir in ([one, -tv, -sv], [-one, -tv, sv], [sv, one, tv], [sv, -one, -tv], [sv, -tv, one], [-sv, -tv, -one]):
        d = torch.nn.functional.normalize(torch.stack(fdir, -1), dim=-1)
        faces.append(f(d))
    cube = torch.stack(faces)[None]
    dirs = torch.nn.functional.normalize(torch.randn(1, 64, 64, 3, dtype=torch.float64, generator=GEN), dim=-1)
    err = (texture(cube, dirs, filter_mode="linear", boundary_mode="cube") - f(dirs)).abs().max()
    assert float(err) < 5e-3  # clamping at face edges instead would give ~1.5e-2 there


def lod_reference(jac_st, Wt, Ht):
    """½·log2 of the largest eigenvalue of JᵀJ from torch's eigvalsh, J = d(texel x, y)/d(X, Y)."""
    J = jac_st.reshape(*jac_st.shape[:3], 2, 2) * torch.tensor([[Wt], [Ht]], dtype=jac_st.dtype)
    return 0.5 * torch.log2(torch.linalg.eigvalsh(J.transpose(-1, -2) @ J)[..., -1])


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("tex_batch", [1, 2])
def test_level_of_detail_matches_eigenvalue_reference(dtype, atol, tex_batch):
    # the kernel derives the level from uv_da; a bias equal to the reference level (and no uv_da)
    # must give the same lookup, with the bias adding to the footprint's level when both are given
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(tex_batch, 32, 16, 3, dtype=dtype, generator=g)
    uv = torch.rand(2, 5, 6, 2, dtype=dtype, generator=g)
    da = (torch.rand(2, 5, 6, 4, dtype=dtype, generator=g) - 0.5) * 0.5  # anisotropic: levels ~0-3
    bias = torch.rand(2, 5, 6, dtype=dtype, generator=g) - 0.5
    level = lod_reference(da.double(), 16, 32).to(dtype)
    for fm in ("linear-mipmap-nearest", "linear-mipmap-linear"):
        out = texture(tex, uv, da, filter_mode=fm)
        assert torch.allclose(out, texture(tex, uv, mip_level_bias=level, filter_mode=fm), atol=atol)
        out = texture(tex, uv, da, bias, filter_mode=fm)
        assert torch.allclose(out, texture(tex, uv, mip_level_bias=level + bias, filter_mode=fm), atol=atol)
    # a float64 footprint is accepted with a float32 texture (computed in the texture's dtype)
    assert torch.allclose(texture(tex, uv, da.double()), texture(tex, uv, da))


def test_cube_level_of_detail_matches_finite_difference_reference():
    S = 16
    cube = torch.rand(1, 6, S, S, 2, dtype=torch.float64, generator=GEN)
    dirs = torch.nn.functional.normalize(torch.randn(1, 4, 5, 3, dtype=torch.float64, generator=GEN), dim=-1)
    dda = (torch.rand(1, 4, 5, 6, dtype=torch.float64, generator=GEN) - 0.5) * 0.6
    # d(s, t)/d(direction) by central differences of the face projection (directions away from edges)
    eps, cols = 1e-6, []
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        cols.append((cube_face_coords(dirs + e)[1] - cube_face_coords(dirs - e)[1]) / (2 * eps))
    jac = torch.stack(cols, -1) @ dda.reshape(1, 4, 5, 3, 2)  # [..., (s, t), (X, Y)]
    level = lod_reference(jac, S, S)
    out = texture(cube, dirs, dda, filter_mode="linear-mipmap-linear", boundary_mode="cube")
    ref = texture(cube, dirs, mip_level_bias=level, filter_mode="linear-mipmap-linear", boundary_mode="cube")
    assert torch.allclose(out, ref, atol=1e-7)


@pytest.mark.parametrize("arg", ["uv", "uv_da", "mip_level_bias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_finite_2d_inputs_are_rejected(arg, dtype):
    # 2-D inputs are checked inside the lookup kernel: same error as the other ops' input checks
    inputs = dict(uv=UV.to(dtype), uv_da=torch.full((1, 4, 6, 4), 0.05, dtype=dtype),
                  mip_level_bias=torch.zeros(1, 4, 6, dtype=dtype))
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = {k: v.clone() for k, v in inputs.items()}
        x[arg].view(-1)[7] = bad
        with pytest.raises(ValueError, match=rf"{arg}: expected finite values, got 1 NaN/Inf entries"):
            texture(TEX.to(dtype), x["uv"], x["uv_da"], x["mip_level_bias"], filter_mode="linear-mipmap-linear")
    uv = inputs["uv"].clone()
    uv[0, 1, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="uv: expected finite"):
        texture(TEX.to(dtype), uv, filter_mode="nearest", boundary_mode="zero")
    dirs = torch.ones(1, 2, 2, 3, dtype=dtype)
    dirs[0, 1, 1, 2] = float("inf")
    with pytest.raises(ValueError, match="uv: expected finite"):
        texture(torch.zeros(1, 6, 4, 4, 1, dtype=dtype), dirs, boundary_mode="cube")


def test_huge_wrapped_coordinates_stay_inside_the_texture():
    # past 2^24 texels the wrapped texel is arbitrary, but it must be a texel of this texture
    uv = torch.tensor([1e7, 3e9, -3e9, 1e30, -1e30], dtype=torch.float64).view(1, 1, 5, 1).repeat(1, 1, 1, 2)
    for fm in ("nearest", "linear"):
        out = texture(TEX, uv, filter_mode=fm, boundary_mode="wrap")
        assert bool(((out >= TEX.min()) & (out <= TEX.max())).all())


def test_cube_face_coords_are_in_unit_square():
    d = torch.randn(1000, 3, dtype=torch.float64, generator=GEN)
    face, st = cube_face_coords(d)
    assert bool(((st >= 0) & (st <= 1)).all()) and set(face.tolist()) == set(range(6))


def test_texture_bad_input():
    with pytest.raises(ValueError, match=r"uv: expected shape \[N, H, W, 2\]"):
        texture(TEX, torch.zeros(1, 2, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="filter_mode"):
        texture(TEX, UV, filter_mode="cubic")
    with pytest.raises(ValueError, match="boundary_mode"):
        texture(TEX, UV, boundary_mode="mirror")
    with pytest.raises(ValueError, match="square faces"):
        texture(torch.zeros(1, 6, 4, 5, 3), torch.zeros(1, 2, 2, 3), boundary_mode="cube")
    with pytest.raises(TypeError, match="uv: expected dtype"):
        texture(TEX, UV.float())
    with pytest.raises(ValueError, match="uv_da"):
        texture(TEX, UV, torch.zeros(1, 4, 6, 3, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["nearest", "linear", "linear-mipmap-linear"])
def test_nan_texel_is_rejected(mode):
    tex = torch.rand(1, 4, 4, 3)
    tex[0, 1, 2, 0] = float("nan")
    # texel centres: every texel is sampled
    g = (torch.arange(4, dtype=torch.float32) + 0.5) / 4
    uv = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1)[None].contiguous()
    kw = {"uv_da": torch.full((1, 4, 4, 4), 0.3)} if "mipmap" in mode else {}
    with pytest.raises(ValueError, match="tex: expected finite texels, got [1-9][0-9]* NaN/Inf"):
        texture(tex, uv, filter_mode=mode, **kw)
    tex[0, 1, 2, 0] = 0.5  # and a finite texture of the same shape passes
    assert torch.isfinite(texture(tex, uv, filter_mode=mode, **kw)).all()


@pytest.mark.parametrize("filter_mode", ["nearest", "linear-mipmap-linear"])
def test_parallel_atomic_adjoint_equals_the_serial_cpu_one(monkeypatch, filter_mode):
    """The CPU runs the texture adjoint on one thread with plain adds; a GPU runs the parallel loop
    with atomics. Forcing the parallel variant on the CPU must give the same gradients."""
    import taichi_dr.render.texture as tex_mod

    g = torch.Generator().manual_seed(5)
    tex = torch.rand(2, 16, 16, 3, generator=g, dtype=torch.float64)
    uv = torch.rand(2, 8, 8, 2, generator=g, dtype=torch.float64)
    da = torch.rand(2, 8, 8, 4, generator=g, dtype=torch.float64) * 0.2
    w = torch.rand(2, 8, 8, 3, generator=g, dtype=torch.float64)
    grads = []
    for arch in ("cpu", "cuda"):
        monkeypatch.setattr(tex_mod, "current_arch", lambda arch=arch: arch)
        t, u, d = (x.clone().requires_grad_(True) for x in (tex, uv, da))
        (texture(t, u, d, filter_mode=filter_mode, boundary_mode="wrap") * w).sum().backward()
        grads.append([x.grad for x in (t, u, d)])
    assert grads[0][0].abs().sum() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

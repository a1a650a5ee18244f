import subprocess
import sys

import pytest

import taichi_dr
from taichi_dr import runtime


def test_import_does_not_init_taichi():
    code = "import taichi_dr, sys; from taichi_dr import runtime; print(runtime.is_initialized(), 'taichi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_init_idempotent_and_switch_rejected():
    a = taichi_dr.init()
    assert taichi_dr.init() == a
    assert runtime.current_arch() == a
    other = "vulkan" if a != "vulkan" else "cpu"
    with pytest.raises(ValueError, match="already initialised"):
        taichi_dr.init(other)


def test_bad_arch_name():
    with pytest.raises(ValueError, match="arch"):
        runtime._resolve("tpu")


def test_public_names_resolve_lazily():
    assert "rasterize" in taichi_dr.__all__
    with pytest.raises(AttributeError):
        taichi_dr.no_such_name


def _run(code: str, **env) -> str:
    import os

    e = {k: v for k, v in os.environ.items() if k not in ("TI_ARCH",)}
    e.update(OMP_WAIT_POLICY="PASSIVE", THP_MEM_ALLOC_ENABLE="1")  # no speed advice in these tests
    e.update(env)
    e = {k: v for k, v in e.items() if v is not None}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Taichi prints a banner on import: keep only our lines
    return " ".join(line[2:] for line in proc.stdout.splitlines() if line.startswith("R "))


_TRIANGLE = """
import torch
pos = torch.tensor([[[-0.8, -0.8, 0.0, 1.0], [0.8, -0.8, 0.0, 1.0], [0.0, 0.8, 0.0, 1.0]]])
tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
"""


@pytest.mark.slow  # a fresh Python process (Taichi can be initialised once per process)
def test_host_runtime_is_used_not_reset():
    # the program initialises Taichi and owns a field; our ops must run on that runtime (one
    # warning: ti.init's default fast_math differs from ours) and leave the field valid
    code = """
import warnings
import taichi as ti
ti.init(arch=ti.cpu, log_level=ti.ERROR)
f = ti.field(ti.f32, shape=4)
f[1] = 2.5
""" + _TRIANGLE + """
import taichi_dr
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    rast, _ = taichi_dr.rasterize(pos, tri, (16, 16))
    img, _ = taichi_dr.interpolate(pos[0], rast, tri)
f[2] = 1.0
print("R", f[1], f[2], int((rast[..., 3] > 0).sum()) > 0, taichi_dr.runtime.current_arch())
msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
print("R", len(msgs), "fast_math=True" in msgs[0])
"""
    out = _run(code).split()
    assert out == ["2.5", "1.0", "True", "cpu", "1", "True"]


@pytest.mark.slow  # a fresh Python process (Taichi can be initialised once per process)
def test_host_runtime_with_our_settings_no_warning_and_no_switch():
    code = """
import warnings
import taichi as ti
ti.init(arch=ti.cpu, fast_math=False, log_level=ti.ERROR)
""" + _TRIANGLE + """
import taichi_dr
warnings.simplefilter("error", RuntimeWarning)
rast, _ = taichi_dr.rasterize(pos, tri, (8, 8))
try:
    taichi_dr.init("vulkan")
except ValueError as e:
    print("R", "refused" if "already initialised" in str(e) else e)
print("R", taichi_dr.init("cpu"))
"""
    assert _run(code).split() == ["refused", "cpu"]


@pytest.mark.slow  # a fresh Python process (Taichi can be initialised once per process)
def test_environment_untouched():
    # no variable set at import or by init; TI_ARCH is honoured by neither, but survives
    code = """
import os
before = dict(os.environ)
import taichi_dr
taichi_dr.init("cpu")
print("R", dict(os.environ) == before, os.environ.get("TI_ARCH"), "TI_SKIP_VERSION_CHECK" in os.environ)
"""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TI_SKIP_VERSION_CHECK"}
    env["TI_ARCH"] = "cpu"  # Taichi itself aborts on this value: we must hide it during our ti.init
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [line[2:] for line in proc.stdout.splitlines() if line.startswith("R ")]
    assert out == ["True cpu False"]


def test_device_contract():
    import torch

    from taichi_dr._checks import check_device

    assert check_device(a=torch.zeros(1), b=None) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"pos: expected a tensor on cpu .* got one on meta"):
        check_device(tri=torch.zeros(1), pos=torch.zeros(1, device="meta"))
    # every op checks before touching the data
    pos = torch.zeros(1, 3, 4, device="meta")
    tri = torch.zeros(1, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="pos: expected a tensor on cpu"):
        taichi_dr.rasterize(pos, tri, (4, 4))
    rast = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="attr: expected a tensor on cpu"):
        taichi_dr.interpolate(torch.zeros(3, 2, device="meta"), rast, tri)
    with pytest.raises(ValueError, match="color: expected a tensor on cpu"):
        taichi_dr.antialias(torch.zeros(1, 4, 4, 3, device="meta"), rast, torch.zeros(1, 3, 4), tri)
    with pytest.raises(ValueError, match="uv: expected a tensor on cpu"):
        taichi_dr.texture(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 2, device="meta"))
    with pytest.raises(ValueError, match="sdf: expected a tensor on cpu"):
        taichi_dr.marching_tets(torch.zeros(4, 3), torch.zeros(4, device="meta"), torch.tensor([[0, 1, 2, 3]]))


@pytest.mark.slow  # a fresh Python process (Taichi can be initialised once per process)
def test_speed_advice_is_one_warning_when_the_environment_lacks_it():
    code = """
import warnings
import torch
torch.set_num_threads(2)
import taichi_dr
""" + _TRIANGLE + """
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    for _ in range(2):
        taichi_dr.rasterize(pos, tri, (8, 8))
msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
print("R", len(msgs), "OMP_WAIT_POLICY=PASSIVE" in msgs[0])
"""
    assert _run(code, OMP_WAIT_POLICY=None) == "1 True"
    assert _run(code.replace("msgs[0]", "str(msgs)")) == "0 False"  # both set: silent

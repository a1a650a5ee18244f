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

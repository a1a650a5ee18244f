"""Shared pytest setup: CPU unless told otherwise, Taichi initialised once per session."""
import os

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
os.environ.setdefault("TAICHI_DR_ARCH", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _taichi_runtime():
    import taichi_dr

    taichi_dr.init()
    torch.set_num_threads(2)
    yield

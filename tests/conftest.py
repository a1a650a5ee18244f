"""Shared pytest setup: CPU unless told otherwise, Taichi initialised once per session; shared helpers."""
import json
import os
import shutil

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


@pytest.fixture
def scaled_copy():
    """``copy(root, dst, scale) -> dst``: a NeRF-synthetic dataset with the same images and the world
    ``scale`` times larger (every camera ``scale`` times farther from the origin)."""
    def copy(root, dst, scale: float) -> str:
        shutil.copytree(root, dst)
        for split in ("train", "test"):
            path = os.path.join(dst, f"transforms_{split}.json")
            with open(path) as fh:
                meta = json.load(fh)
            for fr in meta["frames"]:
                for row in fr["transform_matrix"][:3]:
                    row[3] *= scale
            with open(path, "w") as fh:
                json.dump(meta, fh)
        return str(dst)
    return copy

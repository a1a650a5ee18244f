"""CUDA against CPU: every op's forward outputs and gradients agree across Taichi backends.

One process can initialise Taichi with one arch only, so ``tests/cuda_cases.py`` runs in two
fresh processes (the CPU reference and the arch under test) and the saved arrays are compared
here. Skipped without a CUDA device. ``TAICHI_DR_TEST_ARCH=cpu`` runs the same comparison CPU
against CPU (a dry run of this machinery on machines without a GPU; ``scripts/gpu_check.sh``
uses it in ``GPU_CHECK_ARCH=cpu`` mode).

Tolerances: float64 runs must pick the same triangle at every pixel and agree to 1e-8 relative
(L2 over each array; atomic adds sum in a different order on each backend). float32 runs may
differ at a few pixels whose centre lies within rounding of an edge (the GPU may contract a·b + c
into one fused multiply-add), so they allow at most 0.2 % of differing triangle ids and then a
looser relative error.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cuda_cases import CASES  # noqa: E402

ARCH = os.environ.get("TAICHI_DR_TEST_ARCH", "cuda")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ARCH == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"),
]


def _start(arch: str, path: str) -> subprocess.Popen:
    env = dict(os.environ, TAICHI_DR_ARCH=arch)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, os.path.join(HERE, "cuda_cases.py"), path], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, arch: str, path: str) -> dict:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"cuda_cases.py on {arch} failed:\n{err[-4000:]}"
    if err.strip():
        print(f"[{arch}] stderr:\n{err[-4000:]}")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_vs_cpu")
    # both processes at once: the CPU reference compiles and runs while the GPU one does
    ref_p, got_p = str(d / "cpu.npz"), str(d / f"{ARCH}.npz")
    procs = [_start("cpu", ref_p), _start(ARCH, got_p)]
    ref, got = _finish(procs[0], "cpu", ref_p), _finish(procs[1], ARCH, got_p)
    assert str(got["__arch__"]) == ARCH, f"asked Taichi for {ARCH}, it ran on {got['__arch__']}"
    return ref, got


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_same_as_cpu(results, name, dtype):
    ref, got = results
    tag = f"{name}/{dtype}/"
    for r in (ref, got):
        err = r.get(tag + "__error__")
        assert err is None, f"{tag} raised on {'cpu' if r is ref else ARCH}: {err}"
    keys = sorted(k for k in ref if k.startswith(tag))
    assert keys and keys == sorted(k for k in got if k.startswith(tag))
    # pixels whose triangle differs between the backends (a pixel centre within rounding of an edge)
    ids_off, ids_total = 0, 0
    for k in keys:
        if k.split("/")[-1].startswith("rast"):
            ids_off += int((ref[k][..., 3] != got[k][..., 3]).sum())
            ids_total += ref[k][..., 3].size
    exact = dtype == "float64"
    if exact:
        assert ids_off == 0, f"{tag}: {ids_off} pixels show another triangle on {ARCH}"
    else:
        assert ids_off <= max(2, 0.002 * ids_total), f"{tag}: {ids_off} of {ids_total} pixels differ on {ARCH}"
    tol = 1e-8 if exact else (1e-4 if ids_off == 0 else 5e-2)
    report = []
    for k in keys:
        a, b = got[k], ref[k]
        assert a.shape == b.shape, f"{k}: shape {a.shape} on {ARCH}, {b.shape} on cpu"
        if a.dtype.kind in "iu":
            assert np.array_equal(a, b), f"{k}: integer outputs differ"
            continue
        e = _rel(a, b)
        report.append(f"{k.split('/')[-1]}={e:.1e}")
        assert e <= tol, f"{k}: relative L2 difference {e:.3e} > {tol:g} ({ids_off} differing pixel ids)"
    print(f"{tag} {ARCH} vs cpu: ids differing {ids_off}/{ids_total}; " + ", ".join(report))

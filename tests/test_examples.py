"""Every example runs start to finish at tiny settings (``TAICHI_DR_EXAMPLE_TINY=1``) and writes
the picture it announces. The examples' results at full settings are in examples/README.md."""
import os
import re
import runpy

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPTS = sorted(f for f in os.listdir(EXAMPLES) if re.match(r"\d\d_.*\.py$", f))
# each example's main() takes its sizes as arguments and the __main__ guard passes tiny ones when
# TAICHI_DR_EXAMPLE_TINY is set; 01 is already instant
NO_TINY_MODE_NEEDED = {"01_triangle.py"}
SLOW = {"08_reconstruct.py", "07_dmtet_fit.py", "04_fit_light_material.py"}


def test_every_example_has_a_tiny_mode():
    assert len(SCRIPTS) >= 8
    for name in SCRIPTS:
        if name not in NO_TINY_MODE_NEEDED:
            with open(os.path.join(EXAMPLES, name), encoding="utf-8") as fh:
                assert "TAICHI_DR_EXAMPLE_TINY" in fh.read(), f"{name}: add tiny settings to its __main__ guard"


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in SCRIPTS])
def test_example_runs_at_tiny_settings(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAICHI_DR_EXAMPLE_TINY", "1")
    monkeypatch.chdir(tmp_path)  # examples write under ./out/examples/
    runpy.run_path(os.path.join(EXAMPLES, name), run_name="__main__")
    out = capsys.readouterr().out
    written = re.findall(r"-> (out/examples/[\w./-]+)", out)
    assert written, f"{name} did not say what it wrote:\n{out}"
    path = written[0].rstrip(",.")
    assert os.path.exists(tmp_path / path), path
    assert os.path.getsize(tmp_path / path) > 0

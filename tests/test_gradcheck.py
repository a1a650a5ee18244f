"""Every finite-difference case of ``taichi_dr.gradcheck`` (what ``taichi-dr gradcheck`` runs), one
pytest case each: the cases are defined once, in ``taichi_dr/gradcheck/<area>.py``, not re-written
here or in the per-op test files."""
import pytest

from taichi_dr.gradcheck import all_cases, case_id, check_case, format_table

_CASES = all_cases()
# Each entry costs two forward calls; inputs with hundreds of entries (texture texels) are checked
# on a random subset of 96 (fixed seed) here, every entry by `taichi-dr gradcheck`.
_MAX_ENTRIES = 96
_SLOW = ("texture cube", "marching_tets")  # seconds each on a loaded 2-core CPU


def _param(case):
    slow = case.op.startswith(_SLOW)
    return pytest.param(case, id=case_id(case), marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("case", [_param(c) for c in _CASES])
def test_gradient_matches_finite_differences(case):
    err, ok, n = check_case(case, max_entries=_MAX_ENTRIES)
    assert n > 0
    assert ok, f"{case_id(case)}: max abs error {err:.3e} (atol {case.atol}, rtol {case.rtol})"


def test_every_area_contributes_and_ids_are_unique():
    ids = [case_id(c) for c in _CASES]
    assert len(ids) == len(set(ids))
    ops = {c.op.split(" ")[0] for c in _CASES}
    for op in ("rasterize", "interpolate", "antialias", "texture", "marching_tets", "image_loss"):
        assert op in ops, op


def test_table_ends_with_pass_total_line():
    text = format_table([("a", "x", 3, 1e-9, True), ("b", "y", 2, 0.5, False)])
    assert text.splitlines()[-1] == "1/2 cases passed; FAILED: b/y"
    assert sum("pass" in line or "FAIL" in line for line in text.splitlines()[2:-1]) == 2

"""docs/: every link and code reference resolves, and the figure script runs (reduced size)."""
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(f for f in os.listdir(DOCS) if f.endswith(".md"))


def test_docs_exist_in_pipeline_order():
    assert PAGES[0].startswith("01_") and "index.md" in PAGES and len(PAGES) >= 10


@pytest.mark.parametrize("page", PAGES)
def test_links_and_code_references_resolve(page):
    text = open(os.path.join(DOCS, page), encoding="utf-8").read()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if target.startswith("http"):
            continue
        assert os.path.exists(os.path.normpath(os.path.join(DOCS, target))), f"{page}: broken link {target}"
    # every `name` quoted next to a source link must exist in that file
    for src, names in re.findall(r"\(\.\./(taichi_dr/[\w/]+\.py)\)[^\n]*?((?:`\w+`[, and]*)+)", text):
        body = open(os.path.join(ROOT, src), encoding="utf-8").read()
        for name in re.findall(r"`(\w+)`", names):
            assert re.search(rf"\b{name}\b", body), f"{page}: {name} not found in {src}"
    if page not in ("index.md", "api.md"):  # api.md is the reference page: text only
        assert "figures/" in text, f"{page}: no figure"


def test_make_figures_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("make_figures", os.path.join(DOCS, "figures", "make_figures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--quick", "--out", str(tmp_path)])
    for name in mod.FIGURES:
        assert (tmp_path / name).stat().st_size > 1000, name
    # and every figure the pages show is one the script writes
    shown = set()
    for page in PAGES:
        shown |= set(re.findall(r"figures/(\w+\.png)", open(os.path.join(DOCS, page), encoding="utf-8").read()))
    assert shown <= set(mod.FIGURES)


def test_repository_stands_alone():
    """A clone has only the repository: README, docs and sources point at nothing outside it."""
    bad = re.compile(r"\.\./shared|shared/(DESIGN|STYLE|reference|data)")
    files = [os.path.join(ROOT, "README.md")] + [os.path.join(DOCS, p) for p in PAGES]
    for sub in ("taichi_dr", "examples", "tests", "benchmarks", "scripts"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, sub)):
            files += [os.path.join(dirpath, n) for n in names if n.endswith((".py", ".md", ".sh"))]
    offenders = [f for f in files if bad.search(open(f, encoding="utf-8", errors="replace").read())]
    assert not offenders, offenders
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "docs/api.md" in readme and "Python 3.11" in readme


"""The Colab notebooks (notebooks/colab/, one per chapter 1-5, and the recipe notebook):
their Colab cells are what minilocal.colab writes, and each has the agreed structure.

Running them is the nbmake step of .ci/run (`pytest --nbmake notebooks/colab`)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minilocal import colab, exercises

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = colab.notebook_paths(ROOT)
CHAPTER_NOTEBOOKS = sorted((ROOT / "notebooks" / "colab").glob("*.ipynb"))


def _rel(path):
    return Path(path).relative_to(ROOT).as_posix()


def _code(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def test_every_chapter_1_to_5_has_a_notebook():
    stems = [p.stem for p in CHAPTER_NOTEBOOKS]
    wanted = sorted(p.stem for p in (ROOT / "book").glob("0[1-5]_*.ipynb"))
    assert stems == wanted


def test_colab_cells_are_up_to_date():
    stale = colab.generate(ROOT, check=True)
    assert not stale, (f"stale Colab cells in {[_rel(p) for p in stale]}: run "
                       "`python -m minilocal.colab` and commit")
    assert colab.main(["--root", str(ROOT), "--check"]) == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    chapter = colab.chapter_of(nb)
    assert (ROOT / chapter).is_file(), f"{chapter} named in the metadata does not exist"
    if path.parent.name == "colab":
        assert Path(chapter).name == path.name  # notebooks/colab/NN_x.ipynb <-> book/NN_x.ipynb
    ids = [c.get("id") for c in nb.cells]
    assert ids[1:3] == [colab.OPEN_CELL, colab.INSTALL_CELL], "title, then the two Colab cells"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert f"`{chapter}`" in nb.cells[0].source + nb.cells[1].source
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    guarded = [s for s in code if 'if "google.colab" in sys.modules:' in s]
    assert guarded == [nb.cells[2].source], "one guarded install cell"
    switch = [s for s in code if "USE_REAL_MODEL = torch.cuda.is_available()" in s]
    assert len(switch) == 1, "one switch cell"
    assigned = {t.id for node in ast.walk(ast.parse(switch[0])) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert {"USE_REAL_MODEL", "MODEL"} <= assigned
    assert any('MODEL = "shapes"' in s for s in switch)
    data = [s for s in code if "if USE_REAL_MODEL:" in s and "refcoco_sample(" in s]
    assert len(data) == 1, "one data cell, with the package's RefCOCO download"
    assert "urllib" not in data[0] and "snapshot_download" not in data[0]
    assert code.index(switch[0]) < code.index(data[0])
    for s in code:
        ast.parse(_code(s))


def test_no_badge_while_unpublished():
    assert exercises.REPOSITORY is None  # if this fails, the test below covers the badge
    for path in NOTEBOOKS:
        text = path.read_text(encoding="utf-8")
        assert "colab-badge.svg" not in text, f"{_rel(path)}: a badge that points nowhere"
        assert "colab.research.google.com/github" not in text


def test_badge_and_pinned_install_once_published(tmp_path, monkeypatch):
    for path in NOTEBOOKS:
        dest = tmp_path / _rel(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    monkeypatch.setattr(exercises, "REPOSITORY", "someone/minilocal")
    stale = colab.generate(tmp_path, check=True)
    assert sorted(_rel_to(p, tmp_path) for p in stale) == sorted(_rel(p) for p in NOTEBOOKS)
    colab.generate(tmp_path)
    assert colab.generate(tmp_path, check=True) == []
    tag = exercises.RELEASE_TAG
    for path in NOTEBOOKS:
        nb = nbformat.read(tmp_path / _rel(path), as_version=4)
        url = (f"https://colab.research.google.com/github/someone/minilocal/blob/{tag}/"
               f"{_rel(path)}")
        assert f"[![Open In Colab]({colab.BADGE})]({url})" in nb.cells[1].source
        chapter = colab.chapter_of(nb)
        assert f"https://github.com/someone/minilocal/blob/{tag}/{chapter}" in nb.cells[1].source
        assert nb.cells[2].source.splitlines()[-1] == (
            f'    %pip install -q "minilocal[{colab.EXTRAS}] @ '
            f'git+https://github.com/someone/minilocal@{tag}" ' + " ".join(colab.COLAB_PINS))


def _rel_to(path, root):
    return Path(path).relative_to(root).as_posix()


def _run_install_cell(monkeypatch, colab_present, repo=None):
    calls, printed = [], []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]))
    if colab_present:
        monkeypatch.setitem(sys.modules, "google.colab", object())
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if repo:
        monkeypatch.setenv("MINILOCAL_REPO", repo)
    else:
        monkeypatch.delenv("MINILOCAL_REPO", raising=False)
    exec(colab.install_cell_source(), {"print": printed.append})
    return calls, printed


def test_install_cell_before_publication(monkeypatch):
    assert _run_install_cell(monkeypatch, colab_present=False, repo="a/b") == ([], [])
    calls, printed = _run_install_cell(monkeypatch, colab_present=True)
    assert calls == [] and "MINILOCAL_REPO" in printed[0]
    calls, printed = _run_install_cell(monkeypatch, colab_present=True, repo="a/b")
    n = len(colab.COLAB_PINS)
    assert calls[0][-1 - n] == f"minilocal[{colab.EXTRAS}] @ git+https://github.com/a/b"
    assert calls[0][-n:] == list(colab.COLAB_PINS)


def _ci_pins():
    root = Path(__file__).resolve().parents[1]
    lines = (root / ".ci" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_colab_pins_agree_with_ci_and_leave_torch_alone():
    """Colab installs exactly the versions CI tests (issue 17), and never torch or
    torchvision (Colab's CUDA builds stay)."""
    ci = _ci_pins()
    for pin in colab.COLAB_PINS:
        name, version = pin.split("==")
        assert ci.get(name.lower()) == version, f"{pin} vs .ci/requirements.txt"
        assert name.lower() not in {"torch", "torchvision", "numpy", "pillow"}
    assert "transformers" in {p.split("==")[0] for p in colab.COLAB_PINS}
    for path in NOTEBOOKS:  # and every committed notebook's install cell carries them
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.get("id") == colab.INSTALL_CELL)
        for pin in colab.COLAB_PINS:
            assert pin in cell.source, f"{_rel(path)}: install cell lacks {pin}"


def test_missing_cells_or_chapter_are_reported():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# x", id=colab.OPEN_CELL)]
    with pytest.raises(ValueError, match="chapter"):
        colab.with_colab_cells(nb, "notebooks/colab/x.ipynb")
    nb.metadata["minilocal"] = {"chapter": "book/x.ipynb"}
    with pytest.raises(ValueError, match="colab-install"):
        colab.with_colab_cells(nb, "notebooks/colab/x.ipynb")

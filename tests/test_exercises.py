"""Exercise notebooks: generated from the book, up to date, well formed; no page or
notebook redefines a public minilocal name outside a marked exercise stub (STYLE item 1)."""

import ast
import copy
import sys
from pathlib import Path

import nbformat
import pytest

from minilocal import checks, colab, exercises

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = ROOT / "notebooks"
ALLOWED_TO_REDEFINE = {exercises.TAG_STUB, exercises.TAG_SOLUTION}


def _book_pages():
    return sorted(BOOK.glob("*.ipynb"))


def _all_notebooks():
    return _book_pages() + sorted(NOTEBOOKS.rglob("*.ipynb"))


def _rel(path):
    return str(Path(path).relative_to(ROOT))


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------


def _top_level_bindings(tree: ast.Module, include_imports: bool) -> set[str]:
    """Names bound at module level (not inside functions or classes)."""
    names: set[str] = set()

    def targets(t):
        if isinstance(t, ast.Name):
            names.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e)
        elif isinstance(t, ast.Starred):
            targets(t.value)

    def visit(stmts):
        for node in stmts:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    targets(t)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets(node.target)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets(node.target)
                visit(node.body + node.orelse)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        targets(item.optional_vars)
                visit(node.body)
            elif isinstance(node, (ast.If, ast.While)):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
                for h in node.handlers:
                    visit(h.body)
            elif include_imports and isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    names.add((a.asname or a.name).split(".")[0])

    visit(tree.body)
    return names


def public_minilocal_names() -> set[str]:
    """Every public top-level name defined (not imported) in a minilocal module."""
    names: set[str] = set()
    for path in sorted((ROOT / "minilocal").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names |= {n for n in _top_level_bindings(tree, include_imports=False)
                  if not n.startswith("_")}
    return names


def _code(source: str) -> str:
    """Cell source without IPython magics and shell lines (which ast cannot parse)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def redefinitions(nb, public: set[str]) -> list[tuple[str, list[str]]]:
    """(cell id, names) for each code cell that binds a public minilocal name and is not
    tagged as an exercise stub or solution."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if set(cell.get("metadata", {}).get("tags", [])) & ALLOWED_TO_REDEFINE:
            continue
        bound = _top_level_bindings(ast.parse(_code(cell.source)), include_imports=False)
        clash = sorted(bound & public)
        if clash:
            found.append((cell.get("id", "?"), clash))
    return found


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def _code_cell(src, *tags, **md):
    c = nbformat.v4.new_code_cell(src)
    if tags:
        c.metadata["tags"] = list(tags)
    c.metadata.update(md)
    return c


def _md_cell(src, *tags):
    c = nbformat.v4.new_markdown_cell(src)
    if tags:
        c.metadata["tags"] = list(tags)
    return c


def test_public_names_are_found():
    public = public_minilocal_names()
    assert {"spatial_entropy", "box_iou", "HeadTable", "ERRORS", "check_box_iou",
            "book_setup"} <= public
    assert "np" not in public and "_lookup" not in public


def test_redefinition_detector_can_fail():
    public = public_minilocal_names()
    bad = _nb(_code_cell("import numpy as np\ndef spatial_entropy(m):\n    return 0.0"),
              _code_cell("if True:\n    box_iou = lambda a, b: 1.0\n%time x = 1"),
              _code_cell("from minilocal.metrics import box_iou\nfor acc_at in []:\n    pass"))
    assert redefinitions(bad, public) == [
        (bad.cells[0].id, ["spatial_entropy"]),
        (bad.cells[1].id, ["box_iou"]),
        (bad.cells[2].id, ["acc_at"]),
    ]
    ok = _nb(_code_cell("# Exercise stub\ndef box_iou(a, b):\n    ...", exercises.TAG_STUB),
             _code_cell("def box_iou(a, b):\n    return 0.0", exercises.TAG_SOLUTION),
             _code_cell("from minilocal.metrics import box_iou\ndef helper():\n    acc_at = 1"))
    assert redefinitions(ok, public) == []


@pytest.mark.parametrize("path", _all_notebooks(), ids=_rel)
def test_no_public_name_redefined(path):
    nb = nbformat.read(path, as_version=4)
    found = redefinitions(nb, public_minilocal_names())
    assert not found, (
        f"{_rel(path)} redefines public minilocal names outside a marked exercise stub: "
        f"{found}. Import them from the package instead (STYLE item 1), or tag the cell "
        f"{exercises.TAG_STUB!r} (with '{exercises.STUB_MARKER}' on its first line)."
    )


# ----------------------------------------------------------------------------------------
# Notebooks as committed
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _all_notebooks(), ids=_rel)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [c.get("id") for c in nb.cells
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{_rel(path)}: cells with outputs {dirty}; clear them before committing"


def test_generated_notebooks_are_up_to_date():
    stale = exercises.generate(BOOK, NOTEBOOKS, check=True)
    assert not stale, (f"stale generated notebooks {[_rel(p) for p in stale]}: run "
                       "`python -m minilocal.exercises` and commit")


def test_every_chapter_with_exercises_has_both_notebooks():
    chapters = [p for p in _book_pages() if exercises.has_exercises(nbformat.read(p, 4))]
    assert chapters, "no chapter has exercises yet"
    for p in chapters:
        for kind in ("exercises", "solutions"):
            assert (NOTEBOOKS / kind / p.name).is_file()


# ----------------------------------------------------------------------------------------
# Exercise structure in the chapters (the one marked source)
# ----------------------------------------------------------------------------------------


def _tag(cell):
    found = [t for t in cell.get("metadata", {}).get("tags", []) if t in exercises.TAGS]
    return found[0] if found else None


def _defined_function(source: str) -> str:
    tree = ast.parse(_code(source))
    defs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert len(defs) == 1, f"a stub or solution cell defines exactly one function, got {defs}"
    return defs[0]


def exercise_problems(nb) -> list[str]:
    """Every way the chapter's exercise cells break the conventions (empty: fine)."""
    problems = []
    cells = nb.cells
    for i, cell in enumerate(cells):
        if _tag(cell) != exercises.TAG_STUB:
            continue
        where = f"stub cell {cell.get('id')}"
        if not cell.source.startswith(exercises.STUB_MARKER):
            problems.append(f"{where}: first line must be {exercises.STUB_MARKER!r}")
        texts = [c for c in cells[:i] if _tag(c) == exercises.TAG_TEXT]
        header = texts[-1].source if texts else ""
        missing = [f for f in exercises.HEADER_FIELDS if f.lower() not in header.lower()]
        if missing:
            problems.append(f"{where}: its ex-text header lacks {missing}")
        after = cells[i + 1:i + 3]
        if [_tag(c) for c in after] != [exercises.TAG_SOLUTION, exercises.TAG_CHECK]:
            problems.append(f"{where}: must be followed by an ex-solution and an ex-check cell")
            continue
        sol, chk = after
        md = sol.get("metadata", {})
        if "hide-input" not in md.get("tags", []) or md.get("mystnb") != exercises.SOLUTION_METADATA["mystnb"]:
            problems.append(f"{where}: the solution must carry {exercises.SOLUTION_METADATA}")
        name = _defined_function(cell.source)
        if _defined_function(sol.source) != name:
            problems.append(f"{where}: stub and solution define different functions")
        call = ast.parse(chk.source).body[-1]
        ok = (isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
              and isinstance(call.value.func, ast.Attribute)
              and isinstance(call.value.func.value, ast.Name)
              and call.value.func.value.id == "checks"
              and call.value.func.attr in {f"check_{n}" for n in checks.CHECKERS}
              and [getattr(a, "id", None) for a in call.value.args] == [name])
        if not ok:
            problems.append(f"{where}: the check cell must end with checks.check_<name>({name})")
    return problems


@pytest.mark.parametrize("path", _book_pages(), ids=_rel)
def test_exercises_follow_the_conventions(path):
    problems = exercise_problems(nbformat.read(path, as_version=4))
    assert not problems, f"{_rel(path)}:\n" + "\n".join(problems)


def _chapter_fixture():
    sol_md = copy.deepcopy(exercises.SOLUTION_METADATA)
    return _nb(
        _md_cell("# 9. A chapter\n\nProse."),
        _code_cell("import numpy as np\nfrom minilocal import checks", exercises.TAG_SETUP),
        _code_cell("fig = 1", "hide-input"),
        _md_cell("### Exercise 9.1\n\nDifficulty 1, Importance 2, Time 5 min, "
                 "Learning objective: x", exercises.TAG_TEXT),
        _code_cell(f"{exercises.STUB_MARKER}: write it\ndef box_iou(a, b):\n    ...",
                   exercises.TAG_STUB),
        _code_cell("def box_iou(a, b):\n    return 1.0", *sol_md["tags"], mystnb=sol_md["mystnb"]),
        _code_cell("checks.check_box_iou(box_iou)", exercises.TAG_CHECK),
        _md_cell("## Summary\n\nDone."),
    )


def test_structure_checker_can_fail():
    good = _chapter_fixture()
    assert exercise_problems(good) == []
    bad = copy.deepcopy(good)
    bad.cells[4].source = "def box_iou(a, b):\n    ..."  # no marker
    bad.cells[3].source = "### Exercise 9.1"  # no header fields
    bad.cells[5].metadata["tags"] = [exercises.TAG_SOLUTION]  # not hidden in the book
    bad.cells[6].source = "checks.check_acc_at(acc_at)"
    problems = exercise_problems(bad)
    assert len(problems) == 4, problems


def test_split_notebook():
    chapter = _chapter_fixture()
    chapter.cells[5].outputs = [nbformat.v4.new_output("stream", text="x")]
    parts = exercises.split_notebook(chapter, "09_chapter")
    ex, sol = parts["exercises"], parts["solutions"]
    tags = lambda nb: [_tag(c) for c in nb.cells]  # noqa: E731
    assert tags(ex) == [None, None, "ex-setup", "ex-text", "ex-stub", "ex-check"]
    assert tags(sol) == [None, None, "ex-setup", "ex-text", "ex-solution", "ex-check"]
    assert ex.cells[0].source.startswith("# Exercises: 9. A chapter")
    assert sol.cells[0].source.startswith("# Solutions: 9. A chapter")
    assert "book/09_chapter.ipynb" in ex.cells[0].source
    s = sol.cells[4]
    assert s.outputs == [] and "mystnb" not in s.metadata
    assert s.metadata["tags"] == ["ex-solution"]  # book-only tags dropped
    # the Colab notebooks' guarded install cell, from one source (minilocal.colab)
    assert ex.cells[1].source == sol.cells[1].source == colab.install_cell_source()
    assert "colab-badge.svg" not in nbformat.writes(ex)  # no repository configured: no badge


def test_generate_writes_checks_and_prunes(tmp_path, monkeypatch):
    book, out = tmp_path / "book", tmp_path / "notebooks"
    book.mkdir()
    nbformat.write(_chapter_fixture(), book / "09_chapter.ipynb")
    nbformat.write(_nb(_md_cell("# No exercises")), book / "intro_page.ipynb")
    written = exercises.generate(book, out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "exercises/09_chapter.ipynb", "solutions/09_chapter.ipynb"]
    assert exercises.generate(book, out, check=True) == []
    nb = nbformat.read(book / "09_chapter.ipynb", 4)
    nb.cells[5].source = "def box_iou(a, b):\n    return 0.5"
    nbformat.write(nb, book / "09_chapter.ipynb")
    assert exercises.generate(book, out, check=True) == [out / "solutions" / "09_chapter.ipynb"]
    assert exercises.main(["--book", str(book), "--out", str(out), "--check"]) == 1
    assert exercises.main(["--book", str(book), "--out", str(out)]) == 0
    (book / "09_chapter.ipynb").unlink()
    assert len(exercises.generate(book, out, check=True)) == 2  # orphans are stale
    exercises.generate(book, out)
    assert not list(out.rglob("*.ipynb"))
    monkeypatch.setattr(exercises, "REPOSITORY", "someone/minilocal")
    text = nbformat.writes(exercises.split_notebook(_chapter_fixture(), "09_chapter")["exercises"])
    assert "colab-badge.svg" in text and "google.colab" in text
    assert f"someone/minilocal@{exercises.RELEASE_TAG}" in text


# ----------------------------------------------------------------------------------------
# book_setup
# ----------------------------------------------------------------------------------------


def test_book_setup(monkeypatch):
    import plotly.io as pio

    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    old = pio.renderers.default
    try:
        pio.renderers.default = "json"
        exercises.book_setup()
        assert pio.renderers.default == "plotly_mimetype+notebook"
        pio.renderers.default = "json"
        monkeypatch.setitem(sys.modules, "google.colab", object())
        exercises.book_setup()
        assert pio.renderers.default == "json"  # Colab keeps its own renderer
        monkeypatch.delitem(sys.modules, "google.colab")
        monkeypatch.setenv("PLOTLY_RENDERER", "browser")
        exercises.book_setup()
        assert pio.renderers.default == "json"  # the user's explicit choice is kept
    finally:
        pio.renderers.default = old

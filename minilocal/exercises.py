"""Notebook helpers: the set-up call of every book page, and the exercise-notebook generator.

**Set-up.** Every book page and notebook calls :func:`book_setup` once, in its first code
cell; it is the one place where notebook-wide settings live.

**Exercises.** A chapter of the book (``book/NN_name.ipynb``) is the ONE marked source of
its exercises. Cells carry tags (cell metadata ``tags``):

=============== ==============================================================================
``ex-setup``    code the exercises need (imports, data): copied to both notebooks
``ex-text``     an exercise's header and instructions (markdown): both notebooks
``ex-stub``     the stub the student fills in; its first line is ``# Exercise stub``. Only in
                the exercise notebook. May redefine a package name (the one exception to
                "never redefine a minilocal name"; a test enforces both)
``ex-solution`` the solution: only in the solution notebook; in the book it is hidden in a
                dropdown (add the tag ``hide-input`` and the ``mystnb`` prompts, see
                :data:`SOLUTION_METADATA`)
``ex-check``    the checker call, e.g. ``checks.check_box_iou(box_iou)``: both notebooks
=============== ==============================================================================

Untagged cells (the chapter's prose, figures) stay in the book only. The generated
notebooks are ``notebooks/exercises/<chapter>.ipynb`` and ``notebooks/solutions/<chapter>.ipynb``;
regenerate them after editing a chapter and commit them (a test fails when they are stale)::

    python -m minilocal.exercises            # write
    python -m minilocal.exercises --check    # exit 1 if a committed copy differs

Book: every chapter's exercises (``book/00_visual_grounding.ipynb`` onwards).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__

TAG_SETUP = "ex-setup"
TAG_TEXT = "ex-text"
TAG_STUB = "ex-stub"
TAG_SOLUTION = "ex-solution"
TAG_CHECK = "ex-check"
TAGS = (TAG_SETUP, TAG_TEXT, TAG_STUB, TAG_SOLUTION, TAG_CHECK)
#: First line of every stub cell.
STUB_MARKER = "# Exercise stub"
#: Metadata that makes the book show a solution cell as a closed "Show solution" dropdown.
SOLUTION_METADATA = {
    "tags": [TAG_SOLUTION, "hide-input"],
    "mystnb": {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"},
}
#: Words every exercise header (the ``ex-text`` cell before a stub) must contain.
HEADER_FIELDS = ("Difficulty", "Importance", "Time", "Learning objective")

#: GitHub "owner/name" of the public repository, for the Colab badge and install line of
#: the generated notebooks. None: not published yet, so no badge, and the install cell
#: (:func:`install_cell_source`) reads the repository from the environment
#: variable ``MINILOCAL_REPO``.
REPOSITORY: str | None = None
#: The release tag the Colab install line pins.
RELEASE_TAG = f"v{__version__}"

#: Extras installed on Colab: SAM, the RefCOCO readers, plotly and ipywidgets.
EXTRAS = "sam,data,viz"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
#: Exact versions installed beside minilocal on Colab: the ones CI tests (the same lines as
#: ``.ci/requirements.txt``; a test checks they agree). The capture relies on transformers
#: internals (``AttentionInterface``, ``AttentionMaskInterface``, the PIL image processor
#: modules), so the newest transformers is not good enough. Colab's own torch,
#: torchvision, numpy and pillow are left alone (the package asks for lower bounds only).
COLAB_PINS = (
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "accelerate==1.15.0",
    "segment-anything==1.0",
)


def colab_url(path: str) -> str | None:
    """The URL that opens ``path`` (a notebook, relative to the repository root) in Colab.

    None while :data:`REPOSITORY` is None (not published yet).

    Book: ``book/06_your_model.ipynb``.
    """
    if not REPOSITORY:
        return None
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{RELEASE_TAG}/{path}"


def install_cell_source() -> str:
    """Python source of the ``colab-install`` cell (does nothing outside Colab).

    Book: ``book/06_your_model.ipynb``.
    """
    head = (f"# Colab only: install minilocal with its extras ({EXTRAS}) and the versions it\n"
            "# is tested with, once per session (Colab's own torch stays).\n")
    if REPOSITORY:
        spec = f"minilocal[{EXTRAS}] @ git+https://github.com/{REPOSITORY}@{RELEASE_TAG}"
        return (head + "import sys\n\nif \"google.colab\" in sys.modules:\n"
                f"    %pip install -q \"{spec}\" {' '.join(COLAB_PINS)}")
    return head + "\n".join([
        "import os",
        "import subprocess",
        "import sys",
        "",
        "if \"google.colab\" in sys.modules:",
        "    repo = os.environ.get(\"MINILOCAL_REPO\")  # \"owner/name\" (not published yet)",
        f"    pins = {list(COLAB_PINS)!r}".replace("'", '"'),
        "    if repo:",
        "        subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",",
        f"                        f\"minilocal[{EXTRAS}] @ git+https://github.com/{{repo}}\", *pins],",
        "                       check=True)",
        "    else:",
        "        print(\"minilocal is not installed by this cell: set os.environ['MINILOCAL_REPO'] = \"",
        "              \"'owner/name' and run it again, or run\\n\"",
        f"              \"  pip install 'minilocal[{EXTRAS}] @ git+https://github.com/OWNER/minilocal' \"",
        "              + \" \".join(pins))",
    ])


_KINDS = {
    "exercises": (TAG_SETUP, TAG_TEXT, TAG_STUB, TAG_CHECK),
    "solutions": (TAG_SETUP, TAG_TEXT, TAG_SOLUTION, TAG_CHECK),
}
_BOOK_ONLY_TAGS = {"hide-input", "remove-input", "remove-output", "remove-cell", "hide-output"}


def book_setup() -> None:
    """Settings for the book's pages and notebooks; call once, in the first code cell.

    Turns off transformers' progress bars (a "Loading weights" bar would otherwise be
    stored in every page that loads a model) and sets plotly's renderer to
    ``"plotly_mimetype+notebook"``, so that each figure is stored in the notebook both as
    plotly JSON (JupyterLab, VS Code) and as self-contained HTML with plotly.js (the built
    book; without it the book silently drops the figures). On Colab, or when the
    environment variable ``PLOTLY_RENDERER`` is set, plotly's own choice is kept.

    Book: every page (first code cell).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if "google.colab" in sys.modules or os.environ.get("PLOTLY_RENDERER"):
        return
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"


# ----------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _ex_tag(cell) -> str | None:
    found = [t for t in _tags(cell) if t in TAGS]
    if len(found) > 1:
        raise ValueError(f"cell {cell.get('id')!r} has several exercise tags: {found}")
    return found[0] if found else None


def has_exercises(nb) -> bool:
    """True when the notebook has at least one ``ex-stub`` cell.

    Book: ``book/README.md`` (authors: adding an exercise).
    """
    return any(_ex_tag(c) == TAG_STUB for c in nb.cells)


def chapter_title(nb) -> str:
    """The text of the notebook's first ``# `` heading.

    Book: ``book/README.md`` (authors: adding an exercise).
    """
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise ValueError("the chapter has no '# ' title in a markdown cell")


def _clean(cell):
    cell = copy.deepcopy(cell)
    md = cell.setdefault("metadata", {})
    md.pop("mystnb", None)
    tags = [t for t in md.get("tags", []) if t not in _BOOK_ONLY_TAGS]
    if tags:
        md["tags"] = tags
    else:
        md.pop("tags", None)
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    return cell


def _header_cells(nb, stem: str, kind: str):
    import nbformat

    title = chapter_title(nb)
    other = "solutions" if kind == "exercises" else "exercises"
    if kind == "exercises":
        how = ("Write each function where it says `# Exercise stub`, then run the check cell "
               "below it: it prints every case that fails, with the expected and the obtained "
               "value, and ends with one line such as `box_iou: 8/8 cases passed`.")
    else:
        how = "The solutions, each followed by its check."
    lines = [
        f"# {kind.capitalize()}: {title}",
        "",
        f"From the book chapter *{title}* (`book/{stem}.ipynb`). {how}",
        "",
        f"The {other} are in `notebooks/{other}/{stem}.ipynb`. This notebook is generated from "
        "the chapter by `python -m minilocal.exercises`: edit the chapter, not this file.",
    ]
    url = colab_url(f"notebooks/{kind}/{stem}.ipynb")
    if url:
        lines += ["", f"[![Open In Colab]({BADGE})]({url})"]
    # The same guarded install cell as the Colab notebooks (minilocal.colab uses it too).
    return [nbformat.v4.new_markdown_cell("\n".join(lines), id=f"{kind}-header"),
            nbformat.v4.new_code_cell(install_cell_source(), id=f"{kind}-install")]


def split_notebook(nb, stem: str) -> dict[str, object]:
    """The exercise and the solution notebook of one chapter.

    Args:
        nb: The chapter (an ``nbformat`` notebook) with tagged cells.
        stem: The chapter's file name without ``.ipynb`` (for titles and links).

    Returns:
        ``{"exercises": nb, "solutions": nb}``.

    Book: ``book/README.md`` (authors: adding an exercise).
    """
    import nbformat

    out = {}
    for kind, keep in _KINDS.items():
        new = nbformat.v4.new_notebook()
        new.metadata = {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
        new.cells = _header_cells(nb, stem, kind)
        new.cells += [_clean(c) for c in nb.cells if _ex_tag(c) in keep]
        out[kind] = new
    return out


def _text(nb) -> str:
    import nbformat

    return nbformat.writes(nb, version=4) + "\n"


def generate(book_dir: str | os.PathLike = "book", out_dir: str | os.PathLike = "notebooks",
             *, check: bool = False) -> list[Path]:
    """Write the exercise and solution notebooks of every chapter that has exercises.

    Args:
        book_dir: Folder of the chapters (``*.ipynb``).
        out_dir: Folder that receives ``exercises/`` and ``solutions/``.
        check: Write nothing; report what would change.

    Returns:
        The paths written (``check=False``) or stale: differing, missing, or generated
        notebooks whose chapter no longer has exercises (``check=True``).

    Book: ``book/README.md`` (authors: adding an exercise).
    """
    import nbformat

    book_dir, out_dir = Path(book_dir), Path(out_dir)
    wanted: dict[Path, str] = {}
    for path in sorted(book_dir.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if not has_exercises(nb):
            continue
        for kind, new in split_notebook(nb, path.stem).items():
            wanted[out_dir / kind / path.name] = _text(new)
    changed = []
    for path, text in wanted.items():
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            changed.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for kind in _KINDS:
        for path in sorted((out_dir / kind).glob("*.ipynb")):
            if path not in wanted:
                changed.append(path)
                if not check:
                    path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m minilocal.exercises [--check]``; returns the exit status.

    Book: ``book/README.md`` (authors: adding an exercise).
    """
    ap = argparse.ArgumentParser(
        prog="python -m minilocal.exercises",
        description="Generate notebooks/exercises and notebooks/solutions from the book.",
    )
    ap.add_argument("--book", default="book", help="folder of the chapters (default: book)")
    ap.add_argument("--out", default="notebooks", help="output folder (default: notebooks)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated copy is stale")
    args = ap.parse_args(argv)
    paths = generate(args.book, args.out, check=args.check)
    return report_generated(paths, args.check, "minilocal.exercises", "exercise notebooks")


def report_generated(paths, check: bool, module: str, what: str) -> int:
    """Print what a notebook generator wrote (or, with ``check``, found stale).

    Returns:
        The exit status: 1 when ``check`` found stale files, else 0.
    """
    for p in paths:
        print(f"{'stale' if check else 'wrote'}: {p}")
    if check and paths:
        print(f"run `python -m {module}` and commit the notebooks")
        return 1
    if not paths:
        print(f"{what} up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CONTRIBUTING.md's layout matches the tree: every path it names exists, and every module
and folder of ``minilocal/`` is in it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> dict[str, str]:
    """``{path: line}`` for every path the layout block of CONTRIBUTING.md names."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    paths = {}
    for line in block.splitlines():
        m = re.match(r"^( *)(\S.*?)(?:\s{2,}|$)", line)
        if not m or len(m.group(1)) > 2:  # blank, or the continuation of a description
            continue
        parent = "minilocal/" if m.group(1) else ""
        for name in m.group(2).split(", "):
            paths[parent + name.strip().rstrip("/")] = line
    return paths


def test_every_path_in_the_layout_exists():
    missing = [f"{p}  (line: {line.strip()})" for p, line in _layout().items()
               if not (ROOT / p).exists()]
    assert not missing, "CONTRIBUTING.md's layout names paths that do not exist:\n" + \
        "\n".join(missing)


def test_every_module_and_folder_of_the_package_is_in_the_layout():
    listed = set(_layout())
    pkg = ROOT / "minilocal"
    found = {f"minilocal/{p.name}" for p in pkg.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py")
             or (p.is_dir() and not p.name.startswith(("_", ".")))}
    unlisted = sorted(found - listed)
    assert not unlisted, ("add these to the layout in CONTRIBUTING.md (one line each, "
                          "what they hold): " + ", ".join(unlisted))


def test_the_layout_parser_reads_names_and_skips_descriptions():
    paths = _layout()
    assert "minilocal/segmentation" in paths and "minilocal/checks_data" in paths
    assert "experiments" in paths and "minilocal" in paths
    # continuation lines (deeper indentation) name no path
    assert not [p for p in paths if " " in p]

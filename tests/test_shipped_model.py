"""The embedded shapes LVLM shipped in minilocal/assets/shapes-lvlm: it loads offline by
default, its head table is the one the figures were measured with, and the documented
held-out figures are what the shipped weights give."""

import json
from pathlib import Path

import numpy as np
import pytest

from minilocal import Grounder
from minilocal.cli import main
from minilocal.selection import HeadTable
from minilocal.toy import evaluate, lvlm

FOLDER = lvlm.DEFAULT_MODEL_DIR
REPORT = json.loads((FOLDER / "evaluation_report.json").read_text())
N_CHECK = 60  # held-out items recomputed here (the report has all of them)


@pytest.fixture(scope="module")
def grounder():
    return Grounder.from_pretrained()  # no argument: the embedded model, offline


def test_default_model_is_the_shipped_one_with_its_heads(grounder):
    table = HeadTable.from_json(FOLDER / "heads.json")
    assert grounder.heads == [tuple(h) for h in table.heads]
    assert grounder.adapter.model_id() == lvlm.MODEL_ID == table.model_id
    assert REPORT["heads"] == [f"L{a}H{b}" for a, b in table.heads]
    assert (FOLDER / "training_report.json").is_file()
    # how the heads got there is recorded, the same in the config and in the report
    planted = getattr(grounder.model.config, "minilocal_planted_heads", None) or []
    assert REPORT["planted_heads"] == [f"L{a}H{b}" for a, b in planted]


def test_documented_heldout_figures_are_reproduced():
    rep = evaluate.heldout_report(n_items=N_CHECK, progress=False)
    got = np.array(rep["box_iou_selected"])
    want = np.array(REPORT["box_iou_selected"][:N_CHECK])
    assert np.abs(got - want).max() < 0.02
    assert abs(float((got >= 0.5).mean()) - float((want >= 0.5).mean())) <= 1 / N_CHECK
    # the documented Acc@0.5 is the mean of the stored per-item IoUs
    full = np.array(REPORT["box_iou_selected"])
    assert len(full) == REPORT["n_heldout"]
    assert abs(float((full >= 0.5).mean()) - REPORT["acc@0.5"]["selected_heads"]) < 1e-3


def test_readme_example(tmp_path, capsys):
    out = tmp_path / "overlay.png"
    example = Path(__file__).resolve().parent.parent / "examples" / "shapes.png"
    assert main(["ground", str(example), "the red circle.", "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["box"] is None or len(printed["box"]) == 4
    assert out.is_file()

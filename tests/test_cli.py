"""The CLI end to end on a tiny saved LLaVA and tiny RefCOCO files (refer format)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minilocal.cli import main
from minilocal.selection import HeadTable


def _json_out(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_ground_prints_box_and_writes_overlay(model_dir, tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8)).save(img)
    out = tmp_path / "overlay.png"
    assert main(["ground", str(img), "the red circle", "--model", str(model_dir),
                 "--heads", "L2H1,L1H3", "--device", "cpu", "-o", str(out)]) == 0
    rec = _json_out(capsys)
    assert rec["heads"] == ["L2H1", "L1H3"] and rec["image_size"] == [50, 30]
    assert out.exists() and Image.open(out).size[0] > 3 * Image.open(out).size[1] - 60


def test_ground_bad_input_names_the_fix(model_dir, tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.new("RGB", (40, 40)).save(img)
    assert main(["ground", str(img), "   ", "--model", str(model_dir), "--heads", "L0H0",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "expression is empty" in err and "Fix:" in err


def test_find_heads_then_eval(model_dir, refer_root, tmp_path, capsys):
    heads = tmp_path / "heads.json"
    args = ["--model", str(model_dir), "--device", "cpu", "--dataset", "refcoco",
            "--root", str(refer_root), "--quiet"]
    assert main(["find-heads", *args, "--n", "8", "--repeats", "2", "--k", "2",
                 "--cache-dir", str(tmp_path / "cache"), "-o", str(heads)]) == 0
    table = HeadTable.from_json(heads)
    assert (table.num_layers, table.num_heads) == (3, 4) and len(table.heads) == 2
    assert table.settings["n"] == 8 and len(table.sample_ids) == 2
    assert all(i.startswith("refcoco/unc/train/") for i in table.sample_ids[0])
    capsys.readouterr()
    preds = tmp_path / "preds.jsonl"
    assert main(["eval", *args, "--heads", str(heads), "-o", str(preds)]) == 0
    scores = _json_out(capsys)
    lines = preds.read_text().splitlines()
    assert scores["n"] == len(lines) == 3 and scores["n_masks"] == 3
    assert 0 <= scores["acc@0.5"] <= 100
    # a second run resumes: nothing left to do, same scores
    assert main(["eval", *args, "--heads", str(heads), "-o", str(preds)]) == 0
    assert _json_out(capsys) == scores and preds.read_text().splitlines() == lines


def test_accelerate_two_processes_match_one(model_dir, refer_root, tmp_path):
    if shutil.which("accelerate") is None and not (Path(sys.executable).parent /
                                                   "accelerate").exists():
        pytest.fail("accelerate is a test dependency (pip install accelerate)")
    launcher = str(Path(sys.executable).parent / "accelerate")
    common = ["eval", "--model", str(model_dir), "--heads", "L2H1,L1H3", "--dataset",
              "refcoco", "--split", "train", "--root", str(refer_root), "--quiet"]
    single = tmp_path / "single.jsonl"
    assert main([*common, "--device", "cpu", "-o", str(single)]) == 0
    multi = tmp_path / "multi.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "minilocal.cli",
         *common, "-o", str(multi)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "multi.jsonl.rank0").exists() and (tmp_path / "multi.jsonl.rank1").exists()
    assert multi.read_text() == single.read_text()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n"] == 12


def test_accelerate_find_heads_matches_one_process(model_dir, refer_root, tmp_path):
    launcher = str(Path(sys.executable).parent / "accelerate")
    common = ["find-heads", "--model", str(model_dir), "--dataset", "refcoco", "--root",
              str(refer_root), "--n", "8", "--repeats", "2", "--k", "2", "--quiet"]
    single = tmp_path / "single.json"
    assert main([*common, "--device", "cpu", "--cache-dir", str(tmp_path / "c1"),
                 "-o", str(single)]) == 0
    multi = tmp_path / "multi.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "minilocal.cli", *common,
         "--cache-dir", str(tmp_path / "c2"), "-o", str(multi)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = HeadTable.from_json(single), HeadTable.from_json(multi)
    assert a.heads == b.heads and a.sample_ids == b.sample_ids
    np.testing.assert_array_equal(a.frequencies, b.frequencies)


def test_quantization_option_reaches_the_loader(model_dir, tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.new("RGB", (40, 40)).save(img)
    assert main(["ground", str(img), "the thing", "--model", str(model_dir), "--heads", "L0H0",
                 "--device", "cpu", "--quantization", "4bit"]) == 2
    err = capsys.readouterr().err
    assert "4bit" in err or "bitsandbytes" in err or "CUDA" in err
    assert "Fix:" in err


def test_eval_on_shapes_defaults_to_its_heldout_split(tmp_path, capsys):
    """The shapes world has train / selection / heldout splits, no "val": eval picks
    heldout (and find-heads selection) unless --split is given."""
    preds = tmp_path / "p.jsonl"
    assert main(["eval", "--model", "shapes", "--dataset", "shapes", "--heads", "L3H0",
                 "--device", "cpu", "--limit", "2", "--quiet",
                 "-o", str(preds)]) == 0
    rec = _json_out(capsys)
    assert rec["split"] == "heldout" and rec["n"] == 2
    first = json.loads(preds.read_text().splitlines()[0])
    assert "heldout" in json.dumps(first)
    from minilocal.cli import build_parser

    args = build_parser().parse_args(["find-heads", "--model", "shapes", "--dataset", "shapes"])
    assert args.split is None and args.default_splits == ("train", "selection")

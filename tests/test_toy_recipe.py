"""The training recipe of the shipped shapes LVLM (python -m minilocal.toy.recipe)."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from minilocal.toy import lvlm, recipe, train

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "minilocal" / "assets" / "shapes-lvlm"


def _chain(report: dict) -> list[dict]:
    """The shipped training report's stages, first stage first."""
    out = []
    while report:
        out.append(report)
        report = report.get("init_report")
    return out[::-1]


def _comparable(config: dict) -> dict:
    """A recorded config with today's defaults for fields added later, without ``init``."""
    full = json.loads(json.dumps(asdict(train.TrainConfig())))
    full.update({k: v for k, v in config.items() if k not in ("spec", "world")})
    full["spec"] = {**full["spec"], **config["spec"]}
    full["world"] = {**full["world"], **config["world"]}
    full.pop("init")
    return full


def test_recipe_is_what_made_the_shipped_model(tmp_path):
    """Each stage of recipe.SHIPPED parses to exactly the config its training report
    records (threads included), in the same order, each starting from the one before."""
    chain = _chain(json.loads((SHIPPED_DIR / "training_report.json").read_text()))
    assert len(chain) == len(recipe.SHIPPED)
    for i, (stage, report) in enumerate(zip(recipe.SHIPPED, chain)):
        cfg, out, *_ = train._parse(recipe.stage_argv(recipe.SHIPPED, tmp_path, i))
        assert out == str(tmp_path / stage.name)
        assert cfg.init == (None if i == 0 else str(tmp_path / recipe.SHIPPED[i - 1].name))
        assert _comparable(json.loads(json.dumps(asdict(cfg)))) == _comparable(report["config"]), stage.name
        assert report["threads"] == cfg.threads


def test_print_lists_the_train_commands(capsys):
    recipe.main(["--out", "/tmp/r", "--print"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(recipe.SHIPPED)
    assert lines[0].startswith("python -m minilocal.toy.train --out /tmp/r/S1 --layers 4")
    assert "--init /tmp/r/S1" in lines[1]


TINY_ARGS = ("--image-size", "32", "--patch-size", "4", "--vision-hidden", "16", "--layers", "2",
             "--heads", "2", "--kv-heads", "2", "--hidden", "32", "--intermediate", "64",
             "--batch", "2", "--questions", "2", "--warmup", "1", "--probe-every", "0",
             "--probe-items", "1")
TINY_RECIPE = (recipe.Stage("a", TINY_ARGS + ("--steps", "2")),
               recipe.Stage("b", TINY_ARGS + ("--steps", "4", "--start-index", "4",
                                              "--plant", "L1H0")))


def test_recipe_chains_skips_and_resumes(tmp_path, monkeypatch):
    whole = recipe.run(TINY_RECIPE, tmp_path / "whole", progress=False, checkpoint_every=1)
    assert whole == tmp_path / "whole" / "b"
    report = json.loads((whole / "training_report.json").read_text())
    assert report["command"].startswith("python -m minilocal.toy.train --out ")
    assert report["init_report"]["config"]["steps"] == 2  # the chain is recorded

    # interrupt stage b at its step 3: stage a is then skipped, b resumes from step 3
    real = train.make_batch

    def dies(step, cfg, *args, **kwargs):
        if cfg.steps == 4 and step == 3:
            raise KeyboardInterrupt
        return real(step, cfg, *args, **kwargs)

    monkeypatch.setattr(train, "make_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(TINY_RECIPE, tmp_path / "cut", progress=False, checkpoint_every=1)
    assert recipe.finished(tmp_path / "cut" / "a") and not recipe.finished(tmp_path / "cut" / "b")
    calls = []
    monkeypatch.setattr(train, "make_batch", lambda step, cfg, *a, **k: calls.append(step)
                        or real(step, cfg, *a, **k))
    recipe.run(TINY_RECIPE, tmp_path / "cut", progress=False, checkpoint_every=1)
    assert calls == [3]  # stage a skipped, stage b resumed at its last step
    a, _ = lvlm.load_toy(whole)
    b, _ = lvlm.load_toy(tmp_path / "cut" / "b")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_empty_recipe_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no stages"):
        recipe.run((), tmp_path)

"""The embedded model's figures: layouts, world and id stored in the model, head search and
held-out report on a tiny trained model."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from minilocal.adapters import get_adapter
from minilocal.grounding import ground
from minilocal.metrics import box_iou
from minilocal.selection import HeadTable
from minilocal.toy import evaluate, lvlm, train
from minilocal.toy import world as W

TINY = lvlm.ModelSpec(image_size=32, patch_size=4, vision_hidden=16, layers=2, heads=2,
                      kv_heads=2, hidden=32, intermediate=64)


@pytest.fixture(scope="module")
def tiny_textured(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_textured")
    cfg = train.TrainConfig(spec=TINY, steps=2, batch=2, questions=2, warmup=1, probe_every=0,
                            probe_items=2, world=replace(W.WorldConfig(), texture=True))
    train.train(cfg, out, progress=False)
    return out


def test_model_carries_its_world_and_id(tiny_textured, tmp_path):
    model, processor = lvlm.load_toy(tiny_textured)
    assert lvlm.world_of(model) == replace(W.WorldConfig(), texture=True)
    flat = replace(W.WorldConfig(), texture=False, max_objects=3)
    cfg = train.TrainConfig(spec=TINY, steps=1, batch=1, questions=1, warmup=1, probe_every=0,
                            probe_items=1, world=flat)
    train.train(cfg, tmp_path, progress=False)
    assert lvlm.world_of(lvlm.load_toy(tmp_path)[0]) == flat
    assert get_adapter(model, processor).model_id() == lvlm.MODEL_ID
    bare = lvlm.build_model(TINY, lvlm.build_processor(TINY))
    assert lvlm.world_of(bare) == W.WorldConfig()  # nothing stored: the default world


def test_question_first_layout_prompt_and_training_sequence():
    spec = replace(TINY, layout="question_first")
    processor = lvlm.build_processor(spec)
    model = lvlm.build_model(spec, processor)
    adapter = get_adapter(model, processor)
    s = W.shapes_sample("train", 3, questions=2)
    qa = [(e, lvlm.answer(s.scene.box(t), (96, 96), spec.grid)) for t, e in zip(s.targets, s.exprs)]
    batch = lvlm.encode_questions(processor, [s.scene.image], [qa], layout="question_first")
    prep = adapter.prepare(Image.fromarray(s.scene.image), s.exprs[0])
    n = prep.inputs["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][0, :n], prep.inputs["input_ids"][0])
    tokens = processor.tokenizer.convert_ids_to_tokens(prep.inputs["input_ids"][0])
    # the expression comes before the image; the query is a "." after the image
    assert tokens[-1] == "." and tokens[-2] == "<image>"
    assert tokens.index("is") < tokens.index("<image>")
    labels = batch["labels"][0]
    assert int((labels != -100).sum()) == 2  # one question per image in this layout
    with pytest.raises(ValueError, match="layout"):
        lvlm.build_model(replace(TINY, layout="sideways"), processor)


def test_search_and_heldout_report(tiny_textured, tmp_path):
    table = evaluate.search_heads(tiny_textured, n_items=6, n=4, repeats=2, k=2,
                                  cache_dir=tmp_path / "cache", out=tmp_path / "heads.json",
                                  progress=False)
    assert isinstance(table, HeadTable) and len(table.heads) == 2
    assert HeadTable.from_json(tmp_path / "heads.json") == table
    rep = evaluate.heldout_report(tiny_textured, table, n_items=6, progress=False)
    acc = rep["acc@0.5"]
    assert rep["n_heldout"] == 6 and rep["heads"] == [f"L{a}H{b}" for a, b in table.heads]
    for key in ("selected_heads", "mean_of_all_heads", "random_head_expected", "centre_box"):
        assert 0.0 <= acc[key] <= 1.0
    best = acc["best_single_head_on_heldout"]["acc"]
    assert best >= acc["random_head_expected"]  # the best head is at least the mean head
    assert 0.0 <= rep["miou_pseudo_mask"] <= 1.0 and rep["miou_sam"] is None
    assert sum(v["n"] for v in rep["by_kind"].values()) == 6
    assert rep["planted_heads"] == []  # trained on the answer loss alone
    json.dumps(rep)  # JSON-able


def test_centre_box_baseline_is_measured_not_assumed(tiny_textured):
    rep = evaluate.heldout_report(tiny_textured, [(0, 0)], n_items=8, progress=False)
    items = W.shapes_dataset("heldout", 8, cfg=replace(W.WorldConfig(), texture=True))
    sizes = np.array([[(it.box[2] - it.box[0]), (it.box[3] - it.box[1])] for it in items])
    assert sizes.min() > 0 and 0.0 <= rep["acc@0.5"]["centre_box"] <= 1.0


def test_report_on_the_selection_split_for_model_choice(tiny_textured):
    rep = evaluate.heldout_report(tiny_textured, [(0, 0)], n_items=3, split="selection",
                                  start=300, progress=False)
    assert rep["split"] == "selection" and rep["first_item"] == 300 and rep["n_heldout"] == 3
    # the figures are those of selection items 300..302, recomputed here step by step
    model, processor = lvlm.load_toy(tiny_textured)
    adapter = get_adapter(model, processor)
    world = lvlm.world_of(model)
    want = []
    for i in range(300, 303):
        it = W.shapes_item("selection", i, world)
        attn, prep = adapter.attention(it.image, it.expr)
        box = ground(attn, [(0, 0)], prep.geometry).box
        want.append(0.0 if box is None else round(float(box_iou(box, it.box)), 4))
    assert rep["box_iou_selected"] == want
    with pytest.raises(ValueError, match="heldout"):
        evaluate.heldout_report(tiny_textured, [(0, 0)], n_items=1, split="train",
                                progress=False)


def test_curriculum_starts_with_single_objects():
    cfg = train.TrainConfig(curriculum=300)
    worlds = [train.world_at(s, cfg) for s in (0, 74, 75, 150, 299, 300, 5000)]
    assert [(w.min_objects, w.max_objects) for w in worlds] == [
        (1, 1), (1, 1), (1, 2), (1, 3), (1, 4), (2, 4), (2, 4)]
    assert train.world_at(10, train.TrainConfig()) == W.WorldConfig()  # no curriculum
    processor = lvlm.build_processor(TINY)
    _, n_answers = train.make_batch(0, replace(cfg, spec=TINY, batch=3), processor)
    assert n_answers == 3  # one object per image: one question each
    parsed, *_ = train._parse(["--curriculum", "40", "--no-texture", "--layout", "question_first"])
    assert parsed.curriculum == 40 and not parsed.world.texture
    assert parsed.spec.layout == "question_first"


def test_second_stage_starts_from_the_saved_weights(tiny_textured, tmp_path):
    base = dict(spec=TINY, batch=1, questions=1, warmup=1, probe_every=0, probe_items=1)
    zero = train.train(train.TrainConfig(steps=1, lr=0.0, init=str(tiny_textured), **base),
                       None, progress=False)["model"]
    saved, _ = lvlm.load_toy(tiny_textured)
    for a, b in zip(zero.parameters(), saved.parameters()):
        assert torch.equal(a, b)  # lr 0: the second stage kept the first stage's weights
    with pytest.raises(ValueError, match="sizes"):
        train.train(train.TrainConfig(steps=1, init=str(tiny_textured),
                                      **{**base, "spec": replace(TINY, layers=3)}), None,
                    progress=False)

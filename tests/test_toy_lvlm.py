"""The shapes LVLM builders and the training script, on a tiny configuration."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from minilocal.adapters import get_adapter
from minilocal.errors import DatasetError
from minilocal.toy import lvlm, train
from minilocal.toy import world as W
from minilocal.toy.checkpoint import CHECKPOINT

TINY = lvlm.ModelSpec(image_size=32, patch_size=4, vision_hidden=16, layers=2, heads=2,
                      kv_heads=2, hidden=32, intermediate=64)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_toy")
    cfg = train.TrainConfig(spec=TINY, steps=3, batch=2, questions=2, warmup=1,
                            probe_every=0, probe_items=2)
    report = train.train(cfg, out, progress=False)
    return out, report


def test_training_smoke_saves_a_loadable_model(tiny_dir):
    out, report = tiny_dir
    saved = json.loads((out / "training_report.json").read_text())
    assert saved["threads"] == 1 and saved["config"]["steps"] == 3
    assert len(saved["log"]) >= 1 and np.isfinite(saved["log"][-1]["loss"])
    probe = saved["probes"][-1]
    assert 0 <= probe["answer"] <= 1 and len(probe["in_box"]) == TINY.layers
    model, processor = lvlm.load_toy(out)
    assert lvlm.spec_of(model) == TINY
    assert model.config.minilocal_prompt_template == lvlm.PROMPT_TEMPLATE
    for a, b in zip(model.parameters(), report["model"].parameters()):
        assert torch.equal(a, b)


def test_training_is_deterministic():
    cfg = train.TrainConfig(spec=TINY, steps=2, batch=2, questions=2, warmup=1,
                            probe_every=0, probe_items=1)
    a = train.train(cfg, None, progress=False)["model"]
    b = train.train(cfg, None, progress=False)["model"]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = train.train(train.TrainConfig(**{**cfg.__dict__, "seed": 1}), None, progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c["model"].parameters()))


def test_adapter_works_unchanged_and_capture_equals_eager(tiny_dir):
    out, _ = tiny_dir
    model, processor = lvlm.load_toy(out)
    adapter = get_adapter(model, processor)
    item = W.shapes_item("heldout", 3)
    attn, prep = adapter.attention(item.image, item.expr)
    ref, _ = adapter.attention(item.image, item.expr, method="eager")
    assert attn.shape == (TINY.layers, TINY.heads, *TINY.grid)
    assert np.abs(attn - ref).max() < 1e-5
    assert prep.prompt == lvlm.PROMPT_TEMPLATE.format(image="<image>", expr=item.expr + ".")
    tokens = processor.tokenizer.convert_ids_to_tokens(prep.inputs["input_ids"][0])
    assert tokens[0] == "<s>" and tokens[-1] == "." and "<unk>" not in tokens


def test_training_sequence_starts_with_the_inference_prompt():
    processor = lvlm.build_processor(TINY)
    model = lvlm.build_model(TINY, processor)
    adapter = get_adapter(model, processor)
    s = W.shapes_sample("train", 5, questions=2)
    qa = [(e, lvlm.answer(s.scene.box(t), (96, 96), TINY.grid)) for t, e in zip(s.targets, s.exprs)]
    batch = lvlm.encode_questions(processor, [s.scene.image], [qa])
    prep = adapter.prepare(Image.fromarray(s.scene.image), s.exprs[0])
    n = prep.inputs["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][0, :n], prep.inputs["input_ids"][0])
    assert torch.allclose(batch["pixel_values"], prep.inputs["pixel_values"])
    # only answer tokens are supervised: 2 per question, the first right after the "."
    labels = batch["labels"][0]
    assert int((labels != -100).sum()) == 2 * len(qa)
    assert labels[n] != -100 and (labels[:n] == -100).all()
    assert processor.tokenizer.convert_ids_to_tokens(int(labels[n])) == qa[0][1].split()[0]


def test_answer_is_the_centre_cell():
    assert lvlm.answer([0, 0, 8, 8], (96, 96), (24, 24)) == "r1 c1"
    assert lvlm.answer([80, 40, 96, 56], (96, 96), (24, 24)) == "r12 c22"
    assert lvlm.answer([90, 90, 96, 96], (96, 96), (24, 24)) == "r23 c23"


def test_sincos_positions_encode_row_and_column():
    table = lvlm.sincos_positions((6, 5), 16)
    assert table.shape == (31, 16) and table[0].abs().max() == 0
    # cells of one row share the row half; cells of one column share the column half
    cells = table[1:].reshape(6, 5, 16)
    assert torch.allclose(cells[2, 0, :8], cells[2, 4, :8])
    assert torch.allclose(cells[0, 3, 8:], cells[5, 3, 8:])
    assert not torch.allclose(cells[0, 0], cells[1, 0])


def test_load_toy_without_a_model_raises(tmp_path):
    with pytest.raises(DatasetError, match="minilocal.toy.train"):
        lvlm.load_toy(tmp_path)


def test_place_positions_peak_at_the_object_centre():
    table = lvlm.place_positions((24, 24), 64)
    assert table.shape == (577, 64) and table[0].abs().max() == 0
    cells = table[1:].reshape(24, 24, 64)
    # the mean code of an object spanning rows 5..13, columns 14..20 is closest (of all
    # single cells) to the code of its centre cell (9, 17)
    mean = cells[5:14, 14:21].mean((0, 1))
    rows = (cells[:, 0, :16] - mean[:16]).norm(dim=-1)
    cols = (cells[0, :, 16:32] - mean[16:32]).norm(dim=-1)
    assert int(rows.argmin()) == 9 and int(cols.argmin()) == 17
    assert table[1:, 32:].abs().max() == 0  # the other half starts empty


def test_patch_init_std_and_positions_options():
    processor = lvlm.build_processor(TINY)
    default = lvlm.build_model(TINY, processor, seed=0)
    again = lvlm.build_model(TINY, processor, seed=0)
    w = default.model.vision_tower.embeddings.patch_embedding.weight.detach()
    assert torch.equal(w, again.model.vision_tower.embeddings.patch_embedding.weight)
    assert abs(float(w.std()) - 0.02) < 0.006
    spec = lvlm.ModelSpec(**{**TINY.__dict__, "patch_init_std": 0.2, "positions": "place"})
    big = lvlm.build_model(spec, processor, seed=0)
    assert abs(float(big.model.vision_tower.embeddings.patch_embedding.weight.detach().std()) - 0.2) < 0.06
    pos = big.model.vision_tower.embeddings.position_embedding.weight
    assert torch.equal(pos, lvlm.place_positions(TINY.grid, TINY.vision_hidden))
    with pytest.raises(ValueError, match="sincos"):
        lvlm.build_model(lvlm.ModelSpec(**{**TINY.__dict__, "positions": "nope"}), processor)


def test_command_line_sets_the_init_options():
    cfg, out, *_ = train._parse(["--out", "somewhere", "--patch-init-std", "0.2", "--rope-theta",
                                "1e6", "--positions", "place", "--layers", "4"])
    assert out == "somewhere"
    assert (cfg.spec.patch_init_std, cfg.spec.rope_theta, cfg.spec.positions,
            cfg.spec.layers) == (0.2, 1e6, "place", 4)
    default, *_ = train._parse([])
    assert default.spec == lvlm.ModelSpec()  # the shipped model's sizes and init


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_planter_recomputes_the_heads_real_attention_rows(dropout):
    """The planting loss reads the same attention the model attends with (eager), also
    with background cells hidden, and its gradient reaches the planted layer's query and
    key projections."""
    spec = lvlm.ModelSpec(image_size=32, patch_size=4, vision_hidden=16, layers=2, heads=2,
                          kv_heads=2, hidden=32, intermediate=64)
    processor = lvlm.build_processor(spec)
    model = lvlm.build_model(spec, processor, seed=0)
    model.set_attn_implementation("eager")
    world = W.WorldConfig(image_size=32)
    cfg = train.TrainConfig(spec=spec, world=world, batch=2, questions=2,
                            background_dropout=dropout)
    batch, _, maps = train.make_batch(0, cfg, processor, targets=True)
    hidden = (batch["attention_mask"] == 0) & (batch["input_ids"] == model.config.image_token_id)
    assert bool(hidden.any()) == (dropout > 0)
    planter = train.Planter(model, ((1, 1),), model.config.image_token_id)
    out = model(**batch, output_attentions=True)
    rows = out.attentions[1][:, 1]  # [B, T, T]: layer 1, head 1
    sup = batch["labels"] != -100
    queries = (~sup[:, :-1]) & sup[:, 1:]
    image = batch["input_ids"][0] == model.config.image_token_id
    want = 0.0
    for b in range(2):
        pos = torch.nonzero(queries[b]).flatten()
        assert len(pos) == len(maps[b]) >= 1
        target = torch.as_tensor(np.stack(maps[b]), dtype=torch.float32)
        assert torch.allclose(target.sum(-1), torch.ones(len(pos)))
        logp = torch.log(rows[b, pos][:, image])  # -inf on hidden cells, where target = 0
        want = want - torch.where(target > 0, target * logp, 0.0).sum()
    want = want / sum(len(m) for m in maps)
    got = planter.loss(batch, maps)
    assert torch.isfinite(got) and torch.allclose(got, want, rtol=1e-4)
    got.backward()
    layer = model.model.language_model.layers[1].self_attn
    assert layer.q_proj.weight.grad.abs().sum() > 0 and layer.k_proj.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    planter.remove()
    model(**batch)
    assert planter.saved == {}


def test_training_with_planted_heads_marks_the_model(tmp_path):
    cfg = train.TrainConfig(spec=TINY, steps=2, batch=2, questions=2, warmup=1, probe_every=0,
                            probe_items=1, world=W.WorldConfig(image_size=32),
                            plant=((1, 0),))
    report = train.train(cfg, tmp_path, progress=False)
    assert "plant_loss" in report["log"][0] and np.isfinite(report["log"][0]["plant_loss"])
    model, _ = lvlm.load_toy(tmp_path)
    assert model.config.minilocal_planted_heads == [[1, 0]]
    from minilocal.toy import evaluate

    rep = evaluate.heldout_report(tmp_path, [(0, 1)], n_items=2, progress=False)
    assert rep["planted_heads"] == ["L1H0"]  # the report says how the heads got there
    with pytest.raises(ValueError, match="L5H0"):
        train.train(train.TrainConfig(spec=TINY, steps=1, plant=((5, 0),)), None, progress=False)
    cli, *_ = train._parse(["--plant", "L3H2,L5H6", "--plant-weight", "0.5"])
    assert cli.plant == ((3, 2), (5, 6)) and cli.plant_weight == 0.5


def test_background_dropout_hides_only_background_image_cells(tmp_path):
    world = W.WorldConfig(image_size=32)
    processor = lvlm.build_processor(TINY)
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    cfg = train.TrainConfig(spec=TINY, world=world, batch=4, questions=2,
                            background_dropout=0.6)
    batch, _ = train.make_batch(3, cfg, processor)
    again, _ = train.make_batch(3, cfg, processor)
    assert torch.equal(batch["attention_mask"], again["attention_mask"])  # part of the seed
    plain, _ = train.make_batch(3, replace(cfg, background_dropout=0.0), processor)
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    n_hidden = n_background = 0
    for b in range(cfg.batch):
        s = W.shapes_sample("train", 3 * cfg.batch + b, world, questions=cfg.questions)
        background = train.background_cells(s.scene.masks, TINY.grid)
        # a background cell holds no object pixel; every object pixel is in a kept cell
        h, w = TINY.grid
        side = world.image_size // h
        union = s.scene.masks.any(0)
        cells = union.reshape(h, side, w, side).any((1, 3)).ravel()
        assert not (background & cells).any() and (background | cells).all()
        pos = torch.nonzero(batch["input_ids"][b] == image_token).flatten()
        hidden = (batch["attention_mask"][b, pos] == 0).numpy()
        assert not (hidden & ~background).any()  # objects are never hidden
        text = batch["input_ids"][b] != image_token
        assert torch.equal(batch["attention_mask"][b][text], plain["attention_mask"][b][text])
        n_hidden += hidden.sum()
        n_background += background.sum()
    assert 0.4 < n_hidden / n_background < 0.8  # about the share asked for
    report = train.train(replace(cfg, steps=1, batch=2, warmup=1, probe_every=0,
                                 probe_items=1), tmp_path, progress=False)
    assert np.isfinite(report["log"][0]["loss"])
    assert report["config"]["background_dropout"] == 0.6
    with pytest.raises(ValueError, match="--background-dropout"):
        train.train(replace(cfg, background_dropout=1.0), None, progress=False)
    cli, *_ = train._parse(["--background-dropout", "0.5"])
    assert cli.background_dropout == 0.5 and train._parse([])[0].background_dropout == 0


def test_text_stage_trains_the_decoder_only_and_is_recorded():
    processor = lvlm.build_processor(TINY)
    model = lvlm.build_model(TINY, processor, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = train.TrainConfig(spec=TINY, text_steps=3, text_batch=2, questions=2)
    log = train.text_stage(model, processor, cfg, progress=False)
    assert [r["step"] for r in log] == [0, 2] and all(np.isfinite(r["loss"]) for r in log)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("language_model" in n for n in changed) and "lm_head.weight" in changed
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in changed)
    report = train.train(replace(cfg, steps=1, batch=1, warmup=1, probe_every=0, probe_items=1),
                         None, progress=False)
    assert len(report["text_stage_log"]) == 2
    assert report["config"]["text_steps"] == 3
    cli, *_ = train._parse(["--text-steps", "7", "--text-batch", "5"])
    assert (cli.text_steps, cli.text_batch) == (7, 5)


def test_a_second_stage_starts_from_the_saved_model_and_records_the_first(tiny_dir, tmp_path):
    first, first_report = tiny_dir
    cfg = train.TrainConfig(spec=TINY, steps=1, batch=2, questions=2, warmup=1,
                            probe_every=0, probe_items=1, init=str(first), start_index=6,
                            lr=0.0, final_lr=0.0)
    report = train.train(cfg, tmp_path, progress=False)
    saved = json.loads((first / "training_report.json").read_text())
    assert report["init_report"] == saved  # the chain of stages, in one file
    assert json.loads((tmp_path / "training_report.json").read_text())["init_report"] == saved
    # lr 0: the second stage's weights are the first stage's
    for a, b in zip(report["model"].parameters(), first_report["model"].parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="differ"):
        train.train(replace(cfg, spec=replace(TINY, layers=3)), None, progress=False)


def test_cells_in_box_counts_cells_whose_centre_is_inside():
    from minilocal.geometry import Geometry

    geometry = Geometry.resize((96, 96), (24, 24))  # 4 px cells
    inside = train.cells_in_box(np.array([8, 8, 24, 16]), geometry)
    assert inside.shape == (24, 24)
    rows, cols = np.nonzero(inside)
    assert set(rows) == {2, 3} and set(cols) == {2, 3, 4, 5}  # centres 10..22 px, 10..14 px
    # a box that covers less than half of a cell holds no cell centre
    assert not train.cells_in_box(np.array([0, 0, 1.9, 1.9]), geometry).any()
    # a margin of one cell adds a ring of cells around the box
    wide = train.cells_in_box(np.array([8, 8, 24, 16]), geometry, margin=1)
    rows, cols = np.nonzero(wide)
    assert set(rows) == {1, 2, 3, 4} and set(cols) == {1, 2, 3, 4, 5, 6}


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A run killed mid-way resumes from out/checkpoint.pt when the same command runs
    again, and ends with the weights and log of an uninterrupted run."""
    cfg = train.TrainConfig(spec=TINY, steps=6, batch=2, questions=2, warmup=1,
                            probe_every=3, probe_items=1, plant=((1, 0),))
    whole = train.train(cfg, tmp_path / "whole", progress=False, checkpoint_every=2)
    assert not (tmp_path / "whole" / CHECKPOINT).exists()  # removed at the end

    real = train.make_batch

    def dies_at_step_5(step, *args, **kwargs):
        if step == 5:
            raise KeyboardInterrupt
        return real(step, *args, **kwargs)

    monkeypatch.setattr(train, "make_batch", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, tmp_path / "cut", progress=False, checkpoint_every=2)
    assert (tmp_path / "cut" / CHECKPOINT).is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    monkeypatch.setattr(train, "make_batch", real)

    with pytest.raises(ValueError, match="seed.*delete"):  # other settings: clear error
        train.train(replace(cfg, seed=1), tmp_path / "cut", progress=False, checkpoint_every=2)
    resumed = train.train(cfg, tmp_path / "cut", progress=False, checkpoint_every=2)
    assert resumed["resumed_at"] == [4]
    for p, q in zip(whole["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(p, q)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(resumed["log"]) == strip(whole["log"])
    assert strip(resumed["probes"]) == strip(whole["probes"])
    assert not (tmp_path / "cut" / CHECKPOINT).exists()
    with pytest.raises(ValueError, match="checkpoint-every"):
        train.train(cfg, tmp_path / "x", progress=False, checkpoint_every=-1)


def test_sharpen_term_counts_only_far_cells_above_the_floor():
    """Uniform attention on a 4 x 4 grid with the referent in one corner: the 12 cells more
    than one cell away each sit log 4 above a quarter of uniform; the three neighbours and
    the referent's cell do not count, nor do hidden (-inf) or low cells."""
    n = 16
    logp = torch.full((1, n), math.log(1 / n), requires_grad=True)
    target = torch.zeros(1, n)
    target[0, 0] = 1
    value = train.sharpen_term(logp, target, (4, 4))
    assert value.item() == pytest.approx(12 * math.log(4), rel=1e-6)
    value.backward()
    far = torch.ones(4, 4)
    far[:2, :2] = 0
    assert torch.equal(logp.grad.view(4, 4), far)
    low = torch.full((1, n), math.log(0.1 / n))
    low[0, 5] = float("-inf")
    assert train.sharpen_term(low, target, (4, 4)).item() == 0


def test_planter_adds_the_sharpening_term(tmp_path):
    """Planter(sharpen=w) = the cross-entropy + w * the sharpening term, both per query,
    with far cells found independently (scipy dilation of the referent's cells)."""
    from scipy.ndimage import binary_dilation

    spec = lvlm.ModelSpec(image_size=32, patch_size=4, vision_hidden=16, layers=2, heads=2,
                          kv_heads=2, hidden=32, intermediate=64)
    processor = lvlm.build_processor(spec)
    model = lvlm.build_model(spec, processor, seed=0)
    model.set_attn_implementation("eager")
    cfg = train.TrainConfig(spec=spec, world=W.WorldConfig(image_size=32), batch=2, questions=2)
    batch, _, maps = train.make_batch(0, cfg, processor, targets=True)
    plain = train.Planter(model, ((1, 1),), model.config.image_token_id)
    model(**batch)
    ce = plain.loss(batch, maps).detach()
    plain.remove()
    sharp = train.Planter(model, ((1, 1),), model.config.image_token_id, sharpen=0.1,
                          grid=spec.grid)
    out = model(**batch, output_attentions=True)
    got = sharp.loss(batch, maps)
    rows = out.attentions[1][:, 1].detach()
    sup = batch["labels"] != -100
    queries = (~sup[:, :-1]) & sup[:, 1:]
    image = batch["input_ids"][0] == model.config.image_token_id
    floor = math.log(train.SHARPEN_FLOOR / int(image.sum()))
    term = 0.0
    for b in range(2):
        for q, pos in enumerate(torch.nonzero(queries[b]).flatten()):
            near = binary_dilation(maps[b][q].reshape(spec.grid) > 0, np.ones((3, 3), bool))
            logp = torch.log(rows[b, pos][image]).numpy().reshape(spec.grid)
            term += np.maximum(logp - floor, 0)[~near].sum()
    count = sum(len(m) for m in maps)
    assert term > 0
    assert got.item() == pytest.approx(ce.item() + 0.1 * term / count, rel=1e-4)
    assert sharp.last_sharpen == pytest.approx(term / count, rel=1e-4)
    with pytest.raises(ValueError, match="grid"):
        train.Planter(model, ((1, 1),), model.config.image_token_id, sharpen=0.1)
    with pytest.raises(ValueError, match="plant-sharpen"):
        train.train(replace(cfg, plant_sharpen=-1.0, plant=((1, 1),)), None, progress=False)
    assert train._parse(["--plant-sharpen", "0.05"])[0].plant_sharpen == 0.05


def test_worker_processes_render_the_same_batches_and_weights():
    """--workers only changes where the batches are rendered: same batches, same weights."""
    cfg = train.TrainConfig(spec=TINY, steps=3, batch=2, questions=2, warmup=1,
                            probe_every=0, probe_items=1, background_dropout=0.5)
    processor = lvlm.build_processor(TINY)
    here = list(train.batches(1, cfg, processor, targets=True))
    there = list(train.batches(1, cfg, processor, targets=True, workers=2))
    assert len(here) == len(there) == 2
    for (a, na, ma), (b, nb, mb) in zip(here, there):
        assert a.keys() == b.keys() and na == nb
        for k in a:
            assert torch.equal(a[k], b[k]), k
        assert all(np.array_equal(x, y) for rx, ry in zip(ma, mb) for x, y in zip(rx, ry))
    w0 = train.train(cfg, None, progress=False)["model"]
    w2 = train.train(cfg, None, progress=False, workers=2)["model"]
    for p, q in zip(w0.parameters(), w2.parameters()):
        assert torch.equal(p, q)


def test_command_line_world_presets():
    default, *_ = train._parse([])
    assert default.world == W.WorldConfig()  # the shipped model's world
    wide, *_ = train._parse(["--world", "wide"])
    assert wide.world == W.WIDE
    drawn, *_ = train._parse(["--world", "drawn"])
    assert drawn.world == W.DRAWN and not drawn.world.texture
    flat, *_ = train._parse(["--no-texture"])
    assert flat.world == replace(W.WorldConfig(), texture=False)
    easy, *_ = train._parse(["--world", "easy"])
    assert (easy.world.relational, easy.world.distractor, easy.world.twin) == (0, 0, 0)
    assert easy.world.name == "easy" and easy.world.texture
    crowded, *_ = train._parse(["--world", "crowded"])
    assert crowded.world.min_objects == 5 and crowded.world.name == "crowded"
    with pytest.raises(SystemExit):
        train._parse(["--world", "busy"])


def test_command_line_workers():
    assert train._parse([])[3] == 0 and train._parse(["--workers", "3"])[3] == 3
    with pytest.raises(SystemExit):
        train._parse(["--workers", "-1"])

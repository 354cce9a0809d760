"""Pipeline (Grounder) and the resumable evaluation loop, on a tiny random LLaVA."""

import json

import numpy as np
import pytest
from PIL import Image

from minilocal.adapters import get_adapter
from minilocal.data import GroundingDataset, GroundingItem
from minilocal.errors import CacheError, HeadTableError
from minilocal.evaluation import evaluate, merge_predictions, read_predictions, score_predictions
from minilocal.pipeline import Grounder
from minilocal.selection import HeadTable


def _items(n=5):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        arr = rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)
        mask = np.zeros(arr.shape[:2], bool)
        mask[5:15, 10:30] = True
        items.append(GroundingItem(
            item_id=f"t/{i}", expr="the red circle", box=np.array([10.0, 5, 30, 15]),
            image_id=str(i), dataset="t", split="val",
            load_image=lambda a=arr: Image.fromarray(a), load_mask=lambda m=mask: m,
        ))
    return GroundingDataset(items, "t")


@pytest.fixture()
def grounder(tiny_llava_pair):
    model, processor = tiny_llava_pair
    return Grounder(model, processor, get_adapter(model, processor), ["L2H1", (1, 3)])


def test_grounder_returns_box_and_mask(grounder):
    item = _items(1)[0]
    res = grounder.ground(item.image, "  the red circle ")
    assert res.expr == "the red circle." and res.attn.shape == (3, 4, 4, 4)
    assert res.mask.shape == (30, 40) and res.mask_source == "pseudo"
    d = res.to_dict()
    assert d["heads"] == ["L2H1", "L1H3"] and json.dumps(d)
    if res.box is not None:
        x0, y0, x1, y1 = res.box
        assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 30


def test_grounder_checks_heads(tiny_llava_pair):
    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    with pytest.raises(HeadTableError, match="does not exist"):
        Grounder(model, processor, adapter, ["L3H0"])
    table = HeadTable(model_id="other", num_layers=32, num_heads=32, heads=[(14, 24)])
    with pytest.raises(HeadTableError):
        Grounder(model, processor, adapter, table)


class _Interrupting:
    """A grounder that raises KeyboardInterrupt after ``after`` items."""

    def __init__(self, inner, after):
        self.inner, self.after, self.calls = inner, after, 0
        self.adapter, self.heads, self.settings = inner.adapter, inner.heads, inner.settings
        self.model = inner.model
        self.sam, self.mask_prompt, self.multimask = None, False, False

    def ground(self, image, expr):
        if self.calls == self.after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner.ground(image, expr)


def test_interrupted_evaluation_resumes_to_the_same_result(grounder, tmp_path):
    data = _items(5)
    full = evaluate(grounder, data, tmp_path / "full.jsonl", progress=False)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_Interrupting(grounder, 2), data, out, progress=False)
    assert len(read_predictions(out)) == 2
    with open(out, "a") as f:
        f.write('{"item_id": "t/2", "box_io')  # a half-written line from the interruption
    again = _Interrupting(grounder, 99)
    resumed = evaluate(again, data, out, progress=False)
    assert again.calls == 3 and resumed == full
    assert (tmp_path / "full.jsonl").read_text() == out.read_text()


def test_resuming_with_other_settings_is_refused(grounder, tmp_path):
    data = _items(2)
    evaluate(grounder, data, tmp_path / "p.jsonl", progress=False)
    grounder.heads = [(0, 0)]
    with pytest.raises(CacheError, match="other settings"):
        evaluate(grounder, data, tmp_path / "p.jsonl", progress=False)


def test_shards_merge_to_the_single_process_file(grounder, tmp_path):
    data = _items(5)
    single = tmp_path / "single.jsonl"
    evaluate(grounder, data, single, progress=False)
    out = tmp_path / "sharded.jsonl"
    for r in range(2):
        evaluate(grounder, data, out, progress=False, rank=r, world_size=2)
    merge_predictions(out, data.ids, 2)
    assert out.read_text() == single.read_text()
    assert score_predictions(out) == score_predictions(single)

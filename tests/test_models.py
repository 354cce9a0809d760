"""load_model: aliases, local folders saved and reloaded offline, errors, OOM translation;
the published head table."""

import json

import numpy as np
import pytest
import torch
from tiny_families import square_image, tiny_gemma3, tiny_smolvlm
from tiny_models import tiny_llava

from minilocal import models
from minilocal.adapters import Gemma3Adapter, LlavaAdapter, SmolVLMAdapter
from minilocal.errors import InputError, ModelNotSupportedError, OutOfMemoryError
from minilocal.models import (
    MODEL_ALIASES,
    default_heads_path,
    load_model,
    oom_guard,
    resolve_dtype,
    resolve_model,
)
from minilocal.selection import HeadTable


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    model, processor = tiny_llava()
    path = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model, processor


def test_reload_local_folder_gives_same_attention(llava_folder):
    path, original, processor = llava_folder
    model, _, adapter = load_model(path, device="cpu")
    assert isinstance(adapter, LlavaAdapter) and not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    image = square_image()[1]
    ours, _ = adapter.attention(image, "the red square")
    ref, _ = LlavaAdapter(original, processor).attention(image, "the red square")
    assert np.abs(ours - ref).max() < 1e-6


def test_adapter_kwargs_and_dtype_pass_through(llava_folder):
    path = llava_folder[0]
    model, _, adapter = load_model(path, device="cpu", dtype="bfloat16", image_mode="processor",
                                   attn_implementation="eager")
    assert adapter.image_mode == "processor"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    "build,cls", [(tiny_gemma3, Gemma3Adapter), (tiny_smolvlm, SmolVLMAdapter)]
)
def test_other_families_round_trip(tmp_path, build, cls):
    model, processor = build()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    _, _, adapter = load_model(tmp_path, device="cpu")
    assert type(adapter) is cls
    image = square_image()[1]
    ours, _ = adapter.attention(image, "a cat")
    ref, _ = cls(model, processor).attention(image, "a cat")
    assert np.abs(ours - ref).max() < 1e-6


def test_default_dtype():
    assert resolve_dtype(None, "cuda") == torch.float16  # T4: no bfloat16
    assert resolve_dtype(None, "cuda:1") == torch.float16
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("float8", "cpu")


def test_aliases():
    assert MODEL_ALIASES["llava-1.5-7b"] == "llava-hf/llava-1.5-7b-hf"
    assert MODEL_ALIASES["llava-1.5-13b"] == "llava-hf/llava-1.5-13b-hf"
    assert resolve_model("qwen2.5-vl-3b") == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert resolve_model("someorg/some-model") == "someorg/some-model"  # hub ids pass
    assert MODEL_ALIASES["shapes"].endswith("assets/shapes-lvlm")


@pytest.mark.parametrize("name", ["llava-99b", "./no/such/folder", "/no/such/folder", "a/b/c"])
def test_unknown_names(name):
    with pytest.raises(InputError, match="alias"):
        resolve_model(name)


def test_shapes_alias(monkeypatch, tmp_path, llava_folder):
    monkeypatch.setitem(MODEL_ALIASES, "shapes", str(tmp_path / "shapes-lvlm"))
    with pytest.raises(ModelNotSupportedError, match="shapes model is missing"):
        load_model("shapes", device="cpu")
    monkeypatch.setitem(MODEL_ALIASES, "shapes", str(llava_folder[0]))
    _, _, adapter = load_model("shapes", device="cpu")
    assert isinstance(adapter, LlavaAdapter)


def test_unsupported_family_fails_before_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    with pytest.raises(ModelNotSupportedError, match="paligemma"):
        load_model(tmp_path, device="cpu")  # there are no weights: they were never read


def test_quantization_errors(monkeypatch, llava_folder):
    path = llava_folder[0]
    with pytest.raises(InputError, match="'4bit'"):
        load_model(path, device="cpu", quantization="3bit")
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ModelNotSupportedError, match="pip install bitsandbytes"):
        load_model(path, device="cpu", quantization="4bit")
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ModelNotSupportedError, match="CUDA"):
        load_model(path, device="cpu", quantization="8bit")


def test_cuda_oom_is_translated(monkeypatch, llava_folder):
    from transformers import AutoModelForImageTextToText

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", boom)
    with pytest.raises(OutOfMemoryError) as info:
        load_model(llava_folder[0], device="cpu")
    message = str(info.value)
    assert "Tried to allocate 2.00 GiB" in message and "quantization='4bit'" in message
    assert "max_pixels" in message and isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    with pytest.raises(ValueError), oom_guard("testing"):  # other errors pass unchanged
        raise ValueError("not memory")


def test_published_head_table_reads_as_reported():
    path = default_heads_path("llava-1.5-7b")
    assert path is not None and path == default_heads_path("llava-hf/llava-1.5-7b-hf")
    table = HeadTable.from_json(path)
    assert table.source == "as reported"
    assert table.model_id == "llava-hf/llava-1.5-7b-hf"
    assert (table.num_layers, table.num_heads) == (32, 32)
    assert table.heads == [(14, 24), (14, 13)]
    assert table.frequencies is None  # nothing measured is stored
    for fact in ("figure", "57%", "L14H26", "41%"):
        assert fact in table.notes
    assert default_heads_path("qwen2.5-vl-3b") is None


def test_heads_json_in_model_folder_wins(tmp_path):
    HeadTable("x/y", 3, 4, [(1, 2)]).to_json(tmp_path / "heads.json")
    assert default_heads_path(tmp_path) == tmp_path / "heads.json"


def test_processor_backend_is_pil_even_where_torchvision_is_installed(monkeypatch, llava_folder):
    """transformers picks the torchvision image classes when torchvision is importable (as
    on Colab); minilocal asks for the PIL ones, so both machines give the same pixels
    (issue 17). Simulated here: torchvision is reported available, the class loads record
    which backend was asked for."""
    from transformers.models.auto import image_processing_auto as ipa

    from minilocal.models import IMAGE_BACKEND, load_processor

    asked = []
    original = ipa._load_class_with_fallback

    def spy(mapping, backend):
        asked.append(backend)
        return original(mapping, backend)

    monkeypatch.setattr(ipa, "_load_class_with_fallback", spy)
    monkeypatch.setattr(ipa, "is_torchvision_available", lambda: True)
    processor = load_processor(llava_folder[0])
    assert IMAGE_BACKEND == "pil" and asked and set(asked) == {"pil"}
    assert type(processor.image_processor).__name__.endswith("Pil")
    asked.clear()
    _, processor, _ = load_model(llava_folder[0], device="cpu")
    assert set(asked) == {"pil"}


def test_missing_model_or_no_internet_names_the_fix(monkeypatch):
    """A hub id that cannot be fetched (offline here) gives ModelLoadError with the fix;
    a gated model's message names the login (issue 17: Colab's common failures)."""
    from minilocal.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_model("someone-who/does-not-exist-17", device="cpu")
    assert "internet" in info.value.fix and isinstance(info.value, OSError)
    gated = models._load_failure("google/gemma-3-4b-it", OSError(
        "You are trying to access a gated repo. 401 Client Error"))
    assert "login" in gated.fix and "licence" in gated.fix
    missing = models._load_failure("llava-hf/llava-1.5-7b", OSError(
        "llava-hf/llava-1.5-7b is not a local folder and is not a valid model identifier"))
    assert "spelling" in missing.fix and "llava-1.5-7b" in missing.fix

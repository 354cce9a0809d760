"""Loading a vision-language model with its processor and adapter, in one call.

:func:`load_model` takes a hub id (``"llava-hf/llava-1.5-7b-hf"``), a local folder (for
example one written by ``save_pretrained``) or a short alias from :data:`MODEL_ALIASES`
(``"llava-1.5-7b"``, ``"qwen2.5-vl-3b"``, ``"shapes"`` = the small model that ships with
minilocal), and returns ``(model, processor, adapter)``:

* the config is read first, so an unsupported family fails before any weights load;
* the model class is transformers' ``AutoModelForImageTextToText`` (every supported family
  is registered there), the processor ``AutoProcessor``;
* dtype: float16 on CUDA by default (a Colab T4 has 15 GB and no bfloat16; a 7B model
  needs about 14 GB in float16), float32 on CPU;
* ``quantization="8bit" | "4bit"`` loads through bitsandbytes (CUDA only) for bigger
  models on small GPUs;
* a CUDA out-of-memory error becomes :class:`minilocal.errors.OutOfMemoryError`, whose
  message names the ways out (smaller model, 4-bit, fewer image pixels).

Nothing here downloads anything by itself: transformers does, from the hub, for hub ids.

Book: ``book/06_your_model.ipynb`` (and ``book/models.md`` for the support table).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Literal

import torch

from .adapters import Adapter, get_adapter, registered_model_types
from .errors import InputError, ModelLoadError, ModelNotSupportedError, OutOfMemoryError

Quantization = Literal["8bit", "4bit"] | None

#: The folder of the small shapes-world model packaged with minilocal.
SHAPES_FOLDER = Path(__file__).resolve().parent / "assets" / "shapes-lvlm"
#: Published head tables ("as reported"), one JSON file per model.
PUBLISHED_HEADS_FOLDER = Path(__file__).resolve().parent / "assets" / "published_heads"

#: Short names -> hub ids (``"shapes"`` -> the packaged folder). See ``book/models.md``
#: for what each family supports and which rows of the paper need a converted checkpoint.
MODEL_ALIASES: dict[str, str] = {
    "shapes": str(SHAPES_FOLDER),
    # the paper's rows that transformers loads as they are on the hub
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "deepseek-vl-1.3b": "deepseek-community/deepseek-vl-1.3b-chat",
    "deepseek-vl-7b": "deepseek-community/deepseek-vl-7b-chat",
    # a paper row through a third-party llava-hf conversion (unofficial, not verified here)
    "sharegpt4v-7b": "gokul-mbzuai/sharegpt4v-7b-hf",
    # beyond the paper
    "llava-next-7b": "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava-next-mistral-7b": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava-onevision-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "internvl3-1b": "OpenGVLab/InternVL3-1B-hf",
    "internvl3-2b": "OpenGVLab/InternVL3-2B-hf",
    "internvl3-8b": "OpenGVLab/InternVL3-8B-hf",
    "gemma-3-4b": "google/gemma-3-4b-it",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm-500m": "HuggingFaceTB/SmolVLM-500M-Instruct",
    "smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
}

#: The image-processor backend minilocal always asks for. transformers picks its torchvision
#: classes when torchvision is installed (Colab) and its PIL classes otherwise (the build
#: machines); the two resize with different kernels, so the same image would give other
#: pixels on Colab. The published heads were found with the original code's PIL
#: preprocessing, and every test here runs the PIL classes: PIL everywhere.
IMAGE_BACKEND = "pil"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

OOM_FIX = (
    "use a smaller model (e.g. 'llava-onevision-0.5b', 'internvl3-1b', 'smolvlm-256m'), "
    "load it in 4-bit (quantization='4bit', needs `pip install bitsandbytes`), give the "
    "processor fewer image pixels (e.g. max_pixels=448*448 for Qwen2.5-VL), free other GPU "
    "memory (del old models; torch.cuda.empty_cache()), or run on CPU (device='cpu', slow)."
)


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Alias -> hub id or folder; a folder or hub id passes through.

    Raises:
        ModelNotSupportedError: ``"shapes"`` was asked for but its folder is missing.
        InputError: A path-like name whose folder does not exist.
    """
    name = os.fspath(name_or_path)
    if name in MODEL_ALIASES:
        target = MODEL_ALIASES[name]
        if name == "shapes" and not (Path(target) / "config.json").is_file():
            raise ModelNotSupportedError(
                f"the packaged shapes model is missing (no {target}/config.json)",
                "reinstall minilocal from a release that ships minilocal/assets/shapes-lvlm, "
                "or train it with minilocal.toy (see book/06_your_model.ipynb) and save it there.",
            )
        return target
    if Path(name).is_dir():
        return name
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1)
    if looks_like_path or name.count("/") != 1:
        raise InputError(
            f"{name!r} is neither a local folder, a hub id (\"org/name\") nor an alias",
            f"give an existing folder, a hub id, or one of the aliases: "
            f"{', '.join(sorted(MODEL_ALIASES))}.",
        )
    return name


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype, device: str) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere, unless given (a torch dtype or its name).

    Raises:
        InputError: An unknown dtype name.
    """
    if dtype is None:
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise InputError(
        f"unknown dtype {dtype!r}",
        f"use a torch dtype or one of {sorted(_DTYPES)}; float16 on a GPU (T4: no bfloat16), "
        "float32 on CPU.",
    )


@contextlib.contextmanager
def oom_guard(what: str):
    """Turn a CUDA out-of-memory error raised inside into :class:`OutOfMemoryError`.

    Args:
        what: What was being done ("loading llava-hf/llava-1.5-7b-hf"), for the message.
    """
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "CUDA out of memory"
        raise OutOfMemoryError(f"GPU out of memory while {what}: {first}", OOM_FIX) from err


def _load_failure(path: str, err: OSError) -> ModelLoadError:
    """The :class:`ModelLoadError` for an ``OSError`` of ``from_pretrained`` on ``path``."""
    text = str(err)
    low = text.lower()
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if "gated" in low or "401" in low or "403" in low or "access to model" in low:
        fix = (f"{path} is gated: accept its licence on its hub page with your account, then "
               "log in here (`from huggingface_hub import login; login()`, or set HF_TOKEN).")
    elif "connect" in low or "offline" in low or "connection" in low:
        fix = ("there is no internet connection (or HF_HUB_OFFLINE is set): connect and run "
               "again, or give a local folder that holds the model (save_pretrained).")
    elif "not a valid model identifier" in low or "404" in low or "not found" in low:
        fix = (f"no model {path!r} on the hub: check the spelling, or use an alias "
               f"({', '.join(sorted(MODEL_ALIASES))}).")
    else:
        fix = ("check the model id and the internet connection, or give a local folder "
               "written by save_pretrained.")
    return ModelLoadError(f"could not load {path!r}: {first}", fix)


def _quantization_config(quantization: Quantization, dtype: torch.dtype, device: str):
    if quantization is None:
        return None
    if quantization not in ("8bit", "4bit"):
        raise InputError(
            f"quantization must be None, '8bit' or '4bit', got {quantization!r}",
            "pass quantization='4bit' (smallest), '8bit', or None (full precision).",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelNotSupportedError(
            f"{quantization} loading needs the bitsandbytes package, which is not installed",
            "run `pip install bitsandbytes` (CUDA only), or load without quantization.",
        )
    if not str(device).startswith("cuda"):
        raise ModelNotSupportedError(
            f"{quantization} loading with bitsandbytes needs a CUDA GPU, device is {device!r}",
            "use device='cuda' on a GPU machine, or quantization=None on CPU.",
        )
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4"
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_processor(path: str | os.PathLike, *, revision: str | None = None, **kwargs):
    """``AutoProcessor.from_pretrained`` with the image backend fixed to :data:`IMAGE_BACKEND`
    (``"pil"``), so that a machine with torchvision and one without give the same pixels.

    Args:
        path: Hub id or folder.
        revision: Hub revision to pin.
        **kwargs: More processor options (e.g. ``max_pixels`` for Qwen2.5-VL).

    Book: ``book/06_your_model.ipynb``.
    """
    from transformers import AutoProcessor

    kwargs.setdefault("backend", IMAGE_BACKEND)
    return AutoProcessor.from_pretrained(os.fspath(path), revision=revision, **kwargs)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype=None,
    device: str | None = None,
    quantization: Quantization = None,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    **adapter_kwargs,
) -> tuple[torch.nn.Module, object, Adapter]:
    """Load a vision-language model, its processor and its minilocal adapter.

    Args:
        name_or_path: Hub id, local folder, or alias (:data:`MODEL_ALIASES`).
        dtype: Weights dtype (torch dtype or name); default float16 on CUDA, float32 on CPU.
        device: "cuda", "cuda:1", "cpu"...; default CUDA when available.
        quantization: None, "8bit" or "4bit" (bitsandbytes, CUDA only).
        attn_implementation: The model's attention kernel ("sdpa" default; "eager" also
            works; attention is recorded beside either, see ``minilocal.attention``).
        revision: Hub revision (branch, tag or commit) to pin.
        **adapter_kwargs: Passed to the family's adapter (e.g. ``grid_source="highres"``,
            ``max_pixels=...``, ``template=...``).

    Returns:
        (model in eval mode, processor, adapter).

    Raises:
        ModelNotSupportedError: No adapter for the model's family, missing bitsandbytes,
            or the packaged shapes model is missing.
        InputError: Unknown alias / missing folder / bad dtype or quantization.
        OutOfMemoryError: The GPU ran out of memory while loading.
        ModelLoadError: The files could not be fetched (no internet, gated or missing id).

    Book: ``book/06_your_model.ipynb``.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    path = resolve_model(name_or_path)
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except OSError as err:
        if not Path(path).is_dir():  # a hub id: no internet, gated, misspelt
            raise _load_failure(path, err) from err
        raise InputError(
            f"cannot read the model config of {str(name_or_path)!r} (folder): {_first_line(err)}",
            "give a folder written by save_pretrained (with a valid config.json) or a hub id "
            "that exists.",
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        where = "folder" if Path(path).is_dir() else "hub id"
        raise InputError(
            f"cannot read the model config of {str(name_or_path)!r} ({where}): "
            f"{_first_line(err)}",
            "give a folder written by save_pretrained (with a valid config.json) or a hub id "
            "that exists; without internet, download the model first (`hf download ID`) or "
            "set HF_HUB_OFFLINE=1 to use the local cache only.",
        ) from err
    if config.model_type not in registered_model_types():
        raise ModelNotSupportedError(
            f"{str(name_or_path)!r} is a {config.model_type!r} model, which minilocal has no "
            "adapter for",
            f"use a supported family ({', '.join(registered_model_types())}; see "
            "book/models.md) or write an Adapter subclass (book/06_your_model.ipynb).",
        )
    quant = _quantization_config(quantization, torch_dtype, device)
    kwargs = {
        "dtype": torch_dtype, "attn_implementation": attn_implementation, "revision": revision,
    }
    # Load straight onto the GPU where accelerate allows it: a 7B model in fp16 is ~14 GB,
    # more than a free Colab's ~12.7 GB of RAM, so loading on the CPU first can kill it.
    direct = quant is not None or (
        device.startswith("cuda") and importlib.util.find_spec("accelerate") is not None
    )
    if quant is not None:
        kwargs.update(quantization_config=quant)
    if direct:
        kwargs.update(device_map={"": device})
    with oom_guard(f"loading {path}"):
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise _weights_error(name_or_path, path, err) from err
        except Exception as err:  # e.g. pickle.UnpicklingError from a .bin file
            if type(err).__module__.split(".")[0] in ("pickle", "_pickle", "safetensors"):
                raise _weights_error(name_or_path, path, err) from err
            raise
        if not direct:
            model = model.to(device)
    model.eval()
    try:
        processor = load_processor(path, revision=revision)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"cannot load the processor of {str(name_or_path)!r}: {_first_line(err)}",
            "save the processor beside the model (processor.save_pretrained(folder)), or "
            "give the hub id the model came from.",
        ) from err
    adapter = get_adapter(model, processor, **adapter_kwargs)
    return model, processor, adapter


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _weights_error(name, path, err: BaseException) -> InputError:
    pickled = Path(path).is_dir() and not any(Path(path).glob("*.safetensors")) and \
        any(Path(path).glob("*.bin"))
    fix = ("this folder holds pickle weights (*.bin) only: convert them to safetensors "
           "(load them once in a trusted session and call model.save_pretrained(folder), "
           "which writes model.safetensors)" if pickled else
           "check that the folder holds the weights save_pretrained wrote (model.safetensors) "
           "and is readable, or that the hub id exists")
    return InputError(f"cannot load the weights of {str(name)!r}: {_first_line(err)}",
                      fix + ".")


def published_heads(model_id: str) -> Path | None:
    """The published ("as reported") head table for a hub id or alias, if one ships."""
    model_id = MODEL_ALIASES.get(model_id, model_id)
    for path in sorted(PUBLISHED_HEADS_FOLDER.glob("*.json")):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("model_id") == model_id:
                return path
        except (OSError, json.JSONDecodeError):
            continue
    return None


def default_heads_path(name_or_path: str | os.PathLike) -> Path | None:
    """The head table to use by default: ``heads.json`` in the model folder, else the
    published table for that model id or alias, else None.

    Book: ``book/04_selection.ipynb``.
    """
    name = os.fspath(name_or_path)
    try:
        target = resolve_model(name)
    except (InputError, ModelNotSupportedError):
        return None
    local = Path(target) / "heads.json"
    if local.is_file():
        return local
    return published_heads(name) or published_heads(target)

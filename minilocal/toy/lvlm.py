"""The embedded shapes LVLM: a small LLaVA built and trained by minilocal itself.

The model is a plain Hugging Face ``LlavaForConditionalGeneration`` (CLIP vision tower,
2-layer MLP projector, Llama decoder) with a ``LlavaProcessor`` (word-level tokenizer with
an ``<image>`` token, PIL image processor). It is saved with ``save_pretrained`` as
safetensors and loads offline with ``from_pretrained``, so every part of minilocal that
works on LLaVA-1.5 works on it unchanged.

Design choices (measured in ``experiments/LOG.md``):

* 96 x 96 px canvas, 4 px patches: a 24 x 24 grid of image tokens, as LLaVA-1.5.
* Image features are the CLIP tower's EMBEDDING output (``vision_feature_layer=-2`` of a
  one-layer tower): each image token describes its own patch only. With a globally mixing
  tower the decoder can read the answer off summary patches and never look at the referent.
* The prompt follows LLaVA's referseg template: a system sentence, the image, then the
  question ending with ".", whose position is the query::

      <s> a picture of coloured shapes on a grey background <image> where is the red circle .

* The answer is the referent's centre cell as two tokens, row then column (``r7 c12``):
  the first answer token is predicted at the final "." so that position must gather the
  referent's location from the image.

Book: ``book/06_your_model.ipynb`` (and every chapter, which runs on this model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from ..errors import DatasetError
from . import world as W

#: Id of the embedded model (``config.minilocal_model_id``; keys its head table and caches).
MODEL_ID = "minilocal/shapes-lvlm"
#: The folder of the shipped model (weights, tokenizer, processor, head table, report).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes-lvlm"

SYSTEM = "a picture of coloured shapes on a grey background"
QUESTION = "where is"
#: Prompt template stored in the model config (``minilocal_prompt_template``); the LLaVA
#: adapter fills ``{image}`` with the image token and ``{expr}`` with the expression
#: (ending with ".").
PROMPT_TEMPLATE = SYSTEM + "\n{image}\n" + QUESTION + " {expr}"
#: Prompt templates by layout. "image_first" is LLaVA's order (system, image, question);
#: "question_first" (a research variant, see ``experiments/LOG.md``) asks the question
#: before the image and ends with a "." after it, so that the image tokens can read the
#: expression and the final "." is the only text position that sees both.
PROMPT_TEMPLATES: dict[str, str] = {
    "image_first": PROMPT_TEMPLATE,
    "question_first": SYSTEM + " " + QUESTION + " {expr}\n{image}\n.",
}


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of the shapes LVLM.

    Attributes:
        image_size: Canvas side in pixels (images are resized to it).
        patch_size: Patch side in pixels; the grid is image_size / patch_size per side.
        vision_hidden: Width of the patch embedding (CLIP tower).
        layers: Decoder layers.
        heads: Attention heads per decoder layer.
        kv_heads: Key/value heads (heads: no grouped-query attention).
        hidden: Decoder width.
        intermediate: Decoder MLP width.
        rope_theta: Rotary base of the decoder.
        layout: "image_first" (LLaVA's order) or "question_first" (see
            :data:`PROMPT_TEMPLATES`).
        patch_init_std: Standard deviation of the initial patch-embedding weights (CLIP's
            default 0.02 makes a patch's colour ~5x weaker than its position code in the
            image features at the start; see ``experiments/LOG.md``).
        positions: Initial position code of the tower: "sincos" (:func:`sincos_positions`)
            or "place" (:func:`place_positions`: smooth bumps along the row and the column,
            whose average over an object peaks at its centre).
    """

    image_size: int = 96
    patch_size: int = 4
    vision_hidden: int = 64
    layers: int = 8
    heads: int = 8
    kv_heads: int = 8
    hidden: int = 128
    intermediate: int = 384
    rope_theta: float = 10000.0
    layout: str = "image_first"
    patch_init_std: float = 0.02
    positions: str = "sincos"

    @property
    def grid(self) -> tuple[int, int]:
        n = self.image_size // self.patch_size
        return (n, n)


def answer_words(grid: tuple[int, int]) -> list[str]:
    """The answer tokens: ``r0 .. r{h-1}`` (row) and ``c0 .. c{w-1}`` (column)."""
    h, w = grid
    return [f"r{i}" for i in range(h)] + [f"c{j}" for j in range(w)]


def answer(box, image_size: tuple[int, int], grid: tuple[int, int]) -> str:
    """The answer to "where is ...": the grid cell of the box centre, e.g. ``"r7 c12"``.

    Args:
        box: [4] xyxy pixel box of the referent.
        image_size: (W, H) of the image the box is in.
        grid: (h, w) of the model's image tokens.

    Returns:
        Row token and column token, separated by a space.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    W_, H_ = image_size
    h, w = grid
    row = min(h - 1, int((y0 + y1) / 2 / H_ * h))
    col = min(w - 1, int((x0 + x1) / 2 / W_ * w))
    return f"r{row} c{col}"


def build_tokenizer(grid: tuple[int, int]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer of the shapes world, with ``<image>`` and the answer tokens.

    A ``<s>`` is prepended to every text (as LLaVA's Llama tokenizer does).

    Book: ``book/06_your_model.ipynb``.
    """
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    words = sorted(
        set(W.VOCABULARY) | set(SYSTEM.split()) | set(QUESTION.split()) | {"."}
    ) + answer_words(grid)
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_processor(spec: ModelSpec = ModelSpec()) -> LlavaProcessor:
    """LlavaProcessor: the tokenizer plus a PIL image processor that resizes to the canvas.

    No centre crop (the whole image is seen); images of the shapes world are square, and
    the LLaVA adapter pads any other image to a square first.

    Book: ``book/06_your_model.ipynb``.
    """
    ip = LlavaImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=False,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=build_tokenizer(spec.grid),
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_model(
    spec: ModelSpec, processor: LlavaProcessor, seed: int = 0
) -> LlavaForConditionalGeneration:
    """A randomly initialised shapes LVLM (float32, SDPA attention).

    Args:
        spec: Sizes.
        processor: The processor whose tokenizer fixes the vocabulary.
        seed: Seed of the initialisation.

    Returns:
        The model; its config carries ``minilocal_prompt_template`` and ``minilocal_spec``.

    Book: ``book/06_your_model.ipynb``.
    """
    tok = processor.tokenizer
    if spec.layout not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown layout {spec.layout!r}; use one of {list(PROMPT_TEMPLATES)}")
    if spec.positions not in POSITION_CODES:
        raise ValueError(
            f"unknown positions {spec.positions!r}; use one of {list(POSITION_CODES)}")
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=1024,
        rope_theta=spec.rope_theta,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        # hidden_states[-2] of a 1-layer tower = the patch embeddings (see module doc);
        # transformers 5.24 cannot select index 0 directly (it is read as False).
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        minilocal_prompt_template=PROMPT_TEMPLATES[spec.layout],
        minilocal_model_id=MODEL_ID,
        minilocal_spec=asdict(spec),
    )
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        emb = model.model.vision_tower.embeddings.position_embedding.weight
        emb.copy_(POSITION_CODES[spec.positions](spec.grid, spec.vision_hidden))
        if spec.patch_init_std != 0.02:  # 0.02: transformers' own init (kept bit for bit)
            model.model.vision_tower.embeddings.patch_embedding.weight.normal_(
                0.0, spec.patch_init_std)
    model.set_attn_implementation("sdpa")
    return model.float()


def sincos_positions(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """2-D sine-cosine position embeddings (MAE-style), the init of the tower's positions.

    Half of the channels encode the row, half the column, each as sines and cosines of
    geometrically spaced frequencies. Row 0 (the CLS position) is zero. They are trained
    further like any weight; starting from them the decoder can read a patch's row and
    column linearly from the first step instead of learning 576 random vectors.

    Args:
        grid: (h, w) of the patches.
        dim: Embedding width (a multiple of 4).

    Returns:
        [1 + h * w, dim] float32.
    """
    h, w = grid
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # [q]
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w).reshape(-1)  # [h*w]
    cols = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w).reshape(-1)  # [h*w]
    parts = []
    for pos in (rows, cols):
        ang = pos[:, None] * freqs[None, :]  # [h*w, q]
        parts += [ang.sin(), ang.cos()]
    table = torch.cat(parts, dim=1)  # [h*w, 4q]
    out = torch.zeros(1 + h * w, dim, dtype=torch.float64)
    out[1:, : 4 * quarter] = table
    return out.float()


def place_positions(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Place-code position embeddings: Gaussian bumps along the row and along the column.

    A quarter of the channels hold bumps centred on evenly spaced rows, a quarter on
    evenly spaced columns (width = their spacing); the other half starts at zero. The mean
    code over the patches of an object peaks at the object's centre row and column, so the
    centre cell can be read out linearly from an attention-weighted average of the object.

    Args:
        grid: (h, w) of the patches.
        dim: Embedding width (a multiple of 4).

    Returns:
        [1 + h * w, dim] float32 (row 0, the CLS position, is zero).
    """
    h, w = grid
    quarter = dim // 4
    out = torch.zeros(1 + h * w, dim, dtype=torch.float64)
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w).reshape(-1)
    cols = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w).reshape(-1)
    for k, (pos, n) in enumerate(((rows, h), (cols, w))):
        centres = torch.linspace(0, n - 1, quarter, dtype=torch.float64)
        width = (n - 1) / max(1, quarter - 1)
        bumps = torch.exp(-0.5 * ((pos[:, None] - centres[None, :]) / width) ** 2)
        out[1:, k * quarter:(k + 1) * quarter] = bumps
    return out.float()


#: Initial position codes of the vision tower, by ``ModelSpec.positions``.
POSITION_CODES = {"sincos": sincos_positions, "place": place_positions}


def load_toy(
    path: str | Path | None = None, attn_implementation: str = "sdpa"
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Load the shapes LVLM and its processor from a folder (offline).

    Args:
        path: Folder written by ``save_pretrained``; default: the shipped model.
        attn_implementation: "sdpa" (default) or "eager".

    Returns:
        (model in eval mode, processor).

    Raises:
        DatasetError: The folder holds no model.

    Book: ``book/01_attention.ipynb``.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if not (path / "config.json").is_file():
        raise DatasetError(
            f"no shapes LVLM in {str(path)!r} (config.json missing)",
            "train one with `python -m minilocal.toy.train --out DIR` or use the shipped "
            "model (minilocal.toy.lvlm.load_toy() with no path).",
        )
    model = LlavaForConditionalGeneration.from_pretrained(
        path, attn_implementation=attn_implementation, local_files_only=True,
        dtype=torch.float32,
    ).eval()
    processor = LlavaProcessor.from_pretrained(path, local_files_only=True)
    return model, processor


def spec_of(model: LlavaForConditionalGeneration) -> ModelSpec:
    """The :class:`ModelSpec` a shapes LVLM was built with."""
    return ModelSpec(**model.config.minilocal_spec)


def world_of(model: LlavaForConditionalGeneration) -> W.WorldConfig:
    """The :class:`~minilocal.toy.world.WorldConfig` a shapes LVLM was trained on.

    Stored by the training script as ``config.minilocal_world``; for a model without it,
    the default world.
    """
    stored = getattr(model.config, "minilocal_world", None)
    if not stored:
        return W.WorldConfig()
    return W.WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})


def encode_questions(
    processor: LlavaProcessor,
    images: list[np.ndarray],
    questions: list[list[tuple[str, str]]],
    layout: str = "image_first",
) -> dict[str, torch.Tensor]:
    """Training batch: each image followed by several questions and their answers.

    Sequence of one image (answer tokens are the only supervised positions)::

        <s> SYSTEM <image> where is EXPR_1 . r c where is EXPR_2 . r c ...

    The first question is exactly the inference prompt (the adapter's prompt).

    Args:
        processor: The model's processor.
        images: [S, S, 3] uint8 images.
        questions: Per image, (expr, answer) pairs (answer like ``"r7 c12"``).
        layout: "image_first" (several questions after one image) or "question_first"
            (the first question only, before the image).

    Returns:
        input_ids [B, T], attention_mask [B, T], labels [B, T] (-100 except answer tokens),
        pixel_values [B, 3, S, S]; right padded.
    """
    tok = processor.tokenizer
    image_token = processor.image_token
    pv = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    h, w = pv.shape[-2] // processor.patch_size, pv.shape[-1] // processor.patch_size
    n_image = h * w
    seqs, labs = [], []
    image_ids = tok(" ".join([image_token] * n_image), add_special_tokens=False)["input_ids"]
    prefix_ids = tok(SYSTEM)["input_ids"]
    for qa in questions:
        ids = list(prefix_ids)
        lab = [-100] * len(ids)
        if layout == "question_first":
            # one question per image: <s> SYSTEM where is EXPR . <image> . r c
            expr, ans = qa[0]
            q = tok(f"{QUESTION} {expr} .", add_special_tokens=False)["input_ids"]
            q = q + image_ids + tok(".", add_special_tokens=False)["input_ids"]
            a = tok(ans, add_special_tokens=False)["input_ids"]
            seqs.append(ids + q + a)
            labs.append(lab + [-100] * len(q) + a)
            continue
        ids += image_ids
        lab += [-100] * len(image_ids)
        for expr, ans in qa:
            q = tok(f"{QUESTION} {expr} .", add_special_tokens=False)["input_ids"]
            a = tok(ans, add_special_tokens=False)["input_ids"]
            ids += q + a
            lab += [-100] * len(q) + a
        seqs.append(ids)
        labs.append(lab)
    return {**pad_sequences(seqs, labs, tok.pad_token_id), "pixel_values": pv}


def pad_sequences(seqs: list[list[int]], labs: list[list[int]], pad_id: int) -> dict:
    """Right-pad token sequences and their labels into a batch.

    Returns:
        input_ids [B, T] (``pad_id`` after each sequence), attention_mask [B, T] (1 on
        tokens), labels [B, T] (-100 after each sequence).
    """
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        input_ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(s)] = torch.tensor(lab)
        mask[i, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

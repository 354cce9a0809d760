"""The shapes SAM: Segment Anything's own architecture at a small size, trained on the shapes world.

No official SAM checkpoint can be downloaded on the machines this project runs on, yet the
RES step (:mod:`minilocal.segmentation`) must run the REAL SAM code path offline on CPU. So
minilocal ships a small SAM beside the embedded LVLM: the blocks of
``segment_anything.modeling`` (``ImageEncoderViT`` with windowed and global attention,
``PromptEncoder``, ``MaskDecoder`` with a ``TwoWayTransformer``), sized by :class:`SamSpec`
and trained by ``python -m minilocal.toy.train_sam`` to turn a box prompt (optionally plus a
low-res mask prompt) into the mask of the object in the box.

It runs through both backends of :mod:`minilocal.segmentation`:

* ``load_sam("segment-anything", "shapes")`` -> :class:`~minilocal.segmentation.SegmentAnythingRefiner`
  on ``SamPredictor``;
* ``load_sam("transformers", "shapes")`` -> the same weights converted to transformers'
  ``SamModel`` (:func:`~minilocal.segmentation.segment_anything_to_transformers`).

A real SAM stays a one-argument switch: ``load_sam("segment-anything", "sam_vit_b_01ec64.pth")``.

A saved shapes SAM is a folder with :data:`CONFIG_NAME` (the :class:`SamSpec` as JSON) and
:data:`WEIGHTS_NAME` (the state dict as safetensors); the training script also writes
``training_report.json`` there.

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch

from ..errors import SamError

#: The folder of the shipped shapes SAM (weights, config, training report, README).
DEFAULT_SAM_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes-sam"
#: The alias that :func:`minilocal.segmentation.load_sam` resolves to :data:`DEFAULT_SAM_DIR`.
ALIAS = "shapes"
CONFIG_NAME = "sam_config.json"
WEIGHTS_NAME = "sam.safetensors"
#: Written into the config; a folder with another value is refused.
FORMAT = "minilocal-shapes-sam/1"


@dataclass(frozen=True)
class SamSpec:
    """Sizes of the shapes SAM (the official ``vit_b`` values in brackets).

    Attributes:
        img_size: Side of SAM's input square (1024); the 96 px shapes images are resized
            to it by SAM's own ``ResizeLongestSide``.
        patch_size: ViT patch side (16). The image embedding is ``img_size / patch_size``
            per side, the low-res masks and the mask prompt 4 times that.
        encoder_dim: ViT width (768).
        encoder_depth: ViT blocks (12).
        encoder_heads: ViT attention heads (12).
        mlp_ratio: ViT MLP width / ViT width (4).
        window_size: Side of the windows of the windowed-attention blocks (14).
        global_attn_indexes: Blocks with global attention (2, 5, 8, 11).
        prompt_dim: Width of the image embedding, prompt encoder and mask decoder (256).
        decoder_depth: Blocks of the two-way transformer (2).
        decoder_heads: Its attention heads (8).
        decoder_mlp_dim: Its MLP width (2048).
        mask_in_chans: Hidden channels of the mask-prompt downscaling convs (16).
        iou_head_depth: Layers of the IoU prediction MLP (3).
        iou_head_hidden_dim: Its width (256).

    Book: ``book/05_grounding.ipynb``.
    """

    img_size: int = 128
    patch_size: int = 8
    encoder_dim: int = 128
    encoder_depth: int = 4
    encoder_heads: int = 4
    mlp_ratio: float = 4.0
    window_size: int = 8
    global_attn_indexes: tuple[int, ...] = (1, 3)
    prompt_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 512
    mask_in_chans: int = 16
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 128

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding (64 official)."""
        return self.img_size // self.patch_size

    @property
    def prompt_size(self) -> int:
        """Side of the low-res masks and of the mask prompt (256 official)."""
        return 4 * self.embedding_size

    def check(self) -> SamSpec:
        """Raise :class:`~minilocal.errors.SamError` on sizes SAM's blocks cannot take."""
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_dim % self.encoder_heads:
            problems.append(f"encoder_dim {self.encoder_dim} is not divisible by {self.encoder_heads} heads")
        if self.prompt_dim % 8:
            problems.append(f"prompt_dim {self.prompt_dim} is not a multiple of 8 (hypernetwork out = dim / 8)")
        if (self.prompt_dim // 2) % self.decoder_heads:
            problems.append(
                f"prompt_dim / 2 = {self.prompt_dim // 2} (cross-attention width) is not divisible "
                f"by {self.decoder_heads} decoder heads"
            )
        if any(not 0 <= i < self.encoder_depth for i in self.global_attn_indexes):
            problems.append(f"global_attn_indexes {self.global_attn_indexes} outside 0..{self.encoder_depth - 1}")
        if problems:
            raise SamError(
                "invalid shapes-SAM sizes: " + "; ".join(problems),
                "change the sizes (see minilocal.toy.sam.SamSpec for the constraints).",
            )
        return self

    @classmethod
    def from_dict(cls, d: dict) -> SamSpec:
        """The spec stored in a config JSON (unknown keys are refused)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SamError(
                f"unknown shapes-SAM config keys {unknown}",
                f"a {CONFIG_NAME} holds only {sorted(names)}; re-save the model with this version.",
            )
        d = dict(d)
        if "global_attn_indexes" in d:
            d["global_attn_indexes"] = tuple(int(i) for i in d["global_attn_indexes"])
        return cls(**d).check()


def build_sam(spec: SamSpec = SamSpec(), seed: int = 0):
    """A freshly initialised shapes SAM (deterministic for ``seed``), in train mode.

    Assembles ``segment_anything.modeling`` blocks exactly as ``build_sam_vit_b`` does, at
    the sizes of ``spec``: pixel mean/std of the official models, layer norm eps 1e-6,
    relative positions and a learned absolute position table in the encoder. Weights follow
    PyTorch's default initialisation under ``torch.manual_seed(seed)``; the absolute position
    table (zeros in segment-anything, since the official weights overwrite it) is drawn from
    N(0, 0.02) so that the untrained encoder already tells positions apart.

    Args:
        spec: The sizes.
        seed: Seed of the initialisation (the global torch RNG is restored afterwards).

    Returns:
        A ``segment_anything.modeling.Sam``.

    Raises:
        SamError: Sizes that SAM's blocks cannot take, or segment-anything not installed.

    Book: ``book/05_grounding.ipynb``.
    """
    from ..torchvision_shim import import_segment_anything

    spec.check()
    m = import_segment_anything().modeling
    emb = spec.embedding_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = m.Sam(
            image_encoder=m.ImageEncoderViT(
                img_size=spec.img_size,
                patch_size=spec.patch_size,
                embed_dim=spec.encoder_dim,
                depth=spec.encoder_depth,
                num_heads=spec.encoder_heads,
                mlp_ratio=spec.mlp_ratio,
                out_chans=spec.prompt_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_abs_pos=True,
                use_rel_pos=True,
                rel_pos_zero_init=True,
                window_size=spec.window_size,
                global_attn_indexes=tuple(spec.global_attn_indexes),
            ),
            prompt_encoder=m.PromptEncoder(
                embed_dim=spec.prompt_dim,
                image_embedding_size=(emb, emb),
                input_image_size=(spec.img_size, spec.img_size),
                mask_in_chans=spec.mask_in_chans,
            ),
            mask_decoder=m.MaskDecoder(
                num_multimask_outputs=3,
                transformer=m.TwoWayTransformer(
                    depth=spec.decoder_depth,
                    embedding_dim=spec.prompt_dim,
                    mlp_dim=spec.decoder_mlp_dim,
                    num_heads=spec.decoder_heads,
                ),
                transformer_dim=spec.prompt_dim,
                iou_head_depth=spec.iou_head_depth,
                iou_head_hidden_dim=spec.iou_head_hidden_dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        with torch.no_grad():
            sam.image_encoder.pos_embed.normal_(0.0, 0.02)
    sam.minilocal_spec = spec
    return sam


def spec_of(sam) -> SamSpec:
    """The :class:`SamSpec` of a shapes SAM (as stored by :func:`save_sam`).

    Raises:
        SamError: The model was not built by :func:`build_sam` / :func:`load_shapes_sam`.

    Book: ``book/05_grounding.ipynb``.
    """
    spec = getattr(sam, "minilocal_spec", None)
    if not isinstance(spec, SamSpec):
        raise SamError(
            f"{type(sam).__name__} carries no shapes-SAM spec",
            "build it with minilocal.toy.sam.build_sam or load it with load_shapes_sam.",
        )
    return spec


def save_sam(sam, spec: SamSpec, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a shapes SAM to a folder: :data:`CONFIG_NAME` + :data:`WEIGHTS_NAME`.

    Args:
        sam: The model (a ``segment_anything.modeling.Sam`` built from ``spec``).
        spec: Its sizes.
        out: The folder (created).
        dtype: Storage dtype of floating-point weights (float32 or float16); loading casts
            back to float32.

    Returns:
        The folder.

    Book: ``book/05_grounding.ipynb``.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in sam.state_dict().items()
    }
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": FORMAT})
    config = {"format": FORMAT, "storage_dtype": str(dtype).removeprefix("torch."),
              "spec": asdict(spec)}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    return out


def is_shapes_sam(path_or_alias) -> bool:
    """True for the alias ``"shapes"`` and for a folder holding :data:`CONFIG_NAME`.

    Book: ``book/05_grounding.ipynb``.
    """
    if isinstance(path_or_alias, str) and path_or_alias == ALIAS:
        return True
    try:
        return (Path(path_or_alias).expanduser() / CONFIG_NAME).is_file()
    except (TypeError, OSError):
        return False


def load_shapes_sam(path: str | Path | None = None):
    """Load a shapes SAM (offline) in eval mode, float32, on the CPU.

    Args:
        path: A folder written by :func:`save_sam` / ``python -m minilocal.toy.train_sam``;
            None or ``"shapes"``: the shipped model (:data:`DEFAULT_SAM_DIR`).

    Returns:
        A ``segment_anything.modeling.Sam``; its :class:`SamSpec` is ``sam.minilocal_spec``.

    Raises:
        SamError: The folder holds no shapes SAM, or weights that do not fit its config.

    Book: ``book/05_grounding.ipynb``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = DEFAULT_SAM_DIR if path is None or path == ALIAS else Path(path).expanduser()
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise SamError(
            f"no shapes SAM in {str(folder)!r} ({CONFIG_NAME} or {WEIGHTS_NAME} missing)",
            "train one with `python -m minilocal.toy.train_sam --out DIR` and pass DIR, or use "
            "the shipped one: load_sam('segment-anything', 'shapes').",
        )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SamError(f"{str(cfg_path)!r} is not valid JSON ({exc})",
                       "save the model again with minilocal.toy.sam.save_sam.") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT or "spec" not in config:
        raise SamError(
            f"{str(cfg_path)!r} is not a shapes-SAM config (format {config.get('format')!r}, "
            f"expected {FORMAT!r})" if isinstance(config, dict) else f"{str(cfg_path)!r} is not a dict",
            "save the model again with minilocal.toy.sam.save_sam.",
        )
    spec = SamSpec.from_dict(config["spec"])
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as exc:
        raise SamError(f"cannot read {str(w_path)!r} ({exc})",
                       "the file may be truncated; train or copy it again.") from exc
    sam = build_sam(spec)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SamError(
            f"the weights in {str(w_path)!r} do not fit the sizes in {CONFIG_NAME} ({exc})"[:600],
            "keep the config and the weights of one run together in one folder.",
        ) from exc
    sam.minilocal_spec = spec
    return sam.eval()

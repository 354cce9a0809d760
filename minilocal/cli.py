"""Command line: ``minilocal ground | find-heads | eval``.

    minilocal ground IMAGE "EXPRESSION" [--model shapes] [--heads heads.json] [--sam ...]
    minilocal find-heads --model M --dataset refcoco --root DIR -o heads.json
    minilocal eval --model M --heads heads.json --dataset refcoco --split val --root DIR

``ground`` prints the box as JSON and writes an overlay picture (attention of the chosen
heads; pseudo mask, hull and box; final mask). ``find-heads`` runs the head search
(selection frequency) and writes a head table; ``eval`` grounds a whole split, writes one
JSON line per expression and prints Acc@0.5, mIoU and cIoU. Both resume after an
interruption, and both shard their items over processes under ``accelerate launch``.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import MinilocalError


def _threshold(text: str):
    return "mean" if text == "mean" else float(text)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes",
                   help="model id, local folder or alias (default: the embedded 'shapes' model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (default: per device)")
    p.add_argument("--quantization", default=None, choices=["8bit", "4bit"],
                   help="load the weights in 8 or 4 bits (bitsandbytes, CUDA only; e.g. 13B on a T4)")


def _add_grounding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heads", default=None,
                   help="head table JSON, or heads like L14H24,L14H13 (default: the model's own)")
    p.add_argument("--sam", default=None,
                   help="SAM checkpoint path or id; 'shapes' = the embedded small SAM; "
                        "omit to use the pseudo mask as the mask")
    p.add_argument("--sam-backend", default="segment-anything",
                   choices=["segment-anything", "transformers"])
    p.add_argument("--sam-model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    p.add_argument("--sigma", type=float, default=1.0, help="Gaussian sigma in grid cells")
    p.add_argument("--threshold", type=_threshold, default="mean",
                   help="'mean' (paper) or a fraction of the max, e.g. 0.5")
    p.add_argument("--component", default="all", choices=["all", "largest"])


def _heads_arg(text: str | None):
    if text is None or text.endswith(".json") or Path(text).is_file():
        return text
    return [h.strip() for h in text.split(",") if h.strip()]


def _grounder(args):
    import torch

    from .pipeline import Grounder

    dtype = getattr(torch, args.dtype) if args.dtype else None
    return Grounder.from_pretrained(
        args.model, heads=_heads_arg(args.heads), sam=args.sam, sam_backend=args.sam_backend,
        sam_model_type=args.sam_model_type, device=args.device, dtype=dtype,
        quantization=args.quantization, sigma=args.sigma,
        threshold=args.threshold, component=args.component,
    )


def cmd_ground(args) -> int:
    from .images import load_image
    from .visualize import grounding_panel

    grounder = _grounder(args)
    image = load_image(args.image)
    result = grounder.ground(image, args.expr)
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_grounding.png")
    panel = grounding_panel(image, result.grounding, mask=result.mask, title=result.expr)
    panel.save(out)
    record = {"image": str(args.image), **result.to_dict(), "overlay": str(out)}
    print(json.dumps(record))
    return 0


def _add_data_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--dataset", required=True,
                   help="refcoco, refcoco+, refcocog, or shapes (the embedded toy world)")
    p.add_argument("--split", default=split, help=f"split (default: {split})")
    p.add_argument("--root", default=None, help="folder with the dataset files (RefCOCO*)")
    p.add_argument("--image-dir", default=None, help="COCO train2014 folder (refer, jxu124)")
    p.add_argument("--source", default=None, choices=["refer", "jxu124", "lmms-lab"],
                   help="file format (default: detected from --root)")
    p.add_argument("--split-by", default=None, help="unc, google or umd (refer files)")


def _dataset(args):
    from .data import load_dataset

    return load_dataset(args.dataset, args.split, root=args.root, image_dir=args.image_dir,
                        source=args.source, split_by=args.split_by)


def _distributed():
    """accelerate's process state when launched on several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    try:
        from accelerate import PartialState
    except ImportError as exc:  # pragma: no cover - accelerate is in the [multi] extra
        raise MinilocalError(
            "several processes were launched but accelerate is not installed",
            "pip install accelerate (or run a single process).",
        ) from exc
    import torch

    # without a GPU, accelerate only forms a (gloo) process group when told to use the CPU
    return PartialState(cpu=not torch.cuda.is_available())


def cmd_find_heads(args) -> int:
    import torch

    from .criteria import PUBLIC_CODE_FILTERS
    from .models import load_model
    from .selection import find_heads, format_head

    state = _distributed()
    device = str(state.device) if state is not None else args.device
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, processor, adapter = load_model(args.model, device=device, dtype=dtype,
                                           quantization=args.quantization)
    data = _dataset(args)
    filters = PUBLIC_CODE_FILTERS if args.public_code_filters else {}
    kwargs = dict(
        n=args.n, repeats=args.repeats, seed=args.seed, top=args.top, k=args.k,
        elbow=args.elbow, entropy=args.entropy, cache_dir=args.cache_dir,
        model_id=adapter.model_id(), prompt_template=getattr(adapter, "template", None),
        progress=not args.quiet, **filters,
    )

    def attention_fn(item):
        return adapter.attention(item.image, item.expr)[0]

    if state is not None:
        find_heads(attention_fn, data, shard=(state.process_index, state.num_processes),
                   **kwargs)
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
    table = find_heads(attention_fn, data, **kwargs)
    table.to_json(args.out)
    freq = {format_head(h): round(float(table.frequencies[h]), 2) for h in table.heads}
    print(json.dumps({"heads": freq, "out": str(args.out)}))
    return 0


def cmd_eval(args) -> int:
    from .evaluation import evaluate, merge_predictions, score_predictions

    state = _distributed()
    if state is not None:
        args.device = str(state.device)
    grounder = _grounder(args)
    data = _dataset(args)
    if args.limit is not None:
        data = data[: args.limit]
    out = Path(args.out) if args.out else Path(f"preds-{args.dataset}-{args.split}.jsonl")
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    evaluate(grounder, data, out, progress=not args.quiet, rank=rank, world_size=world)
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
        merge_predictions(out, data.ids, world)
    scores = score_predictions(out, data.ids)
    print(json.dumps({"dataset": args.dataset, "split": args.split, "predictions": str(out),
                      **{k: (round(v, 2) if isinstance(v, float) else v)
                         for k, v in scores.as_dict().items()}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minilocal",
        description="Training-free visual grounding with the localization heads of an LVLM.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ground", help="box (JSON) and overlay picture for one expression")
    p.add_argument("image", help="image file (JPEG, PNG ...)")
    p.add_argument("expr", help='referring expression, e.g. "the man on the right"')
    p.add_argument("-o", "--out", default=None,
                   help="overlay picture to write (default: IMAGE-STEM_grounding.png here)")
    _add_model_args(p)
    _add_grounding_args(p)
    p.set_defaults(func=cmd_ground)

    p = sub.add_parser("find-heads", help="find a model's localization heads (head table JSON)")
    _add_model_args(p)
    _add_data_args(p, "train")
    p.add_argument("--n", type=int, default=1000, help="samples per repeat (1000)")
    p.add_argument("--repeats", type=int, default=5, help="random draws (5)")
    p.add_argument("--seed", type=int, default=0, help="repeat r uses seed + r")
    p.add_argument("--top", type=int, default=10, help="lowest-entropy heads per sample (10)")
    p.add_argument("--k", type=int, default=3, help="heads chosen (3)")
    p.add_argument("--elbow", default="mean", choices=["mean", "per_sample"])
    p.add_argument("--entropy", default="paper", choices=["paper", "public_code"])
    p.add_argument("--public-code-filters", action="store_true",
                   help="also drop layers 0-1 and heads with > 0.05 in the last grid row")
    p.add_argument("--cache-dir", default=".minilocal-cache",
                   help="per-item results, so an interrupted run resumes (default: %(default)s)")
    p.add_argument("-o", "--out", default="heads.json", help="head table to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_find_heads)

    p = sub.add_parser("eval", help="ground a dataset split; Acc@0.5, mIoU, cIoU")
    _add_model_args(p)
    _add_grounding_args(p)
    _add_data_args(p, "val")
    p.add_argument("--limit", type=int, default=None, help="only the first N expressions")
    p.add_argument("-o", "--out", default=None,
                   help="predictions (JSON lines; default preds-DATASET-SPLIT.jsonl); "
                        "an existing file is resumed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """minilocal's own warnings as one plain line on stderr (no source line); others as
    Python shows them."""
    if not category.__module__.startswith("minilocal"):
        return _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)
    text = str(message)
    print(text if text.startswith("minilocal: ") else f"minilocal: warning: {text}",
          file=sys.stderr if file is None else file)


_PYTHON_SHOWWARNING = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except MinilocalError as exc:
        print(f"minilocal: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

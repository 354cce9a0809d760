"""Command line: ``minilocal ground | find-heads | eval``.

    minilocal ground IMAGE "EXPRESSION" [--model shapes] [--heads heads.json] [--sam ...]
    minilocal find-heads --model M --dataset refcoco --root DIR -o heads.json
    minilocal eval --model M --heads heads.json --dataset refcoco --split val --root DIR

``ground`` prints the box as JSON and writes an overlay picture (attention of the chosen
heads; pseudo mask, hull and box; final mask). ``find-heads`` runs the head search
(selection frequency) and writes a head table; ``eval`` grounds a whole split, writes one
JSON line per expression and prints Acc@0.5, mIoU and cIoU. Both resume after an
interruption (Ctrl-C prints the command that resumes), both key what they reuse on a hash
of the model's weights, and both shard their items over processes under ``accelerate
launch``. Arguments and paths are checked before the model stack is imported; no command
overwrites its input or (without ``--force``) an existing output.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

from .errors import InputError, MinilocalError


def _threshold(text: str):
    if text == "mean":
        return "mean"
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'mean' nor a fraction in (0, 1]")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _sigma(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative (0 means no smoothing)")
    return value


def _int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is below {minimum}")
        return value

    parse.__name__ = "positive int" if minimum == 1 else "non-negative int"
    return parse


_DTYPE_NAMES = ["float32", "float16", "bfloat16", "fp32", "fp16", "bf16", "half"]
_DEVICE_RE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


def _device(text: str) -> str:
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device (use cpu, cuda, cuda:1, mps)")
    return text


def _check_device(device: str | None) -> None:
    """Refuse a CUDA device on a machine without one, before any model loads."""
    if device is None or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is visible on this machine",
                         "leave --device out (the CPU is used), or run on a GPU machine.")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                         "GPU(s)", "use cuda:0 ... or leave --device out.")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes",
                   help="model id, local folder or alias (default: the embedded 'shapes' model)")
    p.add_argument("--device", default=None, type=_device,
                   help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--dtype", default=None, choices=_DTYPE_NAMES,
                   help="float32, float16, bfloat16 (default: per device)")
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
    p.add_argument("--sigma", type=_sigma, default=1.0,
                   help="Gaussian sigma in grid cells (>= 0; 0: no smoothing)")
    p.add_argument("--threshold", type=_threshold, default="mean",
                   help="'mean' (paper) or a fraction of the max, e.g. 0.5")
    p.add_argument("--component", default="all", choices=["all", "largest"])
    p.add_argument("--max-pixels", type=_int(1), default=None,
                   help="largest image accepted, W * H (default: 64,000,000)")


def _heads_arg(text: str | None):
    if text is None or text.endswith(".json") or Path(text).is_file():
        return text
    return [h.strip() for h in text.split(",") if h.strip()]


def _max_pixels(args) -> int:
    from .images import MAX_PIXELS

    return args.max_pixels if args.max_pixels is not None else MAX_PIXELS


def _check_paths(args) -> None:
    """Paths that exist before anything loads: model folder, head table, SAM checkpoint."""
    for flag, value in (("--model", args.model), ("--heads", getattr(args, "heads", None)),
                        ("--sam", getattr(args, "sam", None))):
        if value is None or value == "shapes":
            continue
        path = Path(value).expanduser()
        looks_local = value.startswith((".", "/", "~")) or path.exists() or (
            flag == "--heads" and value.endswith(".json"))
        if flag == "--heads" and not looks_local:
            continue  # heads written out, e.g. L14H24,L14H13
        if not looks_local:
            continue  # a hub id
        if not path.exists():
            raise InputError(f"{flag} {value!r}: no such file or folder",
                             "check the path (or give a hub id / alias).")
        if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
            raise InputError(f"{flag} {value!r} cannot be read (permissions)",
                             "make it readable (chmod), or copy it somewhere you can read.")


def _grounder(args):
    from .pipeline import Grounder

    _check_device(args.device)
    return Grounder.from_pretrained(
        args.model, heads=_heads_arg(args.heads), sam=args.sam, sam_backend=args.sam_backend,
        sam_model_type=args.sam_model_type, device=args.device, dtype=args.dtype,
        quantization=args.quantization, sigma=args.sigma,
        threshold=args.threshold, component=args.component, max_pixels=_max_pixels(args),
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _overlay_path(args) -> Path:
    """Where ``ground`` writes its picture; refuses to replace the input or (without
    --force) any existing file; the default name is numbered past existing files."""
    from PIL import Image

    image = Path(args.image)
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise InputError(f"-o {args.out!r} is a folder",
                             "give a file name, e.g. -o overlay.png.")
    else:
        out = Path(f"{image.stem}_grounding.png")
        n = 1
        while out.exists() or out.is_symlink():
            n += 1
            out = Path(f"{image.stem}_grounding-{n}.png")
    Image.init()
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(
            f"-o {str(out)!r}: cannot write a picture with the extension {out.suffix!r}",
            "end the name with .png (or .jpg, .webp).",
        )
    if _same_file(out, image) or out.resolve() == image.resolve():
        raise InputError(f"-o {str(out)!r} is the input image",
                         "give the overlay another name; the input is never overwritten.")
    if out.exists() and not args.force:
        raise InputError(f"-o {str(out)!r} exists",
                         "give another name, or pass --force to replace it.")
    return out


def _save_atomic(picture, out: Path) -> None:
    """Write a PIL picture to ``out`` atomically, in the format its extension names."""
    import io

    from PIL import Image

    from .selection import _atomic_write_bytes

    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    picture.save(buffer, format=Image.registered_extensions()[out.suffix.lower()])
    _atomic_write_bytes(out, buffer.getvalue())


def cmd_ground(args) -> int:
    from .expressions import check_expression
    from .images import load_image

    image = load_image(args.image, max_pixels=_max_pixels(args))
    check_expression(args.expr)
    out = _overlay_path(args)
    _check_paths(args)
    grounder = _grounder(args)
    result = grounder.ground(image, args.expr)
    from .visualize import grounding_panel

    record = {"image": str(args.image), **result.to_dict(), "overlay": str(out)}
    error = None
    try:
        panel = grounding_panel(image, result.grounding, mask=result.mask, title=result.expr)
        _save_atomic(panel, out)
    except (OSError, ValueError) as err:
        record["overlay"] = None
        error = InputError(f"the overlay picture {str(out)!r} could not be written "
                           f"({type(err).__name__}: {err})",
                           "give -o a path in a folder you can write to; the box is above.")
    print(json.dumps(record))
    if error is not None:
        raise error
    return 0


def _add_data_args(p: argparse.ArgumentParser, split: str, shapes_split: str) -> None:
    """The dataset arguments; ``--split`` defaults to ``split`` (RefCOCO*) or
    ``shapes_split`` (the shapes world, whose splits are train, selection and heldout)."""
    p.add_argument("--dataset", required=True,
                   help="refcoco, refcoco+, refcocog, or shapes (the embedded toy world)")
    p.add_argument("--split", default=None,
                   help=f"split (default: {split}; {shapes_split} for shapes)")
    p.set_defaults(default_splits=(split, shapes_split))
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


def _check_out_file(out: Path, flag: str = "-o") -> None:
    if out.is_dir():
        raise InputError(f"{flag} {str(out)!r} is a folder",
                         "give a file path, e.g. -o heads.json or -o preds.jsonl.")
    if out.parent != Path("") and out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"{flag} {str(out)!r}: {str(out.parent)!r} is a file, not a folder",
                         "give a path inside a folder.")


def cmd_find_heads(args) -> int:
    out = Path(args.out)
    _check_out_file(out)
    if out.exists() and not args.force:
        raise InputError(f"-o {args.out!r} exists",
                         "give another path, or pass --force to replace it.")
    cache_dir = Path(args.cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise InputError(f"--cache-dir {args.cache_dir!r} is a file",
                         "give a folder (it is created if missing).")
    _check_paths(args)
    _check_device(args.device)
    data = _dataset(args)

    from .criteria import PUBLIC_CODE_FILTERS
    from .models import load_model
    from .provenance import model_fingerprint
    from .selection import find_heads, format_head

    state = _distributed()
    device = str(state.device) if state is not None else args.device
    model, processor, adapter = load_model(args.model, device=device, dtype=args.dtype,
                                           quantization=args.quantization)
    filters = PUBLIC_CODE_FILTERS if args.public_code_filters else {}
    kwargs = dict(
        n=args.n, repeats=args.repeats, seed=args.seed, top=args.top, k=args.k,
        elbow=args.elbow, entropy=args.entropy, cache_dir=args.cache_dir,
        model_id=adapter.model_id(), prompt_template=getattr(adapter, "template", None),
        fingerprint=model_fingerprint(model), progress=not args.quiet, **filters,
    )
    args.interrupted = lambda: (f"the items done so far are cached in {args.cache_dir}; "
                                "the same command resumes from them")

    def attention_fn(item):
        return adapter.attention(item.image, item.expr)[0]

    if state is not None:
        find_heads(attention_fn, data, shard=(state.process_index, state.num_processes),
                   **kwargs)
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
    table = find_heads(attention_fn, data, **kwargs)
    table.to_json(out)
    freq = {format_head(h): round(float(table.frequencies[h]), 2) for h in table.heads}
    skipped = table.settings.get("skipped", {})
    print(json.dumps({"heads": freq, "out": str(out), "skipped": len(skipped)}))
    if skipped:
        print(f"minilocal: {len(skipped)} items skipped (they raised); their reasons are in "
              f"{out} under settings.skipped", file=sys.stderr)
    return 0


def _finite(value):
    if isinstance(value, float):
        return round(value, 2) if math.isfinite(value) else None
    return value


def cmd_eval(args) -> int:
    out = Path(args.out) if args.out else Path(f"preds-{args.dataset}-{args.split}.jsonl")
    _check_out_file(out)
    _check_paths(args)
    _check_device(args.device)
    data = _dataset(args)
    if args.limit is not None:
        data = data[: args.limit]

    from .evaluation import evaluate, merge_predictions, read_predictions, score_predictions

    state = _distributed()
    if state is not None:
        args.device = str(state.device)
    grounder = _grounder(args)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)

    def where() -> str:
        path = out if world == 1 else out.with_name(f"{out.name}.rank{rank}")
        try:
            done = len(read_predictions(path))
        except MinilocalError:
            done = "some"
        return f"{done} of {len(data)} items are in {path}; the same command resumes there"

    args.interrupted = where
    evaluate(grounder, data, out, progress=not args.quiet, rank=rank, world_size=world)
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
        merge_predictions(out, data.ids, world)
    records = read_predictions(out)
    scores = score_predictions(out, data.ids)
    failed = sum(1 for i in data.ids if records.get(i, {}).get("failed"))
    print(json.dumps({"dataset": args.dataset, "split": args.split, "predictions": str(out),
                      **{k: _finite(v) for k, v in scores.as_dict().items()},
                      "failed": failed}))
    if failed:
        print(f"minilocal: {failed} items failed and count as misses; their reasons are in "
              f"{out} (\"failed\": true); the same command tries them again", file=sys.stderr)
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
                   help="overlay picture to write (default: IMAGE-STEM_grounding.png here, "
                        "numbered if it exists); never the input image")
    p.add_argument("--force", action="store_true", help="replace an existing -o file")
    _add_model_args(p)
    _add_grounding_args(p)
    p.set_defaults(func=cmd_ground)

    p = sub.add_parser("find-heads", help="find a model's localization heads (head table JSON)")
    _add_model_args(p)
    _add_data_args(p, "train", "selection")
    p.add_argument("--n", type=_int(1), default=1000, help="samples per repeat (1000)")
    p.add_argument("--repeats", type=_int(1), default=5, help="random draws (5)")
    p.add_argument("--seed", type=_int(0), default=0, help="repeat r uses seed + r (>= 0)")
    p.add_argument("--top", type=_int(1), default=10,
                   help="lowest-entropy heads per sample (10)")
    p.add_argument("--k", type=_int(1), default=3, help="heads chosen (3)")
    p.add_argument("--elbow", default="mean", choices=["mean", "per_sample"])
    p.add_argument("--entropy", default="paper", choices=["paper", "public_code"])
    p.add_argument("--public-code-filters", action="store_true",
                   help="also drop layers 0-1 and heads with > 0.05 in the last grid row")
    p.add_argument("--cache-dir", default=".minilocal-cache",
                   help="per-item results, so an interrupted run resumes (default: %(default)s)")
    p.add_argument("-o", "--out", default="heads.json", help="head table to write")
    p.add_argument("--force", action="store_true", help="replace an existing -o file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_find_heads)

    p = sub.add_parser("eval", help="ground a dataset split; Acc@0.5, mIoU, cIoU")
    _add_model_args(p)
    _add_grounding_args(p)
    _add_data_args(p, "val", "heldout")
    p.add_argument("--limit", type=_int(1), default=None,
                   help="only the first N expressions (N >= 1)")
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
    """Run one command; a :class:`MinilocalError` prints its message and fix (exit 2),
    Ctrl-C prints where the run stopped and the command that resumes it (exit 130)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "default_splits", None) and args.split is None:
        refcoco, shapes = args.default_splits
        args.split = shapes if args.dataset == "shapes" else refcoco
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except MinilocalError as exc:
        print(f"minilocal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = getattr(args, "interrupted", None)
        print(f"\nminilocal: interrupted{'; ' + note() if note else ''}", file=sys.stderr)
        if args.command in ("eval", "find-heads"):
            print(f"resume with: {shlex.join(['minilocal', *argv])}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

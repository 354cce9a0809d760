"""The GPU checks of issue 17, in one prepared run: prints every figure it measures.

Three stages, each timed; a stage that fails prints its error and the run goes on (exit
status 1 at the end if any failed):

1. ``bench_attention.py`` at T = 600, 1200, 2400: plain SDPA forward vs capture vs eager
   (time and peak extra GPU memory) on a random decoder of LLaVA-1.5-7B's shape.
2. capture vs eager in bfloat16 and float16 on that random 7B-shaped decoder (T = 600):
   max abs difference of the recorded rows, and how far each row's sum is from 1.
3. ``minilocal find-heads`` and ``minilocal eval`` on a random-weight replica of
   LLaVA-1.5-7B at its real size (CLIP ViT-L/14-336 + a 7B Llama, the real processor
   settings of tests/real_configs/llava-1.5-7b.json), saved to a folder and loaded back
   through ``load_model`` as a student would; again with ``--quantization 4bit`` when
   bitsandbytes is importable. Random weights: the figures are speed, memory and "it runs",
   not accuracy.

On a GPU (not run yet: no GPU was lent to the session that wrote it)::

    python benchmarks/gpu_check.py --device cuda

Without one, the same stages at toy size (minutes on a CPU; used to check the script)::

    python benchmarks/gpu_check.py --device cpu --scale tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the replicas' processor settings
sys.path.insert(0, str(ROOT / "benchmarks"))

SCALES = {
    # bench preset and lengths, capture-vs-eager T, find-heads n, eval limit
    "real": dict(preset="llava-7b", lengths="600,1200,2400", T=600, n=8, limit=8, repeats=3),
    "tiny": dict(preset="cpu", lengths="64,128", T=64, n=2, limit=2, repeats=1),
}


def _gpu_line(device: str) -> str:
    import torch

    if not device.startswith("cuda"):
        return f"device: {device} (no GPU), torch {torch.__version__}"
    props = torch.cuda.get_device_properties(0)
    return (f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}")


def stage_bench(args, scale) -> None:
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_attention.py"),
           "--preset", scale["preset"], "--device", args.device, "--dtype", dtype,
           "--lengths", scale["lengths"], "--repeats", str(scale["repeats"]),
           "--threads", str(args.threads)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def stage_capture_vs_eager(args, scale) -> None:
    import torch
    from bench_attention import build

    from minilocal.attention import last_token_attention

    dtypes = ["bfloat16", "float16"] if args.device.startswith("cuda") else ["float32"]
    T = scale["T"]
    for name in dtypes:
        dtype = getattr(torch, name)
        model = build(scale["preset"], dtype, args.device, "sdpa")
        torch.manual_seed(0)
        x = torch.randn(1, T, model.config.hidden_size, dtype=dtype, device=args.device)
        positions = torch.arange(4, 4 + min(576, T - 8), device=args.device)
        inputs = {"inputs_embeds": x}
        cap = last_token_attention(model, inputs, positions, model, method="capture")
        ref = last_token_attention(model, inputs, positions, model, method="eager")
        full = last_token_attention(model, inputs, None, model, method="capture")  # [1, L, H, T]
        diff = (cap - ref).abs().max().item()
        sums = (full.sum(-1) - 1).abs().max().item()
        print(f"capture vs eager, {name}, T={T}, {model.config.num_hidden_layers} layers x "
              f"{model.config.num_attention_heads} heads: max abs diff {diff:.3e}; "
              f"max |row sum - 1| {sums:.3e}", flush=True)
        del model, cap, ref, full
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


def build_llava_replica(folder: Path, scale_name: str, device: str) -> None:
    """A random LLaVA-1.5-7B (real widths for ``"real"``) with the real processor settings,
    saved to ``folder`` in float16 (float32 for ``"tiny"``)."""
    import torch
    from bench_attention import construct
    from replicas import build_replica
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tiny, processor = build_replica("llava-1.5-7b", layers=2)
    if scale_name == "tiny":
        tiny.save_pretrained(folder)
        processor.save_pretrained(folder)
        return
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14,
                              projection_dim=768)
    tok = processor.tokenizer
    text = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096,
                       pad_token_id=tok.pad_token_id)  # defaults: the 7B layout
    cfg = LlavaConfig(vision_config=vision, text_config=text,
                      image_token_id=tiny.config.image_token_id, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = construct(LlavaForConditionalGeneration, cfg, torch.float16, device)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def stage_find_heads_and_eval(args, scale) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="minilocal-gpu-check-"))
    folder = work / "llava-replica"
    t = time.perf_counter()
    build_llava_replica(folder, args.scale, args.device)
    print(f"replica written to {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    runs = [None]
    if args.device.startswith("cuda") and importlib.util.find_spec("bitsandbytes"):
        runs.append("4bit")
    elif args.device.startswith("cuda"):
        print("bitsandbytes is not importable here: no 4-bit run", flush=True)
    for quant in runs:
        tag = (quant or "fp16") if args.device.startswith("cuda") else "fp32"
        common = ["--model", str(folder), "--device", args.device]
        if quant:
            common += ["--quantization", quant]
        heads = work / f"heads-{tag}.json"
        steps = [
            ["find-heads", *common, "--dataset", "shapes", "--n", str(scale["n"]),
             "--repeats", "1", "--cache-dir", str(work / f"cache-{tag}"), "-o", str(heads),
             "--quiet"],
            ["eval", *common, "--heads", str(heads), "--dataset", "shapes", "--split", "heldout",
             "--limit", str(scale["limit"]), "-o", str(work / f"preds-{tag}.jsonl"), "--quiet"],
        ]
        for step in steps:
            cmd = [sys.executable, "-m", "minilocal.cli", *step]
            print("$ minilocal", " ".join(step), flush=True)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT)
            print(f"  {step[0]} ({tag}): {time.perf_counter() - t:.1f} s", flush=True)
        table = json.loads(heads.read_text(encoding="utf-8"))
        print(f"  head table ({tag}): {table['num_layers']} layers x {table['num_heads']} "
              f"heads, chosen {table['heads']}", flush=True)
    if args.device.startswith("cuda"):
        import torch

        print(f"peak GPU memory of this process: {torch.cuda.max_memory_allocated() / 2**30:.2f}"
              " GiB (the CLI runs are separate processes and print their own)", flush=True)


STAGES = {"bench": stage_bench, "capture": stage_capture_vs_eager,
          "heads": stage_find_heads_and_eval}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--scale", default="real", choices=sorted(SCALES))
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="folder for the replica and outputs")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    print(_gpu_line(args.device), flush=True)
    failed = []
    for name in args.stages.split(","):
        t = time.perf_counter()
        print(f"=== {name}", flush=True)
        try:
            STAGES[name](args, scale)
        except Exception:  # report and go on: one failed stage must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - t:.1f} s", flush=True)
    print("failed stages:", ", ".join(failed) if failed else "none")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

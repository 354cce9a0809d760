"""Benchmark step 1: recording the last-token attention vs a plain forward and vs eager.

Prints, for a Llama decoder of realistic shape scaled to fit the machine, at several
prompt lengths T (LLaVA-1.5 prompts are ~600 tokens: 576 image tokens + text):

* time of a plain SDPA prefill forward (reference), of the same forward with minilocal's
  capture (goal: <= 1.1x the plain forward), and of the eager reference with
  ``output_attentions=True`` (goal: capture >= 3x faster);
* peak extra memory of each over the loaded model (goal at T ~ 600: capture needs >= 10x
  less than eager), measured as peak RSS growth in a fresh subprocess per measurement
  (CPU), or torch.cuda.max_memory_allocated on a GPU.

Every figure is measured in the same run; ratios are against the plain forward / the eager
reference measured alongside.

    python benchmarks/bench_attention.py                       # CPU default, fp32
    python benchmarks/bench_attention.py --preset llava-7b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PRESETS = {
    # hidden, layers, heads, kv_heads, intermediate
    # LLaVA-1.5-7B's head layout (32 layers x 32 heads), every width scaled down 8x
    "cpu": dict(hidden_size=512, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, intermediate_size=1376),
    "llava-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, intermediate_size=11008),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(preset: str, dtype, device, attn: str):
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, max_position_embeddings=8192, **PRESETS[preset])
    model = construct(LlamaModel, cfg, dtype, device)
    model.set_attn_implementation(attn)
    return model


def construct(cls, cfg, dtype, device):
    """``cls(cfg)`` in eval mode, its weights created where they live, in their dtype: a 7B
    decoder initialised in float32 on the CPU first takes minutes and 27 GB (a GPU run once
    timed out on exactly that)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(cfg).eval()
    finally:
        torch.set_default_dtype(previous)


def run_one(args) -> dict:
    """One measurement in this process: method in {plain, capture, eager}."""
    import torch

    from minilocal.attention import last_token_attention

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    model = build(args.preset, dtype, device, "sdpa")
    T, n_img = args.T, min(576, args.T - 8)
    x = torch.randn(1, T, model.config.hidden_size, dtype=dtype, device=device)
    positions = torch.arange(4, 4 + n_img, device=device)  # [n] image tokens after a prefix
    inputs = {"inputs_embeds": x}

    def step():
        if args.method == "plain":
            with torch.no_grad():
                model(**inputs, use_cache=False)
        else:
            last_token_attention(model, inputs, positions, model, method=args.method)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (also registers the capture function)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"method": args.method, "T": T, "time_s": min(times),
            "extra_mem_mb": max(peak, 0) / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lengths", default="300,600,1200")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, default=600, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:  # child process
        print(json.dumps(run_one(args)))
        return

    cfg = PRESETS[args.preset]
    print(f"decoder: Llama {cfg}, {args.dtype} on {args.device}, {args.threads} threads, "
          f"min of {args.repeats} after 1 warm-up; one fresh process per measurement")
    header = (f"{'T':>6} {'plain s':>9} {'capture s':>10} {'eager s':>9} "
              f"{'capture/plain':>14} {'eager/capture':>14} "
              f"{'plain MB':>9} {'capture MB':>11} {'eager MB':>9} {'eager/capture MB':>17}")
    print(header)
    for T in [int(t) for t in args.lengths.split(",")]:
        res = {}
        for method in ("plain", "capture", "eager"):
            cmd = [sys.executable, __file__, "--method", method, "--T", str(T),
                   "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
                   "--threads", str(args.threads), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        pl, ca, ea = res["plain"], res["capture"], res["eager"]
        mem_ratio = ea["extra_mem_mb"] / max(ca["extra_mem_mb"], 1e-9)
        print(f"{T:>6} {pl['time_s']:>9.3f} {ca['time_s']:>10.3f} {ea['time_s']:>9.3f} "
              f"{ca['time_s'] / pl['time_s']:>14.3f} {ea['time_s'] / ca['time_s']:>14.2f} "
              f"{pl['extra_mem_mb']:>9.1f} {ca['extra_mem_mb']:>11.1f} {ea['extra_mem_mb']:>9.1f} "
              f"{mem_ratio:>17.1f}")
    print("capture/plain: time of the capture forward over the plain SDPA forward (goal <= 1.1)")
    print("eager/capture: eager output_attentions time over capture time (goal >= 3)")
    print("eager/capture MB: eager's peak extra memory over capture's, both over the loaded "
          "model (goal >= 10 at T ~ 600)")


if __name__ == "__main__":
    main()

"""Design sweep for the shapes LVLM on a GPU, the sweep table (experiments/LOG.md section 2).

Trains variants in parallel (device tool), then runs the paper's head search (selection
split) and the held-out figures for each.

usage: python experiments/sweep_gpu.py OUT_DIR NAME [NAME ...]   (one process per NAME)
Each variant writes OUT_DIR/NAME.json (training probes + held-out report) and its model.
"""
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

VARIANTS = {
    # name: (train args)
    "A_1k": dict(steps=1000),
    "A_4k": dict(steps=4000),
    "A_1k_s1": dict(steps=1000, seed=1),
    "A_2k_h16": dict(steps=2000, heads=16, kv_heads=16),
    "B_1k": dict(steps=1000, layout="question_first"),
    "B_4k": dict(steps=4000, layout="question_first"),
    "A_2k_l12": dict(steps=2000, layers=12),
}


def run_variant(out: Path, name: str) -> None:
    import torch

    torch.set_num_threads(2)
    from minilocal.toy import evaluate as E
    from minilocal.toy import train as T

    args = dict(VARIANTS[name])
    spec_keys = {"layers", "heads", "kv_heads", "hidden", "layout"}
    cfg = T.TrainConfig(device="cuda", probe_every=500)
    cfg = replace(cfg, spec=replace(cfg.spec, **{k: v for k, v in args.items() if k in spec_keys}),
                  **{k: v for k, v in args.items() if k not in spec_keys})
    t = time.time()
    rep = T.train(cfg, out / name, progress=False)
    train_s = time.time() - t
    probes = [{k: v for k, v in p.items() if k not in ("in_box", "pointing", "s_img")}
              for p in rep["probes"]]
    table = E.search_heads(out / name, progress=False)
    held = E.heldout_report(out / name, table, progress=False)
    res = {"name": name, "args": args, "train_s": round(train_s, 1), "probes": probes,
           "heads": table.heads_str(), "heldout": held}
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({"name": name, "train_s": round(train_s), "heads": table.heads_str(),
                      "acc": held["acc@0.5"], "answer": probes[-1]["answer"]}), flush=True)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if sys.argv[2] == "--one":
        run_variant(out, sys.argv[3])
    else:
        procs = [subprocess.Popen([sys.executable, __file__, str(out), "--one", n])
                 for n in sys.argv[2:]]
        for p in procs:
            p.wait()

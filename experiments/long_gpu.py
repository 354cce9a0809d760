"""Longer GPU trainings: long_gpu.py A|Alr|B|Ab32 (experiments/LOG.md section 2, "Longer runs")."""
import sys, time, torch
from dataclasses import replace
sys.path.insert(0, ".")
from minilocal.toy import train as T
name = sys.argv[1]
kw = dict(A=dict(), Alr=dict(lr=1e-3), B=dict(layout="question_first"), Ab32=dict(batch=32))[name]
torch.set_num_threads(3)
cfg = T.TrainConfig(device="cuda", steps=4000, probe_every=400, probe_items=48)
spec_keys = {"layout"}
cfg = replace(cfg, spec=replace(cfg.spec, **{k: v for k, v in kw.items() if k in spec_keys}),
              **{k: v for k, v in kw.items() if k not in spec_keys})
import tqdm.auto as ta
orig = ta.tqdm.write
T.tqdm.write = lambda s, *a, **k: print(f"[{name} {time.strftime('%H:%M:%S')}] {s}", flush=True)
T.train(cfg, None, progress=False)

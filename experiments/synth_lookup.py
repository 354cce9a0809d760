"""Does the lookup emerge when image tokens ARE word embeddings? (experiments/LOG.md section 11)

Usage: python experiments/synth_lookup.py OUT IMAGE_SIZE STEPS [FLAGS...]

The image tokens reaching the decoder are replaced (a forward hook on the projector) by
SYNTHETIC tokens built from the decoder's own input embeddings, cell by cell:

    cell covered by an object:  E[colour] + E[shape] + E[size] + E[r_i] + E[c_j]
    background cell:            E[background] + E[r_i] + E[c_j]

where r_i, c_j are the answer words of the cell (the row and column tokens the model
answers with). This is the cleanest possible image: content is in the same space as the
expression's words, and each cell carries its own answer words, so a head at "." that
attends to the referent can COPY the answer (as text retrieval heads do). If a
referent-specific head does not emerge here, the answer loss does not favour the lookup
in this budget, whatever the vision tower does. The expected analogue in LLaVA: an LLM
with retrieval heads, and a projector aligned to the word space (LLaVA's stage 1).

Flags:
  easy     the easy world (no relations, distractors or twins)
  text0    stage 0 first (1500 text-only steps: the gather, train.text_stage)
  curr=N   curriculum of N steps (train.world_at: single objects first, so that "where"
           (copying the cell words of the one object) is learnt before "which")
  mask=N   DILUTION curriculum of N steps: at step s < N, each background image cell is
           hidden from attention (attention_mask 0) with probability 1 - s / N, so that
           the lookup starts among the 2-4 objects' cells (~1/3 of the attention on the
           referent at uniform attention, instead of ~1/30) and the background returns
           gradually; the probe always sees every cell
  plant    PLANT heads L1H3 and L2H5 (train.Planter): a check of the set-up, since a
           planted lookup on clean tokens should make the answers rise
  real     real image tokens (vision tower + projector), not synthetic ones: to test
           the mask curriculum on the model that would ship
  out      save the model to OUT
Model: 4 layers x 8 heads, batch 16, 4 questions per image, 1 thread. The probe (24
selection items) sees synthetic tokens too.
"""

import hashlib
import sys

import numpy as np
import torch
from diag_common import parse, print_report  # experiments/diag_common.py

from minilocal.geometry import Geometry
from minilocal.toy import lvlm, train
from minilocal.toy import world as W

out, image_size, steps, flags, world, spec = parse(sys.argv[1:])
curriculum = [int(f.split("=")[1]) for f in flags if f.startswith("curr=")]
cfg = train.TrainConfig(spec=spec, world=world, steps=steps, threads=1, probe_items=24,
                        text_steps=1500 if "text0" in flags else 0,
                        curriculum=curriculum[0] if curriculum else 0,
                        plant=((1, 3), (2, 5)) if "plant" in flags else ())
GRID = spec.grid
#: RMS per dimension of each synthetic token: the shipped S1's projector output measures
#: 0.67 (its word embeddings 0.06, so raw sums of embeddings are ~5x weaker than real
#: image tokens).
TOKEN_RMS = 0.7


def _key(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def cell_cover(scene) -> np.ndarray:
    """[n, h, w] share of each grid cell covered by each object (not train.pooled_mask,
    which normalises each map to sum 1: thresholded at 0.3, it gave NO object cells)."""
    return np.stack([Geometry.resize(m.shape[::-1], GRID).image_mask_to_grid(m)
                     for m in scene.masks])


def cell_ids(scene, tok) -> torch.Tensor:
    """[h*w, 5] token ids of each cell's synthetic token (-1 where a slot is unused)."""
    h, w = GRID
    cover = cell_cover(scene)
    owner = np.where(cover.max(0) >= 0.3, cover.argmax(0), -1)
    conv = tok.convert_tokens_to_ids
    ids = torch.full((h * w, 5), -1, dtype=torch.long)
    for i in range(h):
        for j in range(w):
            k = owner[i, j]
            row = ids[i * w + j]
            if k >= 0:
                o = scene.objects[k]
                row[:3] = torch.tensor([conv(o.color), conv(o.shape), conv(o.size)])
            else:
                row[0] = conv("background")
            row[3], row[4] = conv(f"r{i}"), conv(f"c{j}")
    return ids


def register(pixel_values: torch.Tensor, scenes, tok) -> None:
    for b, scene in enumerate(scenes):
        REGISTRY[_key(pixel_values[b])] = cell_ids(scene, tok)


_orig_make_batch = train.make_batch


MASK_STEPS = [int(f.split("=")[1]) for f in flags if f.startswith("mask=")]


def make_batch(step, cfg, processor, targets=False):
    made = _orig_make_batch(step, cfg, processor, targets)
    w = train.world_at(step, cfg)
    scenes = [W.shapes_sample("train", cfg.start_index + step * cfg.batch + b, w,
                              questions=cfg.questions).scene for b in range(cfg.batch)]
    if "real" not in flags:
        REGISTRY.clear()
        register(made[0]["pixel_values"], scenes, processor.tokenizer)
    if MASK_STEPS and step < MASK_STEPS[0]:
        hide = 1 - step / MASK_STEPS[0]
        rng = np.random.default_rng([5, step])
        batch = made[0]
        image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        h, w_ = GRID
        for b, scene in enumerate(scenes):
            drop = (cell_cover(scene).max(0).reshape(-1) == 0) & (rng.random(h * w_) < hide)
            pos = (batch["input_ids"][b] == image_id).nonzero().squeeze(-1)
            batch["attention_mask"][b, pos[torch.from_numpy(drop)]] = 0
    return made


train.make_batch = make_batch


def install(model, processor) -> None:
    """Hooks: remember the pixels entering the tower; replace the projector's output."""
    emb = model.model.language_model.embed_tokens
    seen = {}

    def pre(module, args, kwargs):
        seen["pixels"] = kwargs.get("pixel_values", args[0] if args else None)

    def post(module, args, output):
        pixels = seen["pixels"]
        feats = []
        for b in range(pixels.shape[0]):
            key = _key(pixels[b])
            if key not in REGISTRY:
                raise KeyError("image not registered (synthetic tokens unknown)")
            ids = REGISTRY[key]
            e = emb(ids.clamp(min=0)) * (ids >= 0).unsqueeze(-1)
            e = e.sum(1)  # rescaled to the RMS of the trained projector's output
            feats.append(e / e.pow(2).mean(-1, keepdim=True).sqrt() * TOKEN_RMS)
        return torch.stack(feats).to(output.dtype)

    model.model.vision_tower.register_forward_pre_hook(pre, with_kwargs=True)
    model.model.multi_modal_projector.register_forward_hook(post)
    # the probe's items (selection split), registered as the adapter will encode them
    for i in range(cfg.probe_items):
        s = W.shapes_sample("selection", i, cfg.world)
        item = W.shapes_item("selection", i, cfg.world)
        px = processor.image_processor(images=[item.image], return_tensors="pt")["pixel_values"]
        REGISTRY_PROBE[_key(px[0])] = cell_ids(s.scene, processor.tokenizer)


class _Registry(dict):
    """pixel hash -> [h*w, 5] token ids (-1: none); clearing keeps the probe's items."""

    def clear(self):
        super().clear()
        self.update(REGISTRY_PROBE)


REGISTRY_PROBE: dict[str, torch.Tensor] = {}
REGISTRY = _Registry()
build = lvlm.build_model


def build_synth(spec, processor, seed=0):
    model = build(spec, processor, seed=seed)
    if "real" in flags:
        return model
    install(model, processor)
    REGISTRY.clear()
    return model


lvlm.build_model = build_synth
report = train.train(cfg, out if "out" in flags else None)
print_report(report, cfg.plant)

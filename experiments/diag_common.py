"""Shared by lookup_diag.py and synth_lookup.py (experiments/LOG.md sections 9, 11 and 12).

Both take ``OUT IMAGE_SIZE STEPS [FLAGS...]``, train the 4-layer model with patch-init
std 0.2, and print the probes at the end.
"""

from dataclasses import replace

import numpy as np

from minilocal.toy import lvlm
from minilocal.toy import world as W


def parse(argv: list[str]):
    """(out, image_size, steps, flags, world, spec) from ``OUT IMAGE_SIZE STEPS FLAGS...``.

    The flag ``easy`` gives the easy world (no relations, distractors or twins); ``crowd``
    a crowded one (6-8 smaller objects, sides 0.13-0.16 and 0.19-0.22 of the image, no
    relations or twins; distractors as by default), where a mixture of all objects says
    little about the referent (LOG section 12).
    """
    if len(argv) < 3:
        raise SystemExit("usage: OUT IMAGE_SIZE STEPS [FLAGS...] (see the script's docstring)")
    out, image_size, steps = argv[0], int(argv[1]), int(argv[2])
    flags = set(argv[3:])
    world = W.WorldConfig()
    if "easy" in flags:
        world = replace(world, relational=0.0, distractor=0.0, twin=0.0)
    if "crowd" in flags:
        world = replace(world, min_objects=6, max_objects=8, small=(0.13, 0.16),
                        big=(0.19, 0.22), relational=0.0, twin=0.0)
    spec = replace(lvlm.ModelSpec(), layers=4, patch_init_std=0.2, image_size=image_size)
    return out, image_size, steps, flags, world, spec


def print_report(report: dict, plant) -> None:
    """Each probe (best heads, answers, planted heads) and the final loss / token accuracy."""
    for p in report["probes"]:
        print(p["step"], p["box_share"], p["answer"], p["in_box_top"][:3])
        if plant:
            print("   planted:", {f"L{a}H{b}": (p["in_box"][a][b], p["pointing"][a][b])
                                  for a, b in plant})
    print("final loss (mean of last 10 logged):",
          round(float(np.mean([r["loss"] for r in report["log"][-10:]])), 3),
          "token acc:", round(float(np.mean([r["token_acc"] for r in report["log"][-10:]])), 3))

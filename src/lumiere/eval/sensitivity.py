"""Which words of a caption does a text-to-video STUNet use? The denoising loss with the true caption,
with one attribute swapped, and with the empty caption (docs/design.md section 6's caption grammar).

For real MovingShapes clips and fixed noise, the v-prediction loss at a few timesteps ``t`` is measured
three times: with the clip's own caption, with the same caption but one attribute changed (a red circle
becomes a green circle; "moving left" becomes "moving right"), and with the empty caption. A model that
reads the attribute does worse with the swapped caption; one that ignores it does equally well. The
``share`` of an attribute at ``t`` is

    (loss_swapped - loss_true) / (loss_empty - loss_true),

the cost of this one wrong attribute in units of the cost of dropping the whole caption: 0 when the
model ignores the attribute, 1 when getting it wrong costs as much as having no caption, above 1 when
a wrong value is worse than none (the model commits to what the caption says). High timesteps
matter most: they are where the sampler decides the layout and the motion of the clip.

The long motions of issue 33 have their own swaps: "and_back" ("moving right and back" becomes
"moving right" and back again), "then" ("growing then shrinking" becomes "growing") and "bounce_speed"
("bouncing slowly" becomes "bouncing quickly"), on clips drawn with long motions; ``--frames 80``
measures a pipeline's long-clip model (``LumierePipeline.base_model``).

No sampling is involved, so this is fast (one forward pass per clip, timestep and caption) and
precise enough to follow a training run. ``python -m lumiere.eval.sensitivity --help``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from lumiere.data.shapes import BACKGROUNDS, COLOURS, LONG_MOTIONS, SHAPES, MovingShapes, make_caption
from lumiere.diffusion.objective import DiffusionObjective, make_noise_scheduler
from lumiere.models.conditional import empty_condition, is_conditional_stunet
from lumiere.models.stunet import STUNet
from lumiere.models.text import NULL_PROMPT, TextEncoder
from lumiere.runtime import keep_freed_memory
from lumiere.stages import conditioned_forward


def _cycle(values: Sequence[str]) -> dict[str, str]:
    """Each value -> the next one (cyclically), so every swap changes the caption."""
    return {value: values[(i + 1) % len(values)] for i, value in enumerate(values)}


# attribute -> (attribute key in the caption grammar, replacement of each value). "direction" keeps
# the axis and reverses the sense ("left_right" and "up_down" do so on one axis only), "axis" turns
# a horizontal translation into a vertical one.
SWAPS: dict[str, tuple[str, dict[str, str]]] = {
    "colour": ("colour", _cycle(list(COLOURS))),
    "shape": ("shape", _cycle(SHAPES)),
    "background": ("background", _cycle(list(BACKGROUNDS))),
    "direction": (
        "motion",
        {
            "moving left": "moving right",
            "moving right": "moving left",
            "moving up": "moving down",
            "moving down": "moving up",
        },
    ),
    # the two halves of "direction", to tell the horizontal sense from the vertical one
    "left_right": ("motion", {"moving left": "moving right", "moving right": "moving left"}),
    "up_down": ("motion", {"moving up": "moving down", "moving down": "moving up"}),
    "axis": (
        "motion",
        {
            "moving left": "moving up",
            "moving right": "moving down",
            "moving up": "moving left",
            "moving down": "moving right",
        },
    ),
    # The long motions of issue 33, each against its nearest one-way motion, both ways: does the model
    # read "and back", "then ..." and the speed of a bounce (docs/long_clips.md)?
    "and_back": (
        "motion",
        {
            **{f"moving {d} and back": f"moving {d}" for d in ("left", "right", "up", "down")},
            **{f"moving {d}": f"moving {d} and back" for d in ("left", "right", "up", "down")},
        },
    ),
    "then": (
        "motion",
        {
            "growing then shrinking": "growing",
            "shrinking then growing": "shrinking",
            "growing": "growing then shrinking",
            "shrinking": "shrinking then growing",
        },
    ),
    "bounce_speed": (
        "motion",
        {"bouncing slowly": "bouncing quickly", "bouncing quickly": "bouncing slowly"},
    ),
}
# Swaps whose clips are drawn with long motions as well (MovingShapes long_share): half of the clips.
LONG_SWAPS: dict[str, float] = {"and_back": 0.5, "then": 0.5, "bounce_speed": 1.0}
DEFAULT_TIMESTEPS = (500, 800, 900, 970)


def swapped_attributes(attributes: dict[str, str], attribute: str) -> dict[str, str] | None:
    """``attributes`` with ``attribute`` replaced by SWAPS; None where the swap does not apply
    (e.g. "direction" of a growing shape)."""
    if attribute not in SWAPS:
        raise ValueError(f"attribute must be one of {list(SWAPS)}, got {attribute!r}")
    key, replace = SWAPS[attribute]
    if attributes.get(key) not in replace:
        return None
    return {**attributes, key: replace[attributes[key]]}


def _clips(attribute: str, count: int, num_frames: int, resolution: int, seed: int):
    """The first ``count`` MovingShapes clips (seed) the swap applies to -> x0 [count, 3, f, h, w],
    true captions, swapped captions."""
    long_share = LONG_SWAPS.get(attribute, 0.0)
    long_mix = None
    if attribute == "bounce_speed":  # only the two bounces with a speed (the other draws would be skipped)
        long_mix = [float(motion.startswith("bouncing")) for motion in LONG_MOTIONS]
    data = MovingShapes(
        length=10**9,
        num_frames=num_frames,
        resolution=resolution,
        seed=seed,
        long_share=long_share,
        long_mix=long_mix,
    )
    videos, true, swapped = [], [], []
    index = 0
    while len(videos) < count:
        item = data[index]
        index += 1
        other = swapped_attributes(item["attributes"], attribute)
        if other is None:
            continue
        videos.append(item["video"])
        # both captions in the canonical template, so only the attribute's words differ
        true.append(make_caption(item["attributes"]))
        swapped.append(make_caption(other))
    return torch.stack(videos), true, swapped


@torch.no_grad()
def caption_sensitivity(
    stunet: STUNet,
    text_encoder: TextEncoder,
    attribute: str,  # a key of SWAPS
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,  # training timesteps, 0..999
    count: int = 32,  # clips (each measured at every timestep with the three captions)
    seed: int = 0,  # picks the clips and the noise
    num_frames: int = 16,
    resolution: int = 32,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Loss with the true, swapped and empty caption per timestep (see the module docstring).

    Works for a text-to-video STUNet and for the conditional one (measured as text-to-video: nothing
    known). Returns a JSON-ready dict of lists, one entry per timestep.
    """
    if attribute not in SWAPS:
        raise ValueError(f"attribute must be one of {list(SWAPS)}, got {attribute!r}")
    if count < 1 or batch_size < 1:
        raise ValueError(f"count and batch_size must be >= 1, got count={count}, batch_size={batch_size}")
    objective = DiffusionObjective(make_noise_scheduler())
    bad = [t for t in timesteps if not 0 <= int(t) < objective.num_train_timesteps]
    if not timesteps or bad:
        raise ValueError(f"timesteps must be a non-empty list of ints in [0, 999], got {list(timesteps)}")
    conditional = is_conditional_stunet(stunet)
    if stunet.in_channels != stunet.out_channels and not conditional:
        raise ValueError("caption_sensitivity needs a text-to-video or conditional STUNet, not an SSR model")
    device = stunet.device
    x0, true, swapped = _clips(attribute, count, num_frames, resolution, seed)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    captions = {"true": true, "swapped": swapped, "empty": [NULL_PROMPT] * count}
    totals = {name: [0.0] * len(timesteps) for name in captions}
    for start in range(0, count, batch_size):
        part = slice(start, start + batch_size)
        clean, eps = x0[part].to(device), noise[part].to(device)
        condition = empty_condition(tuple(clean.shape), device=device) if conditional else None
        encoded = {name: text_encoder.encode(texts[part], device=device) for name, texts in captions.items()}
        for i, t in enumerate(timesteps):
            steps = torch.full((clean.shape[0],), int(t), device=device)
            noisy = objective.add_noise(clean, eps, steps)
            for name, (states, mask) in encoded.items():
                prediction = conditioned_forward(stunet, noisy, steps, states, mask, condition)
                loss = objective.loss(prediction, clean, eps, steps, reduction="none").sum().item()
                totals[name][i] += loss
    losses = {name: [value / count for value in values] for name, values in totals.items()}
    share = []
    for lt, ls, le in zip(losses["true"], losses["swapped"], losses["empty"], strict=True):
        share.append((ls - lt) / (le - lt) if le - lt > 0 else math.nan)
    return {
        "attribute": attribute,
        "count": count,
        "seed": seed,
        "timesteps": [int(t) for t in timesteps],
        "loss_true": losses["true"],
        "loss_swapped": losses["swapped"],
        "loss_empty": losses["empty"],
        "share": [None if math.isnan(s) else s for s in share],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lumiere.eval.sensitivity",
        description="How much the denoising loss depends on each caption attribute (prints JSON).",
    )
    parser.add_argument("--model", default=None, help="pipeline directory (default: the shipped model)")
    parser.add_argument(
        "--attribute",
        action="append",
        choices=list(SWAPS),
        help="attribute to swap; repeat for several (default: all)",
    )
    parser.add_argument("--count", type=int, default=32, help="clips per attribute (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="picks the clips and the noise")
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS), help="timesteps in [0, 999]"
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=16,
        help="frames per clip; a pipeline with a long-clip model measures it from its long_clip_frames on (80)",
    )
    parser.add_argument("--batch", type=int, default=8, help="clips per forward pass (>= 1)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the lumiere command runs (lumiere.runtime)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")

    from lumiere.pipelines import LumierePipeline

    pipe = LumierePipeline.from_pretrained(args.model) if args.model else LumierePipeline.from_pretrained()
    stunet = pipe.base_model(args.frames).eval()  # the model that makes a clip of --frames frames
    if args.frames % stunet.temporal_factor:
        parser.error(
            f"--frames must be a multiple of {stunet.temporal_factor} for this model, got {args.frames}"
        )
    size = stunet.config.unet_config.get("sample_size", 32)
    results = [
        caption_sensitivity(
            stunet,
            pipe.text_encoder,
            attribute,
            timesteps=args.timesteps,
            count=args.count,
            seed=args.seed,
            num_frames=args.frames,
            resolution=int(size),
            batch_size=args.batch,
        )
        for attribute in args.attribute or list(SWAPS)
    ]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

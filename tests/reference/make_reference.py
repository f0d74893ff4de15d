"""Write ``shipped_clips.npz``: clips of the shipped default model for fixed seeds, one per task.

Run once, before a refactor, with the code that is to be preserved; ``tests/test_reference_clips.py``
then checks that today's code gives the same clips (issue 28: "the shipped model gives the same
clip for the same seed before and after"). Stored as float16, a few hundred KB.

    python tests/reference/make_reference.py        # rewrites tests/reference/shipped_clips.npz
    python tests/reference/make_reference.py --only t2v_ssr   # one clip, after a new SSR ships
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lumiere.eval.evaluate import real_clips_for
from lumiere.pipelines import LumierePipeline

PROMPT = "a red circle moving right on a black background"
STEPS = 6  # few steps keep the test fast; any drift in the sampler or network still shows
OUT = Path(__file__).with_name("shipped_clips.npz")


def reference_inputs() -> dict[str, np.ndarray]:
    """Real moving-shapes inputs: a clip [16, 32, 32, 3] in [0, 1] and a centred box mask [32, 32]."""
    clip = real_clips_for([PROMPT], 16, 32, seed=7)[0]
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[8:24, 8:24] = 1.0
    return {"clip": clip.astype(np.float32), "mask": mask}


def reference_calls(inputs: dict[str, np.ndarray]) -> dict[str, dict]:
    """Keyword arguments of one pipeline call per task."""
    clip, mask = inputs["clip"], inputs["mask"]
    return {
        "t2v_base": dict(num_frames=16, upsample=False),
        "t2v_ssr": dict(num_frames=8, upsample=True),
        "i2v": dict(num_frames=16, upsample=False, image=clip[0]),
        "cinemagraph": dict(num_frames=16, upsample=False, image=clip[0], mask=mask),
        "inpaint": dict(upsample=False, video=clip, mask=mask),
        "sdedit": dict(upsample=False, video=clip, strength=0.6),
        "window": dict(num_frames=24, upsample=False, window=16, overlap=8),
    }


def generate(pipe: LumierePipeline, kwargs: dict) -> np.ndarray:
    return pipe(
        PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), **kwargs
    ).frames[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=None,
                        help="rewrite only these clips (e.g. t2v_ssr after a new SSR ships); keep the others")  # fmt: skip
    args = parser.parse_args()
    pipe = LumierePipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    inputs = reference_inputs()
    calls = reference_calls(inputs)
    clips = dict(np.load(OUT)) if args.only else {}
    for name in args.only or calls:
        clips[name] = generate(pipe, calls[name]).astype(np.float16)
    np.savez_compressed(OUT, **clips)
    print(f"wrote {OUT}: " + ", ".join(f"{k} {v.shape}" for k, v in clips.items()))


if __name__ == "__main__":
    main()

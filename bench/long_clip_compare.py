"""Paper-length clips (issue 33): one pass over 80 frames against the two ways around it.

Lumiere's claim (Bar-Tal et al. 2024, Sec. 1 and 3, Fig. 2 and the ablation): a base model that
generates the whole clip in one pass keeps motion globally coherent, periodic motion above all,
where keyframes plus temporal super-resolution (TSR), or windows over a short model, drift.

On the same prompts and seeds (``lumiere.eval.long_clips.draw_long_prompts``: 60% of them a
motion that spans the clip), each method makes 80-frame clips at 32x32, read back by the
long-clip probe (``lumiere.eval.long_clips``): per-attribute accuracy over the whole clip, the
object in every frame, bouncing motion and the steadiness of its period, colour and size drift
between the first and last second.

Methods:

- ``one_pass``: the 80-frame model (``--long-model``, default the shipped pipeline, whose
  ``long_stunet`` makes clips of 80 frames; ``configs/long/80_frames.yaml``), 80 frames in one pass;
- ``shipped_one_pass``: the 16-frame model (``--short-model``, default the shipped pipeline's
  ``stunet``, its long-clip model set aside) asked for 80 frames in one pass (what ``--frames 80``
  gave before the 80-frame model shipped);
- ``windows``: the 16-frame model over windows of 16 frames (overlap 8), reconciled at every step
  by temporal MultiDiffusion (``pipe(..., window=16)``);
- ``cascade``: keyframes + TSR. A keyframe model (``--keyframe-model``; default the shipped
  model, better one fine-tuned on keyframes, ``configs/long/keyframes_16.yaml``) makes 80 /
  ``--stride`` frames, one every ``--stride``-th frame of the clip; the TSR fills in the frames
  between with the conditional model (``--tsr-model``, default the shipped one), as inpainting of
  the missing frames with the keyframes known, over windows of 16 (Sec. 4's conditioning used as
  temporal super-resolution). The TSR is not trained on keyframe masks (``bench/ablation.py``'s
  cascade is, but that script keeps no weights), which handicaps this arm: say so with its figures.

``--timing`` also measures one 80-frame clip of the one-pass model (the shipped one with
``--long-model`` absent) on ``--threads`` cores: base alone, and base + SSR to 64x64, each in a
fresh process (time and peak resident memory, ``harness``).

    python bench/long_clip_compare.py --long-model runs/long_80/model --count 8 --out /tmp/long8.json
    python bench/long_clip_compare.py --long-model runs/long_80/model --count 200 \\
        --out docs/long_clip_compare.json                           # the issue's table (hours on 2 cores)
    python bench/long_clip_compare.py --long-model runs/long_80/model --timing --threads 2 --methods none

The 200 prompts take hours on 2 cores, so a run can take a slice of them and the slices be merged:
``--start S --count N`` makes prompts S..S+N-1 of the same list, each clip seeded by its place in
the list (so a slice's clips are the full run's), and ``--merge`` reads the slices, checks that they
cover prompts 0..n-1 once each, and prints the table of the whole set. A slice is either its clips
(``--save-clips DIR``, ~40 kB a clip, probed again by the merge) or its results JSON written with
``--clips`` (each clip's reading, ~0.8 kB a clip: small enough to keep in the repository, so a
table can grow over sessions whose ``runs/`` folders do not survive; ``docs/long_clip_compare/``):

    python bench/long_clip_compare.py ... --start 0 --count 100 --clips --out runs/long_cmp/000.json
    python bench/long_clip_compare.py ... --start 100 --count 100 --save-clips runs/long_cmp/100
    python bench/long_clip_compare.py --merge runs/long_cmp/000.json runs/long_cmp/100 --out docs/long_clip_compare.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness
from lumiere.eval.evaluate import generate_clips
from lumiere.eval.long_clips import draw_long_prompts, long_clip_metrics, summarise_clip_lines
from lumiere.models.shared_weights import _fingerprint

METHODS = ("one_pass", "shipped_one_pass", "windows", "cascade")


def load_pipeline(path: str | None):
    """The pipeline saved at ``path`` (None: the shipped one), progress bars off."""
    from lumiere.pipelines import LumierePipeline

    pipe = LumierePipeline.from_pretrained(path) if path else LumierePipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_short_pipeline(path: str | None):
    """The 16-frame model's pipeline (``path``; None: the shipped one) with any long-clip model set
    aside, so that 80 frames in one pass, windows and keyframes are all the 16-frame model's."""
    pipe = load_pipeline(path)
    pipe.long_stunet = None
    return pipe


def with_shipped_ssr(pipe):
    """``pipe`` itself if it has an SSR model; else its base model with the shipped SSR (a stage
    export holds the base model alone; the shipped pipeline pairs it with the package's SSR)."""
    if pipe.ssr is not None:
        return pipe
    # with every SSR setting of the shipped pipeline (steps, strength, residual scale): the SSR
    # runs exactly as `lumiere generate` runs it
    combined = pipe.with_ssr(load_pipeline(None))
    combined.set_progress_bar_config(disable=True)
    return combined


def keyframes_then_tsr(keyframe_pipe, tsr_pipe, prompts: list[str], args) -> list[np.ndarray]:
    """The cascade: keyframes ``[f / stride, h, w, 3]`` per prompt, held to the next one and
    in-filled by the conditional ``tsr_pipe`` (the keyframes known, the frames between generated)."""
    frames, stride = args.frames, args.stride
    if frames % stride:
        raise SystemExit(f"--frames {frames} must be a multiple of --stride {stride}")
    keys = generate_clips(
        keyframe_pipe, prompts, args.seed, frames // stride, args.steps, args.guidance, args.batch,
        first_index=args.start,
    )  # fmt: skip
    clips = []
    for index, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
        held = np.repeat(key, stride, axis=0)  # [f, h, w, 3]: each keyframe held to the next
        mask = np.ones(held.shape[:3], dtype=np.float32)  # 1: generate
        mask[::stride] = 0  # the keyframes are known
        generator = torch.Generator().manual_seed(args.seed * 100_003 + args.start + index + 1)
        clip = tsr_pipe(
            prompt,
            video=held,
            mask=mask,
            window=args.window,
            overlap=args.overlap,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=generator,
            upsample=False,
        ).frames[0]
        clips.append(clip)
    return clips


def run_method(method: str, prompts: list[str], args, pipes: dict[str, Any]) -> list[np.ndarray]:
    """80-frame clips ``[f, h, w, 3]`` of one method, clip i seeded by (seed, i) as ``lumiere eval``."""
    common = (args.seed, args.frames, args.steps, args.guidance, args.batch)
    if method == "one_pass":
        return generate_clips(pipes["long"], prompts, *common, first_index=args.start)
    if method == "shipped_one_pass":
        return generate_clips(pipes["shipped"], prompts, *common, first_index=args.start)
    if method == "windows":
        return generate_clips(
            pipes["shipped"],
            prompts,
            *common,
            window=args.window,
            overlap=args.overlap,
            first_index=args.start,
        )
    return keyframes_then_tsr(pipes["keyframe"], pipes["tsr"], prompts, args)


# ---------------------------------------------------------------------------------------------
# Time and memory of one clip (item 4), in fresh processes.
# ---------------------------------------------------------------------------------------------


def time_clip(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: one clip of ``frames`` frames, base alone or base + SSR; seconds and peak RSS."""
    torch.set_num_threads(config["threads"])
    pipe = load_pipeline(config["model"])
    if config["upsample"]:
        pipe = with_shipped_ssr(pipe)
    before = harness.start_memory_window()
    start = time.perf_counter()
    pipe(
        "a red circle bouncing quickly on a black background",
        num_frames=config["frames"],
        num_inference_steps=config["steps"],
        generator=torch.Generator().manual_seed(0),
        upsample=config["upsample"],
    )
    seconds = time.perf_counter() - start
    peak = harness.peak_rss_mib()
    return {"seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": before}


def timing(args) -> dict[str, Any]:
    results = {}
    for name, upsample in (("base", False), ("base + SSR", True)):
        config = {"model": args.long_model, "frames": args.frames, "steps": args.steps, "threads": args.threads,
                  "upsample": upsample}  # fmt: skip
        result = harness.run_isolated(__file__, config, env={"OMP_NUM_THREADS": str(args.threads)})
        results[name] = result
        if "error" in result:
            print(f"  {name}: {result['error']}")
        else:
            print(f"  {name}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB "
                  f"({result['peak_rss_mib'] - result['rss_before_mib']:.0f} MiB above the loaded pipeline)")  # fmt: skip
    return results


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--long-model", default=None,
        help="the 80-frame pipeline folder (runs/long_80/model; default: the shipped pipeline, its long_stunet)",
    )
    parser.add_argument(
        "--short-model", default=None,
        help="the 16-frame model of shipped_one_pass, windows and the cascade's defaults (default: the shipped "
        "pipeline's stunet; a long-clip model in the folder is set aside)",
    )  # fmt: skip
    parser.add_argument(
        "--keyframe-model", default=None, help="cascade keyframes (default: the shipped model)"
    )
    parser.add_argument(
        "--tsr-model", default=None, help="cascade in-fill, a conditional model (default: shipped)"
    )
    parser.add_argument(
        "--methods", default="all", help=f"comma-separated of {', '.join(METHODS)}; all; none"
    )
    parser.add_argument("--count", type=int, default=8, help="prompts (the issue: 200)")
    parser.add_argument(
        "--start", type=int, default=0, help="first prompt of the list (a slice of a longer run)"
    )
    parser.add_argument(
        "--merge", nargs="+", default=None, metavar="DIR_OR_JSON",
        help="no generation: the table of runs over slices, from their --save-clips folders or their "
        "results JSON written with --clips",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long-share", type=float, default=0.6, help="share of prompts with a long motion")
    parser.add_argument(
        "--motions", default=None, type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        help='comma-separated motions the prompts ask for in turn, e.g. "bouncing slowly,bouncing quickly" '
        "(default: drawn, --long-share of them long)",
    )  # fmt: skip
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--stride", type=int, default=5, help="cascade: one keyframe every stride frames")
    parser.add_argument("--window", type=int, default=16, help="windows / cascade: frames per window")
    parser.add_argument("--overlap", type=int, default=8, help="windows / cascade: frames shared by windows")
    parser.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=4, help="clips per pipeline call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--timing", action="store_true", help="time and peak memory of one clip (base; base + SSR)"
    )
    parser.add_argument("--clips", action="store_true", help="keep every clip's reading in the JSON")
    parser.add_argument("--out", default=None, help="JSON results")
    parser.add_argument(
        "--save-clips", default=None, metavar="DIR", help="write each method's clips to DIR/METHOD.npz"
    )
    args = parser.parse_args()
    if args.methods == "all":
        args.methods = list(METHODS)
    elif args.methods == "none":
        args.methods = []
    else:
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.count < 1:
        parser.error("--count must be >= 1")
    if args.start < 0:
        parser.error("--start must be >= 0")
    return args


ROW = ("colour", "shape", "motion", "present", "all")


def fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits of the sha256 of a model's weights (``shared_weights``' fingerprint of its state
    dict): which model made a slice, so that slices of two models never merge into one column."""
    state = model.state_dict()
    return _fingerprint(state, list(state))[:16]


def method_recipe(method: str, args, pipes: dict[str, Any]) -> dict[str, Any]:
    """What makes a method's clip i what it is, beyond its place in the list: the prompt list
    (seed, long share, motions), the sampling settings the method uses and its models' weights.
    Slices merge only when their recipes are equal."""
    recipe: dict[str, Any] = {
        "seed": args.seed, "long_share": args.long_share, "motions": list(args.motions or []),
        "frames": args.frames, "steps": args.steps, "guidance": args.guidance,
    }  # fmt: skip
    if method == "one_pass":
        recipe["models"] = {"base": fingerprint(pipes["long"].base_model(args.frames))}
    elif method == "shipped_one_pass":
        recipe["models"] = {"base": fingerprint(pipes["shipped"].stunet)}
    elif method == "windows":
        recipe.update(window=args.window, overlap=args.overlap, models={"base": fingerprint(pipes["shipped"].stunet)})
    else:
        recipe.update(window=args.window, overlap=args.overlap, stride=args.stride)
        recipe["models"] = {"keyframes": fingerprint(pipes["keyframe"].stunet), "tsr": fingerprint(pipes["tsr"].stunet)}
    return recipe


def save_clips(
    directory: str, method: str, clips: list[np.ndarray], prompts: list[str], args, seconds: float,
    recipe: dict[str, Any],
):  # fmt: skip
    """``DIR/METHOD.npz``: the clips as uint8 ``[n, f, h, w, 3]``, their prompts, where they sit in
    the prompt list and the method's recipe, to re-read (``--merge``) without generating again."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    stacked = np.round(np.stack(clips) * 255).astype(np.uint8)
    np.savez_compressed(
        Path(directory) / f"{method}.npz", clips=stacked, prompts=np.array(prompts), start=args.start,
        recipe=json.dumps(recipe), seconds_per_clip=seconds,
    )  # fmt: skip


def _saved_slices(source: str) -> dict[str, dict[str, Any]]:
    """The slices one source holds, by method: a ``--save-clips`` folder (``METHOD.npz``, read by
    the probe here) or a results JSON written with ``--clips`` (each clip's line, no clip), both
    as {"start", "recipe", "prompts", "lines", "seconds_per_clip"}."""
    path = Path(source)
    found: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        for method in METHODS:
            if (path / f"{method}.npz").exists():
                with np.load(path / f"{method}.npz") as saved:
                    piece = {key: saved[key] for key in saved.files}
                if "recipe" not in piece:
                    raise SystemExit(f"--merge: {path / method}.npz has no recipe (saved by an older version)")
                prompts = [str(p) for p in piece["prompts"]]
                clips = [clip.astype(np.float32) / 255 for clip in piece["clips"]]
                found[method] = {
                    "start": int(piece["start"]), "recipe": json.loads(str(piece["recipe"])), "prompts": prompts,
                    "lines": long_clip_metrics(clips, prompts)["clips"],
                    "seconds_per_clip": float(piece["seconds_per_clip"]),
                }  # fmt: skip
        return found
    if path.suffix != ".json" or not path.is_file():
        raise SystemExit(f"--merge: {source} is neither a --save-clips folder nor a results JSON file")
    results = json.loads(path.read_text())
    for method, figures in results["methods"].items():
        if "clips" not in figures or "recipe" not in figures:
            raise SystemExit(
                f"--merge: {source} ({method}) was written without --clips or by an older version: "
                "it has no clip lines or no recipe"
            )
        found[method] = {
            "start": int(results["args"]["start"]), "recipe": figures["recipe"],
            "prompts": [line["prompt"] for line in figures["clips"]], "lines": figures["clips"],
            "seconds_per_clip": float(figures["seconds_per_clip"]),
        }  # fmt: skip
    return found


def merge_saved(sources: list[str]) -> dict[str, Any]:
    """Each method's clip lines from the slices in ``sources`` (folders or results JSON files),
    in prompt order: they must share one recipe (prompt list, settings, model weights) and cover
    prompts 0..n-1 exactly once (a ``SystemExit`` naming the difference or the gap otherwise)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        for method, piece in _saved_slices(source).items():
            by_method.setdefault(method, []).append(piece)
    merged: dict[str, Any] = {}
    for method in METHODS:
        slices = sorted(by_method.get(method, []), key=lambda piece: piece["start"])
        if not slices:
            continue
        recipes = {json.dumps(piece["recipe"], sort_keys=True) for piece in slices}
        if len(recipes) > 1:
            raise SystemExit(
                f"{method}: the slices were made differently (prompt list, settings or model weights): "
                + " vs ".join(sorted(recipes))
            )
        position = 0
        for piece in slices:
            if piece["start"] != position:
                raise SystemExit(
                    f"{method}: the slices must cover the prompts once each, but after prompt {position - 1} "
                    f"the next slice starts at prompt {piece['start']} (a gap or an overlap)"
                )
            position += len(piece["prompts"])
        prompts = [p for piece in slices for p in piece["prompts"]]
        recipe = slices[0]["recipe"]
        seed, long_share, motions = recipe["seed"], recipe["long_share"], recipe["motions"]
        if prompts != draw_long_prompts(len(prompts), seed, long_share, motions or None):
            raise SystemExit(
                f"{method}: the saved prompts are not those of --seed {seed} --long-share {long_share}"
                + (f" --motions {','.join(motions)}" if motions else "")
            )
        lines = [line for piece in slices for line in piece["lines"]]
        seconds = sum(piece["seconds_per_clip"] * len(piece["prompts"]) for piece in slices) / len(prompts)
        merged[method] = {"lines": lines, "prompts": prompts, "seconds": seconds, "recipe": recipe}
    if not merged:
        raise SystemExit(f"no METHOD.npz or results JSON with clip lines in {sources} (methods: {', '.join(METHODS)})")
    return merged


def print_table(results: dict[str, Any], count: int, args) -> None:
    headers = ["method", *ROW, "bouncing", "periodic", "steady", "colour drift", "size drift", "s/clip"]
    rows = []
    for method, m in results["methods"].items():
        acc, bounce, drift = m["accuracy"], m["bouncing"], m["drift"]
        values = [*(acc.get(k) for k in ROW), bounce["motion_accuracy"], bounce["periodic_motion_accuracy"],
                  bounce["steady"], drift["colour_median"], drift["size_median"]]  # fmt: skip
        rows.append([method, *(harness.fmt(v, 3) for v in values), harness.fmt(m["seconds_per_clip"], 1)])
    harness.print_table(headers, rows)
    methods = list(results["methods"])
    by_asked = {m: results["methods"][m]["motion_by_asked"] for m in methods}
    asked = sorted({motion for groups in by_asked.values() for motion in groups})
    rows = []
    for motion in asked:
        clips = max(groups[motion]["clips"] for groups in by_asked.values() if motion in groups)
        cells = [harness.fmt(by_asked[m][motion]["motion_accuracy"], 2) if motion in by_asked[m] else "-" for m in methods]
        rows.append([f"{motion} ({clips})", *cells])
    print()
    harness.print_table(["motion asked (prompts)", *methods], rows)
    print(f"{count} prompts (seed {args.seed}), {args.frames} frames, {args.steps} steps, guidance "
          f"{args.guidance}; bouncing: all bounce prompts; periodic: those with a speed word (speed "
          "included); steady: their share read as a bounce of steady period; drift: medians, first vs "
          "last second")  # fmt: skip


def merge_main(args) -> None:
    merged = merge_saved(args.merge)
    results: dict[str, Any] = {"args": {**vars(args)}, "methods": {}}
    for method, piece in merged.items():
        metrics = summarise_clip_lines(piece["lines"])
        if not args.clips:
            metrics.pop("clips")
        results["methods"][method] = {**metrics, "seconds_per_clip": piece["seconds"], "recipe": piece["recipe"]}
    counts = {len(piece["prompts"]) for piece in merged.values()}
    if len(counts) > 1:  # the table compares methods on the same prompts: say where it does not
        print(f"note: the methods cover different numbers of prompts: "
              f"{ {m: len(p['prompts']) for m, p in merged.items()} }")  # fmt: skip
    recipe = next(iter(merged.values()))["recipe"]  # the table's caption: the first method's settings
    args.seed, args.frames, args.steps, args.guidance = (recipe[k] for k in ("seed", "frames", "steps", "guidance"))
    print_table(results, max(counts), args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def main() -> None:
    args = parse_args()
    if args.merge:
        merge_main(args)
        return
    torch.set_num_threads(args.threads)
    print(harness.describe_machine(argparse.Namespace(device="cpu", threads=args.threads, dtype="fp32",
                                                      compile=False, channels_last=False)))  # fmt: skip
    try:
        prompts = draw_long_prompts(args.start + args.count, args.seed, args.long_share, args.motions)[args.start :]
    except ValueError as error:
        raise SystemExit(f"--motions: {error}") from None
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "methods": {}}
    pipes: dict[str, Any] = {}
    if args.methods:
        pipes["shipped"] = load_short_pipeline(args.short_model)
        pipes["long"] = load_pipeline(args.long_model)
        if "one_pass" in args.methods and args.long_model is None and pipes["long"].long_stunet is None:
            raise SystemExit("method one_pass: the shipped pipeline has no long-clip model; pass --long-model")
        pipes["keyframe"] = load_pipeline(args.keyframe_model) if args.keyframe_model else pipes["shipped"]
        pipes["tsr"] = load_pipeline(args.tsr_model) if args.tsr_model else pipes["shipped"]
    for method in args.methods:
        start = time.perf_counter()
        clips = run_method(method, prompts, args, pipes)
        seconds = (time.perf_counter() - start) / len(prompts)
        recipe = method_recipe(method, args, pipes)
        if args.save_clips:
            save_clips(args.save_clips, method, clips, prompts, args, seconds, recipe)
        metrics = long_clip_metrics(clips, prompts)
        if not args.clips:
            metrics.pop("clips")
        results["methods"][method] = {**metrics, "seconds_per_clip": seconds, "recipe": recipe}
        print(f"{method}: {seconds:.1f} s/clip")
        if args.out:  # after every method, so a stopped run keeps what it finished
            Path(args.out).write_text(json.dumps(results, indent=2))
    if args.methods:
        print_table(results, len(prompts), args)
    if args.timing:
        results["timing"] = timing(args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if not harness.serve_worker(time_clip):
        main()

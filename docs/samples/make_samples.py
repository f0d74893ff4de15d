"""Regenerate the README's row of sample clips (docs/samples/*.gif) with the shipped model.

    .venv/bin/python docs/samples/make_samples.py                  # 6 clips, each ~45 s on 2 idle cores
    .venv/bin/python docs/samples/make_samples.py --only inpainting  # one of them
    .venv/bin/python docs/samples/make_samples.py --no-upsample      # 32x32 base clips, ~10 s each
    .venv/bin/python docs/samples/make_samples.py --work DIR         # keep (and reuse) the raw clips in DIR

Every clip comes from `lumiere generate` with a fixed --seed, so the same code and weights give
the same GIFs. The inputs of the conditional tasks (the image, the video, the masks) are rendered
MovingShapes clips (`lumiere.eval.evaluate.real_clips_for`), not footage and not generated. Each
conditional GIF shows the input on the left (the masked region tinted magenta) and the output on
the right; the style GIF shows the same prompt and seed without and with the style fine-tune,
which `lumiere train configs/examples/style_complement.yaml` makes (skipped if it is missing).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lumiere.data.video_io import read_video, write_video
from lumiere.eval.evaluate import real_clips_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LUMIERE = [sys.executable, "-m", "lumiere.cli"]  # the `lumiere` command of this interpreter
STYLE = REPO / "runs" / "style_complement" / "model"
FRAMES, BASE = 16, 32  # the shipped base model's clip: 16 frames at 32x32
TILE = 128  # every panel is shown at 128x128 (nearest-neighbour: x2 of the SSR's 64x64)
FPS = 8.0


def generate(prompt: str, out: Path, *args: str, upsample: bool = True) -> np.ndarray:
    """Run `lumiere generate` and read its clip back as uint8 [f, h, w, 3]."""
    if not upsample:
        out = out.with_name(f"{out.stem}_base{out.suffix}")
    if out.exists():  # made by an earlier run with the same --work folder
        return read_video(out)[0]
    command = [*LUMIERE, "generate", prompt, "-o", str(out), "--seed", "0", *args]
    if not upsample:
        command.append("--no-upsample")
    print("+ lumiere", " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return read_video(out)[0]


def to_tile(frames: np.ndarray) -> np.ndarray:
    """uint8 or [0, 1] frames [f, h, w, 3] -> uint8 [f, TILE, TILE, 3], nearest-neighbour."""
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    scale = TILE // frames.shape[1]
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def tint(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Show a mask [h, w] (1 = region to generate or animate) as a magenta tint on [0, 1] frames."""
    magenta = np.array([1.0, 0.0, 1.0])
    return frames * (1 - 0.35 * mask[..., None]) + 0.35 * mask[..., None] * magenta


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    gap = np.full((FRAMES, TILE, 4, 3), 255, np.uint8)
    row = [to_tile(panels[0])]
    for panel in panels[1:]:
        row += [gap, to_tile(panel)]
    return np.concatenate(row, axis=2)


def save_gif(path: Path, frames: np.ndarray, colours: int = 128) -> None:
    """uint8 frames [f, h, w, 3] -> a looping GIF with one palette for every frame and no
    dithering: a third of the size of per-frame palettes, and flat areas stay flat."""
    mosaic = Image.fromarray(np.concatenate(list(frames), axis=0))
    palette = mosaic.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    images = [Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    duration = round(1000 / FPS)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)


def save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def swept_band(clip: np.ndarray, margin: int = 2) -> np.ndarray:
    """[h, w] mask: 1 on the full-width band of rows the clip's object travels through."""
    moving = (np.abs(clip - clip[:, :1, :1]).sum(-1) > 0.1).any(0)  # differs from the background
    rows = np.flatnonzero(moving.any(1))
    band = np.zeros(moving.shape, np.float32)
    band[max(rows[0] - margin, 0) : rows[-1] + margin + 1, :] = 1
    return band


def as_png_mask(mask: np.ndarray, path: Path) -> Path:
    return save_png(np.repeat(mask[..., None], 3, -1), path)


T2V_PROMPT = "a red circle moving right on a black background"


def text_to_video(tmp: Path, up: bool) -> np.ndarray:
    return side_by_side(generate(T2V_PROMPT, tmp / "t2v.gif", upsample=up))


def image_to_video(tmp: Path, up: bool) -> np.ndarray:
    """The first frame of a rendered clip, animated as the prompt says."""
    prompt = "a blue square moving up on a white background"
    clip = real_clips_for([prompt], FRAMES, BASE, seed=0)[0]  # [f, h, w, 3] in [0, 1]
    image = save_png(clip[0], tmp / "first_frame.png")
    out = generate(prompt, tmp / "i2v.gif", "--image", str(image), upsample=up)
    return side_by_side(np.repeat(clip[:1], FRAMES, 0), out)


def cinemagraph(tmp: Path, up: bool) -> np.ndarray:
    """A still image; only the band the object would sweep moves, the rest stays the image."""
    prompt = "a yellow triangle moving right on a gray background"
    clip = real_clips_for([prompt], FRAMES, BASE, seed=0)[0]
    region = swept_band(clip)
    image, mask = save_png(clip[0], tmp / "still.png"), as_png_mask(region, tmp / "band.png")
    out = generate(prompt, tmp / "cinemagraph.gif", "--image", str(image), "--mask", str(mask), upsample=up)
    return side_by_side(tint(np.repeat(clip[:1], FRAMES, 0), region), out)


def inpainting(tmp: Path, up: bool) -> np.ndarray:
    """The right half of a rendered clip cut out and generated anew: the circle, given while it is
    in the left half, has to carry on into the hole as the prompt says."""
    prompt = "a green circle moving right on a black background"
    clip = real_clips_for([prompt], FRAMES, BASE, seed=3)[0]
    hole = np.zeros((BASE, BASE), np.float32)
    hole[:, BASE // 2 :] = 1
    video, mask = write_video(tmp / "in.gif", clip, fps=FPS), as_png_mask(hole, tmp / "hole.png")
    out = generate(prompt, tmp / "inpaint.gif", "--video", str(video), "--mask", str(mask), upsample=up)
    return side_by_side(tint(clip * (1 - hole[..., None]), hole), out)


def video_to_video(tmp: Path, up: bool) -> np.ndarray:
    """SDEdit: most of a rendered clip re-generated under another prompt (strength 0.8)."""
    clip = real_clips_for(["a yellow circle moving down on a gray background"], FRAMES, BASE, seed=2)[0]
    video = write_video(tmp / "v2v_in.gif", clip, fps=FPS)
    prompt = "a purple square moving down on a gray background"
    out = generate(prompt, tmp / "v2v.gif", "--video", str(video), "--strength", "0.8", upsample=up)
    return side_by_side(clip, out)


def style(tmp: Path, up: bool) -> np.ndarray | None:
    """The text-to-video prompt and seed without and with the style fine-tune (alpha 1)."""
    if not STYLE.is_dir():
        print(f"skipped the style sample: no fine-tune at {STYLE}", flush=True)
        return None
    plain = generate(T2V_PROMPT, tmp / "t2v.gif", upsample=up)  # the text-to-video clip
    styled = generate(T2V_PROMPT, tmp / "style.gif", "--style", str(STYLE), "--alpha", "1", upsample=up)
    return side_by_side(plain, styled)


SAMPLES = {
    "t2v": text_to_video,
    "image_to_video": image_to_video,
    "cinemagraph": cinemagraph,
    "inpainting": inpainting,
    "video_to_video": video_to_video,
    "style": style,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-upsample", action="store_true", help="keep the 32x32 base clips")
    parser.add_argument("--out", type=Path, default=HERE, help="where the GIFs go (default: docs/samples)")
    parser.add_argument(
        "--only", nargs="+", choices=list(SAMPLES), default=list(SAMPLES), help="samples to make"
    )
    parser.add_argument("--work", type=Path, help="folder for inputs and raw clips, reused if given again")
    args = parser.parse_args()
    tmp = args.work or Path(tempfile.mkdtemp(prefix="lumiere_samples_"))
    tmp.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        frames = SAMPLES[name](tmp, not args.no_upsample)
        if frames is not None:
            save_gif(args.out / f"{name}.gif", frames)


if __name__ == "__main__":
    main()

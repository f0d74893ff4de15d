"""Pixel styles for the stylised-generation demo (Sec. 4.1): a style fine-tune of the image model
learns one of these looks, and ``lumiere.models.blend.blend_weights`` mixes it into the STUNet.

Each style maps a clip ``[3, f, h, w]`` (any affine colour range, e.g. [-1, 1]) to a clip of the
same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset


def complement_colours(video: torch.Tensor) -> torch.Tensor:
    """Rotate every pixel's hue by 180 degrees, keeping its lightness: ``max + min - x`` over RGB.

    Greys (black, white, gray backgrounds) are unchanged; red becomes cyan, green magenta, blue
    yellow and yellow blue. ``[3, ...] -> [3, ...]``.
    """
    high = video.amax(dim=0, keepdim=True)
    low = video.amin(dim=0, keepdim=True)
    return high + low - video


STYLES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"complement": complement_colours}


class StyledDataset(Dataset):
    """A dataset whose items' ``"video"`` (``[3, f, h, w]``) is passed through a style of ``STYLES``;
    captions are kept, so the fine-tuned model draws the style for the usual prompts."""

    def __init__(self, dataset: Dataset, style: str):
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}")
        self.dataset = dataset
        self.style = style

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["video"] = STYLES[self.style](item["video"])
        return item

"""Data: synthetic moving shapes, captioned video folders, and video file I/O."""

from lumiere.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    STATIC,
    MovingShapes,
    caption_grammar,
    make_caption,
    parse_caption,
    random_attributes,
    random_caption,
    write_shapes_dataset,
)
from lumiere.data.video_folder import VideoFolder
from lumiere.data.video_io import (
    frames_to_tensor,
    make_grid,
    read_video,
    tensor_to_frames,
    to_float,
    to_uint8,
    write_video,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "MOTIONS",
    "SHAPES",
    "STATIC",
    "MovingShapes",
    "VideoFolder",
    "caption_grammar",
    "frames_to_tensor",
    "make_caption",
    "make_grid",
    "parse_caption",
    "random_attributes",
    "random_caption",
    "read_video",
    "tensor_to_frames",
    "to_float",
    "to_uint8",
    "write_shapes_dataset",
    "write_video",
]

"""Latent and text caches for training in latent space (Lumiere on Stable Diffusion, issue 30).

Encoding a clip with the VAE and a caption with the text encoder costs more than a training step
of a small STUNet, and gives the same result every epoch. ``build_caches`` (``lumiere data cache
CONFIG``) does it once: each training clip becomes its VAE posterior's moments, each caption its
text embedding, stored in safetensors shards under ``data.cache_dir``:

    latents/<VAE id>/shard-NNNNN.safetensors      one tensor per clip, named by its clip key:
                                                  moments [2c, f, h/8, w/8] float32 (mean, log-variance)
    text/<encoder id>/shard-NNNNN.safetensors     per caption key: "<key>.states" [L, d],
                                                  "<key>.mask" [L], "<key>.pooled" [p] (SDXL)

A clip key names exactly the clip the uncached data set loads for that index: for a video folder
the file (path, size, modification time) and what fixes its window (``VideoFolder`` draws the
start from ``default_rng([seed, epoch, index])``, so seed, epoch, index, frames, fps, size); for
moving shapes the seed and index (a clip is a pure function of them; a finite ``data.length``
is required). The VAE id hashes the VAE's config and weights, the encoder id the encoder's files,
so a cache never serves latents of another VAE. Moments, not latents, are stored: training draws
the latent from them with the step's generator, as it would from the VAE itself.

Building is resumable: every shard is written atomically (``lumiere.files.atomic_write``) and
holds whole clips; a run killed mid-build loses at most the shard it was writing, and the next run
encodes only the clips no shard holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from lumiere.files import atomic_write

if TYPE_CHECKING:
    from lumiere.config import TrainConfig
    from lumiere.models.text import TextEncoding

logger = logging.getLogger(__name__)

SHARD_SIZE = 64  # clips (or captions) per shard: what a killed build can lose at most
TEXT_BATCH = 32  # captions per text-encoder call while building
CACHE_COMMAND = "lumiere data cache CONFIG"  # how a missing or incomplete cache is filled


# ---------------------------------------------------------------------------------------------
# Identities: of files, of clips, of captions
# ---------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def files_fingerprint(paths: Iterable[str | os.PathLike], content: bool = True) -> str:
    """sha256 over every file under ``paths`` (files or folders): relative name and bytes, or with
    ``content=False`` relative name, size and modification time (cheap for large folders)."""
    digest = hashlib.sha256()
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
            if content:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            else:
                stat = path.stat()
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def text_encoder_fingerprint(directory: str | os.PathLike) -> str:
    """The identity of a saved text encoder (a ``text_encoder.json`` folder, e.g. a pipeline's
    ``text_encoder/``), read without loading it: its files' bytes, and the size and modification
    time of the files of any folder its json refers to (an SD folder's encoders, by reference)."""
    directory = Path(directory)
    referred = []
    config = directory / "text_encoder.json"
    if config.is_file():
        values = json.loads(config.read_text()).values()
        referred = [Path(v) for v in values if isinstance(v, str) and os.path.isabs(v) and Path(v).is_dir()]
    return _digest([files_fingerprint([directory]), files_fingerprint(referred, content=False)])


def _file_identity(path: Path) -> dict[str, Any]:
    try:
        stat = path.stat()
    except OSError:  # a missing file: the builder finds it unreadable, as VideoFolder does
        return {"file": str(path.resolve()), "size": None}
    return {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def clip_keys(dataset: Dataset) -> list[str]:
    """The cache key of every index of a training data set (``Stage.pixel_dataset``): a hash of
    what makes the clip that index loads (module docstring). ``ValueError`` for data it cannot key."""
    from lumiere.data.shapes import MovingShapes
    from lumiere.data.styles import StyledDataset
    from lumiere.data.video_folder import VideoFolder

    style = None
    if isinstance(dataset, StyledDataset):
        style, dataset = dataset.style, dataset.dataset
    if isinstance(dataset, VideoFolder):
        common = {
            "kind": "folder",
            "seed": dataset.seed,
            "epoch": dataset.epoch,
            "frames": dataset.num_frames,
            "fps": dataset.fps,
            "size": [dataset.height, dataset.width],
            "random_crop": dataset.random_crop,
            "style": style,
        }
        return [
            _digest({**common, **_file_identity(path), "index": i})
            for i, (path, _) in enumerate(dataset.entries)
        ]
    if isinstance(dataset, MovingShapes):
        common = {
            "kind": "shapes",
            "seed": dataset.seed,
            "frames": dataset.num_frames,
            "size": [dataset.height, dataset.width],
            "mode": dataset.mode,
            "motion_mix": dataset.motion_mix,
            "style": style,
        }
        return [_digest({**common, "index": i}) for i in range(len(dataset))]
    raise ValueError(
        f"cannot cache a {type(dataset).__name__}: caches hold VideoFolder and MovingShapes data"
    )


def caches_latents(config: TrainConfig) -> bool:
    """Whether ``data.cache_dir`` holds the clips' latents too, or only the captions' text
    embeddings: streamed shards draw a new window of each clip every epoch, so only their captions
    are cached (the VAE encodes each batch as it comes)."""
    return config.data.kind != "shards"


def shard_captions(patterns: str | Sequence[str]) -> list[str]:
    """Every caption of the tar shards ``patterns`` names (``lumiere.data.streaming.expand_shards``),
    read from the ``.txt`` members located by the shard headers (no video is read)."""
    from lumiere.data.streaming import expand_shards, index_shard, read_member

    captions = []
    for path in expand_shards(patterns):
        for entry in index_shard(path):
            if "txt" in entry.members:
                captions.append(read_member(path, entry.members["txt"]).decode("utf-8"))
    return captions


def check_cacheable(config: TrainConfig, finite: bool) -> None:
    """``ValueError`` naming the key when the config's clips cannot be cached: the cache holds each
    index of a finite data set (a video folder, or shapes with ``data.length``)."""
    if config.data.kind == "shapes" and not finite:
        raise ValueError(
            "config key data.length must be set to cache shapes data (the cache holds each index)"
        )
    if not finite:
        raise ValueError(
            f"config key data.kind {config.data.kind!r} streams clips and cannot be cached; "
            "use data.kind 'folder', 'shapes' or 'shards' (captions only) with data.cache_dir"
        )


def caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode()).hexdigest()[:40]


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


class ShardStore:
    """A folder of safetensors shards, each written whole: the tensors by name, the shards' json
    metadata (``captions``: key -> caption; ``bad``: keys of clips that cannot be read) merged."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.index: dict[str, Path] = {}  # tensor name -> shard
        self.captions: dict[str, str] = {}
        self.bad: set[str] = set()
        self.shards = sorted(self.directory.glob("shard-*.safetensors")) if self.directory.is_dir() else []
        for shard in self.shards:
            with safe_open(shard, framework="pt") as handle:
                metadata = handle.metadata() or {}
                self.index.update(dict.fromkeys(handle.keys(), shard))
            self.captions.update(json.loads(metadata.get("captions", "{}")))
            self.bad.update(json.loads(metadata.get("bad", "[]")))

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def get(self, name: str) -> torch.Tensor:
        with safe_open(self.index[name], framework="pt") as handle:
            return handle.get_tensor(name).clone()  # own memory: the file's mapping ends with the handle

    def write(
        self, tensors: dict[str, torch.Tensor], captions: dict[str, str], bad: Sequence[str] = ()
    ) -> Path:
        """One new shard, atomically (a kill leaves no partial shard); returns its path."""
        number = max((int(p.stem.split("-")[1]) for p in self.shards), default=-1) + 1
        path = self.directory / f"shard-{number:05d}.safetensors"
        metadata = {"captions": json.dumps(captions), "bad": json.dumps(list(bad))}
        with atomic_write(path) as temporary:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)
        self.shards.append(path)
        self.index.update(dict.fromkeys(tensors, path))
        self.captions.update(captions)
        self.bad.update(bad)
        return path


# ---------------------------------------------------------------------------------------------
# What training reads
# ---------------------------------------------------------------------------------------------


def latent_store(cache_dir: str | os.PathLike, vae_identity: str) -> ShardStore:
    return ShardStore(Path(cache_dir) / "latents" / vae_identity[:32])


def text_store(cache_dir: str | os.PathLike, encoder_identity: str) -> ShardStore:
    return ShardStore(Path(cache_dir) / "text" / encoder_identity[:32])


class CachedClips(Dataset):
    """The cached moments of a training data set; item: {"moments": [2c, f, h/8, w/8] float32,
    "caption": str}. Index ``i`` gives what the uncached data set gives: its own clip, or, when
    that clip could not be read (marked bad by the builder), the next readable one, as
    ``VideoFolder`` does."""

    def __init__(self, keys: Sequence[str], store: ShardStore):
        missing = [k for k in keys if k not in store and k not in store.bad]
        if missing:
            raise ValueError(
                f"the latent cache in {store.directory} lacks {len(missing)} of {len(keys)} training clips; "
                f"build it with `{CACHE_COMMAND}` (it resumes where it stopped)"
            )
        if all(k in store.bad for k in keys):
            raise ValueError(f"the latent cache in {store.directory} holds no readable clip")
        self.keys, self.store = list(keys), store

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.keys)
        for candidate in ((index + k) % n for k in range(n)):
            key = self.keys[candidate]
            if key not in self.store.bad:
                return {"moments": self.store.get(key), "caption": self.store.captions[key]}
        raise RuntimeError("unreachable: CachedClips holds a readable clip")


class CachedTextEncoder(nn.Module):
    """A ``TextEncoder`` stand-in that reads cached embeddings: ``encode(prompts)`` for prompts
    the cache holds (training captions, "" and the config's sample prompts), nothing else. Saving
    (``save_pretrained``) copies the encoder's saved folder, so an export names the real encoder."""

    def __init__(self, store: ShardStore, source: Path | None):
        super().__init__()
        if not store.captions:
            raise ValueError(f"the text cache {store.directory} is empty; build it with `{CACHE_COMMAND}`")
        self.store, self.source = store, source
        first = caption_key(next(iter(store.captions.values())))
        self._dim = int(store.get(f"{first}.states").shape[-1])
        self._max_length = int(store.get(f"{first}.states").shape[0])
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # follows .to(device)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        """Where ``encode`` puts its output by default (``.to(device)`` moves it)."""
        return self._anchor.device

    def encode(self, prompts: str | Sequence[str], device: torch.device | str | None = None) -> TextEncoding:
        """Prompts -> TextEncoding(states [b, L, d], mask [b, L], pooled [b, p] or None) from the cache."""
        from lumiere.models.text import TextEncoding

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        keys = [caption_key(p) for p in prompts]
        missing = [p for p, k in zip(prompts, keys, strict=True) if f"{k}.states" not in self.store]
        if missing:
            raise ValueError(
                f"the text cache {self.store.directory} holds no embedding of {missing[:3]!r}; "
                f"rebuild it with `{CACHE_COMMAND}` (training captions, '' and sample_prompts are cached)"
            )
        device = self.device if device is None else torch.device(device)
        part = lambda name: torch.stack([self.store.get(f"{k}.{name}") for k in keys]).to(device)  # noqa: E731
        pooled = part("pooled") if f"{keys[0]}.pooled" in self.store else None
        return TextEncoding(part("states"), part("mask"), pooled)

    def forward(self, prompts: str | Sequence[str], device: torch.device | str | None = None) -> TextEncoding:
        return self.encode(prompts, device=device)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        import shutil

        if self.source is None:
            raise ValueError("this cached text encoder has no saved folder to export")
        shutil.copytree(self.source, save_directory, dirs_exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_caches(
    config: TrainConfig,
    shard_size: int = SHARD_SIZE,  # clips (captions) per shard
    progress: bool = True,  # tqdm bars
) -> dict[str, int]:
    """Encode every training clip of ``config`` (a ``stunet`` stage on a latent pipeline folder,
    with ``data.cache_dir``) to VAE moments and every caption (with "" and the sample prompts) to
    its text embedding, into the caches under ``data.cache_dir``, skipping what is already there.
    Streamed shards (``caches_latents`` False): their captions only, read from the shard headers.

    Returns counts: {"clips", "encoded", "bad", "captions", "captions_encoded"}.
    """
    from lumiere.stages import get_stage

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    stage = get_stage(config.stage)(config)
    latent = getattr(stage, "latent", None)
    if latent is None:
        raise ValueError(
            f"caches are for latent training: model.init_from={config.model.init_from!r} must be a latent "
            "pipeline folder (with vae/) and stage 'stunet'"
        )
    if not config.data.cache_dir:
        raise ValueError("config key data.cache_dir is required to build caches")
    if not caches_latents(config):
        captions = shard_captions(config.data.path)
        counts = {"clips": len(captions), "encoded": 0, "bad": 0}
        return _cache_text(stage, dict.fromkeys([*captions, "", *config.sample_prompts]), shard_size, progress, counts)
    dataset, finite = stage.pixel_dataset()
    check_cacheable(config, finite)
    keys = clip_keys(dataset)
    store = latent_store(config.data.cache_dir, latent.identity)
    counts = {"clips": len(keys), "encoded": 0, "bad": 0}

    # 1. Clips -> moments, shard by shard.
    source = getattr(dataset, "dataset", dataset)  # under a StyledDataset
    pending: dict[str, torch.Tensor] = {}
    captions: dict[str, str] = {}
    bad: list[str] = []

    def flush() -> None:
        if pending or bad:
            store.write(pending, captions, bad)
            pending.clear()
            captions.clear()
            bad.clear()

    for index, key in enumerate(tqdm(keys, desc="cache latents", disable=not progress)):
        if key in store or key in store.bad:
            continue
        item = dataset[index]
        if index in getattr(source, "bad", ()):  # unreadable: the data set served the next clip
            bad.append(key)
            counts["bad"] += 1
        else:
            pending[key] = latent.moments(item["video"][None])[0]
            captions[key] = item["caption"]
            counts["encoded"] += 1
        if len(pending) + len(bad) >= shard_size:
            flush()
    flush()

    # 2. Captions -> text embeddings (the training captions, the empty prompt, the sample prompts).
    wanted = dict.fromkeys([*(store.captions[k] for k in keys if k in store), "", *config.sample_prompts])
    return _cache_text(stage, wanted, shard_size, progress, counts)


def _cache_text(
    stage: Any, wanted: dict[str, None], shard_size: int, progress: bool, counts: dict[str, int]
) -> dict[str, int]:
    """Step 2 of ``build_caches``: the ``wanted`` captions' text embeddings not cached yet, encoded
    in batches and written shard by shard; ``counts`` completed with the caption counts."""
    config = stage.config
    texts = text_store(config.data.cache_dir, stage.text_encoder_identity())
    todo = [c for c in wanted if f"{caption_key(c)}.states" not in texts]
    counts.update(captions=len(wanted), captions_encoded=len(todo))
    if todo:
        encoder = stage.source_text_encoder()
        bar = tqdm(total=len(todo), desc="cache text", disable=not progress)
        for start in range(0, len(todo), shard_size):
            tensors: dict[str, torch.Tensor] = {}
            chunk = todo[start : start + shard_size]
            for first in range(0, len(chunk), TEXT_BATCH):
                batch = chunk[first : first + TEXT_BATCH]
                encoding = encoder.encode(batch, device="cpu")
                for i, caption in enumerate(batch):
                    key = caption_key(caption)
                    tensors[f"{key}.states"] = encoding.states[i]
                    tensors[f"{key}.mask"] = encoding.mask[i]
                    if encoding.pooled is not None:
                        tensors[f"{key}.pooled"] = encoding.pooled[i]
                bar.update(len(batch))
            texts.write(tensors, {caption_key(c): c for c in chunk})
        bar.close()
    logger.info(
        "caches in %s: %d clips (%d encoded now, %d unreadable), %d captions (%d encoded now)",
        config.data.cache_dir,
        counts["clips"],
        counts["encoded"],
        counts["bad"],
        counts["captions"],
        counts["captions_encoded"],
    )
    return counts

"""Atomic training checkpoints: written under a temporary name, fsynced, renamed; verified on load.

A checkpoint is a directory ``step_XXXXXXXX/`` holding

    model.safetensors       the trained network's weights
    ema.safetensors         the EMA shadow weights, same keys
    optimizer.pt            optimizer and learning-rate schedule (tensors and numbers only)
    state.json              step, counters, EMA settings and the run's config
    rng.safetensors         the global torch RNG state
    manifest.json           sha256 of every file above, written last

A kill at any moment leaves either the previous checkpoints or the new one complete: the
directory only gets its final name once every file (the manifest last) is on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_PREFIX = "step_"
_TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or corrupted."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{_PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(_PREFIX) and not p.name.endswith(_TMP_SUFFIX)
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def latest_checkpoint(root: str | Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = final.with_name(final.name + _TMP_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from a kill during an earlier write
    tmp.mkdir()
    files = {
        "model.safetensors": lambda p: save_file(_contiguous(model_state), p),
        "ema.safetensors": lambda p: save_file(_contiguous(ema_state), p),
        "optimizer.pt": lambda p: torch.save(optimizer_state, p),
        "rng.safetensors": lambda p: save_file({"torch": torch.get_rng_state()}, p),
        "state.json": lambda p: Path(p).write_text(json.dumps(state, indent=2)),
    }
    manifest = {}
    for name, write in files.items():
        path = tmp / name
        write(str(path))
        _fsync(path)
        manifest[name] = _sha256(path)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _fsync(tmp / MANIFEST)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint written: %s", final)
    return final


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def verify_checkpoint(path: str | Path) -> None:
    """Raise ``CheckpointError`` naming the file if anything is missing or its checksum differs."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: it is incomplete")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{manifest_path} is corrupted: {error}") from error
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        if _sha256(file) != expected:
            raise CheckpointError(f"checkpoint file {file} is corrupted or truncated (sha256 mismatch)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Verify and read a checkpoint: model, ema, optimizer, rng, state."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        return {
            "model": load_file(path / "model.safetensors"),
            "ema": load_file(path / "ema.safetensors"),
            # Tensors and plain numbers only: never unpickle arbitrary objects.
            "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            "rng": load_file(path / "rng.safetensors")["torch"],
            "state": json.loads((path / "state.json").read_text()),
        }
    except (SafetensorError, RuntimeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} could not be read: {error}") from error

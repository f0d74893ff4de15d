"""Atomic training checkpoints: written under a temporary name, fsynced, renamed; verified on load.

A checkpoint is a directory ``step_XXXXXXXX/`` holding

    model.safetensors       the trained network's weights
    ema.safetensors         the EMA of the trained weights, same keys
    optimizer.pt            optimizer and learning-rate schedule (tensors and numbers only)
    state.json              step, counters, EMA settings and the run's config
    rng.safetensors         the global torch RNG state
    manifest.json           sha256 of every file above, written last

A sharded checkpoint (FSDP or DeepSpeed ZeRO, ``save_sharded_checkpoint``) holds, in place of the
first three files, one file per process of its own pieces (FSDP: the weights, EMA and AdamW moments
of the parameters it holds; ZeRO: its fp32 master partition, their EMA and AdamW moments;
safetensors: nothing unpickled), written by that process; ``state.json`` says how many and which
placement wrote them:

    shard_00000.safetensors ... shard_{N-1}.safetensors

A kill at any moment leaves either the previous checkpoints or the new one complete: the
directory only gets its final name once every file (the manifest last) is on disk, and a
checkpoint leaves its final name (an atomic rename) before any of its files is deleted. Directories
a kill interrupted are ignored by ``list_checkpoints`` and removed by the next ``save_checkpoint``:

    step_XXXXXXXX.tmp        a write that never finished
    step_XXXXXXXX.deleting   an old checkpoint being deleted
    step_XXXXXXXX.replaced   the previous copy of a step written twice; complete, and listed in
                             place of step_XXXXXXXX should a kill fall between the two renames

Saved models (``STUNet.save_pretrained``) carry the same protection against silent corruption:
``write_checksums`` / ``verify_checksums`` keep the sha256 of their weight files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lumiere.errors import OutputError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHECKSUMS = "checksums.json"  # sha256 of a saved model's weight files (write_checksums)
_PREFIX = "step_"
_TMP_SUFFIX = ".tmp"  # a checkpoint being written
_DELETING_SUFFIX = ".deleting"  # a checkpoint being deleted
_REPLACED_SUFFIX = ".replaced"  # the previous copy of a step being written again
_SHARD = re.compile(r"shard_\d{5}\.safetensors")  # a process's file in a sharded checkpoint
_NAME = re.compile(rf"{_PREFIX}(\d+)({re.escape(_REPLACED_SUFFIX)})?")


class CheckpointError(RuntimeError):
    """A checkpoint or saved model file that is missing, truncated or corrupted."""


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
    """Complete checkpoints under ``root``, oldest first, one per step.

    Directories of interrupted writes and deletions are ignored; a ``.replaced`` copy stands in
    for its step only when the step's own directory is missing.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for path in root.iterdir():
        match = _NAME.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        step, replaced = int(match.group(1)), match.group(2) is not None
        if not replaced or step not in by_step:
            by_step[step] = path
    return [by_step[step] for step in sorted(by_step)]


def find_checkpoint(root: str | Path, step: int) -> Path:
    """The complete checkpoint of ``step`` under ``root``; a ``ValueError`` naming the steps held."""
    by_step = {int(_NAME.fullmatch(path.name).group(1)): path for path in list_checkpoints(root)}
    if step not in by_step:
        held = f"steps {', '.join(map(str, by_step))}" if by_step else "none"
        raise ValueError(f"no checkpoint of step {step} under {root}; it holds {held}")
    return by_step[step]


def latest_checkpoint(root: str | Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def load_latest_checkpoint(root: str | Path, rank: int | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under ``root`` that verifies, and its contents (``load_checkpoint``).

    A damaged newer checkpoint (a disk fault: kills cannot leave one) is skipped with a warning
    for the one before it. None when ``root`` holds no checkpoint; ``CheckpointError`` when every
    one is damaged. ``rank``: the process reading a sharded checkpoint (``load_checkpoint``).
    """
    checkpoints = list_checkpoints(root)
    if not checkpoints:
        return None
    for path in reversed(checkpoints):
        try:
            return path, load_checkpoint(path, rank)
        except CheckpointError as error:
            logger.warning("skipping a damaged checkpoint: %s", error)
    raise CheckpointError(
        f"no checkpoint under {root} could be loaded: all {len(checkpoints)} are damaged (see the warnings)"
    )


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``.

    A write that fails (a full disk, a read-only folder) leaves the previous checkpoints as they
    were and nothing partial, and is a ``CheckpointWriteError`` (an ``OSError`` with the errno)
    naming the folder, the space a checkpoint needs, the space free and the last good checkpoint.
    """
    root = Path(root)
    tmp = _renamed(checkpoint_dir(root, step), _TMP_SUFFIX)
    try:
        return _write_checkpoint(root, step, tmp, model_state, ema_state, optimizer_state, state, keep)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing partial: the space goes back at once
        needed = sum(_tensor_bytes(part) for part in (model_state, ema_state, optimizer_state))
        raise CheckpointWriteError.of(error, root, step, needed) from error


class CheckpointWriteError(OutputError):
    """A checkpoint that could not be written (errno kept); the previous ones are intact."""

    @classmethod
    def of(cls, error: OSError, root: Path, step: int, needed: int) -> CheckpointWriteError:
        from lumiere.files import os_reason
        from lumiere.pipelines.memory import format_bytes

        try:
            free = f", {format_bytes(shutil.disk_usage(root if root.exists() else root.parent).free)} free"
        except OSError:
            free = ""
        last = latest_checkpoint(root) if root.is_dir() else None
        kept = f"the last good checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"
        return cls(
            error.errno or errno.EIO,
            f"cannot write the step {step} checkpoint in {root}: {os_reason(error)} (a checkpoint needs about "
            f"{format_bytes(needed)}{free}); {kept}: free space or make the folder writable, then continue "
            "with --resume",
        )


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested state (dicts, lists, tensors)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _write_checkpoint(
    root: Path,
    step: int,
    tmp: Path,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    _start_checkpoint(root, tmp)
    manifest = _write_files(
        tmp,
        {
            "model.safetensors": lambda p: save_file(_contiguous(model_state), p),
            "ema.safetensors": lambda p: save_file(_contiguous(ema_state), p),
            "optimizer.pt": lambda p: torch.save(optimizer_state, p),
            **_run_files(state),
        },
    )
    return _publish(root, step, tmp, manifest, keep)


def _start_checkpoint(root: Path, tmp: Path) -> None:
    """The checkpoint folder's staging directory, after clearing what kills left behind."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_interrupted(root)
    tmp.mkdir()


def _run_files(state: dict[str, Any]) -> dict[str, Callable[[str], None]]:
    """The writers of what every checkpoint holds beside the weights: the RNG and ``state.json``."""
    return {
        "rng.safetensors": lambda p: save_file({"torch": torch.get_rng_state()}, p),
        "state.json": lambda p: Path(p).write_text(json.dumps(state, indent=2)),
    }


def _write_files(directory: Path, files: dict[str, Callable[[str], None]]) -> dict[str, str]:
    """Write each file by its writer, fsync it; their sha256 by name."""
    sums = {}
    for name, write in files.items():
        path = directory / name
        try:
            write(str(path))
        except (RuntimeError, SafetensorError) as error:  # torch.save and safetensors wrap the OS error
            cause = _os_error_in(error, path)
            if cause is None:
                raise
            raise cause from error
        _fsync(path)
        sums[name] = _sha256(path)
    return sums


def _publish(root: Path, step: int, tmp: Path, manifest: dict[str, str], keep: int) -> Path:
    """Write the manifest (last), give the staged checkpoint its final name (atomic), delete all
    but the newest ``keep``."""
    final = checkpoint_dir(root, step)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _fsync(tmp / MANIFEST)
    _fsync(tmp)
    previous = None
    if final.exists():  # the same step written again (e.g. a stop right after a periodic checkpoint)
        previous = _renamed(final, _REPLACED_SUFFIX)
        os.replace(final, previous)
    os.replace(tmp, final)
    _fsync(root)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep]:
        _delete(old)
    logger.info("checkpoint written: %s", final)
    return final


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints (FSDP, ZeRO): one file of its own pieces per process, written by all processes.
# ---------------------------------------------------------------------------------------------


def shard_file(rank: int) -> str:
    """The name of process ``rank``'s file in a sharded checkpoint."""
    return f"shard_{rank:05d}.safetensors"


def save_sharded_checkpoint(
    root: str | Path,
    step: int,
    shard: dict[str, torch.Tensor],  # this process's pieces (model.*, ema.*, optimizer.*)
    state: dict[str, Any],  # the main process's is written; it should say the number of processes
    keep: int,
    rank: int,
    exchange: Callable[[Any], list[Any]],  # every process's value by rank, on every process
) -> Path:
    """Every process calls this at the same step. Its shards go to ``shard_RANK.safetensors`` in
    the staging folder; the main process adds ``rng.safetensors`` and ``state.json``, then the
    manifest (the sha256 of every process's file, each hashed where it was written), then renames
    the folder, as ``save_checkpoint`` does: a kill of any process at any moment leaves the
    previous checkpoints complete. A write that fails on any process is a ``CheckpointWriteError``
    on every process (the processes agree through ``exchange`` before each phase)."""
    root = Path(root)
    tmp = _renamed(checkpoint_dir(root, step), _TMP_SUFFIX)

    def phase(work: Callable[[], Any]) -> list[Any]:
        """``work`` on this process, then every process's result on all; a failure anywhere
        stops every process (the failing one with its own error)."""
        try:
            result, failure = work(), None
        except Exception as error:
            result, failure = None, error
        reported = None if failure is None else (getattr(failure, "errno", None), str(failure))
        results = exchange((result, reported))
        for where, (_, problem) in enumerate(results):
            if problem is None:
                continue
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # nothing partial stays
            error = (
                failure
                if failure is not None
                else OSError(problem[0] or errno.EIO, f"process {where}: {problem[1]}")
            )
            if not isinstance(error, OSError):
                raise error
            raise CheckpointWriteError.of(error, root, step, _tensor_bytes(shard) * len(results)) from error
        return [value for value, _ in results]

    def publish() -> None:
        _publish(root, step, tmp, {**manifest, **_write_files(tmp, _run_files(state))}, keep)

    phase(lambda: _start_checkpoint(root, tmp) if rank == 0 else None)
    sums = phase(lambda: _write_files(tmp, {shard_file(rank): lambda p: save_file(_contiguous(shard), p)}))
    manifest = {name: digest for written in sums for name, digest in written.items()}
    phase(lambda: publish() if rank == 0 else None)
    return checkpoint_dir(root, step)


def _os_error_in(error: Exception, path: Path) -> OSError | None:
    """The ``OSError`` behind a writer's own error, or None when it is not about the disk.
    safetensors: "... No space left on device (os error 28)"; torch.save: "open file failed with
    strerror: Read-only file system", or on a full disk only "unexpected pos 576 vs 534"."""
    text = str(error)
    code = None
    if match := re.search(r"os error (\d+)", text):
        code = int(match.group(1))
    elif match := re.search(r"strerror: ([^\n]+)", text):
        code = _ERRNO_OF_STRERROR.get(match.group(1).strip())
    elif "failed writing" in text or "unexpected pos" in text:
        # torch.save does not say why; the disk does: a full one is the usual cause.
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        code = errno.ENOSPC if free < (1 << 20) else errno.EIO
    return None if code is None else OSError(code, os.strerror(code), str(path))


_ERRNO_OF_STRERROR = {os.strerror(code): code for code in errno.errorcode}


def replace_directory(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill ``out_dir`` by ``write(staging)`` atomically: ``write`` fills a sibling staging folder,
    which then takes ``out_dir``'s place by renames, so a kill never leaves a half-written mix at
    ``out_dir`` (between the two renames the previous content sits at ``.NAME.previous``).
    Used for exported models (``lumiere.stages``)."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        write(staging)
    except (OSError, RuntimeError, SafetensorError) as error:  # a full disk: nothing partial stays
        shutil.rmtree(staging, ignore_errors=True)
        cause = error if isinstance(error, OSError) else _os_error_in(error, staging)
        if cause is None:
            raise
        from lumiere.files import os_reason

        raise OutputError(
            cause.errno or errno.EIO, f"cannot write {out_dir}: {os_reason(cause, out_dir.parent)}"
        ) from error
    previous = out_dir.with_name(f".{out_dir.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return out_dir


def _renamed(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _delete(path: Path) -> None:
    """Remove a checkpoint without ever showing it half-deleted: rename it out of the checkpoint
    names first (atomic), then delete its files."""
    trash = _renamed(path, _DELETING_SUFFIX)
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_interrupted(root: Path) -> None:
    """Clear what kills left behind: unfinished writes and deletions, and ``.replaced`` copies
    (renamed back when the kill fell between the two renames of a rewrite)."""
    for path in list(root.iterdir()):  # a snapshot: entries are renamed and removed below
        if not (path.is_dir() and path.name.startswith(_PREFIX)):
            continue
        if path.name.endswith(_REPLACED_SUFFIX):
            final = path.with_name(path.name[: -len(_REPLACED_SUFFIX)])
            if not final.exists():
                os.replace(path, final)
                continue
        if path.name.endswith((_TMP_SUFFIX, _DELETING_SUFFIX, _REPLACED_SUFFIX)):
            logger.info("removing %s, left by an interrupted checkpoint write", path)
            shutil.rmtree(path)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def verify_checkpoint(path: str | Path, rank: int | None = None) -> None:
    """Raise ``CheckpointError`` naming the file if anything is missing or its checksum differs.
    With ``rank`` (a sharded checkpoint read by one process) the other processes' files are only
    checked to be there; each process checksums its own."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: it is incomplete")
    others = set()
    if rank is not None:
        others = {name for name in os.listdir(path) if _SHARD.fullmatch(name) and name != shard_file(rank)}
    _verify_sums(path, MANIFEST, "checkpoint file", skip=others)


def read_json_object(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` naming the file if it is not valid JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as reason:
        raise error(f"{path} is corrupted (not valid JSON: {reason})") from reason
    if not isinstance(data, dict):
        raise error(f"{path} is corrupted: expected a JSON object, got {type(data).__name__}")
    return data


def _verify_sums(directory: Path, sums_name: str, what: str, skip: set[str] = frozenset()) -> None:
    """Check every file listed in ``directory / sums_name`` against its sha256 (those in ``skip``:
    only that they are there)."""
    sums = read_json_object(directory / sums_name, error=CheckpointError)  # {file name: sha256}
    for name, expected in sums.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{what} {file} is missing")
        if name not in skip and _sha256(file) != expected:
            raise CheckpointError(f"{what} {file} is corrupted or truncated (sha256 mismatch)")


def write_checksums(directory: str | Path, names: list[str]) -> None:
    """Write ``CHECKSUMS``: the sha256 of each named file of a saved model (fsynced, written last)."""
    directory = Path(directory)
    sums = {}
    for name in names:
        _fsync(directory / name)
        sums[name] = _sha256(directory / name)
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")
    _fsync(directory / CHECKSUMS)


def verify_checksums(directory: str | Path) -> None:
    """Raise ``CheckpointError`` naming the file if a file listed in ``CHECKSUMS`` is missing or
    differs. Directories saved without ``CHECKSUMS`` pass (nothing to check against)."""
    directory = Path(directory)
    if (directory / CHECKSUMS).is_file():
        _verify_sums(directory, CHECKSUMS, "weights file")


def load_checkpoint(path: str | Path, rank: int | None = None) -> dict[str, Any]:
    """Verify and read a checkpoint: model, ema, optimizer, rng, state; a sharded one (``state``
    says ``processes``): process ``rank``'s ``shard`` (tensors by ``model.``/``ema.``/``optimizer.``
    name), rng, state."""
    path = Path(path)
    verify_checkpoint(path, rank)
    try:
        state = json.loads((path / "state.json").read_text())
        rng = load_file(path / "rng.safetensors")["torch"]
        if "processes" in state:
            return {"shard": load_file(path / shard_file(rank or 0)), "rng": rng, "state": state}
        return {
            "model": load_file(path / "model.safetensors"),
            "ema": load_file(path / "ema.safetensors"),
            # Tensors and plain numbers only: never unpickle arbitrary objects.
            "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            "rng": rng,
            "state": state,
        }
    except (SafetensorError, RuntimeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} could not be read: {error}") from error


def check_model_folder(directory: str | Path) -> None:
    """Check the JSON files of a saved pipeline folder before any loader reads them: each must be
    a JSON object, and the scheduler config's scalar values must have the types its scheduler
    class takes (a number where a number is expected). A ``ValueError`` names the file and the
    key; the loaders would otherwise fail deep inside with a ``TypeError``. Missing files are
    left to the loader (which names them)."""
    import inspect

    import diffusers

    directory = Path(directory)
    for path in sorted(directory.glob("*.json")) + sorted(directory.glob("*/*.json")):
        if path.name != CHECKSUMS:
            read_json_object(path)
    scheduler_path = directory / "scheduler" / "scheduler_config.json"
    if not scheduler_path.is_file():
        return
    config = read_json_object(scheduler_path)
    scheduler_class = getattr(diffusers, str(config.get("_class_name", "")), None)
    if scheduler_class is None:
        return
    for name, parameter in inspect.signature(scheduler_class.__init__).parameters.items():
        default, value = parameter.default, config.get(name)
        if value is None or not isinstance(default, (bool, int, float, str)):
            continue
        expected = type(default)
        fits = isinstance(value, expected) and (expected is bool) == isinstance(value, bool)
        fits |= expected is float and isinstance(value, int) and not isinstance(value, bool)
        fits |= expected is int and isinstance(value, float) and value.is_integer()
        if not fits:
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[expected]
            raise ValueError(
                f"{scheduler_path}: key {name} must be {kind}, got {type(value).__name__} {value!r}"
            )

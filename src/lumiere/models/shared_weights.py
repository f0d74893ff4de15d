"""A STUNet saved as the tensors it changed from another: the long-clip model beside the base model.

The long-clip model (issue 33, docs/long_clips.md) is the base model fine-tuned on 80-frame clips
with the image model's layers frozen (Sec. 3.1), plus a coarse temporal level. Most of its tensors
are the base model's, byte for byte; a pipeline stores them once. ``long_stunet/`` then holds
``config.json``, ``SHARED_FILE`` (only the tensors that differ from the base model's, or that it
lacks) and ``checksums.json``. The file's metadata names the base folder and the sha256 of the
base tensors taken from it, so a base model that changed since is refused rather than mixed in.

``STUNet.from_pretrained`` reads such a folder with ``load_beyond_base``, taking the base from the
sibling folder (so ``model.init_from`` can name ``long_stunet/`` to go on training it);
``LumierePipeline.from_pretrained`` passes the base it has loaded. The model read back saves on its
own, whole, as usual (``save_pretrained``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import ModelMixin
from safetensors import safe_open
from safetensors.torch import save_file

from lumiere.checkpoint import CheckpointError, verify_checksums, write_checksums
from lumiere.files import atomic_write

SHARED_FILE = "weights_beyond_base.safetensors"
Model = TypeVar("Model", bound=ModelMixin)


def stores_beyond_base(directory: str | Path) -> bool:
    """Whether ``directory`` holds a model saved by ``save_beyond_base``."""
    return (Path(directory) / SHARED_FILE).is_file()


def _shared_names(state: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[str]:
    """Names of ``state``'s tensors equal, in shape, dtype and every value, to ``theirs``."""
    return sorted(
        name
        for name, tensor in state.items()
        if name in theirs
        and theirs[name].shape == tensor.shape
        and theirs[name].dtype == tensor.dtype
        and torch.equal(theirs[name].cpu(), tensor.cpu())
    )


def _fingerprint(state: dict[str, torch.Tensor], names: list[str]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of ``state``'s tensors ``names`` (in order)."""
    digest = hashlib.sha256()
    for name in names:
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_beyond_base(model: ModelMixin, base: ModelMixin, directory: str | Path, base_name: str) -> int:
    """Write ``model`` into ``directory``: its ``config.json`` and only the tensors that differ from
    ``base``'s (the base lives in the sibling folder ``base_name``). Returns the bytes left out."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.safetensors"):
        stale.unlink()  # a whole save from before: only SHARED_FILE is read, so leave no other weights
    model.save_config(directory)
    state, theirs = model.state_dict(), base.state_dict()
    shared = _shared_names(state, theirs)
    left_out = set(shared)
    own = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items() if name not in left_out}
    metadata = {
        "format": "pt",
        "base": base_name,
        "base_tensors": "\n".join(shared),
        "base_sha256": _fingerprint(theirs, shared),
    }
    with atomic_write(directory / SHARED_FILE) as temporary:  # whole or not at all; mode per umask
        save_file(own, temporary, metadata=metadata)
    write_checksums(directory, [SHARED_FILE])
    return sum(state[name].numel() * state[name].element_size() for name in shared)


def load_beyond_base(
    model_cls: type[Model],
    directory: str | Path,
    base: ModelMixin | None = None,  # None: from_pretrained of the sibling folder it was saved against
    torch_dtype: torch.dtype | None = None,
) -> Model:
    """Read a folder written by ``save_beyond_base``: the config's network, the base's shared tensors
    and the folder's own. ``CheckpointError`` when the file fails its checksum or the base model is
    not the one it was saved against; ``ValueError`` when the tensors do not build the config's network."""
    directory = Path(directory)
    verify_checksums(directory)
    path = directory / SHARED_FILE
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        own = {name: handle.get_tensor(name) for name in handle.keys()}
    shared = [name for name in metadata.get("base_tensors", "").split("\n") if name]
    if base is None:
        base_dir = directory.parent / metadata.get("base", "")
        if not metadata.get("base") or not (base_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} holds only what its model changed from {base_dir}, which is not there; "
                "load the pipeline folder it belongs to"
            )
        base = model_cls.from_pretrained(base_dir)
    theirs = base.state_dict()
    missing = [name for name in shared if name not in theirs]
    if missing or _fingerprint(theirs, shared) != metadata.get("base_sha256"):
        raise CheckpointError(
            f"{path} was saved against another {metadata.get('base', 'base')} model than the one beside it "
            f"({'it lacks ' + missing[0] if missing else 'its shared tensors differ'}); save the pipeline again"
        )
    model = model_cls.from_config(model_cls.load_config(directory))
    state = {name: theirs[name].detach().to("cpu", copy=True) for name in shared} | own
    expected = set(model.state_dict())
    if set(state) != expected:
        extra, lacking = sorted(set(state) - expected), sorted(expected - set(state))
        raise ValueError(
            f"{path} does not build the network of {directory / 'config.json'}: "
            f"{'unexpected tensor ' + extra[0] if extra else 'no tensor ' + lacking[0]}"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    return model if torch_dtype is None else model.to(dtype=torch_dtype)

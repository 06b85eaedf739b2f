"""Causal language models from ``transformers`` as teachers and students (``name: causal_lm``).

Any ``AutoModelForCausalLM``: pretrained from a local folder or a GGUF file (``path``; ``pkg:<package>/<file>``
inside an installed package; a GGUF file is converted once, see :mod:`distill.models.gguf`), or built here from a
config (``config: {model_type: llama, hidden_size: 256, ...}``; ``vocab_size`` defaults to the tokenizer's).
``layers: [0, 10, 20, 29]`` keeps those decoder layers of a pretrained model with their weights (a student
initialised from a subset of its teacher's layers, as DistilBERT and Minitron start theirs).

The model reads ``input_ids`` and ``attention_mask`` of a dict batch (also under a role prefix:
``teacher.input_ids``) and returns next-token logits ``(B, S, V)``; the network sits at ``lm``, so its layers are
tapped by module path (``lm.model.layers.3``). Nothing is ever downloaded.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from distill.errors import DistillError
from distill.io import first_line
from distill.models.base import MODELS
from distill.models.hf import fields


class CausalLM(nn.Module):
    """``lm`` (a transformers causal LM) -> next-token logits (B, S, V)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    @property
    def context(self) -> int | None:
        """The longest sequence the model's positions cover (None: not stated by its config)."""
        return getattr(self.lm.config, "max_position_embeddings", None)

    def forward(self, **kwargs: Tensor) -> Tensor:
        """Token fields (B, S) -> logits (B, S, V). Padding columns are kept: targets are per position."""
        ids, mask = token_fields(kwargs)
        return self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits


def token_fields(kwargs: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """``input_ids`` and ``attention_mask`` of a dict batch (names or ``.<name>`` endings), padding kept."""
    f = fields(kwargs, model="causal_lm", trim_padding=False)
    return f["input_ids"], f.get("attention_mask")


@MODELS.register("causal_lm")
def causal_lm(*, num_classes: int, input_shape: Any, path: str | None = None, config: dict[str, Any] | None = None,
              layers: list[int] | None = None) -> nn.Module:
    """A causal LM from ``path`` (a local transformers folder or a ``.gguf`` file) or ``config`` (built here,
    seeded); ``layers`` keeps those decoder layers, in that order, with their weights."""
    if (path is None) == (config is None):
        raise DistillError("model 'causal_lm': give exactly one of 'path' (a local model folder or .gguf file) or "
                           "'config'")
    lm = _load(path) if path is not None else _build(dict(config or {}), num_classes)
    if layers is not None:
        keep_decoder_layers(lm, layers)
    vocab = lm.get_output_embeddings().weight.shape[0]
    if vocab < num_classes:
        raise DistillError(f"model 'causal_lm': its vocabulary ({vocab:,}) is smaller than the tokenizer's "
                           f"({num_classes:,}); use the model's own tokenizer")
    model = CausalLM(lm)
    seq = _seq_len(input_shape)
    if seq is not None and model.context is not None and seq > model.context:
        raise DistillError(f"model 'causal_lm': data.seq_len {seq} is longer than the model's context "
                           f"(max_position_embeddings {model.context})")
    return model


def _seq_len(input_shape: Any) -> int | None:
    """S of the (S,) token-id shape the engine passes (None for anything else)."""
    return int(input_shape[0]) if isinstance(input_shape, tuple) and len(input_shape) == 1 else None


def _load(path: str) -> nn.Module:
    import torch

    from distill.build import resolve_path
    from distill.models.gguf import converted, gguf_file
    from distill.models.hf import _transformers

    gguf = gguf_file(path)
    folder = converted(gguf, "model") if gguf is not None else resolve_path(path)
    if not (folder / "config.json").is_file():
        raise DistillError(f"model 'causal_lm': {path} is neither a .gguf file nor a folder holding a transformers "
                           "model (no config.json)")
    try:
        return _transformers().AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                                     dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise DistillError(f"model 'causal_lm': cannot load {path}: {first_line(e)}") from None


def _build(config: dict[str, Any], vocab: int) -> nn.Module:
    from distill.models.hf import _transformers

    t = _transformers()
    kind = config.pop("model_type", None)
    if not isinstance(kind, str):
        raise DistillError("model 'causal_lm': config needs 'model_type' (e.g. llama)")
    config.setdefault("vocab_size", vocab)
    try:
        return t.AutoModelForCausalLM.from_config(t.AutoConfig.for_model(kind, **config))
    except (ValueError, TypeError, KeyError) as e:
        raise DistillError(f"model 'causal_lm': config: {first_line(e)}") from None


def decoder_layers(lm: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, list) of the model's stack of decoder layers: the longest ModuleList in it."""
    best: tuple[nn.Module, str, nn.ModuleList] | None = None
    for module in lm.modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and (best is None or len(child) > len(best[2])):
                best = (module, attr, child)
    if best is None:
        raise DistillError(f"model 'causal_lm': layers: {type(lm).__name__} has no list of decoder layers to cut")
    return best


def keep_decoder_layers(lm: nn.Module, keep: list[int]) -> None:
    """Cut the decoder stack down to layers ``keep`` (weights kept), in place, renumbering their cache slots."""
    parent, attr, stack = decoder_layers(lm)
    n = len(stack)
    if not keep or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n for i in keep) \
            or len(set(keep)) != len(keep):
        raise DistillError(f"model 'causal_lm': layers must be distinct layer indices in [0, {n}), got {keep!r}")
    setattr(parent, attr, nn.ModuleList(stack[i] for i in keep))
    for new, layer in enumerate(getattr(parent, attr)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new  # the KV cache of generation is indexed by it
    cfg = lm.config
    cfg.num_hidden_layers = len(keep)
    if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == n:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]

"""Hugging Face ``transformers`` encoders as teachers and students (``name: hf``).

A pretrained model from a local folder (``path``; ``pkg:<package>/<folder>`` inside an installed package) or a
model built here from a config (``config: {model_type: bert, hidden_size: 128, ...}``), with a pooling of its last
hidden states (``mean`` over real tokens, ``cls``, ``max``) and, for classification, a Linear head ``fc`` on the
pooled vector (``head: false``: the pooled sentence embedding is the output). The backbone sits at ``backbone``, so
its layers are tapped by module path (``backbone.encoder.layer.2``: that layer's hidden states, ``(B, T, H)``;
``backbone.embeddings``: the embedding layer's output; ``backbone.encoder.layer.2.attention.self:1``: that layer's
attention probabilities, ``(B, heads, T, T)``, with ``attn_implementation: eager``), and the pooled sentence
embedding at ``pool`` (``(B, H)``); ``layers: [0, 2, 4]`` keeps a subset of a model's layers with their weights (a
student initialised from its teacher).

Inputs are a dict batch: the model reads ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` when given),
under these names or ending in them after a ``.`` or ``/`` (``student.input_ids``), so two roles can read two
tokenisations of one sentence. ``transformers`` is imported only when such a model is built (the ``hf`` extra);
nothing is ever downloaded (``local_files_only``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.io import first_line
from distill.models.base import MODELS

POOLINGS = ("mean", "cls", "max")
_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def pool(hidden: Tensor, mask: Tensor | None, how: str) -> Tensor:
    """(B, T, H) hidden states and a (B, T) mask of real tokens -> (B, H): the masked mean, the first token's
    state, or the masked max."""
    if how == "cls":
        return hidden[:, 0]
    m = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device) if mask is None else mask
    m = m.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)


def fields(kwargs: dict[str, Tensor], *, model: str = "hf", trim_padding: bool = True) -> dict[str, Tensor]:
    """The model's own fields from a dict batch: exact names, or names ending in ``.<field>`` / ``/<field>``;
    padding columns no row uses are dropped unless ``trim_padding`` is False (per-position outputs)."""
    out: dict[str, Tensor] = {}
    for key, value in kwargs.items():
        name = key.replace("/", ".").rsplit(".", 1)[-1]
        if name in _FIELDS:
            if name in out:
                raise DistillError(f"model {model!r}: two input fields end in {name!r}; set the model's 'inputs' to "
                                   "the fields of one tokenisation")
            out[name] = value
    if "input_ids" not in out:
        raise DistillError(f"model {model!r} reads 'input_ids' (and 'attention_mask'); the batch has "
                           f"{sorted(kwargs)}")
    return trim(out) if trim_padding else out


def trim(f: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the padding columns that no sentence of this batch uses: a dataset is padded to its longest text,
    a batch of short ones need not pay for it (outputs are unchanged: padding is masked everywhere)."""
    mask = f.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.shape[1] == 0:
        return f
    used = int(mask.any(0).nonzero().max()) + 1 if bool(mask.any()) else 1
    if used == mask.shape[1]:
        return f
    return {k: v[:, :used] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v for k, v in f.items()}


class Pool(nn.Module):
    """(B, T, H) token states and a (B, T) mask -> (B, H), a module so that ``pool`` can be tapped."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        return pool(hidden, mask, self.how)


class HFEncoder(nn.Module):
    """``backbone`` (a transformers encoder) -> ``pool`` -> ``fc`` (classification) or the pooled embedding."""

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: str, head: bool) -> None:
        super().__init__()
        self.backbone = backbone
        pooler = getattr(backbone, "pooler", None)
        if isinstance(pooler, nn.Module):  # BERT's own CLS pooler: never run by `pool`, so frozen (DDP needs every
            pooler.requires_grad_(False)  # trainable parameter used); kept so checkpoints load either way
        self.pool = Pool(pooling)
        self.fc = nn.Linear(backbone.config.hidden_size, num_classes) if head else None

    def forward(self, **kwargs: Tensor) -> Tensor:
        """Token fields (B, T) -> logits (B, num_classes), or the pooled embedding (B, H) without a head."""
        f = fields(kwargs)
        hidden = self.backbone(**f).last_hidden_state  # (B, T, H)
        pooled = self.pool(hidden, f.get("attention_mask"))
        return pooled if self.fc is None else self.fc(pooled)


@MODELS.register("hf")
def hf(*, num_classes: int, input_shape: tuple[int, ...], path: str | None = None,
       config: dict[str, Any] | None = None, pooling: Literal["mean", "cls", "max"] = "mean",
       head: bool = True, layers: list[int] | None = None,
       attn_implementation: Literal["eager", "sdpa"] | None = None) -> nn.Module:
    """A transformers encoder from ``path`` (pretrained, local) or ``config`` (built here, seeded); ``layers``
    keeps those encoder layers only, in that order, with their weights (DistilBERT's student: every other
    layer of its teacher, ``[0, 2, 4]`` of a 6-layer model). ``attn_implementation: eager`` computes attention
    probabilities explicitly, so they can be tapped (transformers' default, sdpa, never forms them)."""
    if (path is None) == (config is None):
        raise DistillError("model 'hf': give exactly one of 'path' (a local pretrained model) or 'config'")
    if pooling not in POOLINGS:
        raise DistillError(f"model 'hf': pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if attn_implementation not in (None, "eager", "sdpa"):
        raise DistillError(f"model 'hf': attn_implementation must be eager or sdpa, got {attn_implementation!r}")
    backbone = _load(path, attn_implementation) if path is not None else _build(config or {}, attn_implementation)
    if layers is not None:
        keep_layers(backbone, layers)
    return HFEncoder(backbone, num_classes, pooling, head)


def keep_layers(backbone: nn.Module, keep: list[int]) -> None:
    """Cut ``backbone.encoder.layer`` down to the layers ``keep`` (weights kept), in place."""
    stack = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList):
        raise DistillError(f"model 'hf': layers: {type(backbone).__name__} has no encoder.layer list to cut")
    n = len(stack)
    if not keep or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n for i in keep) \
            or len(set(keep)) != len(keep):
        raise DistillError(f"model 'hf': layers must be distinct layer indices in [0, {n}), got {keep!r}")
    backbone.encoder.layer = nn.ModuleList(stack[i] for i in keep)
    backbone.config.num_hidden_layers = len(keep)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise DistillError("model 'hf' needs transformers: pip install 'distill[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # our log lines, not a bar per weight file
    return transformers


def _load(path: str, attn: str | None) -> nn.Module:
    from distill.build import resolve_path

    folder = resolve_path(path)
    if not (folder / "config.json").is_file():
        raise DistillError(f"model 'hf': {path} is not a folder holding a transformers model (no config.json)")
    try:
        extra = {"attn_implementation": attn} if attn else {}
        return _transformers().AutoModel.from_pretrained(str(folder), local_files_only=True, **extra)
    except (OSError, ValueError) as e:
        raise DistillError(f"model 'hf': cannot load {path}: {first_line(e)}") from None


def _build(config: dict[str, Any], attn: str | None) -> nn.Module:
    t = _transformers()
    raw = dict(config)
    kind = raw.pop("model_type", None)
    if not isinstance(kind, str):
        raise DistillError("model 'hf': config needs 'model_type' (e.g. bert)")
    try:
        extra = {"attn_implementation": attn} if attn else {}
        return t.AutoModel.from_config(t.AutoConfig.for_model(kind, **raw), **extra)
    except (ValueError, TypeError, KeyError) as e:
        raise DistillError(f"model 'hf': config: {first_line(e)}") from None

"""BERT/RoBERTa -> Longformer (the Longformer authors' recipe): tile the position table to the new
length, copy each layer's q/k/v into the global q/k/v, keep every other weight, and carry the MLM
head over (or create one tied to the word embeddings when the checkpoint has none, e.g. MiniLM).

A Longformer source (Clinical-Longformer: 4,096 positions) is extended the same way to more
positions (8,192, the paper's length): its first positions are kept, the rest tiled from them, and
its trained global projections and attention windows are kept."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kept.errors import KeptError
from kept.hf import OFFSET_POSITION_TYPES, load_tokenizer, model_max_length, require_dir
from kept.io import atomic_dir, check_out_dir

log = logging.getLogger(__name__)

SUPPORTED_SOURCES = {"bert", "roberta", "xlm-roberta", "camembert", "longformer"}


def long_config(src_config, max_length: int, attention_window: int):
    """A LongformerConfig with the source's shape; positions numbered from pad id + 1."""
    from transformers import LongformerConfig

    if attention_window <= 0 or attention_window % 2:
        raise KeptError(f"--attention-window must be a positive even number, got {attention_window}")
    pad = src_config.pad_token_id if src_config.pad_token_id is not None else 0
    return LongformerConfig(
        vocab_size=src_config.vocab_size,
        hidden_size=src_config.hidden_size,
        num_hidden_layers=src_config.num_hidden_layers,
        num_attention_heads=src_config.num_attention_heads,
        intermediate_size=src_config.intermediate_size,
        hidden_act=src_config.hidden_act,
        hidden_dropout_prob=src_config.hidden_dropout_prob,
        attention_probs_dropout_prob=src_config.attention_probs_dropout_prob,
        max_position_embeddings=max_length + pad + 1,
        type_vocab_size=src_config.type_vocab_size,
        initializer_range=src_config.initializer_range,
        layer_norm_eps=src_config.layer_norm_eps,
        pad_token_id=pad,
        bos_token_id=getattr(src_config, "bos_token_id", None),
        eos_token_id=getattr(src_config, "eos_token_id", None),
        sep_token_id=getattr(src_config, "sep_token_id", None),
        attention_window=[attention_window] * src_config.num_hidden_layers,
        tie_word_embeddings=True,
    )


def _tile_positions(src: torch.Tensor, src_type: str, pad: int, dst: torch.Tensor) -> None:
    """Copy the source's learned positions, repeated, into rows pad+1 ... of the long table."""
    src_off = pad + 1 if src_type in OFFSET_POSITION_TYPES else 0
    rows = src[src_off:]
    dst_off = pad + 1
    n_new = dst.shape[0] - dst_off
    reps = -(-n_new // rows.shape[0])
    dst[dst_off:] = rows.repeat(reps, 1)[:n_new]
    dst[:dst_off] = src[0] if src_off == 0 else src[:dst_off]


def _head_state(src_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a BERT (`cls.predictions.*`) or RoBERTa (`lm_head.*`) MLM head onto Longformer's names."""
    if any(k.startswith("lm_head.") for k in src_sd):
        return {k: v for k, v in src_sd.items() if k.startswith("lm_head.")}
    names = {
        "cls.predictions.transform.dense.weight": "lm_head.dense.weight",
        "cls.predictions.transform.dense.bias": "lm_head.dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "lm_head.layer_norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "lm_head.layer_norm.bias",
        "cls.predictions.bias": "lm_head.bias",
        "cls.predictions.decoder.weight": "lm_head.decoder.weight",
    }
    out = {names[k]: v for k, v in src_sd.items() if k in names}
    if "lm_head.bias" in out:
        out["lm_head.decoder.bias"] = out["lm_head.bias"]
    return out


def extended_config(src_config, max_length: int, attention_window: int | None):
    """A Longformer source's config with `max_length` positions (and a new window if given)."""
    from transformers import LongformerConfig

    cfg = LongformerConfig.from_dict(src_config.to_dict())
    cfg.max_position_embeddings = max_length + cfg.pad_token_id + 1
    if attention_window is not None:
        if attention_window <= 0 or attention_window % 2:
            raise KeptError(f"--attention-window must be a positive even number, got {attention_window}")
        cfg.attention_window = [attention_window] * cfg.num_hidden_layers
    return cfg


def longify_model(src: nn.Module, max_length: int = 4096, attention_window: int | None = None) -> nn.Module:
    """Return a LongformerForMaskedLM holding `src`'s weights (a *ForMaskedLM or a bare encoder).

    `attention_window`: None = 512 for a BERT/RoBERTa source, the source's own for a Longformer.
    A Longformer source must be extended (`max_length` above its positions): it keeps its first
    positions and global q/k/v; the new rows are tiled from its learned ones.

    A source without an MLM head gets one: decoder tied to the word embeddings, transform dense
    initialised to the identity (so the head starts as gelu + layer norm + embedding similarity,
    not random noise), layer norm at its defaults (1, 0), vocabulary bias 0.
    """
    from transformers import LongformerForMaskedLM

    cfg = src.config
    if cfg.model_type not in SUPPORTED_SOURCES:
        raise KeptError(f"longify knows BERT, RoBERTa-style and Longformer checkpoints, not {cfg.model_type!r}")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise KeptError("longify needs absolute position embeddings")
    from_longformer = cfg.model_type == "longformer"
    if from_longformer:
        if max_length <= model_max_length(cfg):
            raise KeptError(f"checkpoint is already a Longformer of {model_max_length(cfg)} tokens: use it "
                            f"directly, or ask for more than that to extend it")
        long_cfg = extended_config(cfg, max_length, attention_window)
    else:
        if max_length <= model_max_length(cfg):
            log.warning("max length %d is not longer than the source's %d", max_length, model_max_length(cfg))
        long_cfg = long_config(cfg, max_length, 512 if attention_window is None else attention_window)
    long_model = LongformerForMaskedLM(long_cfg).eval()

    src_sd = src.state_dict()
    prefix = src.base_model_prefix + "." if any(k.startswith(src.base_model_prefix + ".")
                                                for k in src_sd) else ""
    new_sd = long_model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in src_sd.items():
        if not key.startswith(prefix) or key.endswith("position_ids") or ".pooler." in key:
            continue
        name = "longformer." + key[len(prefix):]
        if name.endswith("embeddings.position_embeddings.weight"):
            table = new_sd[name].clone()
            _tile_positions(value, cfg.model_type, long_cfg.pad_token_id, table)
            out[name] = table
        elif name in new_sd:
            out[name] = value
    for key in list(out) if not from_longformer else ():  # global projections start as copies of local ones
        for qkv in ("query", "key", "value"):
            if key.endswith(f".attention.self.{qkv}.weight") or key.endswith(f".attention.self.{qkv}.bias"):
                out[key.replace(f".self.{qkv}.", f".self.{qkv}_global.")] = out[key]

    head = _head_state(src_sd)
    if head:
        out.update(head)
    else:
        h = long_cfg.hidden_size
        out["lm_head.dense.weight"] = torch.eye(h)
        out["lm_head.dense.bias"] = torch.zeros(h)
        out["lm_head.layer_norm.weight"] = torch.ones(h)
        out["lm_head.layer_norm.bias"] = torch.zeros(h)
        out["lm_head.bias"] = torch.zeros(long_cfg.vocab_size)
        out["lm_head.decoder.bias"] = out["lm_head.bias"]
        log.info("source has no MLM head: created one (decoder tied to word embeddings, identity transform)")
    if long_cfg.tie_word_embeddings or "lm_head.decoder.weight" not in out:
        out["lm_head.decoder.weight"] = out["longformer.embeddings.word_embeddings.weight"]

    missing = sorted(set(new_sd) - set(out))
    if missing:
        raise KeptError(f"longify: no source weights for {len(missing)} parameters, e.g. {missing[:3]}")
    long_model.load_state_dict(out, strict=True)
    long_model.tie_weights()
    return long_model


def longify(model_path: str | Path, out_dir: str | Path, max_length: int = 4096,
            attention_window: int | None = None, force: bool = False) -> Path:
    """Convert the checkpoint at `model_path` and write model + tokenizer to `out_dir` (atomically)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    check_out_dir(out_dir, force)  # before the slow part
    src_dir = require_dir(model_path, "a BERT/RoBERTa checkpoint")
    cfg = AutoConfig.from_pretrained(str(src_dir))
    # Load the MLM head only when the checkpoint declares one (MiniLM is a bare BertModel).
    has_head = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (cfg.architectures or []))
    src = AutoModelForMaskedLM.from_pretrained(str(src_dir)) if has_head else AutoModel.from_pretrained(str(src_dir))
    tokenizer = load_tokenizer(src_dir)
    long_model = longify_model(src.eval(), max_length, attention_window)
    tokenizer.model_max_length = max_length
    with atomic_dir(out_dir, force=force) as tmp:
        long_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    log.info("wrote %s (Longformer, %d tokens, window %s)", out_dir, max_length, long_model.config.attention_window[0])
    return Path(out_dir)

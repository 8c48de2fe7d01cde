"""Loading masked-LM checkpoints, device/AMP choices, layer lookup for partial tuning, and the
prompted coder module (KEPT): yes/no logits at each code's mask, no new parameters."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from kept.device import amp_dtype, resolve_device
from kept.errors import InputFileError, KeptError
from kept.io import atomic_write, dump_json

log = logging.getLogger(__name__)

# Model types whose position ids start after the pad id (RoBERTa's convention, kept by Longformer).
OFFSET_POSITION_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl"}
TRAIN_MODES = ("all", "lm-head", "first-layer", "last-layer", "bitfit")


def _offline() -> None:
    # Checkpoints are local folders; never let a typo turn into a hub download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _require_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise KeptError(f"{p}: no such folder (expected {what}; models load from local folders only)")
    if not (p / "config.json").is_file():
        raise KeptError(f"{p}: not a Hugging Face checkpoint folder (no config.json; expected {what})")
    return p


def load_tokenizer(path: str | Path):
    """The checkpoint's own tokenizer (fast when available)."""
    from transformers import AutoTokenizer

    _offline()
    return AutoTokenizer.from_pretrained(str(_require_dir(path, "a tokenizer")))


def load_mlm(path: str | Path) -> nn.Module:
    """A masked LM; refuses checkpoints whose MLM head would be randomly initialised."""
    from transformers import AutoModelForMaskedLM

    _offline()
    p = _require_dir(path, "a masked language model")
    model, info = AutoModelForMaskedLM.from_pretrained(str(p), output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if "position_ids" not in k]
    head_missing = [k for k in missing if k.startswith(("cls.", "lm_head."))]
    if head_missing:
        raise KeptError(
            f"{p}: checkpoint has no MLM head ({len(head_missing)} head weights missing); "
            "run `kept model longify` on it first, which adds one tied to the word embeddings")
    return model


def load_encoder(path: str | Path) -> nn.Module:
    """The bare encoder of any checkpoint (MLM head and pooler, if any, dropped)."""
    from contrastive.encoder import bare_encoder

    _offline()
    return bare_encoder(_require_dir(path, "an encoder"))


def model_max_length(config) -> int:
    """Longest input in tokens the checkpoint's position table allows."""
    offset = config.pad_token_id + 1 if config.model_type in OFFSET_POSITION_TYPES else 0
    return int(config.max_position_embeddings) - offset


def supports_global_attention(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", "") == "longformer"


def pick_device(name: str = "auto") -> torch.device:
    """kept.device.resolve_device (one home; `cuda` means this rank's GPU under torchrun)."""
    return resolve_device(name)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def base_encoder(model: nn.Module) -> nn.Module:
    """The transformer inside a task model (`bert`, `roberta`, `longformer`...), or the model itself."""
    return getattr(model, model.base_model_prefix, model) if hasattr(model, "base_model_prefix") else model


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: `encoder.layer` in the BERT, RoBERTa and Longformer families."""
    enc = base_encoder(model)
    layers = getattr(getattr(enc, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise KeptError(
            f"partial tuning knows the BERT, RoBERTa and Longformer layer layout (encoder.layer.N); "
            f"{type(enc).__name__} has none: use --train all")
    return layers


def lm_head_module(model: nn.Module) -> nn.Module:
    """The MLM head: `lm_head` (RoBERTa, Longformer) or `cls` (BERT)."""
    for name in ("lm_head", "cls"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise KeptError(f"{type(model).__name__}: no MLM head found (expected `lm_head` or `cls`)")


def set_trainable(model: nn.Module, mode: str, head: nn.Module | None = None) -> int:
    """Freeze all but the parts named by `mode`; returns the number of trainable parameters.

    `lm-head`: the MLM head only. `first-layer` / `last-layer`: that encoder layer and the MLM head
    (the paper tunes "LM head and first/last encoder layer"). `bitfit`: every bias and the MLM head.
    The MLM head trains its transform and bias but not the decoder tied to the input embeddings
    (that would train the whole vocabulary). `head` (the label-attention head) replaces the MLM
    head and is always trainable: its parameters are new.
    """
    if mode not in TRAIN_MODES:
        raise KeptError(f"unknown --train mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}")
    for name, p in model.named_parameters():
        p.requires_grad = mode == "all" or (mode == "bitfit" and name.endswith("bias"))
    if mode in ("first-layer", "last-layer"):
        layer = encoder_layers(model)[0 if mode == "first-layer" else -1]
        for p in layer.parameters():
            p.requires_grad = True
    if mode != "all" and head is None:
        tied = {id(model.get_input_embeddings().weight)}
        for p in lm_head_module(model).parameters():
            p.requires_grad = id(p) not in tied
    if head is not None:
        for p in head.parameters():
            p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def enable_checkpointing(model: nn.Module) -> bool:
    """Gradient checkpointing where it saves memory, at no extra cost elsewhere; returns whether on.

    Off when no encoder layer trains (lm-head): nothing below the head keeps activations then.
    Non-reentrant, and without the input-embedding grad hook transformers adds: that hook makes
    the frozen layers below a trained one join the backward pass (2.7-3.3x the FLOPs measured
    for lm-head / last-layer), and reentrant checkpointing would fail without it (4.x)."""
    try:
        layers = encoder_layers(model)
    except KeptError:
        layers = model
    if not any(p.requires_grad for p in layers.parameters()):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    return True


class PromptCoder(nn.Module):
    """KEPT's scorer: encode prompt+note, gather the mask positions, apply the LM head there only,
    and return logit(yes) - logit(no) per code (sigmoid of it = the 2-way softmax of the paper)."""

    def __init__(self, mlm: nn.Module, yes_id: int, no_id: int):
        super().__init__()
        self.mlm = mlm
        self.yes_id, self.no_id = int(yes_id), int(no_id)
        self.use_global = supports_global_attention(mlm)
        if not self.use_global:
            log.info("%s has no global attention: prompt tokens use plain full attention (stride ignored)",
                     mlm.config.model_type)

    def forward(self, batch: dict) -> torch.Tensor:
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.use_global:
            kwargs["global_attention_mask"] = batch["global_attention_mask"]
        hidden = base_encoder(self.mlm)(**kwargs).last_hidden_state  # (B, L, H)
        pos = batch["mask_positions"]  # (B, N)
        gathered = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # (B, N, H)
        # The head in fp32 even under autocast: logit(yes) and logit(no) are large and close, and
        # rounded to bf16 first their difference (the score) collapses. N positions: cheap.
        with torch.autocast(gathered.device.type, enabled=False):
            logits = lm_head_module(self.mlm)(gathered.float())  # (B, N, V): N masks, never L positions
        return logits[..., self.yes_id] - logits[..., self.no_id]


# ---- the coder's configuration and its checkpoint folder -------------------------------------------

HEADS = ("prompt", "label-attention", "tfidf-lr")
CODER_FILE = "kept_coder.json"


@dataclass
class CoderConfig:
    """Training and scoring settings. Defaults follow the paper where it says (N=50 codes per prompt,
    global stride 1, yes/no, up to 20 epochs with the best epoch chosen on dev); the paper gives no
    learning rate, 1.5e-5 is a common Longformer fine-tuning rate."""

    head: str = "prompt"  # prompt (KEPT) | label-attention (ablation baseline) | tfidf-lr (classical)
    template: str = "paper"  # paper: `desc : [MASK] ,` | kept: KEPT-code's `desc [MASK],`
    prompt_codes: int = 50  # N codes per prompt; larger label sets are split into prompts of N
    global_stride: int = 1  # every s-th prompt token gets global attention (Table A.5)
    max_length: int | None = None  # tokens; None = the checkpoint's limit
    verbalizer: tuple[str, str] = ("yes", "no")
    verbalizer_form: str = "spaced"  # BPE: spaced `Ġyes` (kept) | bare `yes` (KEPT's code); WordPiece: same
    train_mode: str = "all"  # all | lm-head | first-layer | last-layer (each + LM head) | bitfit
    epochs: int = 20
    batch_size: int = 1
    grad_accum: int = 8
    eval_batch_size: int = 4
    lr: float = 1.5e-5
    head_lr: float = 1e-3  # new parameters only (label-attention head)
    lm_head_lr: float | None = None  # prompted coder's LM head (non-tied part); None = lr, as the paper
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 if the GPU has it, else fp16) | bf16 | fp16 | fp32; CPU: fp32
    gradient_checkpointing: bool = True  # applied on GPU only (on CPU memory is not the limit)
    device: str = "auto"
    seed: int = 42
    graph: str | None = None  # graph dir for code descriptions; None = bundled ICD-9 titles
    pos_weight: float = 1.0  # BCE weight of a positive label (1 = the paper's loss; >1 offsets the ~90% negatives)
    tfidf_c: float = 100.0  # tfidf-lr: inverse L2 strength (best of 1/10/100 on the synthetic dev sets)
    tfidf_max_features: int = 100_000  # tfidf-lr: 1-2-gram vocabulary cap
    threshold_search: str = "grid"  # dev threshold: grid 0.01..0.99 | exact (every distinct dev score)
    desc_words: int | None = None  # prompt descriptions cut to their first N words (KEPT's full-set code: 15)

    def validate(self) -> "CoderConfig":
        if self.head not in HEADS:
            raise KeptError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if self.train_mode not in TRAIN_MODES:
            raise KeptError(f"unknown train mode {self.train_mode!r}; choose one of {', '.join(TRAIN_MODES)}")
        if self.threshold_search not in ("grid", "exact"):
            raise KeptError(f"unknown threshold search {self.threshold_search!r}; choose grid or exact")
        if self.verbalizer_form not in ("spaced", "bare"):
            raise KeptError(f"unknown verbalizer form {self.verbalizer_form!r}; choose spaced or bare")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise KeptError(f"unknown precision {self.precision!r}")
        if self.desc_words is not None and self.desc_words < 1:
            raise KeptError(f"desc_words must be >= 1 (or unset: whole descriptions), got {self.desc_words}")
        if self.epochs < 0 or self.batch_size < 1 or self.grad_accum < 1 or self.global_stride < 1:
            raise KeptError("epochs must be >= 0; batch size, grad accumulation and global stride >= 1")
        self.verbalizer = tuple(self.verbalizer)
        return self


def load_config(path: str | Path | None = None, **overrides) -> CoderConfig:
    """Defaults, then a TOML file's keys, then non-None `overrides` (command-line flags)."""
    from kept.toml import tomllib

    values: dict = {}
    if path is not None:
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise InputFileError(p, "config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputFileError(p, f"not valid TOML: {exc}") from None
        names = {f.name for f in fields(CoderConfig)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputFileError(p, f"unknown keys {unknown}; known: {sorted(names)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return CoderConfig(**values).validate()


def write_coder_file(out_dir: str | Path, config: CoderConfig, codes: list[str], descriptions: dict[str, str],
                     threshold: float, extra: dict | None = None) -> None:
    """kept_coder.json: what predict/eval need beside the weights (codes, threshold, template...)."""
    info = {"format": 1, "head": config.head, "config": asdict(config), "codes": list(codes),
            "descriptions": {c: descriptions[c] for c in codes}, "threshold": float(threshold),
            "template": config.template, "verbalizer": list(config.verbalizer), **(extra or {})}
    with atomic_write(Path(out_dir) / CODER_FILE) as fh:
        dump_json(info, fh, indent=1)


def read_coder_file(path: str | Path) -> dict:
    p = Path(path) / CODER_FILE
    if not p.is_file():
        raise InputFileError(p, "not a trained coder checkpoint (run `kept coder train` to make one)")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputFileError(p, f"not valid JSON: {exc.msg}", exc.lineno) from None
    info["config"] = CoderConfig(**info["config"]).validate()
    return info

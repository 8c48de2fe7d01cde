"""The coder's settings (`CoderConfig`): one typed dataclass behind `kept coder train` and its
`--config file.toml`, stored in every checkpoint's kept_coder.json so `eval` and `predict` score the
way training did. No torch import: the CLI reads these defaults for its help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kept.config import load_config as load_toml_config
from kept.errors import KeptError

__all__ = ["HEADS", "TRAIN_MODES", "EVIDENCE_RECIPE", "CoderConfig", "load_config"]

HEADS = ("prompt", "label-attention", "tfidf-lr")
TRAIN_MODES = ("all", "lm-head", "first-layer", "last-layer", "bitfit")


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
    note_view: str = "note"  # note: the note itself (the paper) | evidence: each code's best sentence of it
    evidence_index: str | None = None  # term index folder (`kept coder index`) that finds the evidence

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
        if self.note_view not in ("note", "evidence"):
            raise KeptError(f"unknown note view {self.note_view!r}; choose note or evidence")
        if self.note_view == "evidence" and not self.evidence_index:
            raise KeptError("--note-view evidence needs --evidence-index INDEX_DIR (a `kept coder index` folder)")
        if self.note_view == "evidence" and self.head != "prompt":
            raise KeptError(f"--note-view evidence is for the prompted coder (--head prompt), not --head {self.head}")
        if self.desc_words is not None and self.desc_words < 1:
            raise KeptError(f"desc_words must be >= 1 (or unset: whole descriptions), got {self.desc_words}")
        if self.epochs < 0 or self.batch_size < 1 or self.grad_accum < 1 or self.global_stride < 1:
            raise KeptError("epochs must be >= 0; batch size, grad accumulation and global stride >= 1")
        self.verbalizer = tuple(self.verbalizer)
        return self


# The evidence view as the demo and the benchmark run it: one code and its sentence per prompt (~40
# tokens), so batches of 32, and the MLM head's new transform at a head-sized rate.
EVIDENCE_RECIPE = dict(note_view="evidence", prompt_codes=1, batch_size=32, grad_accum=1, eval_batch_size=64,
                       lm_head_lr=1e-3)


def load_config(path: str | Path | None = None, **overrides) -> CoderConfig:
    """Defaults, then a TOML file's keys (top level), then non-None `overrides` (command-line flags)."""
    return load_toml_config(CoderConfig, path, overrides=overrides).validate()

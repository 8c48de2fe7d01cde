"""Scoring notes against any list of codes with a trained (or zero-shot) coder, and `kept coder eval`:
test metrics at the dev-tuned threshold, written as metrics.json + test_scores.npz and a table."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from coder.modeling import (CoderConfig, PromptCoder, amp_dtype, autocast, load_mlm, load_tokenizer,
                            model_max_length, pick_device, read_coder_file)
from coder.prompts import EncodedPrompt, Example, build_examples, build_prompts, collate, make_batches
from coder.verbalizer import build_verbalizer
from kept.io import atomic_path, atomic_write

log = logging.getLogger(__name__)

SYSTEM_NAMES = {"prompt": "kept-prompt", "label-attention": "label-attention"}


@dataclass
class Coder:
    """A loaded coder: scorer module, tokenizer, settings, its label list and dev-tuned threshold."""

    model: nn.Module
    tokenizer: object
    config: CoderConfig
    codes: list[str]
    descriptions: dict[str, str]
    threshold: float
    device: torch.device
    max_length: int


def effective_max_length(model: nn.Module, config: CoderConfig) -> int:
    enc_cfg = model.mlm.config if isinstance(model, PromptCoder) else model.encoder.config
    limit = model_max_length(enc_cfg)
    return min(config.max_length, limit) if config.max_length else limit


def build_scorer(head: str, model_path: str | Path, tokenizer, verbalizer: Sequence[str]) -> nn.Module:
    """The scorer module for a checkpoint folder: PromptCoder (MLM + verbalizer) or label attention."""
    if head == "prompt":
        v = build_verbalizer(tokenizer, verbalizer)
        return PromptCoder(load_mlm(model_path), v.yes_id, v.no_id)
    from coder.label_attention import LabelAttentionCoder

    return LabelAttentionCoder.load(model_path)


def load_coder(path: str | Path, device: str = "auto") -> Coder:
    """Load a checkpoint written by `kept coder train` (OUT/best): weights, tokenizer, kept_coder.json."""
    info = read_coder_file(path)
    config: CoderConfig = info["config"]
    tokenizer = load_tokenizer(path)
    model = build_scorer(info["head"], path, tokenizer, info["verbalizer"])
    dev = pick_device(device if device != "auto" else config.device)
    model.to(dev).eval()
    return Coder(model, tokenizer, config, info["codes"], info["descriptions"], info["threshold"], dev,
                 effective_max_length(model, config))


@torch.no_grad()
def predict_examples(model: nn.Module, tokenizer, examples: list[Example], prompts: list[EncodedPrompt],
                     n_docs: int, codes: Sequence[str], config: CoderConfig, device: torch.device,
                     progress: bool = True) -> np.ndarray:
    """Probabilities (docs, codes): every example's chunk scores put back in the code's column."""
    col = {c: j for j, c in enumerate(codes)}
    cols = [np.array([col[c] for c in p.codes]) for p in prompts]
    out = np.zeros((n_docs, len(codes)), dtype=np.float32)
    was_training = model.training
    model.eval()
    dtype = amp_dtype(device, config.precision)
    with_masks = config.head == "prompt"
    for idx in tqdm(make_batches(examples, config.eval_batch_size, shuffle=False), desc="scoring",
                    leave=False, disable=not progress):
        exs = [examples[i] for i in idx]
        chunk = exs[0].chunk
        batch = collate(exs, prompts[chunk], tokenizer.pad_token_id, config.global_stride, with_masks)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, dtype):
            logits = model(batch)
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        for e, p in zip(exs, probs):
            out[e.doc, cols[chunk]] = p
    model.train(was_training)
    return out


def score_codes(model: nn.Module, tokenizer, note_text: str | Sequence[str], codes: Sequence[str],
                descriptions: dict[str, str], config: CoderConfig, device: torch.device | None = None,
                progress: bool = False) -> np.ndarray:
    """P(code | note) for an arbitrary list of codes, in prompts of `config.prompt_codes` codes.

    `model` is a scorer module (`Coder.model`: PromptCoder or LabelAttentionCoder). One note (str)
    gives shape (len(codes),); a list of notes gives (notes, len(codes)). Column j is codes[j].
    """
    single = isinstance(note_text, str)
    texts = [note_text] if single else list(note_text)
    device = device or next(model.parameters()).device
    prompts = build_prompts(tokenizer, codes, descriptions, config.prompt_codes, config.template,
                            with_masks=config.head == "prompt")
    examples = build_examples(tokenizer, texts, None, prompts, effective_max_length(model, config))
    scores = predict_examples(model, tokenizer, examples, prompts, len(texts), codes, config, device, progress)
    return scores[0] if single else scores


def label_matrix(docs, codes: Sequence[str]) -> np.ndarray:
    col = {c: j for j, c in enumerate(codes)}
    y = np.zeros((len(docs), len(codes)), dtype=np.uint8)
    for i, d in enumerate(docs):
        for c in d.labels:
            if c in col:
                y[i, col[c]] = 1
    return y


def format_table(metrics: dict[str, float], title: str = "") -> str:
    """Metrics as a two-column text table: rates as fractions (as metrics.json), counts (n_*) as they are."""
    lines = [title] if title else []
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        shown = str(v) if isinstance(v, int) or k.startswith("n_") else f"{v:.4f}"
        lines.append(f"{k:<{width}}  {shown}")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | Path, set_dir: str | Path, out_dir: str | Path, split: str = "test",
                        ks: Sequence[int] = (5, 8, 15), system: str | None = None, device: str = "auto",
                        max_docs: int | None = None) -> dict:
    """Score `split` of a set at the checkpoint's dev-tuned threshold; write metrics.json + scores."""
    from coder.datasets import read_codes, read_split
    from coder.metrics import all_metrics
    from coder.prompts import code_descriptions

    coder = load_coder(checkpoint, device)
    set_dir = Path(set_dir)
    docs = read_split(set_dir, split)[:max_docs]
    codes = read_codes(set_dir)
    descriptions = {**code_descriptions([c for c in codes if c not in coder.descriptions]),
                    **coder.descriptions}
    if codes != coder.codes:
        log.info("set has a different label list than the checkpoint: scoring the set's %d codes", len(codes))
    scores = score_codes(coder.model, coder.tokenizer, [d.text for d in docs], codes, descriptions,
                         coder.config, coder.device, progress=True)
    y = label_matrix(docs, codes)
    metrics = all_metrics(y, scores, coder.threshold, ks=tuple(ks))
    meta_file = set_dir.parent / "dataset.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    result = {"system": system or SYSTEM_NAMES[coder.config.head], "dataset": set_dir.name, "split": split,
              "seed": coder.config.seed, "threshold": coder.threshold,
              "data_source": meta.get("source", "unknown"), "checkpoint": str(checkpoint), "metrics": metrics}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{split}_scores.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, y_true=y, y_score=scores.astype(np.float32),
                                hadm_ids=np.array([d.hadm_id for d in docs], dtype=str),
                                codes=np.array(codes, dtype=str))
    with atomic_write(out / "metrics.json") as fh:
        json.dump(result, fh, indent=1)
    return result

"""Scoring notes against any list of codes with a trained (or zero-shot) coder, and `kept coder eval`:
test metrics at the dev-tuned threshold, written as metrics.json + test_scores.npz and a table.
metrics.json keeps exact-match figures under "metrics" and graph-aware ones under "hierarchical"."""

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
from kept.io import atomic_path, atomic_write, dump_json

log = logging.getLogger(__name__)

SYSTEM_NAMES = {"prompt": "kept-prompt", "label-attention": "label-attention", "tfidf-lr": "tfidf-lr"}


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


def build_scorer(head: str, model_path: str | Path, tokenizer, verbalizer: Sequence[str],
                 verbalizer_form: str = "spaced") -> nn.Module:
    """The scorer module for a checkpoint folder: PromptCoder (MLM + verbalizer) or label attention."""
    if head == "prompt":
        v = build_verbalizer(tokenizer, verbalizer, verbalizer_form)
        return PromptCoder(load_mlm(model_path), v.yes_id, v.no_id)
    from coder.label_attention import LabelAttentionCoder

    return LabelAttentionCoder.load(model_path)


def load_coder(path: str | Path, device: str = "auto") -> Coder:
    """Load a checkpoint written by `kept coder train` (OUT/best): weights, tokenizer, kept_coder.json."""
    info = read_coder_file(path)
    config: CoderConfig = info["config"]
    if info["head"] == "tfidf-lr":
        from coder.tfidf import TfidfLR

        return Coder(TfidfLR.load(path), None, config, info["codes"], info["descriptions"], info["threshold"],
                     torch.device("cpu"), 0)
    tokenizer = load_tokenizer(path)
    model = build_scorer(info["head"], path, tokenizer, info["verbalizer"], config.verbalizer_form)
    dev = pick_device(device if device != "auto" else config.device)
    model.to(dev).eval()
    return Coder(model, tokenizer, config, info["codes"], info["descriptions"], info["threshold"], dev,
                 effective_max_length(model, config))


@torch.no_grad()
def predict_examples(model: nn.Module, tokenizer, examples: list[Example], prompts: list[EncodedPrompt],
                     n_docs: int, codes: Sequence[str], config: CoderConfig, device: torch.device,
                     progress: bool = True, logits: bool = False) -> np.ndarray:
    """Probabilities (docs, codes): every example's chunk scores put back in the code's column;
    `logits=True`: the raw scores (logit(yes) - logit(no)) instead, float32, which do not saturate."""
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
            raw = model(batch).float()
        probs = (raw if logits else torch.sigmoid(raw)).cpu().numpy()
        for e, p in zip(exs, probs):
            out[e.doc, cols[chunk]] = p
    model.train(was_training)
    return out


def score_codes(model: nn.Module, tokenizer, note_text: str | Sequence[str], codes: Sequence[str],
                descriptions: dict[str, str], config: CoderConfig, device: torch.device | None = None,
                progress: bool = False, logits: bool = False) -> np.ndarray:
    """P(code | note) for an arbitrary list of codes, in prompts of `config.prompt_codes` codes.

    `model` is a scorer module (`Coder.model`: PromptCoder or LabelAttentionCoder). One note (str)
    gives shape (len(codes),); a list of notes gives (notes, len(codes)). Column j is codes[j].
    `logits=True` returns the raw scores (sigmoid of them = the probabilities).
    """
    single = isinstance(note_text, str)
    texts = [note_text] if single else list(note_text)
    if not isinstance(model, nn.Module):  # the TF-IDF baseline reads text, not token ids
        scores = model.logits(texts, codes) if logits else model.scores(texts, codes)
        return scores[0] if single else scores
    device = device or next(model.parameters()).device
    prompts = build_prompts(tokenizer, codes, descriptions, config.prompt_codes, config.template,
                            with_masks=config.head == "prompt", desc_words=config.desc_words)
    examples = build_examples(tokenizer, texts, None, prompts, effective_max_length(model, config))
    scores = predict_examples(model, tokenizer, examples, prompts, len(texts), codes, config, device, progress,
                              logits=logits)
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
    logits = score_codes(coder.model, coder.tokenizer, [d.text for d in docs], codes, descriptions,
                         coder.config, coder.device, progress=True, logits=True)
    scores = torch.sigmoid(torch.from_numpy(logits)).numpy()  # what the threshold applies to
    y = label_matrix(docs, codes)
    # Ranking metrics on the logits: float32 sigmoids tie at 1.0 and make P@k depend on code order.
    metrics = all_metrics(y, scores, coder.threshold, ks=tuple(ks), rank_score=logits)
    return write_eval(out_dir, system or SYSTEM_NAMES[coder.config.head], set_dir, split, coder.config.seed,
                      coder.threshold, str(checkpoint), docs, codes, y, scores, metrics, coder.config.graph, logits)


def write_eval(out_dir: str | Path, system: str, set_dir: Path, split: str, seed: int, threshold: float,
               checkpoint: str, docs, codes: Sequence[str], y: np.ndarray, scores: np.ndarray, metrics: dict,
               graph: str | None = None, logits: np.ndarray | None = None) -> dict:
    """The run layout every scorer writes (metrics.json + <split>_scores.npz), so `kept report`
    compares any two systems the same way; the hierarchical figures over `graph` are added."""
    from coder.hierarchy_metrics import hierarchical_block

    hierarchical = hierarchical_block(y, scores >= threshold, list(codes), graph)
    meta_file = Path(set_dir).parent / "dataset.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    result = {"system": system, "dataset": Path(set_dir).name, "split": split, "seed": seed, "threshold": threshold,
              "data_source": meta.get("source", "unknown"), "checkpoint": checkpoint, "metrics": metrics,
              "hierarchical": hierarchical}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{split}_scores.npz") as tmp:
        with open(tmp, "wb") as fh:
            extra = {} if logits is None else {"logits": logits.astype(np.float32)}
            np.savez_compressed(fh, y_true=y, y_score=scores.astype(np.float32), **extra,
                                hadm_ids=np.array([d.hadm_id for d in docs], dtype=str),
                                codes=np.array(codes, dtype=str))
    with atomic_write(out / "metrics.json") as fh:
        dump_json(result, fh, indent=1)
    return result

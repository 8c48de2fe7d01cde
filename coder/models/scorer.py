"""A coder as a scorer: the module for a head (prompted coder, label attention, TF-IDF), a checkpoint
folder loaded whole, and P(code | note) for any list of codes in prompts of N. Training, `eval`,
`predict` and `rerank` all score through here, so a note is scored one way everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from coder.config import CoderConfig
from coder.models.checkpoint import RECORD_KEY, read_coder_file
from coder.models.prompt_coder import PromptCoder
from coder.models.prompts import EncodedPrompt, Example, build_examples, build_prompts, collate, make_batches
from coder.models.verbalizer import build_verbalizer
from kept.device import amp_dtype, autocast, resolve_device
from kept.hf import load_mlm, load_tokenizer, model_max_length

__all__ = ["Coder", "effective_max_length", "build_scorer", "load_coder", "note_views", "predict_examples",
           "score_codes"]


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
    # A reranker trained on candidates: the first stage's weight in its fused score (coder.retrieval.fusion),
    # tuned on dev with `threshold`; 0 for any other coder (its own probability is the score).
    stage1_weight: float = 0.0


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
    from coder.models.label_attention import LabelAttentionCoder

    return LabelAttentionCoder.load(model_path)


def load_coder(path: str | Path, device: str = "auto") -> Coder:
    """Load a checkpoint written by `kept coder train` (OUT/best): weights, tokenizer, kept_coder.json."""
    info = read_coder_file(path)
    config: CoderConfig = info["config"]
    if info["head"] == "tfidf-lr":
        from coder.models.tfidf import TfidfLR

        return Coder(TfidfLR.load(path), None, config, info["codes"], info["descriptions"], info["threshold"],
                     torch.device("cpu"), 0)
    tokenizer = load_tokenizer(path)
    model = build_scorer(info["head"], path, tokenizer, info["verbalizer"], config.verbalizer_form)
    dev = resolve_device(device if device != "auto" else config.device)
    model.to(dev).eval()
    stage1_weight = float(info.get(RECORD_KEY, {}).get("stage1_weight", 0.0))
    return Coder(model, tokenizer, config, info["codes"], info["descriptions"], info["threshold"], dev,
                 effective_max_length(model, config), stage1_weight)


def note_views(config: CoderConfig, texts: Sequence[str], prompts: list[EncodedPrompt]) -> list[list[str]] | None:
    """What each prompt reads of each note: None (the note itself) or its codes' evidence sentences."""
    if config.note_view != "evidence":
        return None
    from coder.models.evidence import load_finder, prompt_views

    return prompt_views(load_finder(config.evidence_index), texts, prompts)


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
    examples = build_examples(tokenizer, texts, None, prompts, effective_max_length(model, config),
                              note_views(config, texts, prompts))
    scores = predict_examples(model, tokenizer, examples, prompts, len(texts), codes, config, device, progress,
                              logits=logits)
    return scores[0] if single else scores

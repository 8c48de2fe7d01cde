"""Prompt building for the KEPT coder: `c1: [MASK] , c2: [MASK] , ... , cN: [MASK] . note`.

The prompt of a label set is tokenised once and each note once; an input is their concatenation.
Prompt order and label order come from one list of codes, so mask i always carries code i's label.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from kept.errors import KeptError

log = logging.getLogger(__name__)

TEMPLATES = ("paper", "kept")
DESC_MAX_TOKENS = 32  # label-attention queries: a code title rarely needs more
MIN_NOTE_TOKENS = 16


def short_description(title: str) -> str:
    """KEPT-code's form: the lower-cased long title up to its first comma."""
    return title.split(",")[0].strip().lower()


def code_descriptions(codes: Sequence[str], graph_dir: str | Path | None = None) -> dict[str, str]:
    """Description per code: the graph's node description when a graph is given, else the bundled
    ICD-9 long titles; a code with neither is described by itself (logged)."""
    from kgraph.icd9 import bundled_descriptions

    found: dict[str, str] = {}
    if graph_dir is not None:
        import kgraph

        graph = kgraph.load_graph(graph_dir)
        for c in codes:
            if c in graph and graph.nodes[c].get("description"):
                found[c] = graph.nodes[c]["description"]
    bundled = bundled_descriptions()
    missing = [c for c in codes if c not in found and not bundled.get(c)]
    if missing:
        log.warning("%d codes have no description; using the code itself (e.g. %s)", len(missing), missing[:3])
    return {c: found.get(c) or bundled.get(c) or c for c in codes}


def chunk_codes(codes: Sequence[str], n: int) -> list[list[str]]:
    """Split a label list into prompts of at most `n` codes, keeping order."""
    if n < 1:
        raise KeptError(f"prompt size must be >= 1, got {n}")
    return [list(codes[i:i + n]) for i in range(0, len(codes), n)]


@dataclass
class EncodedPrompt:
    """One label set's prompt, tokenised once: ids start with the tokenizer's CLS/BOS token."""

    codes: list[str]
    input_ids: list[int]
    mask_positions: list[int]  # index i = position of code i's mask
    desc_ids: list[list[int]] = field(default_factory=list)  # per code, for label-attention queries


def _piece(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def _start_ids(tokenizer) -> list[int]:
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    return [start] if start is not None else []


def _end_id(tokenizer) -> int | None:
    return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id


def encode_prompt(tokenizer, codes: Sequence[str], descriptions: dict[str, str],
                  template: str = "paper", with_masks: bool = True, desc_words: int | None = None) -> EncodedPrompt:
    """Tokenise the prompt piece by piece so each mask's position is known, not searched for.

    `paper`: `desc1 : [MASK] , desc2 : [MASK] , ... descN : [MASK] .`;
    `kept`: `desc1 [MASK], desc2 [MASK], ... descN [MASK].` with lower-cased short descriptions.
    `with_masks=False` gives only the start token (label attention reads the note alone).
    `desc_words`: each prompt description cut to its first N words (KEPT's full-set code: 15).
    """
    if template not in TEMPLATES:
        raise KeptError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if tokenizer.mask_token_id is None:
        raise KeptError("tokenizer has no mask token: the prompted coder needs a masked LM tokenizer")
    end = _end_id(tokenizer)
    desc_ids = []
    for c in codes:
        d = _piece(tokenizer, descriptions[c])[:DESC_MAX_TOKENS - 2]
        desc_ids.append(_start_ids(tokenizer) + d + ([end] if end is not None else []))
    ids = _start_ids(tokenizer)
    masks: list[int] = []
    if with_masks:
        for i, c in enumerate(codes):
            text = descriptions[c] if template == "paper" else short_description(descriptions[c])
            text = " ".join(text.split()[:desc_words]) if desc_words else text
            lead = "" if i == 0 else " "
            ids += _piece(tokenizer, lead + text + (" :" if template == "paper" else ""))
            masks.append(len(ids))
            ids.append(tokenizer.mask_token_id)
            last = i == len(codes) - 1
            ids += _piece(tokenizer, (" ." if template == "paper" else ".") if last
                          else (" ," if template == "paper" else ","))
    return EncodedPrompt(list(codes), ids, masks, desc_ids)


def encode_note(tokenizer, text: str) -> list[int]:
    """The note's token ids (no special tokens); called once per note."""
    return _piece(tokenizer, " " + text)


def fit_note(tokenizer, text: str, note_ids: list[int], budget: int) -> list[int]:
    """Fit a note into `budget` tokens: when too long, keep the paper's sections first, then cut."""
    if len(note_ids) <= budget:
        return note_ids
    from coder.data.notes import truncate_sections

    kept = truncate_sections(text, limit=budget, length=lambda t: len(encode_note(tokenizer, t)),
                             hard_cut=False)
    if kept != text:
        note_ids = encode_note(tokenizer, kept)
    return note_ids[:budget]


def global_positions(prompt: EncodedPrompt, stride: int) -> list[int]:
    """Every `stride`-th prompt token (the paper's Table A.5) plus every mask, globally attended."""
    if stride < 1:
        raise KeptError(f"global stride must be >= 1, got {stride}")
    return sorted(set(range(0, len(prompt.input_ids), stride)) | set(prompt.mask_positions))


@dataclass
class Example:
    doc: int  # index into the documents
    chunk: int  # index into the prompts (label chunks)
    input_ids: list[int]
    labels: list[float]  # aligned with prompts[chunk].codes


def build_input(tokenizer, prompt: EncodedPrompt, text: str, note_ids: list[int], max_length: int) -> list[int]:
    """prompt ids + note ids (fitted) + end token."""
    end = _end_id(tokenizer)
    budget = max_length - len(prompt.input_ids) - (end is not None)
    if budget < MIN_NOTE_TOKENS:
        raise KeptError(
            f"the prompt of {len(prompt.codes)} codes takes {len(prompt.input_ids)} of {max_length} tokens, "
            "leaving no room for the note: use fewer codes per prompt (--prompt-codes) or a longer model")
    return prompt.input_ids + fit_note(tokenizer, text, note_ids, budget) + ([end] if end is not None else [])


def build_prompts(tokenizer, codes: Sequence[str], descriptions: dict[str, str], n_prompt: int,
                  template: str = "paper", with_masks: bool = True, desc_words: int | None = None
                  ) -> list[EncodedPrompt]:
    return [encode_prompt(tokenizer, chunk, descriptions, template, with_masks, desc_words)
            for chunk in chunk_codes(codes, n_prompt)]


def build_examples(tokenizer, texts: Sequence[str], labels: Sequence[Sequence[str]] | None,
                   prompts: list[EncodedPrompt], max_length: int,
                   views: Sequence[Sequence[str]] | None = None) -> list[Example]:
    """One example per (note, prompt chunk); each note tokenised once for all chunks. `views[d][k]`,
    when given, is the text prompt k reads instead of note d (coder.models.evidence)."""
    out = []
    for d, text in enumerate(texts):
        note_ids = encode_note(tokenizer, text) if views is None else None
        gold = set(labels[d]) if labels is not None else set()
        for k, prompt in enumerate(prompts):
            if views is None:
                ids = build_input(tokenizer, prompt, text, note_ids, max_length)
            else:
                view = views[d][k]
                ids = build_input(tokenizer, prompt, view, encode_note(tokenizer, view), max_length)
            out.append(Example(d, k, ids, [1.0 if c in gold else 0.0 for c in prompt.codes]))
    return out


def make_batches(examples: Sequence, batch_size: int, shuffle: bool, seed: int = 0,
                 group: Callable = lambda e: e.chunk, length: Callable = lambda e: len(e.input_ids)
                 ) -> list[list[int]]:
    """Length-bucketed batches of example indices, one `group` per batch (a prompt chunk; candidate
    training groups by prompt size).

    Shuffled training draws pools of 50 batches, sorts each pool by length and cuts it, so batches
    hold similar lengths (little padding) yet vary from epoch to epoch.
    """
    rng = random.Random(seed)
    groups: dict = {}
    for i, ex in enumerate(examples):
        groups.setdefault(group(ex), []).append(i)
    batches = []
    for key in sorted(groups):
        idx = groups[key]
        if shuffle:
            rng.shuffle(idx)
        pool = batch_size * 50
        for s in range(0, len(idx), pool):
            part = sorted(idx[s:s + pool], key=lambda i: length(examples[i]))
            batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def collate(examples: list[Example], prompt: EncodedPrompt, pad_id: int, stride: int,
            with_masks: bool = True) -> dict[str, torch.Tensor]:
    """Pad to the longest input of the batch (dynamic padding) and build the attention masks."""
    n = len(examples)
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        attention[i, :len(e.input_ids)] = 1
    glob = torch.zeros_like(attention)
    glob[:, global_positions(prompt, stride) if with_masks else [0]] = 1
    desc_len = max(len(d) for d in prompt.desc_ids)
    desc = torch.full((len(prompt.desc_ids), desc_len), pad_id, dtype=torch.long)
    for i, d in enumerate(prompt.desc_ids):
        desc[i, :len(d)] = torch.tensor(d)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "global_attention_mask": glob,
        "mask_positions": torch.tensor([prompt.mask_positions] * n, dtype=torch.long),
        "labels": torch.tensor([e.labels for e in examples], dtype=torch.float),
        "desc_input_ids": desc,
        "desc_attention_mask": (desc != pad_id).long(),
    }

"""Training the prompted coder as a reranker on first-stage candidates (KEPT's full-set recipe).

KEPT codes MIMIC-III-full by rescoring another system's top-300 candidates of each note, and it
trains its reranker on that very input: each training note's candidates, shuffled, cut into prompts
of 50, a yes/no label per candidate. `kept coder train --candidates DIR` does the same:

- train: each note's top-k candidates inside the label space, plus the gold codes the first stage
  missed (training only: every positive is seen), shuffled anew each epoch by a generator seeded
  with (seed, epoch), so a resumed run draws the orders of an unbroken one;
- dev: each note's top-k candidates in rank order, no gold added, scored, fused with the first
  stage's scores and merged into the (notes x label space) matrix as `kept coder rerank` does it
  (non-candidates score 0); the best epoch, the fusion weight and the threshold are chosen there, so
  the stored weight and threshold are the ones rerank would tune.

Prompts differ per note, so inputs are built batch by batch (each description's token pieces cached)
rather than all up front: MIMIC-full's 47k notes x 6 prompts of 8,192 tokens do not fit in memory
as token lists. A batch holds prompts of one size; each input is collated alone, then padded together.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from coder.config import CoderConfig
from coder.models.checkpoint import CODER_FILE, RECORD_KEY, read_coder_file
from coder.models.prompts import (MIN_NOTE_TOKENS, EncodedPrompt, Example, _end_id, build_input, chunk_codes, collate,
                           encode_note, encode_prompt, make_batches)
from kept.device import amp_dtype, autocast
from kept.errors import InputFileError, KeptError

__all__ = ["CandidateSpec", "spec_from_args", "CandidateExample", "SplitCandidates", "CandidateTask",
           "split_candidates", "training_code_lists", "candidate_batches", "stack_batches", "warn_if_rerank_differs",
           "RECORD_KEY"]

log = logging.getLogger(__name__)


@dataclass
class CandidateSpec:
    """Where the candidates are (`candidates_{train,dev}.parquet`: hadm_id, code, score, rank, the layout
    `kept coder retrieve` writes) and how many of each note's (inside the label space) are used."""

    dir: str | Path
    k: int = 300


def spec_from_args(candidates: str | Path | None, k: int | None) -> CandidateSpec | None:
    """`--candidates DIR [--candidates-k K]` -> a spec, or None (KeptError for a lone --candidates-k)."""
    if candidates is None:
        if k is not None:
            raise KeptError("--candidates-k needs --candidates CANDS_DIR")
        return None
    return CandidateSpec(candidates, 300 if k is None else k)


@dataclass
class CandidateExample:
    """One prompt of one note: its codes in prompt order, their labels, an upper bound of its length
    in tokens (for length bucketing) and, for dev, the offset of its first code in the note's list."""

    doc: int
    codes: list[str]
    labels: list[float]
    length: int
    start: int = 0
    text: str = field(default="", repr=False)
    note_ids: np.ndarray = field(default=None, repr=False)


@dataclass
class SplitCandidates:
    """Each note's top-k candidates inside the label space (rank order), and what was left out."""

    path: Path
    codes: list[list[str]]
    no_candidates: int  # notes of the split absent from the file
    outside: int  # candidate rows of the split's notes whose code is outside the label space (ignored)
    scores: list[np.ndarray] = field(default_factory=list)  # the first stage's score of each kept code


def split_candidates(cands_dir: str | Path, split: str, docs, label_space: Sequence[str], k: int) -> SplitCandidates:
    """Read `cands_dir/candidates_{split}.parquet` for `docs`; KeptError naming the file when it is
    missing or when nothing in it can be used (no note of the split, no code of the label space)."""
    from coder.retrieval.candidates import read_candidates

    path = Path(cands_dir) / f"candidates_{split}.parquet"
    if not path.is_file():
        raise InputFileError(path, f"file not found (expected the {split} notes' candidates: `kept coder retrieve "
                                   f"--splits train dev ...`, or a parquet of hadm_id, code, score, rank)")
    cands = read_candidates(path)
    space = set(label_space)
    out, scores, missing, outside, total = [], [], 0, 0, 0
    for d in docs:
        got = cands.get(d.hadm_id)
        if got is None:
            missing += 1
            out.append([])
            scores.append(np.zeros(0, dtype=np.float32))
            continue
        first = {}
        for c, sc in zip(*got):  # a code listed twice counts once, at its best rank
            first.setdefault(c, sc)
        inside = [c for c in first if c in space][:k]
        total += len(first)
        outside += sum(c not in space for c in first)
        out.append(inside)
        scores.append(np.asarray([first[c] for c in inside], dtype=np.float32))
    if docs and missing == len(docs):
        raise InputFileError(path, f"none of the {len(docs)} {split} notes has candidates here (hadm_id values "
                                   f"do not match {split}.csv)")
    if total and outside == total:
        raise InputFileError(path, f"none of the {total} candidate codes of the {split} notes is in the set's "
                                   "label space (codes.txt; dotted ICD-9-CM codes, e.g. 401.9)")
    if missing:
        log.warning("%s: %d of %d %s notes have no candidates (%s)", path, missing, len(docs), split,
                    "trained on their gold codes only" if split == "train" else "they score 0 for every code")
    if outside:
        log.warning("%s: %d candidate codes outside the label space (codes.txt) ignored", path, outside)
    return SplitCandidates(path, out, missing, outside, scores)


def training_code_lists(cand_codes: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                        label_space: Sequence[str], seed: int, epoch: int) -> list[list[str]]:
    """Each training note's codes for one epoch: its candidates plus the gold codes (of the label
    space) the first stage missed, shuffled by a generator seeded with (seed, epoch)."""
    space = set(label_space)
    rng = random.Random(f"kept-candidates:{seed}:{epoch}")
    out = []
    for codes, labels in zip(cand_codes, gold):
        have = set(codes)
        codes = list(codes) + [c for c in dict.fromkeys(labels) if c in space and c not in have]
        rng.shuffle(codes)
        out.append(codes)
    return out


def stack_batches(parts: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Single-input batches from `coder.models.prompts.collate` (different prompts, one prompt size) padded to
    one length and stacked. The description tensors of label attention are per prompt, so not kept."""
    if len(parts) == 1:
        return parts[0]
    sizes = {p["mask_positions"].shape[1] for p in parts}
    if len(sizes) != 1:
        raise KeptError(f"a batch mixes prompts of {sorted(sizes)} codes")  # candidate_batches never does
    length = max(p["input_ids"].shape[1] for p in parts)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(p[key], (0, length - p[key].shape[1]), value=value)
                          for p in parts])

    return {"input_ids": padded("input_ids", pad_id), "attention_mask": padded("attention_mask", 0),
            "global_attention_mask": padded("global_attention_mask", 0),
            "mask_positions": torch.cat([p["mask_positions"] for p in parts]),
            "labels": torch.cat([p["labels"] for p in parts])}


def candidate_batches(examples: Sequence[CandidateExample], batch_size: int, shuffle: bool,
                      seed: int = 0) -> list[list[int]]:
    """`make_batches` for per-note prompts: one prompt size per batch (a note's last prompt is shorter)."""
    return make_batches(examples, batch_size, shuffle, seed, group=lambda e: len(e.codes), length=lambda e: e.length)


class _PieceCache:
    """The tokenizer with its calls memoised: a description's pieces are tokenised once, not once per
    prompt it lands in (the prompts of each epoch are new). Only prompt pieces go through it."""

    def __init__(self, tokenizer):
        self._tokenizer, self._memo = tokenizer, {}

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text: str, **kwargs):
        key = (text, tuple(sorted(kwargs.items())))
        if key not in self._memo:
            self._memo[key] = self._tokenizer(text, **kwargs)
        return self._memo[key]


class CandidateTask:
    """What `coder.training.train_coder` asks of its data when training on candidates: each epoch's
    examples, batches, collated inputs, and the dev evaluation `kept coder rerank` would make."""

    def __init__(self, spec: CandidateSpec, label_space: Sequence[str], train_docs, dev_docs, tokenizer,
                 descriptions: dict[str, str], config: CoderConfig, max_length: int):
        cdir = Path(spec.dir)
        if not cdir.is_dir():
            raise KeptError(f"{cdir}: no such folder (expected candidates_train.parquet and candidates_dev.parquet "
                            "from `kept coder retrieve --splits train dev`)")
        if spec.k < 1:
            raise KeptError(f"--candidates-k must be >= 1, got {spec.k}")
        self.spec, self.config, self.max_length = spec, config, max_length
        self.label_space, self.descriptions = list(label_space), descriptions
        self.tokenizer, self._pieces = tokenizer, _PieceCache(tokenizer)
        # --epochs 0 (the untrained model scored on dev candidates) reads no training candidates
        self.train_docs, self.dev_docs = list(train_docs) if config.epochs else [], list(dev_docs)
        self.train = split_candidates(cdir, "train", self.train_docs, label_space, spec.k) if config.epochs \
            else SplitCandidates(cdir / "candidates_train.parquet", [], 0, 0)
        self.dev = split_candidates(cdir, "dev", self.dev_docs, label_space, spec.k)
        self._train_ids = [np.asarray(encode_note(tokenizer, d.text), dtype=np.int32) for d in self.train_docs]
        self._dev_ids = [np.asarray(encode_note(tokenizer, d.text), dtype=np.int32) for d in self.dev_docs]
        self._check_room()
        self._evidence = self._find_evidence()
        self._epoch_examples: tuple[int, list[CandidateExample]] = (-1, [])
        self.dev_examples = [self._example(i, d.text, ids, chunk, set(), start, "dev")
                             for i, (d, ids, codes) in enumerate(zip(self.dev_docs, self._dev_ids, self.dev.codes))
                             for start, chunk in self._chunks(codes)]
        space = set(label_space)
        gold = sum(len(set(d.labels) & space) for d in self.train_docs)
        self.missed = sum(len(set(d.labels) & space - set(c)) for d, c in zip(self.train_docs, self.train.codes))
        self.record = {RECORD_KEY: {
            "candidates": str(cdir), "k": spec.k, "prompt_codes": config.prompt_codes, "template": config.template,
            "desc_words": config.desc_words, "note_view": config.note_view, "gold_added_in_training": self.missed, "train_gold": gold,
            "train_notes_without_candidates": self.train.no_candidates,
            "dev_notes_without_candidates": self.dev.no_candidates,
            "outside_label_space_ignored": {"train": self.train.outside, "dev": self.dev.outside}}}
        if config.epochs and not self.train_examples(0):
            raise InputFileError(self.train.path, "no training prompt: the train notes have neither candidates "
                                                  "nor gold codes in the label space")
        log.info("candidates from %s: top %d per note; train %d notes (%d of %d gold codes missed by the first "
                 "stage, added), dev %d notes in %d prompts of <= %d codes (rank order, no gold added)",
                 cdir, spec.k, len(self.train_docs), self.missed, gold, len(self.dev_docs), len(self.dev_examples),
                 config.prompt_codes)

    def _chunks(self, codes: Sequence[str]) -> list[tuple[int, list[str]]]:
        return [(i * self.config.prompt_codes, chunk)
                for i, chunk in enumerate(chunk_codes(list(codes), self.config.prompt_codes))]

    def _prompt(self, codes: Sequence[str]) -> EncodedPrompt:
        return encode_prompt(self._pieces, codes, self.descriptions, self.config.template, True,
                             self.config.desc_words)

    def _train_pools(self) -> list[list[str]]:
        """Every code a training note can be prompted with: its candidates, then its gold codes of the
        label space that stage 1 missed."""
        space = set(self.label_space)
        return [list(dict.fromkeys([*c, *(g for g in d.labels if g in space)]))
                for c, d in zip(self.train.codes, self.train_docs)]

    def _find_evidence(self) -> dict[str, list] | None:
        """`note_view = "evidence"`: each note's best sentence per code it can be prompted with (train:
        candidates and gold codes; dev: candidates), found once for every epoch."""
        if self.config.note_view != "evidence":
            return None
        from coder.models.evidence import load_finder

        finder = load_finder(self.config.evidence_index)
        return {"train": finder.find([d.text for d in self.train_docs], self._train_pools()),
                "dev": finder.find([d.text for d in self.dev_docs], self.dev.codes)}

    def _example(self, doc: int, text: str, note_ids: np.ndarray, codes: list[str], gold: set[str],
                 start: int = 0, split: str = "train") -> CandidateExample:
        if self._evidence is not None:  # the prompt reads its codes' evidence sentences, not the note
            from coder.models.evidence import join_evidence

            text = join_evidence(text, self._evidence[split][doc], codes)
            note_ids = np.asarray(encode_note(self.tokenizer, text), dtype=np.int32)
        n_prompt = len(self._prompt(codes).input_ids)
        end = _end_id(self.tokenizer) is not None
        budget = self.max_length - n_prompt - end
        if budget < MIN_NOTE_TOKENS:
            raise KeptError(self._no_room(len(codes), n_prompt))
        return CandidateExample(doc, list(codes), [1.0 if c in gold else 0.0 for c in codes],
                                n_prompt + min(len(note_ids), budget) + end, start, text, note_ids)

    def _no_room(self, n_codes: int, n_tokens: int, bound: str = "") -> str:
        return (f"a prompt of {n_codes} candidate codes takes {bound}{n_tokens} of {self.max_length} tokens, leaving "
                f"no room for the note: lower --prompt-codes (now {self.config.prompt_codes}), cut descriptions "
                "(--desc-words 15, --template kept) or use a longer model")

    def _check_room(self) -> None:
        """Before any training: the longest prompt a shuffle can make (a training note's `prompt_codes`
        longest descriptions together) must leave room for the note. Dev prompts are fixed and each is
        checked when it is built."""
        cost: dict[str, int] = {}
        base = len(self._prompt([]).input_ids)
        for pool in map(set, self._train_pools()):
            for c in pool - cost.keys():
                cost[c] = len(self._prompt([c]).input_ids) - base
            worst = base + sum(sorted((cost[c] for c in pool), reverse=True)[:self.config.prompt_codes])
            if worst > self.max_length - MIN_NOTE_TOKENS - (_end_id(self.tokenizer) is not None):
                raise KeptError(self._no_room(min(len(pool), self.config.prompt_codes), worst, "up to "))

    def train_examples(self, epoch: int) -> list[CandidateExample]:
        """This epoch's prompts: every training note's candidates + missed gold, shuffled, cut."""
        if self._epoch_examples[0] == epoch:
            return self._epoch_examples[1]
        lists = training_code_lists(self.train.codes, [d.labels for d in self.train_docs], self.label_space,
                                    self.config.seed, epoch)
        examples = [self._example(i, d.text, ids, chunk, set(d.labels), 0, "train")
                    for i, (d, ids, codes) in enumerate(zip(self.train_docs, self._train_ids, lists))
                    for _, chunk in self._chunks(codes)]
        self._epoch_examples = (epoch, examples)
        return examples

    def batches(self, examples: Sequence[CandidateExample], batch_size: int, shuffle: bool,
                seed: int = 0) -> list[list[int]]:
        return candidate_batches(examples, batch_size, shuffle, seed)

    def collate(self, examples: Sequence[CandidateExample]) -> dict[str, torch.Tensor]:
        """Each input built as `kept coder rerank` builds it (`build_input` + `collate`), then stacked."""
        pad = self.tokenizer.pad_token_id
        parts = []
        for e in examples:
            prompt = self._prompt(e.codes)
            ids = build_input(self.tokenizer, prompt, e.text, e.note_ids.tolist(), self.max_length)
            parts.append(collate([Example(e.doc, 0, ids, e.labels)], prompt, pad, self.config.global_stride))
        return stack_batches(parts, pad)

    @torch.no_grad()
    def dev_scores(self, model: torch.nn.Module, device: torch.device) -> list[np.ndarray]:
        """P(code | note) of each dev note's candidates, in rank order (the rerank's `rerank_scores`)."""
        scores = [np.zeros(len(c), dtype=np.float32) for c in self.dev.codes]
        was_training = model.training
        model.eval()
        dtype = amp_dtype(device, self.config.precision)
        for idx in candidate_batches(self.dev_examples, self.config.eval_batch_size, shuffle=False):
            exs = [self.dev_examples[i] for i in idx]
            batch = {k: v.to(device) for k, v in self.collate(exs).items()}
            with autocast(device, dtype):
                probs = torch.sigmoid(model(batch).float()).cpu().numpy()
            for e, p in zip(exs, probs):
                scores[e.doc][e.start:e.start + len(e.codes)] = p
        model.train(was_training)
        return scores

    def dev_eval(self, model: torch.nn.Module, device: torch.device) -> tuple[float, dict]:
        """Threshold and dev metrics of the fused score, the first stage's weight tuned with the threshold,
        exactly as `kept coder rerank` computes them on these candidates; the weight goes into `record`."""
        from coder.data.datasets import label_matrix
        from coder.retrieval.fusion import tune_fusion
        from coder.retrieval.rerank import stage1_probability

        y = label_matrix(self.dev_docs, self.label_space)
        stage1 = [stage1_probability(s) for s in self.dev.scores]
        weight, threshold, metrics = tune_fusion(y, self.dev.codes, stage1, self.dev_scores(model, device),
                                                 self.label_space)
        self.record[RECORD_KEY]["stage1_weight"] = weight
        return threshold, {**metrics, "stage1_weight": weight}


def warn_if_rerank_differs(checkpoint: str | Path, config: CoderConfig, k: int) -> dict | None:
    """`kept coder rerank`: say so when a reranker trained on candidates is used with another prompt
    size, description format or candidate count than it was trained with; returns what it was."""
    info = read_coder_file(checkpoint).get(RECORD_KEY)
    if not info:
        return None
    now = {"prompt_codes": config.prompt_codes, "template": config.template, "desc_words": config.desc_words}
    changed = [f"{key} {info[key]} -> {value}" for key, value in now.items() if info.get(key) != value]
    if changed:
        log.warning("%s was trained on candidates with other prompts than this rerank uses (%s; see %s)",
                    checkpoint, ", ".join(changed), Path(checkpoint) / CODER_FILE)
    if info.get("k") != k:
        log.info("%s was trained on the top %s candidates per note; reranking the top %d", checkpoint, info.get("k"), k)
    return info


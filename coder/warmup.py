"""Prompt warm-up on graph terms: short pseudo-notes made of the knowledge graph's terms, in the
set layout, so the prompted coder first learns to answer "is this code mentioned?" where the
answer is easy to see, then trains on real notes.

Why: a frozen MiniLM-based long model carries no linear trace, at a code's mask, of whether its
description appears in a 600-token note (probe macro-AUC 0.57), but it does in a 60-token text
(0.75): the mention is one token among a thousand for the mask's attention. Training from the
long notes alone stays at chance for hundreds of steps (docs/coder.md has the curves); a short
curriculum gives the gradient something to start from. The terms are the graph's (ICD titles,
UMLS synonyms, LRABR abbreviations), so this is knowledge injection in KEPT's sense, through the
same prompt and verbalizer. Not in the paper: an extension, off unless asked for.

Each pseudo-note names 1-4 of the set's codes (its labels) and 1-3 billable codes outside the set
(distractors, siblings of a label when the graph has one), one term each, as plain sentences.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import networkx as nx

from coder.datasets import SPLITS, Document, write_dataset
from kept.errors import KeptError
from kgraph.query import siblings, terms_of

__all__ = ["warmup_documents", "write_warmup_set"]


def _term(G: nx.DiGraph, code: str, rng: random.Random) -> str | None:
    terms = terms_of(G, code)
    return rng.choice(terms).text.lower() if terms else None


def warmup_documents(G: nx.DiGraph, codes: Sequence[str], n: int, seed: int = 0) -> list[Document]:
    """`n` pseudo-notes over `codes`; labels are the set's codes each note names."""
    rng = random.Random(seed)
    label_set = set(codes)
    usable = [c for c in codes if c in G and terms_of(G, c)]
    if not usable:
        raise KeptError("no code of the set has a term in the graph: nothing to warm up on")
    outside = sorted(c for c, d in G.nodes(data=True)
                     if d.get("type") == "code" and d.get("leaf") and c not in label_set)
    docs = []
    for i in range(n):
        labels = rng.sample(usable, min(len(usable), rng.randint(1, 4)))
        distractors = []
        for c in labels[:rng.randint(0, 2)]:  # near misses: a sibling outside the label set
            near = [s for s in siblings(G, c) if s not in label_set]
            if near:
                distractors.append(rng.choice(near))
        if outside:
            distractors += rng.sample(outside, max(1, rng.randint(1, 3) - len(distractors)))
        mentions = [(c, _term(G, c, rng)) for c in labels + distractors]
        rng.shuffle(mentions)
        text = " ".join(f"{t}." for _, t in mentions if t)
        docs.append(Document(str(80000 + i), str(180000 + i), text, sorted(labels)))
    return docs


def write_warmup_set(G: nx.DiGraph, codes: Sequence[str], out_dir: str | Path, n_train: int = 400,
                     n_dev: int = 40, seed: int = 0, force: bool = False) -> Path:
    """OUT/warmup/{train,dev,test}.csv + codes.txt: a set `kept coder train` reads like any other
    (test = dev: a warm-up is never evaluated on its own)."""
    train = warmup_documents(G, codes, n_train, seed)
    dev = warmup_documents(G, codes, n_dev, seed + 1)
    splits = {"train": train, "dev": dev, "test": dev}
    assert set(splits) == set(SPLITS)
    write_dataset(out_dir, {"warmup": (list(codes), splits)},
                  {"source": "graph terms (prompt warm-up)", "seed": seed}, force=force)
    return Path(out_dir) / "warmup"

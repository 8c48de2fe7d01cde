"""Hierarchical neighbour sampling (KEPT §3.3.2): level-wise mini-batches of `n = i*j*k` terms.

For one hierarchy level at a time the sampler draws `i` anchor codes, `j-1` of each anchor's parent
and siblings, and `k` terms per code. Batches cycle through the levels (dx then proc; category,
subcategory (4th char), subclassification (5th char)). Batch `b` of stream `s` is a pure function of
(seed, s, b): reproducible, resumable from a step number, and one stream per GPU rank.

Also here: the seeded held-out split by 3-digit category that training must never see.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx

from kept.errors import KeptError
from kgraph.graph import HAS_TERM, IS_A, TERM_KINDS

log = logging.getLogger(__name__)

LEVEL_NAMES = {2: "category", 3: "subcategory", 4: "subclassification"}
DEFAULT_LEVELS = (("dx", 2), ("dx", 3), ("dx", 4), ("proc", 2), ("proc", 3), ("proc", 4))


def level_name(kind: str, depth: int) -> str:
    return f"{kind}/{LEVEL_NAMES.get(depth, f'depth{depth}')}"


@dataclass(frozen=True)
class SamplerConfig:
    """i anchors x j codes per anchor group x k terms per code. No i, j, k in the paper: these fit
    the bundled graph, where a billable code has 2 terms (long and short title)."""

    i: int = 8
    j: int = 4
    k: int = 2
    seed: int = 0
    levels: tuple[tuple[str, int], ...] = DEFAULT_LEVELS
    term_kinds: tuple[str, ...] = TERM_KINDS

    def __post_init__(self) -> None:
        if self.i < 1 or self.j < 1 or self.k < 2:
            raise KeptError(f"need i >= 1, j >= 1, k >= 2 (a positive needs 2 terms); got i={self.i} "
                            f"j={self.j} k={self.k}")

    @property
    def n(self) -> int:
        return self.i * self.j * self.k


@dataclass
class TermBatch:
    """One mini-batch: `n` term slots, each with its code, text and role in its anchor group."""

    index: int
    level: str
    depth: int
    codes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)   # anchor | parent | sibling | filler
    groups: list[int] = field(default_factory=list)  # anchor group 0..i-1
    repeated: list[bool] = field(default_factory=list)  # a repeat of the code's term (< k terms)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class HeldOut:
    """Codes (and their terms) kept away from training: whole 3-digit categories and their subtree."""

    categories: frozenset[str]
    codes: frozenset[str]
    term_norms: frozenset[str]
    fraction: float
    seed: int


def heldout_split(G: nx.DiGraph, fraction: float = 0.1, seed: int = 0) -> HeldOut:
    """Hold out `fraction` of the categories (depth 2) of each kind, seeded, with every descendant.

    Splitting by category (not by code) keeps a held-out code's siblings and parent out too, so the
    evaluation cannot be solved by having seen a near-identical sibling title in training.
    """
    if not 0.0 <= fraction < 1.0:
        raise KeptError(f"held-out fraction must be in [0, 1); got {fraction}")
    rng = random.Random(f"heldout:{seed}")
    cats: list[str] = []
    for kind in ("dx", "proc"):
        pool = sorted(n for n, d in G.nodes(data=True)
                      if d.get("type") == "code" and d["depth"] == 2 and d["kind"] == kind)
        cats += rng.sample(pool, round(fraction * len(pool)))
    codes = set(cats)
    for c in cats:
        codes |= nx.ancestors(G, c)  # edges run child -> parent: networkx "ancestors" are descendants
    norms = {G.nodes[t]["norm"] for c in codes for _, t, d in G.out_edges(c, data=True) if d["rel"] == HAS_TERM}
    return HeldOut(frozenset(cats), frozenset(codes), frozenset(norms), fraction, seed)


class BatchSampler:
    """Draws `TermBatch`es of exactly `n = i*j*k` term slots.

    What it does with codes that do not fit the recipe (said here because it changes the data):
    - codes with no term (e.g. procedure categories and many procedure subcategories of the bundled
      graph: no public title) are never drawn; a level with fewer than `i` anchors is dropped from
      the cycle (logged; `describe()` lists the levels kept) (the bundled graph drops `proc/category`);
    - an anchor needs >= 2 distinct terms (else it has no positive); parents/siblings need >= 1;
    - a code with fewer than `k` terms fills its `k` slots by repeating its terms (`repeated=True`):
      the batch keeps its size, and triplet mining skips (anchor, positive) pairs of equal text;
    - an anchor with fewer than `j-1` eligible parent+siblings gets `filler` codes of the same level
      (inter-class negatives) so the group still has `j` codes; no code appears twice in a batch;
    - `exclude` codes and every term of theirs (by normalised text, even when another code shares
      it) are invisible to the sampler: the held-out split.
    """

    def __init__(self, G: nx.DiGraph, config: SamplerConfig = SamplerConfig(), *,
                 exclude: HeldOut | None = None, stream: int = 0):
        self.config = config
        self.stream = stream
        bad_codes = exclude.codes if exclude else frozenset()
        bad_norms = exclude.term_norms if exclude else frozenset()
        kinds = set(config.term_kinds)
        self.parent: dict[str, str] = {}
        self.children: dict[str, list[str]] = defaultdict(list)
        self.terms: dict[str, list[tuple[str, str]]] = {}
        for u, v, d in G.edges(data=True):
            if d["rel"] == IS_A:
                self.parent[u] = v
                self.children[v].append(u)
            elif d["rel"] == HAS_TERM and d["kind"] in kinds and u not in bad_codes:
                t = G.nodes[v]
                if t["norm"] not in bad_norms:
                    self.terms.setdefault(u, []).append((t["text"], t["norm"]))
        for c in self.terms:
            self.terms[c].sort(key=lambda x: x[1])  # edge order must not change the draws
        self.norms = {c: frozenset(n for _, n in ts) for c, ts in self.terms.items()}
        for p in self.children:
            self.children[p].sort()
        self.levels: list[tuple[str, int]] = []
        self.anchors: dict[tuple[str, int], list[str]] = {}
        self.members: dict[tuple[str, int], list[str]] = {}
        for kind, depth in config.levels:
            members = sorted(n for n, d in G.nodes(data=True)
                             if d.get("type") == "code" and d["kind"] == kind and d["depth"] == depth
                             and n in self.terms)
            anchors = [c for c in members if len(self.terms[c]) >= 2]
            if len(anchors) < config.i:
                log.info("level %s has %d codes with >= 2 terms (< i=%d): left out of the cycle",
                            level_name(kind, depth), len(anchors), config.i)
                continue
            self.levels.append((kind, depth))
            self.anchors[(kind, depth)], self.members[(kind, depth)] = anchors, members
        if not self.levels:
            raise KeptError("no hierarchy level has enough codes with >= 2 terms to sample from")

    def level_of(self, index: int) -> tuple[str, int]:
        return self.levels[index % len(self.levels)]

    def batch(self, index: int) -> TermBatch:
        """Batch number `index` of this sampler's stream (same seed, stream, index: same batch)."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{self.stream}:{index}")
        kind, depth = self.level_of(index)
        out = TermBatch(index=index, level=level_name(kind, depth), depth=depth)
        anchors = rng.sample(self.anchors[(kind, depth)], cfg.i)
        in_batch = set(anchors)
        members = self.members[(kind, depth)]
        for g, anchor in enumerate(anchors):
            p = self.parent.get(anchor)
            pool = ([p] if p in self.terms else []) + [s for s in self.children.get(p, ()) if s in self.terms]
            pool = [c for c in pool if c not in in_batch]
            rng.shuffle(pool)
            group = [(anchor, "anchor")] + [(c, "parent" if c == p else "sibling") for c in pool[: cfg.j - 1]]
            in_batch.update(c for c, _ in group)
            while len(group) < cfg.j:
                c = self._filler(rng, members, in_batch)
                group.append((c, "filler"))
                in_batch.add(c)
            for code, role in group:
                self._add_terms(out, rng, code, role, g)
        return out

    def _filler(self, rng: random.Random, members: list[str], in_batch: set[str]) -> str:
        for _ in range(100):
            c = rng.choice(members)
            if c not in in_batch:
                return c
        free = [c for c in members if c not in in_batch]
        if not free:
            raise KeptError("level has too few codes to fill a batch; lower i or j")
        return rng.choice(free)

    def _add_terms(self, out: TermBatch, rng: random.Random, code: str, role: str, group: int) -> None:
        terms = self.terms[code]
        k = self.config.k
        picked = rng.sample(terms, k) if len(terms) >= k else rng.sample(terms, len(terms))
        extra = [rng.choice(terms) for _ in range(k - len(picked))]
        for n, (text, norm) in enumerate(picked + extra):
            out.codes.append(code)
            out.texts.append(text)
            out.norms.append(norm)
            out.roles.append(role)
            out.groups.append(group)
            out.repeated.append(n >= len(picked))

    def __iter__(self):
        index = 0
        while True:
            yield self.batch(index)
            index += 1

    def describe(self) -> dict[str, dict[str, int]]:
        """Per level: codes that can be drawn and codes that can be anchors."""
        return {level_name(*lv): {"codes": len(self.members[lv]), "anchors": len(self.anchors[lv])}
                for lv in self.levels}

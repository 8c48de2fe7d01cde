"""The data-set layout every stage shares, and the rules that derive the -50 and -rare50 sets.

    DIR/dataset.json                  where the data came from, seed, split rule, counts, warnings
    DIR/{full,50,rare50}/             one "set directory" each
        train.csv dev.csv test.csv    SUBJECT_ID,HADM_ID,TEXT,LABELS,length (the CAML/MSMN layout;
                                      LABELS = dotted codes joined by ';', length = whitespace tokens)
        codes.txt                     the set's label list, one dotted code per line, in label order

Codes are strings everywhere: reading them as numbers loses leading zeros (PITFALLS.md).
"""

from __future__ import annotations

import csv
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from kept.errors import InputFileError, KeptError
from kept.io import atomic_dir, atomic_write, input_error, open_text
from kgraph.codes import kind_of

SPLITS = ("train", "dev", "test")
SETS = ("full", "50", "rare50")
COLUMNS = ["SUBJECT_ID", "HADM_ID", "TEXT", "LABELS", "length"]

# Real notes exceed csv's default 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Document:
    subject_id: str
    hadm_id: str
    text: str
    labels: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.text.split())


def read_split(set_dir: str | Path, split: str) -> list[Document]:
    """Documents of `set_dir/<split>.csv`; errors name the file and line."""
    if split not in SPLITS:
        raise KeptError(f"unknown split {split!r} (expected one of {SPLITS})")
    path = Path(set_dir) / f"{split}.csv"
    if not path.is_file():
        raise InputFileError(path, f"file not found (expected the {split} split of a kept data set)")
    docs = []
    with input_error(path, "a UTF-8 CSV with columns " + ",".join(COLUMNS)), open_text(path) as fh:
        reader = csv.DictReader(fh)
        try:
            fieldnames = reader.fieldnames or []
            missing = [c for c in COLUMNS[:4] if c not in fieldnames]
            if missing:
                raise InputFileError(path, f"missing columns {missing}; expected {COLUMNS}", line=1)
            for row in reader:
                if None in row or any(row[c] is None for c in COLUMNS[:4]):
                    raise InputFileError(path, "wrong number of fields", line=reader.line_num)
                labels = [c for c in row["LABELS"].split(";") if c]
                docs.append(Document(row["SUBJECT_ID"], row["HADM_ID"], row["TEXT"], labels))
        except csv.Error as exc:
            raise InputFileError(path, f"malformed CSV: {exc}", line=reader.line_num) from exc
    return docs


def read_codes(set_dir: str | Path) -> list[str]:
    """The set's label list (`codes.txt`), in label order."""
    path = Path(set_dir) / "codes.txt"
    if not path.is_file():
        raise InputFileError(path, "file not found (expected a set's code list, one code a line)")
    codes = []
    with input_error(path, "UTF-8 text, one dotted ICD-9-CM code a line"), open_text(path) as fh:
        for i, line in enumerate(fh, 1):
            code = line.strip()
            if not code:
                continue
            try:
                kind_of(code)
            except KeptError:
                raise InputFileError(path, f"{code!r} is not a dotted ICD-9-CM code (write 401.9, not 4019)",
                                     line=i) from None
            if code in codes:
                raise InputFileError(path, f"code {code!r} listed twice", line=i)
            codes.append(code)
    if not codes:
        raise InputFileError(path, "no codes (expected one dotted ICD-9-CM code a line)")
    return codes


def write_split(set_dir: str | Path, split: str, docs: Sequence[Document]) -> Path:
    """Write one split atomically, sorted by length then HADM_ID (as CAML, for bucketing)."""
    path = Path(set_dir) / f"{split}.csv"
    with atomic_write(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for d in sorted(docs, key=lambda d: (d.length, d.hadm_id)):
            w.writerow([d.subject_id, d.hadm_id, d.text, ";".join(d.labels), d.length])
    return path


def write_codes(set_dir: str | Path, codes: Sequence[str]) -> Path:
    path = Path(set_dir) / "codes.txt"
    with atomic_write(path) as fh:
        fh.writelines(f"{c}\n" for c in codes)
    return path


def code_counts(docs: Iterable[Document]) -> Counter[str]:
    """Occurrences of each code: the number of documents it labels."""
    return Counter(c for d in docs for c in set(d.labels))


def by_frequency(counts: Counter[str]) -> list[str]:
    """Codes by descending count, ties by code string (deterministic)."""
    return sorted(counts, key=lambda c: (-counts[c], c))


def top_codes(docs: Iterable[Document], n: int = 50) -> list[str]:
    """The n most frequent codes (CAML's top-50 rule, over train+dev+test), most frequent first."""
    return by_frequency(code_counts(docs))[:n]


def restrict(docs: Iterable[Document], codes: Sequence[str], drop_empty: bool = True) -> list[Document]:
    """Copies of `docs` with labels limited to `codes`; docs left with none are dropped if asked."""
    keep = set(codes)
    out = []
    for d in docs:
        labels = [c for c in d.labels if c in keep]
        if labels or not drop_empty:
            out.append(Document(d.subject_id, d.hadm_id, d.text, labels))
    return out


def select_rare50(train_docs: Sequence[Document], test_docs: Sequence[Document], max_count: int = 10,
                  n: int = 50, exclude: Iterable[str] = (), seed: int = 0,
                  all_docs: Sequence[Document] | None = None, min_train: int = 1) -> list[str]:
    """The paper's rare-code rule (KEPT, section 4.1), made exact.

    1. Count each code's occurrences (documents) over the whole data: `all_docs` when given
       (train+dev+test), else train+test.
    2. Keep codes with fewer than `max_count` occurrences that occur in both train and test
       (so each has shots to learn from and test cases to score), minus `exclude` (the paper
       removed some common diseases by hand; pass such a list here). `min_train` > 1 asks for
       at least that many train shots (not in the paper's text; off by default).
    3. Rank by test/train ratio (test occurrences / train occurrences), highest first; ties are
       broken by a shuffle seeded with `seed` (a stable sort over the shuffled order).
    4. Return the first `n`; KeptError if fewer than `n` qualify.
    """
    train, test = code_counts(train_docs), code_counts(test_docs)
    total = code_counts(all_docs) if all_docs is not None else train + test
    excluded = set(exclude)
    pool = sorted(c for c in total
                  if total[c] < max_count and train[c] >= max(1, min_train) and test[c] > 0
                  and c not in excluded)
    random.Random(seed).shuffle(pool)
    pool.sort(key=lambda c: -(test[c] / train[c]))  # stable: ties keep the seeded order
    if len(pool) < n:
        raise KeptError(f"only {len(pool)} codes have < {max_count} occurrences and occur in both "
                        f"train (>= {max(1, min_train)} times) and test; the rare-{n} rule needs {n}")
    return pool[:n]


# What to change when a set cannot be made as asked (config field, command-line option).
SET_OPTIONS = {
    "50": "top_n (--top-n)",
    "rare50": "rare_n, rare_max_count, rare_min_train (--rare-n, --rare-max-count, --rare-min-train)",
}


def derive_sets(splits: dict[str, list[Document]], top_n: int = 50, rare_n: int = 50,
                rare_max_count: int = 10, rare_exclude: Iterable[str] = (), seed: int = 0,
                rare_min_train: int = 1, splits_50: dict[str, list[Document]] | None = None,
                rare: tuple[list[str], dict[str, list[Document]]] | None = None,
                problems: dict[str, str] | None = None,
                ) -> dict[str, tuple[list[str], dict[str, list[Document]]]]:
    """The three sets from the full splits: {set name: (codes, {split: docs})}.

    full: every code, most frequent first. 50: the top_n codes over train+dev+test, docs with at
    least one of them (or the docs of `splits_50`, CAML's own -50 id lists, labels restricted).
    rare50: `select_rare50` over the full splits, docs with at least one of its codes; or `rare`,
    a ready (codes, {split: docs}) pair (KEPT's released lists, a synthetic set), taken as it is.

    Without `problems`, a set that cannot be made raises. With it, each set is made on its own:
    one that cannot be made is left out and `problems[name]` says why and what to change, and one
    made smaller than asked is kept and noted there too, so a caller writes what can be written.
    """
    if top_n < 1 or rare_n < 1 or rare_max_count < 1:
        raise KeptError(f"top_n, rare_n and rare_max_count must be >= 1; got {top_n}, {rare_n}, {rare_max_count}")
    everything = [d for s in SPLITS for d in splits[s]]
    source_50 = splits_50 if splits_50 is not None else splits

    def make_50():
        top = top_codes(everything, top_n)
        if len(top) < top_n and problems is not None:
            problems["50"] = (f"written with {len(top)} codes, not {top_n}: the data have only {len(top)} "
                              f"distinct codes; change {SET_OPTIONS['50']}")
        return top, {s: restrict(source_50[s], top, drop_empty=splits_50 is None) for s in SPLITS}

    def make_rare50():
        if rare is not None:
            return rare
        codes = select_rare50(splits["train"], splits["test"], max_count=rare_max_count, n=rare_n,
                              exclude=rare_exclude, seed=seed, all_docs=everything,
                              min_train=rare_min_train)
        return codes, {s: restrict(splits[s], codes) for s in SPLITS}

    builders = {"full": lambda: (by_frequency(code_counts(everything)), splits),
                "50": make_50, "rare50": make_rare50}
    sets = {}
    for name, build in builders.items():
        try:
            sets[name] = build()
        except KeptError as exc:
            if problems is None:
                raise
            problems[name] = f"not written: {exc}; change {SET_OPTIONS.get(name, 'the set options')}"
    return sets


def write_dataset(out_dir: str | Path, sets: dict[str, tuple[list[str], dict[str, list[Document]]]],
                  meta: dict, force: bool = False) -> dict:
    """Write every set directory and `dataset.json` (with per-set counts added to `meta`).

    The whole folder is written beside `out_dir` and renamed into place: a crash leaves the old
    data set, never half a new one. `force` replaces a folder kept did not write.
    """
    counts = {}
    with atomic_dir(out_dir, force=force) as out:
        for name, (codes, splits) in sets.items():
            for split in SPLITS:
                write_split(out / name, split, splits[split])
            write_codes(out / name, codes)
            counts[name] = {"codes": len(codes), **{s: len(splits[s]) for s in SPLITS}}
        meta = {**meta, "sets": counts}
        with atomic_write(out / "dataset.json") as fh:
            json.dump(meta, fh, indent=2, sort_keys=False)
            fh.write("\n")
    return meta


def seeded_split(docs: Sequence[Document], fractions: tuple[float, float, float], seed: int,
                 by_subject: bool = True) -> dict[str, list[Document]]:
    """Shuffle (patients, or documents) with `seed` and cut into train/dev/test by `fractions`.

    With `by_subject`, all admissions of one patient land in the same split (no leakage).
    """
    groups: dict[str, list[Document]] = {}
    for d in docs:
        groups.setdefault(d.subject_id if by_subject else d.hadm_id, []).append(d)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    total = sum(fractions)
    n_train = round(len(keys) * fractions[0] / total)
    n_dev = round(len(keys) * fractions[1] / total)
    parts = {"train": keys[:n_train], "dev": keys[n_train:n_train + n_dev],
             "test": keys[n_train + n_dev:]}
    return {s: [d for k in parts[s] for d in groups[k]] for s in SPLITS}


def label_matrix(docs, codes: Sequence[str]) -> np.ndarray:
    """(docs, codes) 0/1 matrix of gold labels; labels outside `codes` are left out."""
    col = {c: j for j, c in enumerate(codes)}
    y = np.zeros((len(docs), len(codes)), dtype=np.uint8)
    for i, d in enumerate(docs):
        for c in d.labels:
            if c in col:
                y[i, col[c]] = 1
    return y

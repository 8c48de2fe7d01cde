"""Data-set statistics in the shape of the paper's Table A.2, per set and split.

Lengths are whitespace words (the `length` column; keys `words_*`) unless a tokenizer is given, in
which case the paper's "#tokens" rows count its sub-word tokens (keys `tokens_*`). "Shots" of a code = documents of the split
that carry it, over the set's codes that occur in the split (codes absent are counted apart).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, median
from typing import Callable

from coder.data.datasets import SETS, SPLITS, code_counts, read_codes, read_split
from kept.errors import InputFileError

LIMITS = (512, 4096, 8192)  # the paper's %Doc rows


def split_stats(set_dir: Path, split: str, codes: list[str],
                length: Callable[[list[str]], list[int]] | None = None) -> dict[str, float]:
    docs = read_split(set_dir, split)
    words = [len(d.text.split()) for d in docs]
    lengths = length([d.text for d in docs]) if length else words
    counts = code_counts(docs)
    shots = [counts[c] for c in codes if counts[c] > 0]
    unit = "tokens" if length else "words"  # keys say what was counted
    row: dict[str, float] = {
        "docs": len(docs),
        "words_mean": mean(words) if docs else 0.0,
        f"{unit}_mean": mean(lengths) if docs else 0.0,
        f"{unit}_median": median(lengths) if docs else 0.0,
    }
    for lim in LIMITS:
        row[f"pct_{unit}_lt_{lim}"] = 100.0 * sum(n < lim for n in lengths) / len(docs) if docs else 0.0
    row.update({
        "codes_per_doc": mean(len(d.labels) for d in docs) if docs else 0.0,
        "codes_present": len(shots),
        "codes_absent": len(codes) - len(shots),
        "shots_mean": mean(shots) if shots else 0.0,
        "shots_median": median(shots) if shots else 0.0,
        "shots_min": min(shots) if shots else 0,
        "shots_max": max(shots) if shots else 0,
    })
    return row


def dataset_stats(data_dir: str | Path, tokenizer: str | None = None) -> dict[str, dict[str, dict]]:
    """{set: {split: row}} for every set directory present under `data_dir`."""
    data_dir = Path(data_dir)
    present = [s for s in SETS if (data_dir / s / "codes.txt").is_file()]
    if not present:
        raise InputFileError(data_dir, f"no data set here (expected {'/'.join(SETS)} set "
                                       "directories written by `kept data mimic` or `kept data synth`)")
    length = None
    if tokenizer:
        from kept.hf import load_tokenizer  # only when asked: transformers is a heavy import

        tok = load_tokenizer(tokenizer, checkpoint=False)
        tok.model_max_length = 10**9  # counting, not encoding for a model: no length warning

        def length(texts: list[str]) -> list[int]:
            return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    return {s: {sp: split_stats(data_dir / s, sp, read_codes(data_dir / s), length) for sp in SPLITS}
            for s in present}


ROWS = (("docs", "#Doc", "{:,.0f}"), ("words_mean", "Avg #words per Doc", "{:,.0f}"),
        ("tokens_mean", "Avg #tokens per Doc", "{:,.0f}"), ("tokens_median", "Median #tokens", "{:,.0f}"),
        ("pct_tokens_lt_512", "%Doc #tokens < 512", "{:.1f}"),
        ("pct_tokens_lt_4096", "%Doc #tokens < 4096", "{:.1f}"),
        ("pct_tokens_lt_8192", "%Doc #tokens < 8192", "{:.1f}"),
        ("codes_per_doc", "Avg #codes per Doc", "{:.1f}"), ("codes_present", "#codes present", "{:,.0f}"),
        ("codes_absent", "#set codes absent", "{:,.0f}"), ("shots_mean", "Shots/code mean", "{:.1f}"),
        ("shots_median", "Shots/code median", "{:.1f}"), ("shots_min", "Shots/code min", "{:,.0f}"),
        ("shots_max", "Shots/code max", "{:,.0f}"))


def format_table(stats: dict[str, dict[str, dict]], unit: str = "words") -> str:
    """A text table: one block per set, one column per split (as Table A.2)."""
    lines = []
    for name, splits in stats.items():
        lines.append(f"{name:<24}" + "".join(f"{s:>12}" for s in SPLITS))
        for key, label, fmt in ROWS:
            if unit == "words" and key == "words_mean":
                continue  # the same row as the words_mean below it
            key = key.replace("tokens", unit)
            label = label.replace("#tokens", f"#{unit}")
            lines.append(f"  {label:<22}" + "".join(f"{fmt.format(splits[s][key]):>12}" for s in SPLITS))
        lines.append("")
    return "\n".join(lines)


def print_stats(data_dir: str | Path, as_json: bool = False, tokenizer: str | None = None) -> str:
    stats = dataset_stats(data_dir, tokenizer)
    if as_json:
        return json.dumps(stats, indent=2)
    meta_path = Path(data_dir) / "dataset.json"
    source = json.loads(meta_path.read_text())["source"] if meta_path.is_file() else "unknown"
    unit = "tokens" if tokenizer else "words"
    return f"data set {data_dir} (source: {source}; lengths in {unit})\n\n" + format_table(stats, unit)

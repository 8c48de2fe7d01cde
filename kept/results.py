"""The demo's results: one table (JSON + Markdown) and a plot of per-code F1 against training frequency.

Every row says which data it came from (synthetic / fixture / real public), so a figure can never
be mistaken for a MIMIC result.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from kept.io import atomic_path, atomic_write, dump_json

COLUMNS = ("stage", "system", "dataset", "data_source", "metric", "value")


def write_table(rows: Sequence[dict], out_dir: str | Path, name: str = "results") -> tuple[Path, Path]:
    """Write rows as `name.json` and `name.md` (one line per stage/system/dataset, metrics as columns)."""
    out = Path(out_dir)
    with atomic_write(out / f"{name}.json") as fh:
        dump_json(list(rows), fh, indent=2)
        fh.write("\n")
    with atomic_write(out / f"{name}.md") as fh:
        fh.write(markdown_table(rows))
    return out / f"{name}.json", out / f"{name}.md"


def markdown_table(rows: Sequence[dict]) -> str:
    """One table per stage, rows grouped by (stage, system, dataset, data_source), metrics as columns
    in first-seen order. Stages get their own tables (under a `### stage` heading when there are
    several) because their metrics differ: one wide table would be mostly empty cells."""
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    parts = []
    for stage in stages:
        table = _stage_table([r for r in rows if r["stage"] == stage])
        parts.append(table if len(stages) == 1 else f"### {stage}\n\n{table}")
    return "\n".join(parts)


def _stage_table(rows: Sequence[dict]) -> str:
    groups: dict[tuple, dict[str, float]] = {}
    metrics: list[str] = []
    for r in rows:
        key = (r["stage"], r["system"], r["dataset"], r["data_source"])
        groups.setdefault(key, {})[r["metric"]] = r["value"]
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
    head = ["stage", "system", "dataset", "data", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, vals in groups.items():
        cells = [*key, *(_fmt(vals.get(m)) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def metric_rows(stage: str, system: str, dataset: str, data_source: str, metrics: dict,
                keep: Iterable[str]) -> list[dict]:
    return [dict(stage=stage, system=system, dataset=dataset, data_source=data_source, metric=m,
                 value=float(metrics[m])) for m in keep if m in metrics]


def train_frequency(train_labels: Iterable[Iterable[str]], codes: Sequence[str]) -> np.ndarray:
    counts = Counter(c for labels in train_labels for c in labels)
    return np.array([counts.get(c, 0) for c in codes])


def plot_f1_by_frequency(series: dict[str, tuple[np.ndarray, np.ndarray]], out_png: str | Path,
                         title: str, data_source: str) -> Path:
    """Per-code test F1 against the code's training frequency, rare codes on the left (log x).

    `series`: system name -> (train frequency per code, F1 per code). Codes with NaN F1 are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for (name, (freq, f1)), marker in zip(series.items(), "os^vD"):
        ok = ~np.isnan(f1)
        x = np.maximum(freq[ok], 0) + 1  # +1 so zero-shot codes show at x=1 on the log axis
        ax.scatter(x, f1[ok], s=16, alpha=0.6, marker=marker, label=f"{name} (n={ok.sum()})")
        if ok.sum() >= 4:
            order = np.argsort(x)
            k = max(3, ok.sum() // 8)
            smooth = np.convolve(f1[ok][order], np.ones(k) / k, mode="valid")
            ax.plot(x[order][k // 2: k // 2 + len(smooth)], smooth, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("training documents with the code (+1, log scale): rare codes on the left")
    ax.set_ylabel("per-code F1 on test")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, f"data: {data_source}", fontsize=8, color="dimgray")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_png)

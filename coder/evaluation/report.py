"""`kept report`: median over seeds per (dataset, system), and bootstrap 95% CIs of system differences.

Runs are the directories holding a ``metrics.json`` (written by ``kept coder eval``, beside
``test_scores.npz``); they are grouped by (data source, dataset, system).

Bootstrap, and the choice it makes: every replicate draws the test documents with replacement
once (a count per document, the same for every run of both systems, documents matched by
hadm_id), recomputes each run's metric on that resample at the run's own dev-tuned threshold,
takes each system's median over its seeds, and records median(b) - median(a). Seeds are thus
pooled per system, not paired run i with run i: the statistic is exactly the difference of the
medians the table prints (the paper's Table 3 compares systems by their median), and it stays
defined when the systems have different numbers of seeds. The CI (2.5th-97.5th percentile) is
test-sampling uncertainty given the trained runs; the seeds' spread is in the JSON (min, max).

A run's graph-aware figures (metrics.json "hierarchical", coder.evaluation.hierarchy_metrics) join its table
under their own names (hier_f1, cophe_f1@category, ...); their P/R/F1 are resampled from
per-document counts over the graph the run names (null = bundled ICD-9-CM).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from coder.evaluation import hierarchy_metrics as H
from coder.evaluation import metrics as M
from kept.errors import InputFileError, KeptError, require_file

DEFAULT_METRICS = ("micro_auc", "macro_auc", "micro_f1", "macro_f1", "macro_f1_mean",
                   "p@5", "p@8", "p@15", "r@8", "r@15", "hier_f1")
DEFAULT_CI_METRICS = ("micro_f1", "macro_f1", "macro_auc", "hier_f1")
# Metrics a resample can recompute cheaply from per-document counts. micro_auc is left out: it
# needs a weighted rank statistic over all n_docs x n_codes scores per replicate.
_BOOT_FIXED = ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "macro_precision", "macro_recall",
               "macro_f1_mean", "macro_auc")
_REQUIRED = {"system": str, "dataset": str, "seed": int, "threshold": (int, float), "metrics": dict}


@dataclass
class Run:
    """One evaluated run: the fields of its metrics.json and where it lives."""

    path: Path
    system: str
    dataset: str
    source: str
    seed: int
    threshold: float
    metrics: dict[str, float] = field(default_factory=dict)
    graph: str | None = None  # the graph its hierarchical figures used; None = bundled ICD-9-CM

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, self.dataset, self.system)


def load_run(metrics_json: Path) -> Run:
    """Read one run's metrics.json, naming the file in any error."""
    try:
        data = json.loads(Path(metrics_json).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputFileError(metrics_json, f"not valid JSON ({exc.msg})", exc.lineno) from exc
    if not isinstance(data, dict):
        raise InputFileError(metrics_json, "expected a JSON object (kept coder eval's metrics.json)")
    for key, kind in _REQUIRED.items():
        if key not in data:
            raise InputFileError(metrics_json, f"missing key {key!r} (expected kept coder eval's metrics.json)")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise InputFileError(metrics_json, f"key {key!r} has the wrong type ({type(data[key]).__name__})")
    if data.get("split", "test") != "test":
        raise InputFileError(metrics_json, f"split is {data['split']!r}; kept report compares test-set runs")
    values = _numbers(data["metrics"])
    hier = data.get("hierarchical") or {}
    if not isinstance(hier, dict) or not isinstance(hier.get("metrics", {}), dict):
        raise InputFileError(metrics_json, "key 'hierarchical' must be an object with a 'metrics' object")
    # Hierarchical names (hier_*, cophe_*, exact_*@, fp_*) never equal an exact-match name, so one
    # table can show both; metrics.json keeps them apart.
    clash = sorted(set(values) & set(hier.get("metrics", {})))
    if clash:
        raise InputFileError(metrics_json, f"{', '.join(clash)} both under 'metrics' and 'hierarchical'")
    values.update(_numbers(hier.get("metrics", {})))
    return Run(Path(metrics_json).parent, data["system"], data["dataset"], str(data.get("data_source", "?")),
               data["seed"], float(data["threshold"]), values, hier.get("graph"))


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: (float("nan") if v is None else float(v)) for k, v in metrics.items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under `paths` (run directories or folders of them, searched recursively), sorted."""
    found: dict[Path, Run] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise KeptError(f"{path}: no such file or directory")
        files = [path] if path.is_file() else sorted(path.rglob("metrics.json"))
        if not files:
            raise KeptError(f"{path}: no metrics.json found (expected a run directory or a folder of them)")
        for f in files:
            found.setdefault(f.resolve(), load_run(f))
    runs = sorted(found.values(), key=lambda r: (r.key, r.seed, str(r.path)))
    for (key, group) in itertools.groupby(runs, key=lambda r: (r.key, r.seed)):
        group = list(group)
        if len(group) > 1:
            raise KeptError(f"two runs of {key[0][2]!r} on {key[0][1]!r} with seed {key[1]}: "
                            f"{group[0].path} and {group[1].path}")
    return runs


@dataclass
class Scores:
    """A run's test scores, rows and columns in a fixed (reference) order."""

    y_true: np.ndarray
    y_score: np.ndarray
    hadm_ids: np.ndarray
    codes: np.ndarray
    logits: np.ndarray | None = None  # raw scores where the run saved them: ranking metrics use them


def load_scores(run: Run) -> Scores:
    """Read RUN/test_scores.npz (y_true, y_score, hadm_ids, codes) and check the shapes agree."""
    path = require_file(run.path / "test_scores.npz", "test scores written by kept coder eval")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("y_true", "y_score", "hadm_ids", "codes")}
            logits = npz["logits"] if "logits" in npz.files else None
    except KeyError as exc:
        raise InputFileError(path, f"missing array {exc}") from exc
    except (ValueError, OSError) as exc:
        raise InputFileError(path, f"unreadable ({exc})") from exc
    y, s = arrays["y_true"], arrays["y_score"]
    if y.ndim != 2 or s.shape != y.shape or arrays["hadm_ids"].shape != (y.shape[0],) \
            or arrays["codes"].shape != (y.shape[1],):
        raise InputFileError(path, f"inconsistent shapes: y_true {y.shape}, y_score {s.shape}, "
                                   f"hadm_ids {arrays['hadm_ids'].shape}, codes {arrays['codes'].shape}")
    for what in ("hadm_ids", "codes"):
        if len(np.unique(arrays[what])) != len(arrays[what]):
            raise InputFileError(path, f"duplicate {what}")
    if logits is not None and logits.shape != y.shape:
        raise InputFileError(path, f"inconsistent shapes: y_true {y.shape}, logits {logits.shape}")
    return Scores(y.astype(bool), s, arrays["hadm_ids"].astype(str), arrays["codes"].astype(str), logits)


def align(scores: Scores, ref: Scores, path: Path, ref_path: Path) -> Scores:
    """`scores` with rows and columns put in `ref`'s order; KeptError if the test sets differ."""
    for what, mine, theirs in (("hadm_ids", scores.hadm_ids, ref.hadm_ids), ("codes", scores.codes, ref.codes)):
        if len(mine) != len(theirs) or set(mine) != set(theirs):
            only = sorted(set(mine) ^ set(theirs))
            raise KeptError(f"test sets differ: {path} has {len(mine)} {what}, {ref_path} has {len(theirs)}; "
                            f"{len(only)} only in one (e.g. {', '.join(only[:3])})")
    rows = np.argsort(scores.hadm_ids)[np.argsort(np.argsort(ref.hadm_ids))]
    cols = np.argsort(scores.codes)[np.argsort(np.argsort(ref.codes))]
    if not np.array_equal(ref.y_true, scores.y_true[np.ix_(rows, cols)]):
        raise KeptError(f"test sets differ: {path} and {ref_path} have different gold codes for the same documents")
    logits = None if scores.logits is None else scores.logits[np.ix_(rows, cols)]
    return Scores(ref.y_true, scores.y_score[np.ix_(rows, cols)], ref.hadm_ids, ref.codes, logits)


# ---------------------------------------------------------------- metrics under resampling weights


def _grouped_sums(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, n_codes) sums of the document weights over each code's True entries of `mask` (docs, codes)."""
    cols, rows = np.nonzero(mask.T)  # code-major: each code's entries are contiguous
    out = np.zeros((weights.shape[0], mask.shape[1]))
    if rows.size:
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        chunk = max(1, 4_000_000 // rows.size)
        for lo in range(0, weights.shape[0], chunk):
            out[lo:lo + chunk, cols[starts]] = np.add.reduceat(weights[lo:lo + chunk][:, rows], starts, axis=1)
    return out


def _macro_auc_weighted(weights: np.ndarray, y: np.ndarray, s: np.ndarray, block: int = 2048) -> np.ndarray:
    """Macro AUC per row of `weights` (each row: how often each doc was drawn), ties counting 1/2.

    A code's AUC on a resample is sum_{pos i, neg j} w_i w_j K(s_i, s_j) / (W_pos W_neg). For each
    positive (i, c) the inner sum over negatives is weights @ column, done as one matrix product
    per block of positives. Entries are integers or halves, so float32 sums are exact.
    """
    cols, rows = np.nonzero(y.T)
    w32 = weights.astype(np.float32)
    num = np.zeros((weights.shape[0], y.shape[1]))
    for lo in tqdm(range(0, rows.size, block), desc="macro AUC", leave=False, disable=None):
        r, c = rows[lo:lo + block], cols[lo:lo + block]
        column = s[:, c]
        k = (column < s[r, c]).astype(np.float32) + np.float32(0.5) * (column == s[r, c])
        k *= ~y[:, c]
        inner = (w32 @ k).astype(np.float64) * weights[:, r]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        num[:, c[starts]] += np.add.reduceat(inner, starts, axis=1)
    pos = _grouped_sums(weights, y)
    neg = weights.sum(axis=1, keepdims=True) - pos
    valid = (pos > 0) & (neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(valid, num / (pos * neg), 0.0)
        return np.where(valid.any(axis=1), auc.sum(axis=1) / valid.sum(axis=1), np.nan)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0 (scikit-learn's zero_division=0, as in coder.evaluation.metrics)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def weighted_metrics(weights: np.ndarray, y_true: np.ndarray, y_score: np.ndarray, threshold: float,
                     names: Sequence[str], rank_score: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Metrics `names` on each resample given as document weights (B, n_docs); a row of ones is the test set.

    Same definitions as coder.evaluation.metrics.all_metrics (macro over codes with a positive in the resample;
    AUC and P@k/R@k ordered by `rank_score`, the raw logits, where given).
    """
    y, s = np.asarray(y_true, dtype=bool), np.asarray(y_score)
    r = s if rank_score is None else np.asarray(rank_score)
    pred = s >= threshold
    out: dict[str, np.ndarray] = {}
    if any(n.startswith("micro_") for n in names):
        tp, fp, fn = ((y & pred).sum(1), (~y & pred).sum(1), (y & ~pred).sum(1))
        TP, FP, FN = weights @ tp, weights @ fp, weights @ fn
        out.update(micro_f1=_div(2 * TP, 2 * TP + FP + FN), micro_precision=_div(TP, TP + FP),
                   micro_recall=_div(TP, TP + FN))
    if any(n.startswith("macro_") and n != "macro_auc" for n in names):
        TP, FP, FN = (_grouped_sums(weights, m) for m in (y & pred, ~y & pred, y & ~pred))
        present = (TP + FN) > 0
        n_present = np.where(present.any(1), present.sum(1), np.nan)
        mp = np.where(present, _div(TP, TP + FP), 0).sum(1) / n_present
        mr = np.where(present, _div(TP, TP + FN), 0).sum(1) / n_present
        out.update(macro_precision=mp, macro_recall=mr, macro_f1=_div(2 * mp * mr, mp + mr),
                   macro_f1_mean=np.where(present, _div(2 * TP, 2 * TP + FP + FN), 0).sum(1) / n_present)
        out["macro_f1"][np.isnan(n_present)] = np.nan
    if "macro_auc" in names:
        out["macro_auc"] = _macro_auc_weighted(weights, y, r)
    gold = y.sum(1)
    for name in names:
        if name[:2] in ("p@", "r@") and name[2:].isdigit():
            hits, k_eff = M.top_k_hits(y, r, int(name[2:]))
            if name[0] == "p":
                out[name] = (weights @ hits) / k_eff / weights.sum(1)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name] = (weights @ _div(hits, gold)) / (weights @ (gold > 0))
    return {n: out[n] for n in names}


def bootstrap_ci_supported(name: str) -> bool:
    """Whether `kept report` can put a bootstrap CI on metric `name`."""
    return name in _BOOT_FIXED or (name[:2] in ("p@", "r@") and name[2:].isdigit()) or H.is_bootstrappable(name)


def compare(runs_a: Sequence[Run], runs_b: Sequence[Run], names: Sequence[str], n_boot: int = 1000,
            seed: int = 0) -> list[dict]:
    """Bootstrap difference median_b - median_a for each metric (see the module docstring)."""
    ref_run = runs_a[0]
    ref = load_scores(ref_run)
    n_docs = ref.y_true.shape[0]
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n_docs), rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=n_boot)])
    per_run = []
    # One run's scores in memory at a time: full MIMIC is 3,372 x 8,692 per run.
    for run in tqdm([*runs_a, *runs_b], desc="bootstrap", leave=False, disable=None):
        scores = ref if run is ref_run else align(load_scores(run), ref, run.path, ref_run.path)
        values = weighted_metrics(weights, scores.y_true, scores.y_score, run.threshold,
                                  [n for n in names if not H.is_bootstrappable(n)], rank_score=scores.logits)
        hier = [n for n in names if H.is_bootstrappable(n)]
        if hier:  # per-document counts over the run's own graph, resampled like the rest
            values.update(H.weighted_metrics(weights, scores.y_true, scores.y_score >= run.threshold, scores.codes,
                                             H.load_hierarchy(run.graph), hier))
        per_run.append(values)
    out = []
    for name in names:
        values = np.array([m[name] for m in per_run])  # (runs, 1 + n_boot)
        diff = np.median(values[len(runs_a):], axis=0) - np.median(values[: len(runs_a)], axis=0)
        boot = diff[1:][~np.isnan(diff[1:])]
        low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
        out.append({"metric": name, "diff": float(diff[0]), "ci_low": float(low), "ci_high": float(high),
                    "p_b_le_a": float(np.mean(boot <= 0)) if boot.size else float("nan"),
                    "n_docs": n_docs, "n_boot": n_boot, "seed": seed})
    return out


def report(paths: Sequence[str | Path], a: str | None = None, b: str | None = None,
           metrics: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Summaries per (source, dataset, system) and comparisons between systems, as one dict."""
    if (a is None) != (b is None):
        raise KeptError("give both --a and --b, or neither (then every pair of systems is compared)")
    if n_boot < 1:
        raise KeptError(f"--n-boot must be >= 1, got {n_boot}")
    runs = find_runs(paths)
    present = {k for r in runs for k in r.metrics}
    if metrics:
        unknown = [m for m in metrics if m not in present]
        if unknown:
            raise KeptError(f"metric(s) {', '.join(unknown)} in no metrics.json; known: {', '.join(sorted(present))}")
        shown, ci_names = list(metrics), [m for m in metrics if bootstrap_ci_supported(m)]
    else:
        shown = [m for m in DEFAULT_METRICS if m in present]
        ci_names = [m for m in DEFAULT_CI_METRICS if m in present]
    groups = {key: list(g) for key, g in itertools.groupby(runs, key=lambda r: r.key)}
    summary = []
    for (source, dataset, system), group in groups.items():
        values = {m: [r.metrics.get(m, np.nan) for r in group] for m in shown}
        summary.append({"source": source, "dataset": dataset, "system": system, "n": len(group),
                        "seeds": [r.seed for r in group], "runs": [str(r.path) for r in group],
                        "median": {m: _median(v) for m, v in values.items()},
                        "min": {m: float(np.nanmin(v)) if not np.isnan(v).all() else None for m, v in values.items()},
                        "max": {m: float(np.nanmax(v)) if not np.isnan(v).all() else None for m, v in values.items()}})
    comparisons = []
    datasets = sorted({k[:2] for k in groups})
    for source, dataset in datasets:
        systems = sorted(k[2] for k in groups if k[:2] == (source, dataset))
        pairs = [(a, b)] if a is not None else list(itertools.combinations(systems, 2))
        for sa, sb in pairs:
            if sa not in systems or sb not in systems or not ci_names:
                continue
            ra, rb = groups[(source, dataset, sa)], groups[(source, dataset, sb)]
            # A metric a run leaves out of its metrics.json (full-label AUC after a candidate cut,
            # coder.retrieval.rerank) is not recomputed from its scores either.
            names = [m for m in ci_names if all(m in r.metrics for r in ra + rb)]
            if not names:
                continue
            for row in compare(ra, rb, names, n_boot, seed):
                comparisons.append({"source": source, "dataset": dataset, "a": sa, "b": sb,
                                    "n_a": len(ra), "n_b": len(rb), **row})
    if a is not None and not any(c["a"] == a and c["b"] == b for c in comparisons) and ci_names:
        raise KeptError(f"no dataset has runs of both {a!r} and {b!r}; systems: {sorted({k[2] for k in groups})}")
    return {"metrics": shown, "ci_metrics": ci_names, "groups": summary, "comparisons": comparisons}


def _median(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float("nan") if np.isnan(arr).all() else float(np.nanmedian(arr))


# ---------------------------------------------------------------- output


def _fmt(value: float | None, name: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name.startswith("n_"):
        return str(int(value))
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows])


def format_report(result: dict) -> str:
    """The report as aligned text tables (metric values as fractions, as metrics.json)."""
    shown = result["metrics"]
    rows = [[g["source"], g["dataset"], g["system"], str(g["n"]), *(_fmt(g["median"][m], m) for m in shown)]
            for g in result["groups"]]
    parts = ["Median over seeds (n = seeds)", _table(["source", "dataset", "system", "n", *shown], rows)]
    if result["comparisons"]:
        c0 = result["comparisons"][0]
        rows = [[c["source"], c["dataset"], c["a"], c["b"], f"{c['n_a']}/{c['n_b']}", c["metric"],
                 _fmt(c["diff"], c["metric"], True),
                 f"[{_fmt(c['ci_low'], c['metric'], True)}, {_fmt(c['ci_high'], c['metric'], True)}]",
                 "-" if math.isnan(c["p_b_le_a"]) else f"{c['p_b_le_a']:.3f}"] for c in result["comparisons"]]
        parts += ["", f"Bootstrap difference of medians, b - a ({c0['n_boot']} resamples of the test "
                      f"documents, seed {c0['seed']}; CI = 2.5-97.5th percentile)",
                  _table(["source", "dataset", "a", "b", "runs", "metric", "diff", "95% CI", "p(b<=a)"], rows)]
    skipped = [m for m in shown if m not in result["ci_metrics"] and not bootstrap_ci_supported(m)]
    if skipped and result["comparisons"]:
        parts.append(f"(no bootstrap CI for {', '.join(skipped)})")
    return "\n".join(parts)

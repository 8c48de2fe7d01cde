"""Second stage for the full label space: the prompted coder scores each note's first-stage
candidates (prompts of N=50, in rank order), scores are merged into a (docs x label space) matrix,
one threshold is tuned on dev and applied to test.

Codes outside a note's candidates get score 0, so they all tie at the bottom: AUC over the full
label space would mostly measure the first stage's cut (PITFALLS.md). Metrics therefore carry
`candidate_micro_auc` / `candidate_macro_auc` (over candidate cells only) instead of full-label AUC;
every other metric (F1, P@k, R@k) is over the whole label space, gold codes missed by the first
stage counting as misses. Graph-aware figures (coder.evaluation.hierarchy_metrics) go under "hierarchical".

The reranked system's score is the reranker's probability fused with the first stage's
(coder.retrieval.fusion), the weight tuned on dev with the threshold; the reranker alone is reported beside it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from coder.evaluation.hierarchy_metrics import SUMMARY_NAMES, hierarchical_block
from coder.retrieval.candidates import read_candidates
from coder.retrieval.fusion import fuse, tune_fusion
from kept.errors import KeptError
from kept.io import atomic_path, atomic_write, dump_json

log = logging.getLogger(__name__)

STAGE1_SYSTEM, RERANK_SYSTEM, RERANK_ALONE_SYSTEM = "faiss-stage1", "faiss+kept-rerank", "kept-rerank-alone"


def candidate_lists(candidates: dict[str, tuple[list[str], np.ndarray]], hadm_ids: Sequence[str], k: int,
                    label_space: Sequence[str]) -> tuple[list[list[str]], list[np.ndarray]]:
    """Each note's top-k candidates inside the label space (rank order) and their stage-1 scores."""
    space = set(label_space)
    codes_out, scores_out = [], []
    for h in hadm_ids:
        if h not in candidates:
            raise KeptError(f"note {h} has no candidates: run `kept coder retrieve` on the same split")
        codes, scores = candidates[h]
        keep = [i for i, c in enumerate(codes) if c in space][:k]
        codes_out.append([codes[i] for i in keep])
        scores_out.append(np.asarray(scores, dtype=np.float32)[keep])
    return codes_out, scores_out


def merge_scores(cand_codes: Sequence[Sequence[str]], cand_scores: Sequence[np.ndarray],
                 label_space: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(docs, codes) score matrix with candidate scores in place and 0 elsewhere, and the candidate mask."""
    col = {c: j for j, c in enumerate(label_space)}
    scores = np.zeros((len(cand_codes), len(label_space)), dtype=np.float32)
    mask = np.zeros(scores.shape, dtype=bool)
    for i, (codes, s) in enumerate(zip(cand_codes, cand_scores)):
        cols = np.fromiter((col[c] for c in codes), dtype=np.int64, count=len(codes))
        scores[i, cols] = s
        mask[i, cols] = True
    return scores, mask


def stage1_probability(cosine: np.ndarray) -> np.ndarray:
    """Cosine -> (1 + cos) / 2 in [0, 1]: same order, and above the 0 of non-candidates."""
    return ((1.0 + np.asarray(cosine, dtype=np.float32)) / 2.0).clip(1e-6, 1.0)


def rerank_scores(coder, texts: Sequence[str], cand_codes: Sequence[Sequence[str]],
                  descriptions: dict[str, str], progress: bool = True) -> list[np.ndarray]:
    """P(code | note) for each note's candidates with a loaded coder (coder.models.scorer.Coder).

    Candidates go in rank order (no shuffle at inference), `coder.config.prompt_codes` per prompt.
    """
    from coder.models.scorer import score_codes

    out = []
    for text, codes in tqdm(list(zip(texts, cand_codes)), desc="reranking", disable=not progress, leave=False):
        if not codes:
            out.append(np.zeros(0, dtype=np.float32))
            continue
        out.append(np.asarray(score_codes(coder.model, coder.tokenizer, text, list(codes), descriptions,
                                          coder.config, coder.device), dtype=np.float32))
    return out


def check_prompt_room(coder, cand_codes: Sequence[Sequence[str]], descriptions: dict[str, str]) -> None:
    """Fail before any scoring when some note's candidate prompt would leave no room for the note
    (KeptError naming --prompt-codes), rather than after scoring a whole split."""
    from coder.models.prompts import MIN_NOTE_TOKENS, _end_id, chunk_codes, encode_prompt
    from coder.models.scorer import effective_max_length

    max_length = effective_max_length(coder.model, coder.config)
    room = max_length - MIN_NOTE_TOKENS - (_end_id(coder.tokenizer) is not None)
    with_masks = coder.config.head == "prompt"
    seen: set[tuple[str, ...]] = set()
    for codes in cand_codes:
        for chunk in chunk_codes(list(codes), coder.config.prompt_codes):
            if tuple(chunk) in seen:
                continue
            seen.add(tuple(chunk))
            n = len(encode_prompt(coder.tokenizer, chunk, descriptions, coder.config.template, with_masks,
                                  coder.config.desc_words).input_ids)
            if n > room:
                raise KeptError(
                    f"a prompt of {len(chunk)} candidate codes takes {n} of {max_length} tokens, leaving no room "
                    f"for the note: lower --prompt-codes (now {coder.config.prompt_codes}) or use a longer model")


def candidate_auc(y_true: np.ndarray, y_score: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """AUC over candidate cells only: micro (all candidate cells) and macro (per code, over the notes
    that have it as a candidate, codes with both classes there)."""
    from coder.evaluation.metrics import micro_auc

    y = np.asarray(y_true, dtype=np.uint8)
    micro = micro_auc(y[mask][None, :], y_score[mask][None, :]) if mask.any() else float("nan")
    per_code = []
    for j in np.flatnonzero(mask.any(axis=0)):
        m = mask[:, j]
        yj = y[m, j]
        if 0 < yj.sum() < yj.size:
            per_code.append(micro_auc(yj[None, :], y_score[m, j][None, :]))
    return {"candidate_micro_auc": micro,
            "candidate_macro_auc": float(np.mean(per_code)) if per_code else float("nan"),
            "n_codes_candidate_auc": len(per_code)}


def evaluate_scores(dev: tuple[np.ndarray, np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray, np.ndarray],
                    ks: Sequence[int] = (8, 15)) -> tuple[float, dict]:
    """(y_true, scores, candidate mask) of dev and test -> dev-tuned threshold, test metrics."""
    from coder.evaluation.metrics import all_metrics, tune_threshold

    y_dev, s_dev, m_dev = dev
    # Thresholds between candidate scores only: every non-candidate scores 0 and is never predicted.
    grid = np.unique(s_dev[m_dev])
    threshold = tune_threshold(y_dev, s_dev, grid=grid if grid.size else None)
    y, s, m = test
    metrics = all_metrics(y, s, threshold, ks=tuple(ks))
    for key in ("micro_auc", "macro_auc", "n_codes_auc"):  # not comparable with a candidate cut
        metrics.pop(key, None)
    metrics.update(candidate_auc(y, s, m))
    gold = y.sum()
    metrics["candidate_recall"] = float((y.astype(bool) & m).sum() / gold) if gold else float("nan")
    return threshold, metrics


def _write_run(out: Path, system: str, dataset: str, seed: int, threshold: float, source: str, metrics: dict,
               y: np.ndarray, s: np.ndarray, hadm_ids: Sequence[str], codes: Sequence[str], extra: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "test_scores.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, y_true=y.astype(np.uint8), y_score=s.astype(np.float32),
                                hadm_ids=np.asarray(hadm_ids, dtype=str), codes=np.asarray(codes, dtype=str))
    result = {"system": system, "dataset": dataset, "split": "test", "seed": seed, "threshold": threshold,
              "data_source": source, "metrics": metrics,
              "auc_note": "AUC over candidate cells only (candidate_*_auc); full-label AUC omitted", **extra}
    with atomic_write(out / "metrics.json") as fh:
        dump_json(result, fh, indent=1)


def run_rerank(candidates_dir: str | Path, set_dir: str | Path, out_dir: str | Path,
               checkpoint: str | Path | None = None, k: int = 300, ks: Sequence[int] = (8, 15),
               device: str = "auto", max_docs: int | None = None, progress: bool = True,
               prompt_codes: int | None = None, stage1_weight: float | None = None) -> dict:
    """Stage 1 alone and (with a checkpoint) stage 1 + rerank on a set's test split, threshold from dev.

    `prompt_codes` overrides the checkpoint's codes per prompt: full-label-space descriptions are
    longer than a -50 set's, so a prompt of 50 of them may leave no room for the note.
    `stage1_weight` fixes the fusion weight (0: the reranker alone); by default it is tuned on dev.

    Writes OUT/faiss-stage1/, OUT/faiss+kept-rerank/ (fused) and OUT/kept-rerank-alone/ (metrics.json
    + test_scores.npz, the run layout `kept report` reads) and OUT/reranked_{dev,test}.parquet;
    returns {system: metrics.json}.
    """
    from coder.data.datasets import read_codes, read_split

    if stage1_weight is not None and not 0.0 <= stage1_weight <= 1.0:
        raise KeptError(f"--stage1-weight must be in [0, 1], got {stage1_weight}")
    cdir = Path(candidates_dir)
    cdir = cdir.parent if cdir.is_file() else cdir
    set_dir, out = Path(set_dir), Path(out_dir)
    label_space = read_codes(set_dir)
    coder, descriptions = _load_reranker(checkpoint, device, prompt_codes, k, label_space)
    loaded = {}
    for split in ("dev", "test"):  # both splits read and checked before any scoring
        docs = read_split(set_dir, split)[:max_docs]
        cands = read_candidates(cdir / f"candidates_{split}.parquet")
        loaded[split] = (docs, *candidate_lists(cands, [d.hadm_id for d in docs], k, label_space))
        if coder is not None:
            check_prompt_room(coder, loaded[split][1], descriptions)
    per_split = {split: _score_split(docs, codes, s1, label_space, coder, descriptions, progress)
                 for split, (docs, codes, s1) in loaded.items()}
    dev, test = per_split["dev"], per_split["test"]
    weight = None
    if coder is not None:
        weight = stage1_weight if stage1_weight is not None else _tuned_weight(dev, label_space)
        for split, entry in per_split.items():
            fused = fuse(entry["s1"], entry["s2"], weight)
            entry[RERANK_SYSTEM] = merge_scores(entry["codes"], fused, label_space)[0]
            # stage1_score as retrieved (cosine); fused_score on the probability scale it was fused on
            _write_reranked(out / f"reranked_{split}.parquet", entry["docs"], entry["codes"], loaded[split][2],
                            entry["s2"], fused)
    meta_file = set_dir.parent / "dataset.json"
    source = json.loads(meta_file.read_text(encoding="utf-8")).get("source", "unknown") if meta_file.is_file() \
        else "unknown"
    # Every system is judged on the coder's graph (bundled ICD-9-CM without a coder or a graph).
    graph = coder.config.graph if coder is not None else None
    results = {}
    for system in (STAGE1_SYSTEM, RERANK_SYSTEM, RERANK_ALONE_SYSTEM):
        if system not in test:
            continue
        threshold, metrics = evaluate_scores((dev["y"], dev[system], dev["mask"]),
                                             (test["y"], test[system], test["mask"]), ks)
        extra = {"candidates": str(cdir), "top_k": k,
                 "hierarchical": hierarchical_block(test["y"], test[system] >= threshold, label_space, graph)}
        if system != STAGE1_SYSTEM:
            extra.update(checkpoint=str(checkpoint), rerank_seconds_test=round(test["seconds"], 2),
                         prompt_codes=coder.config.prompt_codes, stage1_weight=weight if system == RERANK_SYSTEM else 0.0)
            if system == RERANK_SYSTEM:
                extra["stage1_weight_from"] = "dev" if stage1_weight is None else "given"
        seed = coder.config.seed if (coder is not None and system != STAGE1_SYSTEM) else 0
        _write_run(out / system, system, set_dir.name, seed, threshold, source, metrics, test["y"], test[system],
                   [d.hadm_id for d in test["docs"]], label_space, extra)
        results[system] = json.loads((out / system / "metrics.json").read_text(encoding="utf-8"))
    return results


def _load_reranker(checkpoint, device: str, prompt_codes: int | None, k: int, label_space: Sequence[str]):
    """(coder, descriptions of the whole label space), or (None, {}) without a checkpoint."""
    if checkpoint is None:
        return None, {}
    from coder.candidate_training import warn_if_rerank_differs
    from coder.models.prompts import code_descriptions
    from coder.models.scorer import load_coder

    coder = load_coder(checkpoint, device)
    if prompt_codes:
        coder.config.prompt_codes = prompt_codes
    warn_if_rerank_differs(checkpoint, coder.config, k)  # a reranker trained on candidates: same prompts?
    missing = [c for c in label_space if c not in coder.descriptions]
    return coder, {**code_descriptions(missing, coder.config.graph), **coder.descriptions}


def _score_split(docs, codes: list[list[str]], s1: list[np.ndarray], label_space: Sequence[str], coder,
                 descriptions: dict[str, str], progress: bool) -> dict:
    """Labels, candidate mask, stage-1 probabilities and (with a coder) the reranker's, of one split."""
    from coder.data.datasets import label_matrix

    s1 = [stage1_probability(s) for s in s1]
    s1m, mask = merge_scores(codes, s1, label_space)
    entry = {"docs": docs, "y": label_matrix(docs, label_space), "mask": mask, "codes": codes, "s1": s1,
             STAGE1_SYSTEM: s1m}
    if coder is not None:
        t0 = time.perf_counter()
        entry["s2"] = rerank_scores(coder, [d.text for d in docs], codes, descriptions, progress)
        entry["seconds"] = time.perf_counter() - t0
        entry[RERANK_ALONE_SYSTEM] = merge_scores(codes, entry["s2"], label_space)[0]
    return entry


def _tuned_weight(dev: dict, label_space: Sequence[str]) -> float:
    """The first stage's weight in the fused score, tuned on dev (with its threshold)."""
    weight, threshold, metrics = tune_fusion(dev["y"], dev["codes"], dev["s1"], dev["s2"], label_space)
    log.info("fusion: the first stage's weight %.2f (dev micro-F1 %.4f at threshold %.3f)", weight,
             metrics["micro_f1"], threshold)
    return weight


def _write_reranked(path: Path, docs, codes: Sequence[Sequence[str]], s1: Sequence[np.ndarray],
                    s2: Sequence[np.ndarray], fused: Sequence[np.ndarray]) -> None:
    n = [len(c) for c in codes]

    def flat(parts):
        return np.concatenate(parts) if n else []

    df = pd.DataFrame({"hadm_id": np.repeat([d.hadm_id for d in docs], n).astype(str),
                       "code": [c for cs in codes for c in cs], "rank": np.concatenate([np.arange(1, m + 1) for m in n]),
                       "stage1_score": flat(s1), "rerank_score": flat(s2), "fused_score": flat(fused)})
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def format_comparison(results: dict[str, dict], names: Sequence[str] = ("micro_f1", "macro_f1", "macro_f1_mean",
                      "p@8", "p@15", "r@8", "r@15", "candidate_micro_auc", "candidate_macro_auc",
                      "candidate_recall")) -> str:
    """Systems side by side, rates as fractions (as metrics.json)."""
    systems = list(results)
    head = f"{'metric':<20}" + "".join(f"{s:>20}" for s in systems)
    lines = [head, f"{'threshold (dev)':<20}" + "".join(f"{results[s]['threshold']:>20.4f}" for s in systems)]
    for n in names:
        lines.append(f"{n:<20}" + "".join(f"{results[s]['metrics'][n]:>20.4f}" for s in systems))
    for n in SUMMARY_NAMES:  # graph-aware figures, kept apart in metrics.json
        lines.append(f"{n:<20}" + "".join(f"{results[s]['hierarchical']['metrics'][n]:>20.4f}"
                                          for s in systems))
    return "\n".join(lines)

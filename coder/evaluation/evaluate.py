"""`kept coder eval`: test metrics of a coder at its dev-tuned threshold, written as metrics.json +
<split>_scores.npz (the run layout `kept report` reads) and a table. metrics.json keeps exact-match
figures under "metrics" and graph-aware ones under "hierarchical"."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from coder.data.datasets import label_matrix
from coder.models.scorer import load_coder, score_codes
from kept.io import atomic_path, atomic_write, dump_json

log = logging.getLogger(__name__)

SYSTEM_NAMES = {"prompt": "kept-prompt", "label-attention": "label-attention", "tfidf-lr": "tfidf-lr"}


def system_name(config) -> str:
    """A coder's row name: its head's, with `-evidence` when the prompts read evidence sentences."""
    return SYSTEM_NAMES[config.head] + ("-evidence" if config.note_view == "evidence" else "")


def format_table(metrics: dict[str, float], title: str = "") -> str:
    """Metrics as a two-column text table: rates as fractions (as metrics.json), counts (n_*) as they are."""
    lines = [title] if title else []
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        shown = str(v) if isinstance(v, int) or k.startswith("n_") else f"{v:.4f}"
        lines.append(f"{k:<{width}}  {shown}")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | Path, set_dir: str | Path, out_dir: str | Path, split: str = "test",
                        ks: Sequence[int] = (5, 8, 15), system: str | None = None, device: str = "auto",
                        max_docs: int | None = None) -> dict:
    """Score `split` of a set at the checkpoint's dev-tuned threshold; write metrics.json + scores."""
    from coder.data.datasets import read_codes, read_split
    from coder.evaluation.metrics import all_metrics
    from coder.models.prompts import code_descriptions

    coder = load_coder(checkpoint, device)
    set_dir = Path(set_dir)
    docs = read_split(set_dir, split)[:max_docs]
    codes = read_codes(set_dir)
    descriptions = {**code_descriptions([c for c in codes if c not in coder.descriptions]),
                    **coder.descriptions}
    if codes != coder.codes:
        log.info("set has a different label list than the checkpoint: scoring the set's %d codes", len(codes))
    logits = score_codes(coder.model, coder.tokenizer, [d.text for d in docs], codes, descriptions,
                         coder.config, coder.device, progress=True, logits=True)
    scores = torch.sigmoid(torch.from_numpy(logits)).numpy()  # what the threshold applies to
    y = label_matrix(docs, codes)
    # Ranking metrics on the logits: float32 sigmoids tie at 1.0 and make P@k depend on code order.
    metrics = all_metrics(y, scores, coder.threshold, ks=tuple(ks), rank_score=logits)
    return write_eval(out_dir, system or system_name(coder.config), set_dir, split, coder.config.seed,
                      coder.threshold, str(checkpoint), docs, codes, y, scores, metrics, coder.config.graph, logits)


def write_eval(out_dir: str | Path, system: str, set_dir: Path, split: str, seed: int, threshold: float,
               checkpoint: str, docs, codes: Sequence[str], y: np.ndarray, scores: np.ndarray, metrics: dict,
               graph: str | None = None, logits: np.ndarray | None = None) -> dict:
    """The run layout every scorer writes (metrics.json + <split>_scores.npz), so `kept report`
    compares any two systems the same way; the hierarchical figures over `graph` are added."""
    from coder.evaluation.hierarchy_metrics import hierarchical_block

    hierarchical = hierarchical_block(y, scores >= threshold, list(codes), graph)
    meta_file = Path(set_dir).parent / "dataset.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    result = {"system": system, "dataset": Path(set_dir).name, "split": split, "seed": seed, "threshold": threshold,
              "data_source": meta.get("source", "unknown"), "checkpoint": checkpoint, "metrics": metrics,
              "hierarchical": hierarchical}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{split}_scores.npz") as tmp:
        with open(tmp, "wb") as fh:
            extra = {} if logits is None else {"logits": logits.astype(np.float32)}
            np.savez_compressed(fh, y_true=y, y_score=scores.astype(np.float32), **extra,
                                hadm_ids=np.array([d.hadm_id for d in docs], dtype=str),
                                codes=np.array(codes, dtype=str))
    with atomic_write(out / "metrics.json") as fh:
        dump_json(result, fh, indent=1)
    return result

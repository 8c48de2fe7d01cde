"""Coder accuracy on the synthetic -50 and -rare50 sets, every system against TF-IDF + logistic
regression in the same run, on the same train/dev/test files (threshold tuned on dev).

    python benchmarks/coder_accuracy.py --out runs/bench-accuracy [--data DIR] [--hsap DIR]
        [--seeds 0 1 2] [--train-docs 120] [--epochs 3] [--systems tfidf-lr prompt ...]

Systems: tfidf-lr; label-attention and kept-prompt (trained from the plain MiniLM made long);
kept-prompt-evidence (the same, each prompt one code and the note's sentence that best matches it,
found with the plain MiniLM's term index, OUT/index); kept-prompt-hsap (from --hsap, an HSAP
checkpoint, made long); kept-prompt-zeroshot (no training); faiss-zeroshot (the first stage's score
of each code over the note's sentences, no training on notes).
Each run lands in OUT/runs/<set>/<system>-s<seed>/ with the usual metrics.json + test_scores.npz,
so `kept report --runs OUT/runs` can recompute anything. Prints one JSON line per (set, system,
seed) and one per paired bootstrap comparison (b - a, 95% CI over test notes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("micro_auc", "macro_auc", "micro_f1", "macro_f1", "p@5")
TRAINED = ("tfidf-lr", "label-attention", "kept-prompt", "kept-prompt-evidence", "kept-prompt-hsap")
SYSTEMS = TRAINED + ("kept-prompt-zeroshot", "faiss-zeroshot")


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def ensure_data(args) -> Path:
    import kgraph
    from coder.data.synth import SynthConfig, prepare_synth

    if args.data:
        return Path(args.data)
    data = Path(args.out) / "data"
    if not (data / "dataset.json").is_file():
        prepare_synth(kgraph.build_graph(progress=False), data,
                      SynthConfig(docs=600, seed=0, words_min=200, words_max=400, progress=False), "bundled")
    return data


def long_models(args) -> dict[str, Path]:
    """The MiniLM (and HSAP) encoders as 1,024-token Longformer MLMs, made once."""
    from coder.models.longify import longify
    from kept.hf import default_model_path

    out = {}
    for name, src in (("minilm", default_model_path()), ("hsap", args.hsap)):
        if src is None:
            continue
        dst = Path(args.out) / f"long-{name}"
        if not (dst / "config.json").is_file():
            longify(src, dst, max_length=args.max_length, attention_window=256)
        out[name] = dst
    return out


def coder_config(system: str, seed: int, args):
    from coder.config import EVIDENCE_RECIPE, CoderConfig

    head = {"tfidf-lr": "tfidf-lr", "label-attention": "label-attention"}.get(system, "prompt")
    epochs = 0 if system == "kept-prompt-zeroshot" else args.epochs
    if system == "kept-prompt-evidence":  # one code and its sentence per prompt: short inputs, big batches
        recipe = {**EVIDENCE_RECIPE, **({"lm_head_lr": args.lm_head_lr} if args.lm_head_lr else {})}
        return CoderConfig(head=head, epochs=epochs, lr=args.lr, template=args.template, pos_weight=args.pos_weight,
                           seed=seed, evidence_index=str(ensure_index(args)), **recipe)
    return CoderConfig(head=head, epochs=epochs, lr=args.lr, grad_accum=1, batch_size=args.batch_size,
                       global_stride=args.global_stride,
                       template=args.template, pos_weight=args.pos_weight, lm_head_lr=args.lm_head_lr, seed=seed)


def run_system(system: str, set_dir: Path, seed: int, models: dict, args) -> dict:
    from coder.evaluation.evaluate import evaluate_checkpoint
    from coder.training import train_coder

    out = Path(args.out) / "runs" / set_dir.name / f"{system}-s{seed}"
    if (out / "eval" / "metrics.json").is_file():  # resumable: a finished run is not redone
        return json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    if system == "faiss-zeroshot":
        return faiss_zeroshot(set_dir, out, ensure_index(args), system, args)
    model = models["hsap" if system.endswith("hsap") else "minilm"]
    train_coder(set_dir, model, out, coder_config(system, seed, args), max_docs=args.train_docs)
    return evaluate_checkpoint(out / "best", set_dir, out / "eval", system=system)


def ensure_index(args) -> Path:
    """The plain MiniLM's term index over the bundled graph (OUT/index), built once."""
    from coder.retrieval.index import IndexConfig, build_index
    from kept.hf import default_model_path

    index_dir = Path(args.out) / "index"
    if not (index_dir / "index.json").is_file():
        build_index(default_model_path(), index_dir, None, IndexConfig(), progress=False)
    return index_dir


def faiss_zeroshot(set_dir: Path, out: Path, index_dir: Path, system: str, args) -> dict:
    """Scores = the first stage's score over the set's own codes; threshold on dev."""
    import numpy as np

    from coder.data.datasets import label_matrix, read_codes, read_split
    from coder.evaluation.evaluate import write_eval
    from coder.evaluation.metrics import all_metrics, tune_threshold
    from coder.retrieval.candidates import RetrieveConfig, read_candidates, retrieve

    codes = read_codes(set_dir)
    retrieve(index_dir, set_dir, out / "cands", RetrieveConfig(top_k=len(codes)), progress=False)
    mats = {}
    for split in ("dev", "test"):
        docs = read_split(set_dir, split)
        cands = read_candidates(out / "cands" / f"candidates_{split}.parquet")
        col = {c: j for j, c in enumerate(codes)}
        s = np.full((len(docs), len(codes)), -1.0, dtype=np.float32)
        for i, d in enumerate(docs):
            ranked, scores = cands.get(d.hadm_id, ([], []))
            for c, v in zip(ranked, scores):
                s[i, col[c]] = v
        mats[split] = (label_matrix(docs, codes), (s + 1) / 2, docs)  # cosine -> [0, 1]
    threshold = tune_threshold(mats["dev"][0], mats["dev"][1])
    y, s, docs = mats["test"]
    return write_eval(out / "eval", system, set_dir, "test", 0, threshold, str(index_dir), docs, codes, y, s,
                      all_metrics(y, s, threshold))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-accuracy")
    ap.add_argument("--data", help="a `kept data synth` folder (default: made in OUT/data, the demo's shape)")
    ap.add_argument("--hsap", help="an HSAP checkpoint (kept hsap train) for kept-prompt-hsap")
    ap.add_argument("--sets", nargs="+", default=["50", "rare50"])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--train-docs", type=int, help="train (and dev) notes per neural run (default all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pos-weight", type=float, default=1.0)
    ap.add_argument("--lm-head-lr", type=float)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--template", default="kept")
    ap.add_argument("--global-stride", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    data = ensure_data(args)
    systems = [s for s in args.systems if s != "kept-prompt-hsap" or args.hsap]
    models = long_models(args)
    for set_name in args.sets:
        for system in systems:
            seeds = [0] if system in ("faiss-zeroshot", "kept-prompt-zeroshot", "tfidf-lr") else args.seeds
            for seed in seeds:
                t0 = time.perf_counter()
                res = run_system(system, data / set_name, seed, models, args)
                emit(set=f"synth-{set_name}", system=system, seed=seed, seconds=round(time.perf_counter() - t0, 1),
                     train_docs=args.train_docs, **{k: round(res["metrics"][k], 4) for k in METRICS})
    compare_all(args, systems)
    return 0


def compare_all(args, systems: list[str]) -> None:
    """Paired bootstrap of each system against TF-IDF-LR and kept-prompt against label attention."""
    from coder.evaluation.report import report

    pairs = [("tfidf-lr", s) for s in systems if s != "tfidf-lr"] + \
        [("label-attention", "kept-prompt"), ("label-attention", "kept-prompt-evidence"),
         ("kept-prompt", "kept-prompt-evidence")]
    for a, b in pairs:
        if a not in systems or b not in systems:
            continue
        res = report([Path(args.out) / "runs"], a=a, b=b, metrics=["micro_f1", "macro_f1", "macro_auc"],
                     n_boot=args.n_boot)
        for row in res.get("comparisons", []):
            emit(kind="comparison", **row)  # row names its systems (a, b)


if __name__ == "__main__":
    raise SystemExit(main())

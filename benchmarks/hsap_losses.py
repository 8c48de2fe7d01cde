"""HSAP losses compared on the held-out short -> long title retrieval, at the demo's budget.

Same setup as `kept demo` step 3: 10% of the 3-digit categories held out (seed 0), their short
titles ranked against 4,000 long titles (every gold code plus a seeded sample), MiniLM trained for
120 steps of 64 terms at lr 5e-5. For each pooling it evaluates MiniLM itself, then each loss
(`triplet-euclidean` = eq. 3 as written, `triplet-angular`, `infonce`), with and without
`--hard-negatives` (triplet losses only). One JSON line per result.

    python benchmarks/hsap_losses.py                               # the whole grid (~12 runs)
    python benchmarks/hsap_losses.py --pooling mean --hard-negatives 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOSSES = {"triplet-euclidean": ("triplet", "euclidean"), "triplet-angular": ("triplet", "angular"),
          "infonce": ("infonce", "euclidean")}


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    ap.add_argument("--pooling", nargs="+", default=["mean", "cls"], choices=["mean", "cls"])
    ap.add_argument("--hard-negatives", nargs="+", type=int, default=[0, 1],
                    help="0 = every triplet (the paper); N = the N closest negatives per pair")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--candidates", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true", help="skip MiniLM without training")
    ap.add_argument("--out", help="keep the trained models here (default: a temp folder, deleted)")
    args = ap.parse_args(argv)

    import kgraph
    from contrastive.evaluate import eval_set, evaluate
    from contrastive.sampling import heldout_split
    from contrastive.train import HSAPConfig, train
    from kept.encoder import TermEncoder

    G = kgraph.build_graph(progress=False)
    es = eval_set(G, heldout_split(G, 0.1, args.seed), "leaves", args.candidates, seed=args.seed)
    keys = ("acc@1", "acc@5", "mrr", "sibling_error_share")
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="hsap_losses_")
    root = Path(args.out or tmp.name)
    try:
        for pooling in args.pooling:
            common = dict(pooling=pooling, queries=len(es.queries), candidates=len(es.candidates))
            if not args.no_baseline:
                res = evaluate(TermEncoder.load(None, max_length=32, pooling=pooling), G, es, progress=False)
                emit(model="MiniLM", loss=None, hard_negatives=None, **common, **{k: res[k] for k in keys})
            for name in args.losses:
                loss, distance = LOSSES[name]
                for h in args.hard_negatives if loss == "triplet" else [0]:
                    out = root / f"{name}-{pooling}-h{h}"
                    t0 = time.perf_counter()
                    summary = train(HSAPConfig(out=str(out), loss=loss, distance=distance, steps=args.steps,
                                               seed=args.seed, lr=args.lr, pooling=pooling, holdout_fraction=0.1,
                                               holdout_seed=args.seed, save_every=10**9, hard_negatives=h or None),
                                    progress=False)
                    res = evaluate(TermEncoder.load(str(out), max_length=32, pooling="auto"), G, es, progress=False)
                    emit(model="MiniLM + HSAP", loss=name, hard_negatives=h or None, **common,
                         **{k: res[k] for k in keys}, norm_start=summary["norm_start"], norm_end=summary["norm_end"],
                         last_loss=summary["last_log"].get("loss"), seconds=round(time.perf_counter() - t0, 1))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

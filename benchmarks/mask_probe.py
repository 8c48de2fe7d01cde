"""Does a frozen long model already know, at a code's mask, whether the note mentions the code?

A linear probe (class-balanced logistic regression) on the mask states of every layer, trained on
N train notes and scored on dev notes of a set; the baseline in the same run is layer 0 (the
embeddings: no reading of the note at all). `--pseudo` replaces each note by a short text of the
graph's terms for its labels and two distractor codes (attention dilution: one mention among ~60
tokens instead of ~600).

    python benchmarks/mask_probe.py --model LONG --data SYNTH/50 [--pseudo] [--template kept]

Prints one JSON line per layer (micro/macro AUC, micro-F1 at the dev-tuned threshold).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pseudo_notes(G, docs, codes, seed: int) -> list[str]:
    from kgraph.query import terms_of

    rng = random.Random(seed)
    outside = [n for n, d in G.nodes(data=True) if d.get("type") == "code" and d.get("leaf") and n not in set(codes)]
    texts = []
    for d in docs:
        cs = list(d.labels) + rng.sample(outside, 2)
        rng.shuffle(cs)
        texts.append(" ".join(f"patient has {rng.choice(terms_of(G, c)).text.lower()}." for c in cs if terms_of(G, c)))
    return texts


def mask_states(model_dir: str, texts, labels, codes, template: str, stride: int):
    from coder.models.prompts import build_examples, build_prompts, code_descriptions, collate
    from coder.models.tuning import base_encoder
    from kept.hf import load_mlm, load_tokenizer

    tok = load_tokenizer(model_dir)
    enc = base_encoder(load_mlm(model_dir).eval())
    prompts = build_prompts(tok, codes, code_descriptions(codes), len(codes), template)
    xs, ys = [], []
    for e in build_examples(tok, texts, labels, prompts, 1024):
        b = collate([e], prompts[0], tok.pad_token_id, stride)
        with torch.no_grad():
            hs = enc(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                     global_attention_mask=b["global_attention_mask"], output_hidden_states=True).hidden_states
        xs.append(torch.stack([h[0, b["mask_positions"][0]] for h in hs]).numpy())
        ys.append(b["labels"][0].numpy())
    return np.stack(xs), np.stack(ys).astype(np.uint8)  # (docs, layers, codes, H), (docs, codes)


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression

    import kgraph
    from coder.data.datasets import read_codes, read_split
    from coder.evaluation.metrics import all_metrics, tune_threshold

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a long MLM (kept model longify)")
    ap.add_argument("--data", required=True, help="a set folder (train/dev csv, codes.txt)")
    ap.add_argument("--train-notes", type=int, default=48)
    ap.add_argument("--dev-notes", type=int, default=40)
    ap.add_argument("--template", default="paper")
    ap.add_argument("--global-stride", type=int, default=1)
    ap.add_argument("--pseudo", action="store_true", help="short graph-term texts instead of the notes")
    args = ap.parse_args(argv)
    codes = read_codes(args.data)
    split = {s: read_split(args.data, s)[:n] for s, n in (("train", args.train_notes), ("dev", args.dev_notes))}
    G = kgraph.build_graph(progress=False) if args.pseudo else None
    feats = {}
    for s, docs in split.items():
        texts = pseudo_notes(G, docs, codes, seed=len(s)) if args.pseudo else [d.text for d in docs]
        feats[s] = mask_states(args.model, texts, [d.labels for d in docs], codes, args.template, args.global_stride)
    (xt, yt), (xd, yd) = feats["train"], feats["dev"]
    for layer in range(xt.shape[1]):
        probe = LogisticRegression(max_iter=2000, class_weight="balanced")
        probe.fit(xt[:, layer].reshape(-1, xt.shape[-1]), yt.reshape(-1))
        z = probe.decision_function(xd[:, layer].reshape(-1, xd.shape[-1])).reshape(yd.shape)
        s = (1 / (1 + np.exp(-z))).astype(np.float32)
        m = all_metrics(yd, s, tune_threshold(yd, s))
        print(json.dumps({"layer": layer, "pseudo": args.pseudo, "template": args.template,
                          **{k: round(m[k], 3) for k in ("micro_auc", "macro_auc", "micro_f1")}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

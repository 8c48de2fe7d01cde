"""HSAP training throughput (terms/s), with the bare encoder as the baseline in the same run.

For each batch size n = i*j*k it times, on the same device and the same sampled batches:
  - `encoder`: forward + backward + AdamW step of the encoder on the batch's texts with a trivial
    loss (the mean of the first-token vectors): the floor any loss must pay;
  - `triplet`: the full HSAP step (sampling, triplet mining, dynamic-margin loss);
  - `infonce`: the same with the InfoNCE ablation loss.
`ratio_vs_encoder` = method terms/s / encoder terms/s (1.0 means sampling, mining and the loss are
free). One JSON line per result.

    python benchmarks/hsap_throughput.py                 # CPU, or the GPU when there is one
    python benchmarks/hsap_throughput.py --device cpu --steps 10 --batch 8x4x2 16x4x2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="encoder (default: the bundled MiniLM)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per method (after 2 warm-up steps)")
    ap.add_argument("--batch", nargs="+", default=["8x4x2", "16x4x2"], help="i x j x k")
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], default="auto")
    args = ap.parse_args(argv)

    from contrastive.losses import HierarchicalTripletLoss, InfoNCELoss
    from contrastive.sampling import BatchSampler, SamplerConfig, heldout_split
    from contrastive.train import HSAPConfig, load_graph_for
    from contrastive.triplets import sampler_triplets
    from kept.device import amp_dtype
    from kept.encoder import TermEncoder

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = amp_dtype(device, HSAPConfig(amp=args.amp).amp)
    G = load_graph_for(None)
    heldout = heldout_split(G, 0.1, 0)
    enc = TermEncoder.load(args.model, max_length=args.max_length)
    enc.model.to(device).train()
    opt = torch.optim.AdamW(enc.model.parameters(), lr=1e-7)  # tiny lr: weights barely move between methods
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    losses = {"triplet": HierarchicalTripletLoss(), "infonce": InfoNCELoss()}
    for spec in args.batch:
        i, j, k = (int(x) for x in spec.lower().split("x"))
        sampler = BatchSampler(G, SamplerConfig(i=i, j=j, k=k, seed=0), exclude=heldout)
        results = {}
        for method in ("encoder", "triplet", "infonce"):
            terms, t0, n_trip = 0, 0.0, 0
            for step in range(args.steps + 2):
                if step == 2:
                    sync()
                    t0, terms, n_trip = time.perf_counter(), 0, 0
                batch = sampler.batch(step)
                with autocast():
                    emb = enc(batch.texts)
                if method == "encoder":
                    loss = emb.float().mean()
                else:
                    trip = sampler_triplets(sampler, batch)
                    loss = losses[method](emb, trip).loss
                    n_trip += len(trip)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                terms += len(batch)
            sync()
            secs = time.perf_counter() - t0
            results[method] = terms / secs
            row = dict(bench="hsap_throughput", device=str(device), amp=str(amp).replace("torch.", ""),
                       threads=torch.get_num_threads(), batch=f"{i}x{j}x{k}", terms_per_batch=i * j * k,
                       method=method, steps=args.steps, terms_per_s=round(results[method], 1),
                       ratio_vs_encoder=round(results[method] / results["encoder"], 3))
            if method != "encoder":
                row["triplets_per_batch"] = round(n_trip / args.steps)
            emit(**row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

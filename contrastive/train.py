"""HSAP training: sampled level-wise batches -> encoder -> triplet (or InfoNCE) loss -> AdamW.

CPU or GPU (AMP bf16/fp16), gradient accumulation, `torchrun` multi-GPU (DDP when WORLD_SIZE > 1,
each rank its own sampler stream), checkpoints as `save_pretrained` folders plus `hsap_state.pt`
(optimizer, scheduler, step) so `--resume` continues where a run stopped, loss logged per level and
per triplet kind in `OUT/train_log.jsonl`. The held-out categories never reach the sampler.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from contrastive.encoder import TermEncoder
from contrastive.losses import LOSSES
from contrastive.sampling import BatchSampler, HeldOut, SamplerConfig, heldout_split
from contrastive.triplets import sampler_triplets
from kept.errors import InputFileError, KeptError
from kept.io import atomic_dir
from kept.toml import tomllib

log = logging.getLogger(__name__)
STATE_FILE, CONFIG_FILE, LOG_FILE = "hsap_state.pt", "hsap_config.json", "train_log.jsonl"


@dataclass
class HSAPConfig:
    """Defaults: the paper's loss and margins; i, j, k, lr, steps are not in the paper (SapBERT-like
    lr 2e-5, 10% linear warm-up, AdamW weight decay 0.01; i*j*k = 8*4*2 = 64 terms per batch)."""

    model: str | None = None          # path or hub id; None: the bundled MiniLM
    graph: str | None = None          # `kept graph build` directory; None: the bundled ICD-9-CM graph
    out: str = "hsap_model"
    loss: str = "triplet"             # triplet | infonce
    i: int = 8
    j: int = 4
    k: int = 2
    seed: int = 0
    steps: int = 1000                 # optimizer steps
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 32              # SapBERT uses 25; ICD long titles often need ~30 tokens
    pooling: str = "auto"             # auto: the model folder's own (MiniLM: mean), else cls (KEPT, SapBERT)
    amp: str = "auto"                 # auto (bf16/fp16 on GPU, off on CPU) | bf16 | fp16 | none
    temperature: float = 0.05         # InfoNCE only
    detach_sibling_margin: bool = True
    hard_negatives: int | None = None  # triplet only: keep the N hardest negatives per pair (not in the paper)
    holdout_fraction: float = 0.1
    holdout_seed: int = 0
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2
    device: str = "auto"

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "HSAPConfig":
        """Values from a TOML file (top level or an [hsap] table), then non-None `overrides`."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputFileError(p, f"cannot read HSAP config: {exc}") from exc
        data = data.get("hsap", data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputFileError(p, f"unknown HSAP config keys: {', '.join(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise KeptError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise KeptError(f"amp must be auto, bf16, fp16 or none; got {self.amp!r}")
        if self.hard_negatives is not None and self.hard_negatives < 1:
            raise KeptError(f"hard_negatives must be >= 1; got {self.hard_negatives}")
        if self.steps < 1 or self.grad_accum < 1:
            raise KeptError("steps and grad_accum must be >= 1")


def make_loss(cfg: HSAPConfig) -> torch.nn.Module:
    if cfg.loss == "infonce":
        return LOSSES["infonce"](temperature=cfg.temperature)
    return LOSSES["triplet"](detach_sibling_margin=cfg.detach_sibling_margin, hard_negatives=cfg.hard_negatives)


def load_graph_for(path: str | None):
    """The graph directory `path` (already chosen by the caller), or the bundled graph for None."""
    import kgraph

    return kgraph.load_graph(path) if path else kgraph.build_graph(progress=False)


def _amp_dtype(cfg: HSAPConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "none" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


class _Dist:
    """torchrun's environment: rank, world size, local device; DDP only when WORLD_SIZE > 1."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.world > 1 and not torch.distributed.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0


def save_checkpoint(enc: TermEncoder, directory: Path, state: dict, cfg: HSAPConfig, heldout: HeldOut) -> None:
    with atomic_dir(directory) as tmp:
        enc.save(tmp)
        torch.save(state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(_config_record(cfg, heldout), indent=2) + "\n", encoding="utf-8")


def _config_record(cfg: HSAPConfig, heldout: HeldOut) -> dict:
    return {**asdict(cfg), "heldout_categories": sorted(heldout.categories),
            "heldout_codes": len(heldout.codes)}


def train(cfg: HSAPConfig, progress: bool = True, resume: bool = False) -> dict:
    """Run HSAP; returns a summary (steps, seconds, terms/s, last losses). The final model is
    saved into `cfg.out` itself (config.json, weights, tokenizer, hsap_config.json)."""
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    dist = _Dist(cfg.device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + dist.rank)
    G = load_graph_for(cfg.graph)
    heldout = heldout_split(G, cfg.holdout_fraction, cfg.holdout_seed)
    sampler = BatchSampler(G, SamplerConfig(i=cfg.i, j=cfg.j, k=cfg.k, seed=cfg.seed),
                           exclude=heldout, stream=dist.rank)
    ckpts = _checkpoints(out) if out.is_dir() else []
    if resume and not ckpts:
        raise KeptError(f"--resume: no checkpoint-* folder in {out}")
    resume_from = ckpts[-1] if resume else None
    enc = TermEncoder.load(resume_from or cfg.model, max_length=cfg.max_length, pooling=cfg.pooling)
    cfg = replace(cfg, pooling=enc.pooling)  # hsap_config.json records what "auto" chose
    enc.model.to(dist.device).train()
    loss_fn = make_loss(cfg)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [
        {"params": [p for n, p in enc.model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in enc.model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)
    amp = _amp_dtype(cfg, dist.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    start = 0
    if resume_from is not None:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = state["step"]
        log.info("resumed from %s at step %d", resume_from, start)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        enc.model = DDP(enc.model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(_config_record(cfg, heldout), indent=2) + "\n", encoding="utf-8")

    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    t0, terms_seen, last = time.perf_counter(), 0, {}
    bar = tqdm(range(start, cfg.steps), desc="hsap", unit="step", disable=not (progress and dist.main),
               initial=start, total=cfg.steps)
    logf = open(out / LOG_FILE, "a", encoding="utf-8") if dist.main else None
    try:
        for step in bar:
            for micro in range(cfg.grad_accum):
                batch = sampler.batch((step * cfg.grad_accum + micro))
                trip = sampler_triplets(sampler, batch)
                with torch.autocast(dist.device.type, dtype=amp) if amp else contextlib.nullcontext():
                    emb = enc(batch.texts)
                res = loss_fn(emb, trip)
                scaler.scale(res.loss / cfg.grad_accum).backward()
                terms_seen += len(batch)
                value = float(res.loss.detach())
                sums["loss"][0] += value; sums["loss"][1] += 1
                sums[f"level:{batch.level}"][0] += value; sums[f"level:{batch.level}"][1] += 1
                for kind, (s, c) in res.per_kind.items():
                    sums[f"kind:{kind}"][0] += s; sums[f"kind:{kind}"][1] += c
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(enc.model.parameters(), cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            if dist.main and (done % cfg.log_every == 0 or done == cfg.steps):
                last = {k: v[0] / max(v[1], 1) for k, v in sums.items()}
                rec = {"step": done, "lr": sched.get_last_lr()[0], **{k: round(v, 5) for k, v in last.items()}}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                sums.clear()
            if dist.main and (done % cfg.save_every == 0 or done == cfg.steps):
                state = {"step": done, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "scaler": scaler.state_dict(), "sampler_seed": cfg.seed, "world": dist.world}
                save_checkpoint(enc, out / f"checkpoint-{done}", state, cfg, heldout)
                for old in _checkpoints(out)[:-cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
    finally:
        if logf:
            logf.close()
    seconds = time.perf_counter() - t0
    if dist.main:
        _publish_final(out)
    if dist.world > 1:
        torch.distributed.barrier()
    return {"steps": cfg.steps, "start_step": start, "seconds": round(seconds, 2),
            "terms_per_s": round(terms_seen * dist.world / max(seconds, 1e-9), 1),
            "last_log": last, "out": str(out), "graph": cfg.graph, "pooling": cfg.pooling,
            "levels": sampler.describe()}


def _publish_final(out: Path) -> None:
    """Copy the last checkpoint's model and tokenizer files into OUT itself, each by rename."""
    last = _checkpoints(out)[-1]
    for f in last.rglob("*"):
        if f.is_file() and f.name != STATE_FILE:
            dest = out / f.relative_to(last)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{f.name}.tmp"
            shutil.copy2(f, tmp)
            os.replace(tmp, dest)


def resume_config(run_dir: str | Path, **overrides) -> HSAPConfig:
    """The config a run in `out` was started with (for `--resume`), updated by `overrides`."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise InputFileError(p, "no HSAP run to resume here")
    data = json.loads(p.read_text(encoding="utf-8"))
    data = {f.name: data[f.name] for f in fields(HSAPConfig) if f.name in data}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return HSAPConfig(**data)


__all__ = ["HSAPConfig", "train", "resume_config", "make_loss"]

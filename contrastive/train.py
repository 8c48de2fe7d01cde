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
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from contrastive.encoder import TermEncoder, freeze_global_attention, pool
from contrastive.losses import DISTANCES, LOSSES
from contrastive.sampling import BatchSampler, HeldOut, SamplerConfig, heldout_split
from contrastive.triplets import sampler_triplets
from kept.device import Dist, amp_dtype, load_scaler_state, make_scaler, maybe_no_sync, optimizer_step
from kept.errors import InputFileError, KeptError
from kept.io import MARKER, atomic_dir, atomic_write, clear_stale_temps, replace_dir
from kept.rng import restore_rng_state, rng_state
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
    distance: str = "euclidean"       # triplet only: euclidean (eq. 3, raw vectors) | angular
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
        if self.distance not in DISTANCES:
            raise KeptError(f"distance must be one of {', '.join(DISTANCES)}; got {self.distance!r}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise KeptError(f"amp must be auto, bf16, fp16 or none; got {self.amp!r}")
        if self.hard_negatives is not None and self.hard_negatives < 1:
            raise KeptError(f"hard_negatives must be >= 1; got {self.hard_negatives}")
        if self.steps < 1 or self.grad_accum < 1:
            raise KeptError("steps and grad_accum must be >= 1")


def make_loss(cfg: HSAPConfig) -> torch.nn.Module:
    if cfg.loss == "infonce":
        return LOSSES["infonce"](temperature=cfg.temperature)
    return LOSSES["triplet"](detach_sibling_margin=cfg.detach_sibling_margin, hard_negatives=cfg.hard_negatives,
                             distance=cfg.distance)


def load_graph_for(path: str | None):
    """The graph directory `path` (already chosen by the caller), or the bundled graph for None."""
    import kgraph

    return kgraph.load_graph(path) if path else kgraph.build_graph(progress=False)


def _amp_dtype(cfg: HSAPConfig, device: torch.device) -> torch.dtype | None:
    return amp_dtype(device, cfg.amp)


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


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

    dist = Dist(cfg.device)
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
    if freeze_global_attention(enc.model):
        log.info("Longformer: global-attention projections frozen (terms use none)")
    enc.narrow_attention_window(cfg.max_length)
    loss_fn = make_loss(cfg)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [
        {"params": [p for n, p in enc.model.named_parameters() if p.requires_grad and not n.endswith(no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in enc.model.named_parameters() if p.requires_grad and n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)
    amp = _amp_dtype(cfg, dist.device)
    scaler = make_scaler(amp)
    start = 0
    if resume_from is not None:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        load_scaler_state(scaler, state.get("scaler"))
        start = state["step"]
        if dist.world == 1:  # the checkpoint holds rank 0's states only
            restore_rng_state(state.get("rng"))
        log.info("resumed from %s at step %d", resume_from, start)
    enc.model = dist.wrap(enc.model)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / CONFIG_FILE) as fh:
            fh.write(json.dumps(_config_record(cfg, heldout), indent=2) + "\n")

    # A loss on raw vectors can inflate them: mean norm of a fixed probe batch, before and after.
    probe = sampler.batch(0).texts
    norm_start = _mean_norm(enc, probe)
    if dist.main:
        log.info("mean term-vector norm at step %d: %.3f", start, norm_start)
    sums: dict[str, list] = defaultdict(lambda: [0.0, 0])
    norm_end, first_log = norm_start, True
    t0, terms_seen, last = time.perf_counter(), 0, {}
    bar = tqdm(range(start, cfg.steps), desc="hsap", unit="step", disable=not (progress and dist.main),
               initial=start, total=cfg.steps)
    logf = open(out / LOG_FILE, "a", encoding="utf-8") if dist.main else None
    try:
        for step in bar:
            for micro in range(cfg.grad_accum):
                batch = sampler.batch((step * cfg.grad_accum + micro))
                trip = sampler_triplets(sampler, batch)
                with maybe_no_sync(enc.model, sync=micro == cfg.grad_accum - 1):
                    with torch.autocast(dist.device.type, dtype=amp) if amp else contextlib.nullcontext():
                        emb = enc(batch.texts)
                    res = loss_fn(emb, trip)
                    scaler.scale(res.loss / cfg.grad_accum).backward()
                terms_seen += len(batch)
                value = res.loss.detach()  # summed on the device; read back only when logged
                sums["loss"][0] += value; sums["loss"][1] += 1
                sums["norm"][0] += float(emb.detach().float().norm(dim=-1).mean()); sums["norm"][1] += 1
                sums[f"level:{batch.level}"][0] += value; sums[f"level:{batch.level}"][1] += 1
                for kind, (s, c) in res.per_kind.items():
                    sums[f"kind:{kind}"][0] += s; sums[f"kind:{kind}"][1] += c
            optimizer_step(scaler, opt, sched, (p for p in enc.model.parameters() if p.requires_grad),
                           cfg.max_grad_norm)
            done = step + 1
            if done == cfg.steps:
                norm_end = _mean_norm(enc, probe)
            if dist.main and (done % cfg.log_every == 0 or done == cfg.steps):
                last = {k: float(v[0]) / max(v[1], 1) for k, v in sums.items()}
                rec = {"step": done, "lr": sched.get_last_lr()[0], **{k: round(v, 5) for k, v in last.items()}}
                if first_log:  # the probe's mean norm where this run (or resume) started, and at the end
                    rec["norm_start"], first_log = round(norm_start, 4), False
                if done == cfg.steps:
                    rec["norm_end"] = round(norm_end, 4)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                sums.clear()
            if dist.main and (done % cfg.save_every == 0 or done == cfg.steps):
                state = {"step": done, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "scaler": scaler.state_dict(), "sampler_seed": cfg.seed, "world": dist.world,
                         "rng": rng_state()}
                save_checkpoint(enc, out / f"checkpoint-{done}", state, cfg, heldout)
                for old in _checkpoints(out)[:-cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
    finally:
        if logf:
            logf.close()
    seconds = time.perf_counter() - t0
    if dist.main:
        log.info("mean term-vector norm at step %d: %.3f", cfg.steps, norm_end)
        _publish_final(out)
    dist.barrier()
    return {"steps": cfg.steps, "start_step": start, "seconds": round(seconds, 2),
            "terms_per_s": round(terms_seen * dist.world / max(seconds, 1e-9), 1),
            "norm_start": round(norm_start, 4), "norm_end": round(norm_end, 4),
            "last_log": last, "out": str(out), "graph": cfg.graph, "pooling": cfg.pooling,
            "levels": sampler.describe()}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


@torch.no_grad()
def _mean_norm(enc: TermEncoder, texts: list[str]) -> float:
    """Mean L2 norm of the raw (pooled, un-normalised) vectors of `texts`, in eval mode."""
    model = getattr(enc.model, "module", enc.model)
    was = model.training
    model.eval()
    try:
        batch = enc.tokenize(texts)
        v = pool(model(**batch).last_hidden_state, batch["attention_mask"], enc.pooling)
        return float(v.float().norm(dim=-1).mean())
    finally:
        model.train(was)


def _publish_final(out: Path) -> None:
    """Make OUT itself the last checkpoint's model as a whole: a new folder beside OUT gets hard links
    to everything OUT holds (checkpoints, log) plus copies of the model and tokenizer files, then
    replaces OUT by rename. A crash leaves the old OUT; never a folder of mixed model files."""
    last = _checkpoints(out)[-1]
    clear_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        for entry in out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, tmp / entry.name, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(entry), str(tmp / entry.name))
        for f in last.rglob("*"):
            if f.is_file() and f.name != STATE_FILE:
                dest = tmp / f.relative_to(last)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.unlink(missing_ok=True)  # a link to an older file: replace it, never write through it
                shutil.copy2(f, dest)
        (tmp / MARKER).write_text("written by kept\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resume_config(run_dir: str | Path, **overrides) -> HSAPConfig:
    """The config a run in `out` was started with (for `--resume`), updated by `overrides`."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise InputFileError(p, "no HSAP run to resume here")
    data = json.loads(p.read_text(encoding="utf-8"))
    data = {f.name: data[f.name] for f in fields(HSAPConfig) if f.name in data}
    data.setdefault("distance", "angular")  # runs recorded before the option trained with angles
    data.update({k: v for k, v in overrides.items() if v is not None})
    return HSAPConfig(**data)


__all__ = ["HSAPConfig", "train", "resume_config", "make_loss"]

"""HSAP training: sampled level-wise batches -> encoder -> triplet (or InfoNCE) loss -> AdamW.

`HSAPStep` is HSAP's part of the shared loop (kept/trainer.py: AMP bf16/fp16, gradient accumulation,
`torchrun` multi-GPU with DDP when WORLD_SIZE > 1, each rank its own sampler stream). Checkpoints are
`save_pretrained` folders plus `hsap_state.pt` (optimizer, scheduler, RNG states, step) so `--resume`
continues where a run stopped; the loss is logged per level and per triplet kind in
`OUT/train_log.jsonl`. The held-out categories never reach the sampler."""

from __future__ import annotations

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

from contrastive.losses import DISTANCES, LOSSES
from contrastive.sampling import BatchSampler, HeldOut, SamplerConfig, heldout_split
from contrastive.triplets import sampler_triplets
from kept.config import load_config
from kept.device import Dist, amp_dtype
from kept.encoder import TermEncoder, freeze_global_attention, pool
from kept.errors import InputFileError, KeptError
from kept.io import MARKER, atomic_dir, atomic_write, clear_stale_temps, replace_dir
from kept.trainer import Trainer

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
        return load_config(cls, path, "hsap", overrides)

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


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _config_record(cfg: HSAPConfig, heldout: HeldOut) -> dict:
    return {**asdict(cfg), "heldout_categories": sorted(heldout.categories),
            "heldout_codes": len(heldout.codes)}


class HSAPStep:
    """HSAP's training step for the shared loop: a sampled level-wise batch's terms through the
    encoder (under autocast), its mined triplets into the loss (outside it)."""

    def __init__(self, enc: TermEncoder, sampler: BatchSampler, loss_fn: torch.nn.Module):
        self.enc, self.sampler, self.loss_fn = enc, sampler, loss_fn

    def forward(self, index: int):
        batch = self.sampler.batch(index)
        return batch, sampler_triplets(self.sampler, batch), self.enc(batch.texts)

    def loss(self, output):
        _, trip, emb = output
        return self.loss_fn(emb, trip)


def _optimizer(enc: TermEncoder, cfg: HSAPConfig) -> tuple[torch.optim.Optimizer, object]:
    """AdamW without decay on biases and norms, and the linear warm-up schedule over `cfg.steps`."""
    from transformers import get_linear_schedule_with_warmup

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [
        {"params": [p for n, p in enc.model.named_parameters() if p.requires_grad and not n.endswith(no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in enc.model.named_parameters() if p.requires_grad and n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    return opt, get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)


def _load_encoder(cfg: HSAPConfig, source: str | Path | None, dist: Dist) -> TermEncoder:
    """The encoder to train, on this rank's device, ready for terms (Longformer: global projections
    frozen, window narrowed)."""
    enc = TermEncoder.load(source, max_length=cfg.max_length, pooling=cfg.pooling)
    enc.model.to(dist.device).train()
    if freeze_global_attention(enc.model):
        log.info("Longformer: global-attention projections frozen (terms use none)")
    enc.narrow_attention_window(cfg.max_length)
    return enc


class _Log:
    """Running sums between log lines (loss, vector norm, per level and triplet kind), written to
    OUT/train_log.jsonl by rank 0; the probe batch's mean norm where the run started and ended."""

    def __init__(self, out: Path, main: bool, norm_start: float):
        self.sums: dict[str, list] = defaultdict(lambda: [0.0, 0])
        self.fh = open(out / LOG_FILE, "a", encoding="utf-8") if main else None
        self.norm_start, self.first, self.terms, self.last = norm_start, True, 0, {}

    def add(self, results) -> None:
        for (batch, _, emb), res in results:
            self.terms += len(batch)
            value = res.loss.detach()  # summed on the device; read back only when logged
            self.sums["loss"][0] += value; self.sums["loss"][1] += 1
            self.sums["norm"][0] += float(emb.detach().float().norm(dim=-1).mean()); self.sums["norm"][1] += 1
            self.sums[f"level:{batch.level}"][0] += value; self.sums[f"level:{batch.level}"][1] += 1
            for kind, (s, c) in res.per_kind.items():
                self.sums[f"kind:{kind}"][0] += s; self.sums[f"kind:{kind}"][1] += c

    def write(self, done: int, lr: float, norm_end: float | None) -> None:
        self.last = {k: float(v[0]) / max(v[1], 1) for k, v in self.sums.items()}
        rec = {"step": done, "lr": lr, **{k: round(v, 5) for k, v in self.last.items()}}
        if self.first:  # the probe's mean norm where this run (or resume) started, and at the end
            rec["norm_start"], self.first = round(self.norm_start, 4), False
        if norm_end is not None:
            rec["norm_end"] = round(norm_end, 4)
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        self.sums.clear()

    def close(self) -> None:
        if self.fh:
            self.fh.close()


def train(cfg: HSAPConfig, progress: bool = True, resume: bool = False) -> dict:
    """Run HSAP; returns a summary (steps, seconds, terms/s, last losses). The final model is
    saved into `cfg.out` itself (config.json, weights, tokenizer, hsap_config.json)."""
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
    enc = _load_encoder(cfg, resume_from or cfg.model, dist)
    cfg = replace(cfg, pooling=enc.pooling)  # hsap_config.json records what "auto" chose
    opt, sched = _optimizer(enc, cfg)
    params = [p for p in enc.model.parameters() if p.requires_grad]
    enc.model = dist.wrap(enc.model)
    trainer = Trainer(enc.model, HSAPStep(enc, sampler, make_loss(cfg)), opt, sched, params, device=dist.device,
                      dtype=amp_dtype(dist.device, cfg.amp), grad_accum=cfg.grad_accum,
                      max_grad_norm=cfg.max_grad_norm)
    start = 0
    if resume_from is not None:  # with several ranks the checkpoint's RNG states are rank 0's only
        start = trainer.load(resume_from / STATE_FILE, map_location="cpu", rng=dist.world == 1)["step"]
        log.info("resumed from %s at step %d", resume_from, start)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / CONFIG_FILE) as fh:
            fh.write(json.dumps(_config_record(cfg, heldout), indent=2) + "\n")
    summary = _run_steps(cfg, enc, trainer, sampler, heldout, dist, start, progress)
    if dist.main:
        _publish_final(out)
    dist.barrier()
    return {**summary, "out": str(out), "graph": cfg.graph, "pooling": cfg.pooling, "levels": sampler.describe()}


def _run_steps(cfg: HSAPConfig, enc: TermEncoder, trainer: Trainer, sampler: BatchSampler, heldout: HeldOut,
               dist: Dist, start: int, progress: bool) -> dict:
    """Steps `start`..`cfg.steps` through the shared loop, with the log and checkpoint-N folders."""
    from tqdm import tqdm

    out = Path(cfg.out)
    # A loss on raw vectors can inflate them: mean norm of a fixed probe batch, before and after.
    probe = sampler.batch(0).texts
    norm_start = _mean_norm(enc, probe)
    if dist.main:
        log.info("mean term-vector norm at step %d: %.3f", start, norm_start)
    norm_end, t0, run_log = norm_start, time.perf_counter(), _Log(out, dist.main, norm_start)
    bar = tqdm(range(start, cfg.steps), desc="hsap", unit="step", disable=not (progress and dist.main),
               initial=start, total=cfg.steps)
    groups = ([step * cfg.grad_accum + micro for micro in range(cfg.grad_accum)] for step in bar)
    try:
        for done, results in enumerate(trainer.steps(groups), start + 1):
            run_log.add(results)
            if done == cfg.steps:
                norm_end = _mean_norm(enc, probe)
            if dist.main and (done % cfg.log_every == 0 or done == cfg.steps):
                run_log.write(done, trainer.scheduler.get_last_lr()[0], norm_end if done == cfg.steps else None)
                bar.set_postfix(loss=f"{run_log.last['loss']:.4f}", refresh=False)
            if dist.main and (done % cfg.save_every == 0 or done == cfg.steps):
                _save_step(enc, trainer, out, done, cfg, heldout, dist.world)
    finally:
        run_log.close()
    seconds = time.perf_counter() - t0
    if dist.main:
        log.info("mean term-vector norm at step %d: %.3f", cfg.steps, norm_end)
    return {"steps": cfg.steps, "start_step": start, "seconds": round(seconds, 2),
            "terms_per_s": round(run_log.terms * dist.world / max(seconds, 1e-9), 1),
            "norm_start": round(norm_start, 4), "norm_end": round(norm_end, 4), "last_log": run_log.last}


def _save_step(enc: TermEncoder, trainer: Trainer, out: Path, done: int, cfg: HSAPConfig, heldout: HeldOut,
               world: int) -> None:
    """OUT/checkpoint-N (model, tokenizer, the trainer's state, config); only the newest few are kept."""
    with atomic_dir(out / f"checkpoint-{done}") as tmp:
        enc.save(tmp)
        trainer.save(tmp / STATE_FILE, step=done, sampler_seed=cfg.seed, world=world)
        (tmp / CONFIG_FILE).write_text(json.dumps(_config_record(cfg, heldout), indent=2) + "\n", encoding="utf-8")
    for old in _checkpoints(out)[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


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

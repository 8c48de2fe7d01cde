"""`kept coder train`: fine-tune the prompted coder (or the label-attention baseline) on a set.

`CoderStep` is the coder's part of the shared loop (kept/trainer.py: AdamW + linear warm-up, AMP on
GPU, gradient accumulation, clipping, DDP); this module adds what is the coder's own: gradient
checkpointing, dev evaluation every epoch, the best checkpoint by dev micro-F1 (threshold tuned on
dev), and OUT/last to resume from. Test data are never read here. Under `torchrun` (WORLD_SIZE > 1)
it trains with DDP, as the paper did on 2 A100s: each rank takes its share of every epoch's batches,
rank 0 evaluates and saves while the others wait.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coder.candidate_training import CandidateSpec, CandidateTask
from coder.config import CoderConfig
from coder.data.datasets import label_matrix
from coder.models.checkpoint import save_coder
from coder.models.prompt_coder import PromptCoder
from coder.models.prompts import build_examples, build_prompts, code_descriptions, collate, make_batches
from coder.models.scorer import build_scorer, effective_max_length, note_views, predict_examples
from coder.models.tuning import enable_checkpointing, lm_head_module, set_trainable
from kept.device import Dist, amp_dtype
from kept.errors import InputFileError, KeptError
from kept.hf import load_tokenizer
from kept.io import atomic_write, dump_json
from kept.trainer import Trainer

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CoderStep:
    """The coder's training step for the shared loop: one batch of examples (one prompt chunk each)
    scored under autocast; BCE on logit(yes) - logit(no), which equals the cross-entropy of the
    paper's yes/no softmax, in fp32."""

    def __init__(self, scorer: torch.nn.Module, examples: list, prompts: list, pad_id: int, config: CoderConfig,
                 device: torch.device, task=None):
        self.scorer, self.examples, self.prompts, self.pad_id = scorer, examples, prompts, pad_id
        self.config, self.device, self.with_masks = config, device, config.head == "prompt"
        self.pos_weight = torch.tensor(config.pos_weight, device=device)
        self.task = task  # candidate training: per-note prompts, collated by the task

    def forward(self, idx: list[int]):
        exs = [self.examples[i] for i in idx]
        batch = self.task.collate(exs) if self.task else \
            collate(exs, self.prompts[exs[0].chunk], self.pad_id, self.config.global_stride, self.with_masks)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.scorer(batch), batch["labels"]

    def loss(self, output) -> torch.Tensor:
        logits, labels = output
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels,
                                                                    pos_weight=self.pos_weight)


@dataclass
class _Run:
    """What one `train_coder` run holds between epochs."""

    set_dir: Path
    out: Path
    config: CoderConfig
    codes: list[str]
    descriptions: dict[str, str]
    tokenizer: object
    model: torch.nn.Module
    prompts: list
    train_ex: list
    dev_ex: list
    dev_docs: list
    dist: Dist
    best_f1: float = -1.0
    history: list = field(default_factory=list)
    task: object = None  # coder.candidate_training.CandidateTask when training a reranker on candidates


def _dev_eval(run: _Run) -> tuple[float, dict]:
    from coder.evaluation.metrics import all_metrics, tune_threshold

    if hasattr(run.model, "clear_code_cache"):
        run.model.clear_code_cache()

    scores = predict_examples(run.model, run.tokenizer, run.dev_ex, run.prompts, len(run.dev_docs), run.codes,
                              run.config, run.dist.device)
    y = label_matrix(run.dev_docs, run.codes)
    threshold = tune_threshold(y, scores, grid=run.config.threshold_search)
    return threshold, all_metrics(y, scores, threshold)


def _optimizer(model, config: CoderConfig) -> torch.optim.Optimizer:
    """AdamW; the label-attention head's new weights get `head_lr`, the prompted coder's LM head
    `lm_head_lr` when set; no decay on biases/norms."""
    rates = {id(p): config.head_lr for p in getattr(getattr(model, "head", None), "parameters", lambda: [])()}
    if isinstance(model, PromptCoder) and config.lm_head_lr is not None:
        rates.update({id(p): config.lm_head_lr for p in lm_head_module(model.mlm).parameters()})
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = rates.get(id(p), config.lr)
        decay = 0.0 if p.ndim < 2 else config.weight_decay
        groups.setdefault((lr, decay), []).append(p)
    if not groups:
        raise KeptError("no trainable parameters: check --train")
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])


def shard(batches: list, rank: int, world: int) -> list:
    """Rank `rank`'s share of an epoch's batches: every world-th one, the last share topped up from
    the start so every rank runs as many steps (DDP waits for all ranks at each backward)."""
    if world == 1:
        return batches
    per_rank = math.ceil(len(batches) / world)
    padded = (batches * (1 + per_rank * world // max(len(batches), 1)))[:per_rank * world]
    return padded[rank::world]


def clear_stale_evaluations(out: Path) -> list[Path]:
    """A fresh run replaces OUT/best, so evaluations of the old model under OUT (metrics.json,
    <split>_scores.npz, e.g. OUT/eval) would pass for the new one in `kept report`: remove them."""
    stale = sorted([*out.rglob("metrics.json"), *out.rglob("*_scores.npz")]) if out.is_dir() else []
    for p in stale:
        p.unlink()
        log.warning("removed %s: an evaluation of the model this run replaces", p)
    return stale


def read_set(set_dir: Path, config: CoderConfig, max_docs: int | None = None) -> tuple[list[str], list, list]:
    """The set's label list, train and dev notes (the first `max_docs` of each); a set that leaves
    nothing to pick a threshold on, or nothing to train on, stops here, before any model is loaded."""
    from coder.data.datasets import read_codes, read_split

    codes = read_codes(set_dir)
    train_docs = read_split(set_dir, "train")[:max_docs]
    dev_docs = read_split(set_dir, "dev")[:max_docs]
    if not dev_docs:  # the threshold and the best epoch are chosen on dev: fail before training
        raise InputFileError(set_dir / "dev.csv", "no dev notes: the coder picks its threshold and best epoch "
                             "on dev, so the set needs at least one (re-split the data with some dev notes)")
    if not train_docs and config.epochs:
        raise InputFileError(set_dir / "train.csv", "no documents: nothing to train on "
                             "(use --epochs 0 for zero-shot scores)")
    return codes, train_docs, dev_docs


def train_coder(set_dir: str | Path, model_path: str | Path, out_dir: str | Path, config: CoderConfig,
                resume: bool = False, max_docs: int | None = None, candidates: CandidateSpec | None = None) -> dict:
    """Train on `set_dir`/train, select on dev; writes OUT/best (a loadable coder), OUT/last, history.

    `epochs=0` evaluates the untrained model on dev (zero-shot) and saves it as OUT/best.
    `max_docs` caps the train and dev documents (smoke runs). `candidates` trains a reranker on
    first-stage candidates instead (coder/candidate_training.py).
    """
    config.validate()
    set_dir, out = Path(set_dir), Path(out_dir)
    _seed_all(config.seed)
    codes, train_docs, dev_docs = read_set(set_dir, config, max_docs)
    if candidates is not None and config.head != "prompt":
        raise KeptError(f"--candidates trains the prompted coder (--head prompt), not --head {config.head}")
    if config.head == "tfidf-lr":  # no network, no epochs: fitted in one go
        from coder.models.tfidf import train_tfidf

        clear_stale_evaluations(out)
        return train_tfidf(set_dir, out, config, codes, train_docs, dev_docs)
    run = _prepare(set_dir, out, model_path, config, codes, train_docs, dev_docs, candidates)
    trainer = _trainer(run)
    start_epoch = _resume(run, trainer) if resume else 0
    if start_epoch == 0:
        clear_stale_evaluations(out)
    if config.epochs == 0 and run.dist.main:
        _finish_epoch(run, 0, None)
    for epoch in range(start_epoch, config.epochs):
        epoch_loss = _train_epoch(run, trainer, epoch)
        if run.dist.main:
            _finish_epoch(run, epoch + 1, epoch_loss)
            trainer.save(out / "last" / STATE_FILE, model=run.model.state_dict(), epoch=epoch + 1,
                         best_f1=run.best_f1, history=run.history, config=config.__dict__)
        run.dist.barrier()  # the other ranks wait for rank 0's evaluation and checkpoint
    return {"best_dev_micro_f1": run.best_f1, "epochs": len(run.history), "history": run.history,
            "best": str(out / "best")}


def _prepare(set_dir: Path, out: Path, model_path: str | Path, config: CoderConfig, codes: list[str],
             train_docs: list, dev_docs: list, candidates: CandidateSpec | None = None) -> _Run:
    """Tokenizer, scorer and every example, built once; the scorer on this rank's device with the
    parameters `config.train_mode` names trainable."""
    descriptions = code_descriptions(codes, config.graph)
    tokenizer = load_tokenizer(model_path)
    model = build_scorer(config.head, model_path, tokenizer, config.verbalizer, config.verbalizer_form)
    max_length = effective_max_length(model, config)
    task = None
    if candidates is not None:  # per-note prompts of first-stage candidates
        task = CandidateTask(candidates, codes, train_docs, dev_docs, tokenizer, descriptions, config, max_length)
        prompts, train_ex, dev_ex = [], task.train_examples(0), task.dev_examples
    else:
        prompts = build_prompts(tokenizer, codes, descriptions, config.prompt_codes, config.template,
                                config.head == "prompt", config.desc_words)
        t0 = time.time()
        texts = [d.text for d in train_docs], [d.text for d in dev_docs]
        train_ex = build_examples(tokenizer, texts[0], [d.labels for d in train_docs], prompts, max_length,
                                  note_views(config, texts[0], prompts))
        dev_ex = build_examples(tokenizer, texts[1], None, prompts, max_length, note_views(config, texts[1], prompts))
        log.info("%d train / %d dev examples, %d codes in %d prompt(s) of <= %d, max %d tokens (%.1fs)", len(train_ex),
                 len(dev_ex), len(codes), len(prompts), config.prompt_codes, max_length, time.time() - t0)
    dist = Dist(config.device)
    encoder = model.mlm if isinstance(model, PromptCoder) else model.encoder
    n_train = set_trainable(encoder, config.train_mode, getattr(model, "head", None))
    log.info("training %s: %s trainable parameters (mode %s)", config.head, f"{n_train:,}", config.train_mode)
    if dist.device.type == "cuda" and config.gradient_checkpointing and not enable_checkpointing(encoder):
        log.info("gradient checkpointing off: no encoder layer trains in mode %s", config.train_mode)
    model.to(dist.device)
    return _Run(set_dir, out, config, codes, descriptions, tokenizer, model, prompts, train_ex, dev_ex, dev_docs,
                dist, task=task)


def _trainer(run: _Run) -> Trainer:
    """The shared loop around the coder: AdamW and a linear warm-up over every epoch's optimizer
    steps; DDP around the scorer under torchrun (`run.model` itself is what rank 0 evaluates and saves)."""
    from transformers import get_linear_schedule_with_warmup

    config, dist = run.config, run.dist
    n_batches = len(shard(_batches(run)(run.train_ex, config.batch_size, False), dist.rank, dist.world))
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    if dist.world > 1 and dist.main:
        log.info("DDP over %d processes: %d batches per rank per epoch", dist.world, n_batches)
    optimizer = _optimizer(run.model, config) if config.epochs else None
    total = max(1, steps_per_epoch * config.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total) \
        if optimizer else None
    ddp = dist.wrap(run.model)
    step = CoderStep(ddp, run.train_ex, run.prompts, run.tokenizer.pad_token_id, config, dist.device, run.task)
    return Trainer(ddp, step, optimizer, scheduler, [p for p in run.model.parameters() if p.requires_grad],
                   device=dist.device, dtype=amp_dtype(dist.device, config.precision), grad_accum=config.grad_accum,
                   max_grad_norm=config.max_grad_norm)


def _batches(run: _Run):
    """The batcher: one prompt chunk per batch, or, on candidates, one prompt size per batch."""
    return run.task.batches if run.task is not None else make_batches


def _resume(run: _Run, trainer: Trainer) -> int:
    """Continue from OUT/last (model, optimizer, schedule, scaler, RNG states, history); returns the
    epochs already done, 0 when there is nothing to resume."""
    last = run.out / "last"
    if not (last / STATE_FILE).is_file():
        log.info("nothing to resume in %s: starting fresh", last)
        return 0
    state = trainer.load(last / STATE_FILE, map_location=run.dist.device)
    run.model.load_state_dict(state["model"])
    run.best_f1, run.history = state["best_f1"], state["history"]
    log.info("resumed from %s after epoch %d (best dev micro-F1 %.4f)", last, state["epoch"], run.best_f1)
    return state["epoch"]


def _train_epoch(run: _Run, trainer: Trainer, epoch: int) -> float:
    """One epoch of this rank's batches through the shared loop; the mean loss over every rank."""
    config, dist = run.config, run.dist
    run.model.train()
    if hasattr(run.model, "clear_code_cache"):  # label attention: re-encode code vectors each epoch
        run.model.clear_code_cache()
    if run.task is not None:  # every note's candidates shuffled anew, seeded by (seed, epoch)
        run.train_ex = trainer.step.examples = run.task.train_examples(epoch)
    batches = shard(_batches(run)(run.train_ex, config.batch_size, shuffle=True, seed=config.seed + epoch),
                    dist.rank, dist.world)
    groups = [batches[i:i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]
    losses = []
    bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not dist.main)
    for results in trainer.steps(groups):
        losses += [loss.detach() for _, loss in results]  # on the device: no host sync per micro-step
        bar.update(len(results))
        if dist.main:
            bar.set_postfix(loss=f"{torch.stack(losses[-20:]).mean().item():.4f}")
    bar.close()
    epoch_loss = torch.stack(losses).float().mean()
    if dist.world > 1:
        torch.distributed.all_reduce(epoch_loss)
        epoch_loss /= dist.world
    return float(epoch_loss)


def _finish_epoch(run: _Run, epoch: int, train_loss: float | None) -> None:
    """Dev metrics at the dev-tuned threshold, OUT/best when micro-F1 improves, history.json."""
    threshold, metrics = run.task.dev_eval(run.model, run.dist.device) if run.task else _dev_eval(run)
    record = {"epoch": epoch, "train_loss": train_loss, "dev_threshold": threshold, "dev": metrics}
    run.history.append(record)
    auc = "macro_auc" if "macro_auc" in metrics else "candidate_macro_auc"  # rerank: AUC over candidates only
    log.info("epoch %d: train loss %s, dev micro-F1 %.4f %s %.4f (threshold %.3f)", epoch,
             "-" if train_loss is None else f"{train_loss:.4f}", metrics["micro_f1"], auc, metrics[auc], threshold)
    if metrics["micro_f1"] > run.best_f1 or not (run.out / "best").is_dir():
        run.best_f1 = metrics["micro_f1"]
        save_coder(run.model, run.tokenizer, run.out / "best", run.config, run.codes, run.descriptions, threshold,
                   {"epoch": epoch, "dev_metrics": metrics, "trained_on": str(run.set_dir),
                    **(run.task.record if run.task else {})})
    with atomic_write(run.out / "history.json") as fh:
        dump_json(run.history, fh, indent=1)

"""`kept coder train`: fine-tune the prompted coder (or the label-attention baseline) on a set.

Plain PyTorch: AdamW + linear warm-up, AMP and gradient checkpointing on GPU, gradient
accumulation, dev evaluation every epoch, best checkpoint by dev micro-F1 (threshold tuned on dev),
resumable from OUT/last. Test data are never read here. Under `torchrun` (WORLD_SIZE > 1) it trains
with DDP, as the paper did on 2 A100s: each rank takes its share of every epoch's batches, rank 0
evaluates and saves while the others wait.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coder.evaluate import build_scorer, effective_max_length, label_matrix, predict_examples
from coder.modeling import (CoderConfig, PromptCoder, amp_dtype, autocast, enable_checkpointing, lm_head_module,
                            load_tokenizer, set_trainable, write_coder_file)
from coder.prompts import build_examples, build_prompts, code_descriptions, collate, make_batches
from kept.device import Dist, load_scaler_state, make_scaler, maybe_no_sync, optimizer_step
from kept.errors import InputFileError, KeptError
from kept.io import atomic_dir, atomic_path, atomic_write, dump_json
from kept.rng import restore_rng_state, rng_state

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_checkpoint(model, tokenizer, out: Path, config: CoderConfig, codes, descriptions, threshold,
                     extra: dict) -> None:
    with atomic_dir(out) as tmp:
        if isinstance(model, PromptCoder):
            model.mlm.save_pretrained(str(tmp))
        else:
            model.save(tmp)
        tokenizer.save_pretrained(str(tmp))
        write_coder_file(tmp, config, codes, descriptions, threshold, extra)


def _dev_eval(model, tokenizer, examples, prompts, docs, codes, config, device) -> tuple[float, dict]:
    from coder.metrics import all_metrics, tune_threshold

    if hasattr(model, "clear_code_cache"):
        model.clear_code_cache()

    scores = predict_examples(model, tokenizer, examples, prompts, len(docs), codes, config, device)
    y = label_matrix(docs, codes)
    threshold = tune_threshold(y, scores, grid=config.threshold_search)
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


def train_coder(set_dir: str | Path, model_path: str | Path, out_dir: str | Path, config: CoderConfig,
                resume: bool = False, max_docs: int | None = None, candidates=None) -> dict:
    """Train on `set_dir`/train, select on dev; writes OUT/best (a loadable coder), OUT/last, history.

    `epochs=0` evaluates the untrained model on dev (zero-shot) and saves it as OUT/best.
    `max_docs` caps the train and dev documents (smoke runs). `candidates` (a
    `coder.candidate_training.CandidateSpec`) trains a reranker on first-stage candidates instead.
    """
    from transformers import get_linear_schedule_with_warmup

    from coder.datasets import read_codes, read_split

    config.validate()
    set_dir, out = Path(set_dir), Path(out_dir)
    last = out / "last"
    _seed_all(config.seed)
    codes = read_codes(set_dir)
    train_docs = read_split(set_dir, "train")[:max_docs]
    dev_docs = read_split(set_dir, "dev")[:max_docs]
    if not dev_docs:  # the threshold and the best epoch are chosen on dev: fail before training
        raise InputFileError(set_dir / "dev.csv", "no dev notes: the coder picks its threshold and best epoch "
                             "on dev, so the set needs at least one (re-split the data with some dev notes)")
    if not train_docs and config.epochs:
        raise InputFileError(set_dir / "train.csv", "no documents: nothing to train on "
                             "(use --epochs 0 for zero-shot scores)")
    if candidates is not None and config.head != "prompt":
        raise KeptError(f"--candidates trains the prompted coder (--head prompt), not --head {config.head}")
    if config.head == "tfidf-lr":  # no network, no epochs: fitted in one go
        from coder.tfidf import train_tfidf

        clear_stale_evaluations(out)
        return train_tfidf(set_dir, out, config, codes, train_docs, dev_docs)
    descriptions = code_descriptions(codes, config.graph)
    tokenizer = load_tokenizer(model_path)
    model = build_scorer(config.head, model_path, tokenizer, config.verbalizer, config.verbalizer_form)
    max_length = effective_max_length(model, config)
    with_masks = config.head == "prompt"
    task, batcher = None, make_batches
    if candidates is not None:  # per-note prompts of first-stage candidates (coder/candidate_training.py)
        from coder.candidate_training import CandidateTask

        task = CandidateTask(candidates, codes, train_docs, dev_docs, tokenizer, descriptions, config, max_length)
        prompts, train_ex, dev_ex, batcher = [], task.train_examples(0), task.dev_examples, task.batches
    else:
        prompts = build_prompts(tokenizer, codes, descriptions, config.prompt_codes, config.template, with_masks,
                                config.desc_words)
        t0 = time.time()
        train_ex = build_examples(tokenizer, [d.text for d in train_docs], [d.labels for d in train_docs],
                                  prompts, max_length)
        dev_ex = build_examples(tokenizer, [d.text for d in dev_docs], None, prompts, max_length)
        log.info("%d train / %d dev examples, %d codes in %d prompt(s) of <= %d, max %d tokens (%.1fs)", len(train_ex),
                 len(dev_ex), len(codes), len(prompts), config.prompt_codes, max_length, time.time() - t0)

    dist = Dist(config.device)
    device = dist.device
    head = getattr(model, "head", None)
    encoder = model.mlm if isinstance(model, PromptCoder) else model.encoder
    n_train = set_trainable(encoder, config.train_mode, head)
    log.info("training %s: %s trainable parameters (mode %s)", config.head, f"{n_train:,}", config.train_mode)
    if device.type == "cuda" and config.gradient_checkpointing and not enable_checkpointing(encoder):
        log.info("gradient checkpointing off: no encoder layer trains in mode %s", config.train_mode)
    model.to(device)
    dtype = amp_dtype(device, config.precision)
    scaler = make_scaler(dtype)

    n_batches = len(shard(batcher(train_ex, config.batch_size, False), dist.rank, dist.world))
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    if dist.world > 1 and dist.main:
        log.info("DDP over %d processes: %d batches per rank per epoch", dist.world, n_batches)
    optimizer = _optimizer(model, config) if config.epochs else None
    total = max(1, steps_per_epoch * config.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total) \
        if optimizer else None
    pos_weight = torch.tensor(config.pos_weight, device=device)
    start_epoch, best_f1, history = 0, -1.0, []
    if resume and (last / STATE_FILE).is_file():
        state = torch.load(last / STATE_FILE, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        if optimizer:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            load_scaler_state(scaler, state.get("scaler"))
        start_epoch, best_f1, history = state["epoch"], state["best_f1"], state["history"]
        restore_rng_state(state.get("rng"))
        log.info("resumed from %s after epoch %d (best dev micro-F1 %.4f)", last, start_epoch, best_f1)
    elif resume:
        log.info("nothing to resume in %s: starting fresh", last)
    if start_epoch == 0:
        clear_stale_evaluations(out)

    def finish_epoch(epoch: int, train_loss: float | None) -> None:
        nonlocal best_f1
        threshold, metrics = task.dev_eval(model, device) if task else \
            _dev_eval(model, tokenizer, dev_ex, prompts, dev_docs, codes, config, device)
        record = {"epoch": epoch, "train_loss": train_loss, "dev_threshold": threshold, "dev": metrics}
        history.append(record)
        auc = "macro_auc" if "macro_auc" in metrics else "candidate_macro_auc"  # rerank: AUC over candidates
        log.info("epoch %d: train loss %s, dev micro-F1 %.4f %s %.4f (threshold %.3f)", epoch,
                 "-" if train_loss is None else f"{train_loss:.4f}", metrics["micro_f1"], auc, metrics[auc],
                 threshold)
        if metrics["micro_f1"] > best_f1 or not (out / "best").is_dir():
            best_f1 = metrics["micro_f1"]
            _save_checkpoint(model, tokenizer, out / "best", config, codes, descriptions, threshold,
                             {"epoch": epoch, "dev_metrics": metrics, "trained_on": str(set_dir),
                              **(task.record if task else {})})
        with atomic_write(out / "history.json") as fh:
            dump_json(history, fh, indent=1)

    if config.epochs == 0 and dist.main:
        finish_epoch(0, None)
    ddp = dist.wrap(model)  # `model` itself is what rank 0 evaluates and saves
    trainable = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, config.epochs):
        model.train()
        if hasattr(model, "clear_code_cache"):  # label attention: re-encode code vectors each epoch
            model.clear_code_cache()
        if task is not None:  # every note's candidates shuffled anew, seeded by (seed, epoch)
            train_ex = task.train_examples(epoch)
        batches = shard(batcher(train_ex, config.batch_size, shuffle=True, seed=config.seed + epoch),
                        dist.rank, dist.world)
        losses = []
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not dist.main)
        for step, idx in enumerate(bar):
            exs = [train_ex[i] for i in idx]
            batch = task.collate(exs) if task else \
                collate(exs, prompts[exs[0].chunk], tokenizer.pad_token_id, config.global_stride, with_masks)
            batch = {k: v.to(device) for k, v in batch.items()}
            boundary = (step + 1) % config.grad_accum == 0 or step + 1 == len(batches)
            with maybe_no_sync(ddp, sync=boundary):  # one all-reduce per optimizer step
                with autocast(device, dtype):
                    logits = ddp(batch)
                # BCE on logit(yes) - logit(no) == cross-entropy of the yes/no softmax
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits.float(), batch["labels"], pos_weight=pos_weight)
                scaler.scale(loss / config.grad_accum).backward()
            losses.append(loss.detach())  # on the device: no host sync per micro-step
            if boundary:
                optimizer_step(scaler, optimizer, scheduler, trainable, config.max_grad_norm)
                if dist.main:
                    bar.set_postfix(loss=f"{torch.stack(losses[-20:]).mean().item():.4f}")
        epoch_loss = torch.stack(losses).float().mean()
        if dist.world > 1:
            torch.distributed.all_reduce(epoch_loss)
            epoch_loss /= dist.world
        if dist.main:
            finish_epoch(epoch + 1, float(epoch_loss))
            last.mkdir(parents=True, exist_ok=True)
            with atomic_path(last / STATE_FILE) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                            "epoch": epoch + 1, "best_f1": best_f1, "history": history,
                            "config": config.__dict__, "rng": rng_state()}, tmp)
        dist.barrier()  # the other ranks wait for rank 0's evaluation and checkpoint
    return {"best_dev_micro_f1": best_f1, "epochs": len(history), "history": history, "best": str(out / "best")}

"""`kept coder train`: fine-tune the prompted coder (or the label-attention baseline) on a set.

Plain PyTorch: AdamW + linear warm-up, AMP and gradient checkpointing on GPU, gradient
accumulation, dev evaluation every epoch, best checkpoint by dev micro-F1 (threshold tuned on dev),
resumable from OUT/last. Test data are never read here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coder.evaluate import build_scorer, effective_max_length, label_matrix, predict_examples
from coder.modeling import (CoderConfig, PromptCoder, amp_dtype, autocast, load_tokenizer, pick_device,
                            set_trainable, write_coder_file)
from coder.prompts import build_examples, build_prompts, code_descriptions, collate, make_batches
from kept.errors import KeptError
from kept.io import atomic_dir, atomic_path, atomic_write

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
    threshold = tune_threshold(y, scores)
    return threshold, all_metrics(y, scores, threshold)


def _optimizer(model, config: CoderConfig) -> torch.optim.Optimizer:
    """AdamW; the label-attention head's new weights get `head_lr`, no decay on biases/norms."""
    head_ids = {id(p) for p in getattr(getattr(model, "head", None), "parameters", lambda: [])()}
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = config.head_lr if id(p) in head_ids else config.lr
        decay = 0.0 if p.ndim < 2 else config.weight_decay
        groups.setdefault((lr, decay), []).append(p)
    if not groups:
        raise KeptError("no trainable parameters: check --train")
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])


def clear_stale_evaluations(out: Path) -> list[Path]:
    """A fresh run replaces OUT/best, so evaluations of the old model under OUT (metrics.json,
    <split>_scores.npz, e.g. OUT/eval) would pass for the new one in `kept report`: remove them."""
    stale = sorted([*out.rglob("metrics.json"), *out.rglob("*_scores.npz")]) if out.is_dir() else []
    for p in stale:
        p.unlink()
        log.warning("removed %s: an evaluation of the model this run replaces", p)
    return stale


def train_coder(set_dir: str | Path, model_path: str | Path, out_dir: str | Path, config: CoderConfig,
                resume: bool = False, max_docs: int | None = None) -> dict:
    """Train on `set_dir`/train, select on dev; writes OUT/best (a loadable coder), OUT/last, history.

    `epochs=0` evaluates the untrained model on dev (zero-shot) and saves it as OUT/best.
    `max_docs` caps the train and dev documents (smoke runs).
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
        raise KeptError(f"{set_dir / 'dev.csv'}: no dev notes; the coder picks its threshold and best epoch "
                        "on dev, so the set needs at least one (re-split the data with some dev notes)")
    if not train_docs and config.epochs:
        raise KeptError(f"{set_dir / 'train.csv'}: no train notes (use --epochs 0 for zero-shot scores)")
    descriptions = code_descriptions(codes, config.graph)
    tokenizer = load_tokenizer(model_path)
    model = build_scorer(config.head, model_path, tokenizer, config.verbalizer)
    max_length = effective_max_length(model, config)
    with_masks = config.head == "prompt"
    prompts = build_prompts(tokenizer, codes, descriptions, config.prompt_codes, config.template, with_masks)
    t0 = time.time()
    train_ex = build_examples(tokenizer, [d.text for d in train_docs], [d.labels for d in train_docs],
                              prompts, max_length)
    dev_ex = build_examples(tokenizer, [d.text for d in dev_docs], None, prompts, max_length)
    log.info("%d train / %d dev examples, %d codes in %d prompt(s) of <= %d, max %d tokens (%.1fs)",
             len(train_ex), len(dev_ex), len(codes), len(prompts), config.prompt_codes, max_length, time.time() - t0)

    device = pick_device(config.device)
    head = getattr(model, "head", None)
    encoder = model.mlm if isinstance(model, PromptCoder) else model.encoder
    n_train = set_trainable(encoder, config.train_mode, head)
    log.info("training %s: %s trainable parameters (mode %s)", config.head, f"{n_train:,}", config.train_mode)
    if device.type == "cuda" and config.gradient_checkpointing:
        encoder.gradient_checkpointing_enable()
    model.to(device)
    dtype = amp_dtype(device, config.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    steps_per_epoch = math.ceil(len(make_batches(train_ex, config.batch_size, False)) / config.grad_accum)
    optimizer = _optimizer(model, config) if config.epochs else None
    total = max(1, steps_per_epoch * config.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total) \
        if optimizer else None
    start_epoch, best_f1, history = 0, -1.0, []
    if resume and (last / STATE_FILE).is_file():
        state = torch.load(last / STATE_FILE, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        if optimizer:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_f1, history = state["epoch"], state["best_f1"], state["history"]
        log.info("resumed from %s after epoch %d (best dev micro-F1 %.4f)", last, start_epoch, best_f1)
    elif resume:
        log.info("nothing to resume in %s: starting fresh", last)
    if start_epoch == 0:
        clear_stale_evaluations(out)

    def finish_epoch(epoch: int, train_loss: float | None) -> None:
        nonlocal best_f1
        threshold, metrics = _dev_eval(model, tokenizer, dev_ex, prompts, dev_docs, codes, config, device)
        record = {"epoch": epoch, "train_loss": train_loss, "dev_threshold": threshold, "dev": metrics}
        history.append(record)
        log.info("epoch %d: train loss %s, dev micro-F1 %.4f macro-AUC %.4f (threshold %.3f)", epoch,
                 "-" if train_loss is None else f"{train_loss:.4f}", metrics["micro_f1"], metrics["macro_auc"],
                 threshold)
        if metrics["micro_f1"] > best_f1 or not (out / "best").is_dir():
            best_f1 = metrics["micro_f1"]
            _save_checkpoint(model, tokenizer, out / "best", config, codes, descriptions, threshold,
                             {"epoch": epoch, "dev_metrics": metrics, "trained_on": str(set_dir)})
        with atomic_write(out / "history.json") as fh:
            json.dump(history, fh, indent=1)

    if config.epochs == 0:
        finish_epoch(0, None)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        if hasattr(model, "clear_code_cache"):  # label attention: re-encode code vectors each epoch
            model.clear_code_cache()
        batches = make_batches(train_ex, config.batch_size, shuffle=True, seed=config.seed + epoch)
        losses = []
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for step, idx in enumerate(bar):
            exs = [train_ex[i] for i in idx]
            batch = collate(exs, prompts[exs[0].chunk], tokenizer.pad_token_id, config.global_stride, with_masks)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, dtype):
                logits = model(batch)
            # BCE on logit(yes) - logit(no) == cross-entropy of the yes/no softmax
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
            scaler.scale(loss / config.grad_accum).backward()
            losses.append(loss.item())
            if (step + 1) % config.grad_accum == 0 or step + 1 == len(batches):
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                               config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        finish_epoch(epoch + 1, float(np.mean(losses)))
        last.mkdir(parents=True, exist_ok=True)
        with atomic_path(last / STATE_FILE) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                        "epoch": epoch + 1, "best_f1": best_f1, "history": history,
                        "config": config.__dict__}, tmp)
    return {"best_dev_micro_f1": best_f1, "epochs": len(history), "history": history, "best": str(out / "best")}

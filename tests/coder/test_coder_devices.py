"""The coder's GPU-only paths, checked on CPU: mixed precision at the LM head, gradient
checkpointing under partial tuning, and training under torchrun (DDP, 2 gloo processes)."""

from __future__ import annotations

import json

import torch

from coder.models.prompt_coder import PromptCoder
from coder.models.prompts import build_examples, build_prompts, collate
from coder.models.tuning import enable_checkpointing, set_trainable
from coder.models.verbalizer import build_verbalizer
from kept.hf import load_mlm, load_tokenizer
from tests.tiny import TINY_CODES, tiny_descriptions


def _batch(tok, coder):
    prompts = build_prompts(tok, TINY_CODES, tiny_descriptions(), 50)
    exs = build_examples(tok, ["heart failure edema lasix", "diabetes insulin"], None, prompts, 256)
    return collate(exs, prompts[0], tok.pad_token_id, stride=1)


def test_scores_keep_fp32_resolution_under_bf16_autocast(tiny_longformer_dir):
    """logit(yes) and logit(no) are large and close (a real MLM's are ~10-20 apart from the rest);
    rounded to bf16 before the subtraction every score collapses to a multiple of the bf16 step."""
    tok = load_tokenizer(tiny_longformer_dir)
    v = build_verbalizer(tok)
    mlm = load_mlm(tiny_longformer_dir)
    with torch.no_grad():
        mlm.lm_head.bias[[v.yes_id, v.no_id]] += 300.0  # bf16 step at 300: 2.0
    coder = PromptCoder(mlm, v.yes_id, v.no_id).eval()
    batch = _batch(tok, coder)
    with torch.no_grad():
        fp32 = coder(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = coder(batch)
    assert bf16.dtype == torch.float32
    assert fp32.abs().max() < 1.0  # the real differences are small...
    assert torch.allclose(bf16, fp32, atol=0.05)  # ...and survive (the encoder alone ran in bf16)
    assert all(len(torch.unique(row)) == len(row) for row in bf16)  # no two codes rounded together


def _grad_flags(mlm, batch):
    """requires_grad of the embedding output and of each layer's output in one forward."""
    flags = {}
    hooks = [mlm.longformer.embeddings.register_forward_hook(
        lambda m, a, out: flags.__setitem__("embeddings", out.requires_grad))]
    for i, layer in enumerate(mlm.longformer.encoder.layer):
        hooks.append(layer.register_forward_hook(
            lambda m, a, out, i=i: flags.__setitem__(f"layer{i}", (out[0] if isinstance(out, tuple) else out).requires_grad)))
    mlm.train()
    out = mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              global_attention_mask=batch["global_attention_mask"]).logits
    out.float().sum().backward()
    for h in hooks:
        h.remove()
    return flags


def test_checkpointing_keeps_frozen_layers_out_of_the_backward(tiny_longformer_dir):
    tok = load_tokenizer(tiny_longformer_dir)
    v = build_verbalizer(tok)
    mlm = load_mlm(tiny_longformer_dir)
    batch = _batch(tok, PromptCoder(mlm, v.yes_id, v.no_id))
    set_trainable(mlm, "last-layer")
    assert enable_checkpointing(mlm)
    flags = _grad_flags(mlm, batch)
    # Only the last layer needs a graph; transformers' default hook made the embeddings (and so
    # every frozen layer) require grad.
    assert flags == {"embeddings": False, "layer0": False, "layer1": True}
    assert all(p.grad is not None for p in mlm.longformer.encoder.layer[1].parameters() if p.requires_grad)

    mlm = load_mlm(tiny_longformer_dir)
    set_trainable(mlm, "first-layer")  # a reentrant checkpoint would give layer 0 no gradient here
    assert enable_checkpointing(mlm)
    flags = _grad_flags(mlm, batch)
    assert not flags["embeddings"] and flags["layer0"]
    assert mlm.longformer.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0

    mlm = load_mlm(tiny_longformer_dir)
    set_trainable(mlm, "lm-head")
    assert not enable_checkpointing(mlm)  # nothing below the head trains: nothing to recompute


def test_shard_gives_every_rank_the_same_number_of_batches():
    from coder.training import shard

    batches = [[i] for i in range(5)]
    parts = [shard(batches, r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [3, 3]
    assert {b[0] for p in parts for b in p} == set(range(5))
    assert parts[0][:2] + parts[1][:2] == [[0], [2], [1], [3]]
    assert shard(batches, 0, 1) is batches


def test_torchrun_two_processes_train_the_coder(tiny_longformer_dir, tiny_data_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m kept coder train` on CPU (gloo): DDP, each rank half the
    batches, rank 0 evaluates and saves; resuming adds an epoch."""
    import os
    import subprocess
    import sys

    from transformers import LongformerForMaskedLM

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}

    def run(epochs, *extra):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
             "-m", "kept", "coder", "train", "--data", str(tiny_data_dir / "50"), "--model", str(tiny_longformer_dir),
             "--out", str(out), "--epochs", str(epochs), "--max-docs", "8", "--batch-size", "2", "--grad-accum", "2",
             "--lr", "1e-2", "--max-length", "128", "--device", "cpu", *extra],
            capture_output=True, text=True, env=env, timeout=300)

    proc = run(1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best dev micro-F1") == 1  # rank 0 reports
    assert "DDP over 2 processes: 2 batches per rank" in proc.stdout + proc.stderr  # 8 notes, batches of 2
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and history[0]["train_loss"] > 0
    trained = LongformerForMaskedLM.from_pretrained(str(out / "best"))
    before = LongformerForMaskedLM.from_pretrained(str(tiny_longformer_dir))
    assert not torch.equal(trained.lm_head.dense.weight, before.lm_head.dense.weight)
    proc = run(2, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]

"""The coder end to end on a tiny random Longformer: scoring, training, resume, zero-shot eval, predict,
partial tuning and the label-attention baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coder.config import load_config
from coder.data.datasets import read_split
from coder.evaluation.evaluate import evaluate_checkpoint
from coder.models.label_attention import LabelAttentionCoder
from coder.models.prompt_coder import PromptCoder
from coder.models.prompts import build_examples, build_prompts, collate
from coder.models.scorer import load_coder, score_codes
from coder.models.tuning import set_trainable
from coder.models.verbalizer import build_verbalizer
from coder.predict import predict_note
from coder.training import train_coder
from kept.cli import main
from kept.errors import InputFileError, KeptError
from kept.hf import load_mlm, load_tokenizer
from tests.tiny import TINY_CODES, tiny_descriptions

FAST = dict(epochs=3, batch_size=4, grad_accum=1, eval_batch_size=8, lr=1e-3, warmup_ratio=0.0,
            max_length=256, device="cpu", seed=0)


def _scorer(model_dir):
    tok = load_tokenizer(model_dir)
    v = build_verbalizer(tok)
    return tok, PromptCoder(load_mlm(model_dir), v.yes_id, v.no_id).eval()


def test_mask_only_head_equals_full_mlm_logits(tiny_longformer_dir):
    """Scores = logit(yes) - logit(no) of the full MLM output at each code's mask, in code order."""
    tok, coder = _scorer(tiny_longformer_dir)
    prompts = build_prompts(tok, TINY_CODES, tiny_descriptions(), 50)
    exs = build_examples(tok, ["heart failure edema lasix", "diabetes insulin"], None, prompts, 256)
    batch = collate(exs, prompts[0], tok.pad_token_id, stride=3)
    with torch.no_grad():
        scores = coder(batch)
        full = coder.mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         global_attention_mask=batch["global_attention_mask"]).logits
    pos = prompts[0].mask_positions
    want = full[:, pos, coder.yes_id] - full[:, pos, coder.no_id]
    assert scores.shape == (2, len(TINY_CODES))
    assert torch.allclose(scores, want, atol=1e-5)


def test_score_codes_any_code_list_in_chunks(tiny_longformer_dir):
    tok, coder = _scorer(tiny_longformer_dir)
    cfg = load_config(prompt_codes=4, max_length=256, device="cpu")
    notes = ["atrial fibrillation irregular rhythm", "acute kidney injury"]
    many = score_codes(coder, tok, notes, TINY_CODES, tiny_descriptions(), cfg)
    one = score_codes(coder, tok, notes[1], TINY_CODES, tiny_descriptions(), cfg)
    assert many.shape == (2, 6) and one.shape == (6,)
    assert np.allclose(many[1], one, atol=1e-6) and ((many > 0) & (many < 1)).all()
    # codes 4,5 sit in the second prompt: scoring them alone gives the same numbers
    tail = score_codes(coder, tok, notes, TINY_CODES[4:], tiny_descriptions(), cfg)
    assert np.allclose(tail, many[:, 4:], atol=1e-5)


def test_training_lowers_loss_resumes_and_evaluates(tiny_longformer_dir, tiny_data_dir, tmp_path):
    set_dir = tiny_data_dir / "50"
    out = tmp_path / "run"
    summary = train_coder(set_dir, tiny_longformer_dir, out, load_config(**FAST))
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    info = json.loads((out / "best" / "kept_coder.json").read_text())
    assert info["codes"] == TINY_CODES and info["head"] == "prompt" and 0 <= info["threshold"] <= 1
    assert info["config"]["global_stride"] == 1 and info["verbalizer"] == ["yes", "no"]
    best_epoch = max(summary["history"], key=lambda h: h["dev"]["micro_f1"])["epoch"]
    assert info["epoch"] == best_epoch

    # resume: a 4th epoch continues from OUT/last, keeping the history
    more = train_coder(set_dir, tiny_longformer_dir, out, load_config(**{**FAST, "epochs": 4}), resume=True)
    assert [h["epoch"] for h in more["history"]] == [1, 2, 3, 4]
    assert more["history"][:3] == summary["history"]

    res = evaluate_checkpoint(out / "best", set_dir, tmp_path / "eval")
    assert res["system"] == "kept-prompt" and res["split"] == "test" and res["data_source"] == "fixture"
    assert res["threshold"] == info["threshold"]
    npz = np.load(tmp_path / "eval" / "test_scores.npz")
    test = read_split(set_dir, "test")
    assert npz["y_true"].shape == npz["y_score"].shape == (len(test), len(TINY_CODES))
    assert list(npz["codes"]) == TINY_CODES and list(npz["hadm_ids"]) == [d.hadm_id for d in test]
    assert npz["y_true"][0].tolist() == [int(c in test[0].labels) for c in TINY_CODES]
    # raw logits kept beside the sigmoids (which tie at 1.0 in float32); P@k ranks by them
    assert npz["logits"].shape == npz["y_score"].shape
    assert np.allclose(npz["y_score"], 1 / (1 + np.exp(-npz["logits"].astype(np.float64))), atol=1e-6)
    from coder.evaluation.metrics import all_metrics

    assert res["metrics"]["p@5"] == all_metrics(npz["y_true"], npz["y_score"], res["threshold"],
                                               rank_score=npz["logits"])["p@5"]


def test_zero_shot_cli_train_eval_predict(tiny_longformer_dir, tiny_data_dir, tmp_path, capsys):
    set_dir = tiny_data_dir / "50"
    out = tmp_path / "zs"
    assert main(["coder", "train", "--data", str(set_dir), "--model", str(tiny_longformer_dir), "--out", str(out),
                 "--epochs", "0", "--max-length", "256", "--global-stride", "5", "--device", "cpu"]) == 0
    assert not (out / "last").exists() and (out / "best" / "kept_coder.json").is_file()
    assert main(["coder", "eval", "--checkpoint", str(out / "best"), "--data", str(set_dir),
                 "--out", str(tmp_path / "ev"), "--ks", "1,3"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"micro_f1", "macro_auc", "p@1", "r@3"} <= set(metrics["metrics"])
    # graph-aware figures under their own key, over the coder's graph (None = bundled ICD-9-CM)
    hier = metrics["hierarchical"]
    assert hier["graph"] is None and not set(hier["metrics"]) & set(metrics["metrics"])
    assert {"hier_f1", "cophe_f1@category", "exact_f1@chapter.proc", "fp_share_sibling"} <= set(hier["metrics"])
    assert hier["metrics"]["exact_f1@code"] == pytest.approx(metrics["metrics"]["micro_f1"])
    assert "hier_f1" in capsys.readouterr().out
    note = tmp_path / "note.txt"
    note.write_text("Admitted with [**Hospital 1**] heart failure, edema; lasix given.", encoding="utf-8")
    capsys.readouterr()
    assert main(["coder", "predict", str(note), "--checkpoint", str(out / "best"), "--threshold", "0"]) == 0
    header, columns, *lines = capsys.readouterr().out.strip().splitlines()
    assert "threshold 0.000 (from --threshold)" in header and columns.split()[:2] == ["code", "prob"]
    assert len(lines) == len(TINY_CODES)
    probs = [float(line.split()[1]) for line in lines]
    assert probs == sorted(probs, reverse=True)
    assert lines[0].split()[0] in TINY_CODES and tiny_descriptions()[lines[0].split()[0]] in lines[0]
    assert predict_note(out / "best", "heart failure", threshold=1.01) == []
    assert main(["coder", "predict", str(tmp_path / "missing.txt"), "--checkpoint", str(out / "best")]) == 1


def test_label_attention_baseline_trains(tiny_longformer_dir, tiny_data_dir, tmp_path):
    from transformers import AutoModel

    model = LabelAttentionCoder(AutoModel.from_pretrained(str(tiny_longformer_dir)))
    tok = load_tokenizer(tiny_longformer_dir)
    prompts = build_prompts(tok, TINY_CODES, tiny_descriptions(), 50, with_masks=False)
    exs = build_examples(tok, ["heart failure", "diabetes insulin glucose"], [["428.0"], []], prompts, 256)
    assert exs[0].input_ids[0] == tok.cls_token_id and tok.mask_token_id not in exs[0].input_ids
    batch = collate(exs, prompts[0], tok.pad_token_id, 1, with_masks=False)
    assert batch["global_attention_mask"].sum().item() == 2  # [CLS] only
    logits = model(batch)
    assert logits.shape == (2, len(TINY_CODES))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"]).backward()
    assert model.head.w_q.weight.grad.abs().sum() > 0 and model.head.w_b.weight.grad.abs().sum() > 0
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert len(model._code_cache) == 1  # code vectors encoded once per label set, then reused
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch), model(batch))
    assert len(model._code_cache) == 1
    hidden = model.encoder.config.hidden_size
    assert sum(p.numel() for p in model.head.parameters()) == hidden * hidden + 2 * hidden  # paper's count

    out = tmp_path / "la"
    cfg = load_config(**{**FAST, "epochs": 1, "head": "label-attention"})
    train_coder(tiny_data_dir / "50", tiny_longformer_dir, out, cfg)
    res = evaluate_checkpoint(out / "best", tiny_data_dir / "50", tmp_path / "la_eval")
    assert res["system"] == "label-attention"
    reloaded = load_coder(out / "best")
    assert torch.equal(reloaded.model.head.w_q.weight, LabelAttentionCoder.load(out / "best").head.w_q.weight)


def test_partial_tuning_modes(tiny_longformer_dir):
    # The paper tunes "LM head and first/last encoder layer": the head trains in every partial mode.
    mlm = load_mlm(tiny_longformer_dir)
    params = dict(mlm.named_parameters())  # shared (tied) tensors listed once

    def trainable():
        return {n for n, p in params.items() if p.requires_grad}

    def count(names):
        return sum(params[n].numel() for n in names)

    head = {n for n in params if n.startswith("lm_head.")}  # the tied decoder is listed as the embeddings
    assert head and "longformer.embeddings.word_embeddings.weight" in params
    layer0 = {n for n in params if n.startswith("longformer.encoder.layer.0.")}
    layer1 = {n for n in params if n.startswith("longformer.encoder.layer.1.")}
    biases = {n for n in params if n.endswith("bias")}

    n = set_trainable(mlm, "lm-head")
    assert trainable() == head and n == count(head)
    assert not mlm.longformer.embeddings.word_embeddings.weight.requires_grad  # tied decoder stays frozen
    n = set_trainable(mlm, "first-layer")
    assert trainable() == layer0 | head and n == count(layer0) + count(head)
    n = set_trainable(mlm, "last-layer")
    assert trainable() == layer1 | head and n == count(layer1) + count(head)
    n = set_trainable(mlm, "bitfit")
    assert trainable() == biases | head and n == count(biases | head)
    assert "longformer.encoder.layer.0.attention.self.query_global.bias" in trainable()
    assert not mlm.longformer.encoder.layer[0].attention.self.query.weight.requires_grad
    n = set_trainable(mlm, "all")
    assert len(trainable()) == len(params) and n == sum(p.numel() for p in mlm.parameters())
    with pytest.raises(KeptError, match="train mode"):
        set_trainable(mlm, "half")


def test_partial_modes_with_a_label_attention_head_train_that_head(tiny_longformer_dir):
    from kept.hf import load_encoder

    enc = load_encoder(tiny_longformer_dir)
    head = torch.nn.Linear(4, 4)
    n = set_trainable(enc, "last-layer", head)
    names = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert names and all(".layer.1." in n for n in names) and head.weight.requires_grad
    assert n == sum(p.numel() for p in enc.encoder.layer[1].parameters())


def test_config_toml_overrides_and_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lr = 2e-5\nglobal_stride = 3\nverbalizer = ["true", "false"]\n', encoding="utf-8")
    cfg = load_config(f, global_stride=10)
    assert cfg.lr == 2e-5 and cfg.global_stride == 10 and cfg.verbalizer == ("true", "false")
    assert cfg.prompt_codes == 50 and cfg.head == "prompt"
    f.write_text("learning_rate = 1\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="unknown keys"):
        load_config(f)
    with pytest.raises(KeptError, match="head"):
        load_config(head="cnn")
    assert load_config().verbalizer_form == "spaced" and load_config(verbalizer_form="bare").verbalizer_form == "bare"
    with pytest.raises(KeptError, match="verbalizer form"):
        load_config(verbalizer_form="prefixed")
    assert load_config().threshold_search == "grid" and load_config(threshold_search="exact").threshold_search == "exact"
    with pytest.raises(KeptError, match="threshold search"):
        load_config(threshold_search="best")


def test_resume_after_a_kill_gives_the_numbers_of_an_unbroken_run(tiny_longformer_dir, tiny_data_dir, tmp_path,
                                                                    monkeypatch):
    """Stopped after epoch 1 (OUT/last saved), then resumed: the same losses and dev metrics as a run
    never stopped, because every RNG state (dropout draws) is saved and restored."""
    import coder.training as ct

    set_dir = tiny_data_dir / "50"
    cfg = {**FAST, "epochs": 2}
    whole = train_coder(set_dir, tiny_longformer_dir, tmp_path / "whole", load_config(**cfg), max_docs=8)

    real = ct.make_batches

    def killed_in_epoch_2(examples, batch_size, shuffle, seed=0):
        if shuffle and seed == cfg["seed"] + 1:
            raise KeyboardInterrupt
        return real(examples, batch_size, shuffle, seed=seed)

    monkeypatch.setattr(ct, "make_batches", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_coder(set_dir, tiny_longformer_dir, tmp_path / "broken", load_config(**cfg), max_docs=8)
    monkeypatch.setattr(ct, "make_batches", real)
    torch.manual_seed(123)  # the process's RNG moved on meanwhile; resume must not depend on it
    resumed = train_coder(set_dir, tiny_longformer_dir, tmp_path / "broken", load_config(**cfg), resume=True,
                          max_docs=8)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    assert resumed["history"] == whole["history"]


def test_empty_train_set_is_refused_and_json_has_no_nan(tiny_longformer_dir, tmp_path, capsys):
    import io

    from kept.io import dump_json
    from tests.tiny import write_set

    set_dir = write_set(tmp_path / "s", TINY_CODES, {"train": [], "dev": [("heart failure", ["428.0"])]})
    rc = main(["coder", "train", "--data", str(set_dir), "--model", str(tiny_longformer_dir),
               "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("graph:")]
    assert rc == 1 and len(err) == 1 and "train.csv: no documents" in err[0], err
    assert not (tmp_path / "run" / "best").exists()

    buf = io.StringIO()
    dump_json([{"train_loss": float("nan"), "auc": np.float32("inf")}], buf)
    assert json.loads(buf.getvalue()) == [{"train_loss": None, "auc": None}]

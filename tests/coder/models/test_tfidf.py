"""The TF-IDF + logistic-regression head: trains without a neural model, writes the same run layout
as the neural coders (so eval, predict and report treat it alike), and reloads to the same scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coder.config import load_config
from coder.data.datasets import read_split
from coder.evaluation.evaluate import evaluate_checkpoint
from coder.models.scorer import load_coder, score_codes
from coder.models.tfidf import UNSEEN_LOGIT, TfidfLR
from coder.predict import predict_note
from coder.training import train_coder
from kept.cli import main
from kept.errors import KeptError
from tests.tiny import TINY_CODES


def test_train_eval_predict_in_the_coder_layout(tiny_data_dir, tmp_path, capsys):
    set_dir = tiny_data_dir / "50"
    out = tmp_path / "tfidf"
    assert main(["coder", "train", "--data", str(set_dir), "--out", str(out), "--head", "tfidf-lr"]) == 0
    info = json.loads((out / "best" / "kept_coder.json").read_text())
    assert info["head"] == "tfidf-lr" and info["codes"] == TINY_CODES and 0 < info["threshold"] < 1
    assert json.loads((out / "history.json").read_text())[0]["dev"]["micro_f1"] > 0.8

    res = evaluate_checkpoint(out / "best", set_dir, tmp_path / "eval")
    # the tiny world names each code with fixed cue words: a bag of words must get it
    m = res["metrics"]
    assert res["system"] == "tfidf-lr" and m["macro_auc"] >= 0.95 and m["micro_f1"] >= 0.75, m
    assert "hier_f1" in res["hierarchical"]["metrics"]
    npz = np.load(tmp_path / "eval" / "test_scores.npz")
    assert npz["y_score"].shape == (len(read_split(set_dir, "test")), len(TINY_CODES))

    capsys.readouterr()
    note = tmp_path / "note.txt"
    note.write_text("atrial fibrillation irregular rhythm, started on heparin", encoding="utf-8")
    assert main(["coder", "predict", str(note), "--checkpoint", str(out / "best")]) == 0
    lines = capsys.readouterr().out.splitlines()  # a header with the threshold, then code lines
    assert "threshold" in lines[0] and lines[2].split()[0] == "427.31"
    assert predict_note(out / "best", "nothing relevant here at all", threshold=0.999) == []


def test_reload_gives_identical_scores_and_unseen_codes_rank_last(tiny_data_dir, tmp_path):
    train = read_split(tiny_data_dir / "50", "train")
    texts, labels = [d.text for d in train], [d.labels for d in train]
    codes = TINY_CODES + ["999.9"]  # no training note has it
    model = TfidfLR.fit(texts, labels, codes)
    model.save(tmp_path)
    again = TfidfLR.load(tmp_path)
    assert np.array_equal(model.logits(texts), again.logits(texts))
    assert (model.logits(texts)[:, -1] == UNSEEN_LOGIT).all()
    # a code list the model was not trained on: known columns move, unknown ones are unseen
    z = again.logits(texts[:3], ["38.93", "000.0", "401.9"])
    full = again.logits(texts[:3])
    assert np.array_equal(z[:, 0], full[:, TINY_CODES.index("38.93")]) and (z[:, 1] == UNSEEN_LOGIT).all()


def test_loaded_coder_scores_through_the_common_entry_point(tiny_data_dir, tmp_path):
    train_coder(tiny_data_dir / "50", None, tmp_path / "r", load_config(head="tfidf-lr"))
    coder = load_coder(tmp_path / "r" / "best")
    one = score_codes(coder.model, coder.tokenizer, "diabetes insulin glucose", coder.codes, coder.descriptions,
                      coder.config)
    assert one.shape == (len(TINY_CODES),) and coder.codes[int(np.argmax(one))] == "250.00"


def test_refusals(tiny_data_dir, tmp_path, capsys):
    with pytest.raises(KeptError, match="no training notes"):
        TfidfLR.fit([], [], TINY_CODES)
    assert main(["coder", "train", "--data", str(tiny_data_dir / "50"), "--out", str(tmp_path / "x")]) == 1
    assert "--model is required" in capsys.readouterr().err

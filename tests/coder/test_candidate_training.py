"""Training the reranker on first-stage candidates (`kept coder train --candidates`): which codes each
note's prompts hold, the description cut, batching of different prompts, the checkpoint `kept coder
rerank` loads, dev selection as rerank computes it, learning, resume and the errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from coder.candidate_training import (CandidateSpec, CandidateTask, candidate_batches, stack_batches,
                                      training_code_lists)
from coder.data.datasets import read_split
from coder.config import load_config
from kept.hf import load_tokenizer
from coder.models.prompts import code_descriptions, encode_prompt
from coder.retrieval.candidates import write_candidates
from coder.training import train_coder
from kept.errors import KeptError
from tests.tiny import TINY_CODES, interrupted, tiny_notes, write_set

EXTRA = ["250.01", "428.1", "V45.81"]
SPACE = TINY_CODES + EXTRA
# stage 1's fixed ranking: 427.31 is never a candidate (its gold labels are missed), 999.9 is outside the space
ORDER = ["401.9", "V45.81", "428.0", "250.00", "584.9", "428.1", "38.93", "250.01", "999.9"]
K = 6  # top 6 inside the space: 401.9 V45.81 428.0 250.00 584.9 428.1; 38.93 and 250.01 fall outside too
TOP_K = ORDER[:K]
FAST = dict(batch_size=3, grad_accum=1, eval_batch_size=4, lr=1e-3, warmup_ratio=0.0, max_length=256, device="cpu",
            seed=0, prompt_codes=4, epochs=2)


def write_cands(cdir, set_dir, splits=("train", "dev", "test"), order=ORDER, skip_first=()):
    """Every note gets `order` (scores falling with rank); the first note of the splits in
    `skip_first` gets none."""
    for split in splits:
        docs = read_split(set_dir, split)[1 if split in skip_first else 0:]
        write_candidates(cdir / f"candidates_{split}.parquet", [d.hadm_id for d in docs], [order] * len(docs),
                         [np.linspace(0.9, 0.1, len(order), dtype=np.float32)] * len(docs))
    return cdir


@pytest.fixture(scope="module")
def cand_set(tmp_path_factory):
    """A full set over SPACE (8 train, 8 dev, 8 test notes) and candidates of every split; the first
    train note has none."""
    root = tmp_path_factory.mktemp("cand_data")
    (root / "dataset.json").write_text(json.dumps({"source": "fixture", "seed": 0}))
    set_dir = write_set(root / "full", SPACE, {"train": tiny_notes(8, 1), "dev": tiny_notes(8, 2), "test": tiny_notes(8, 3)})
    return set_dir, write_cands(root / "cands", set_dir, skip_first=("train",))


def make_task(set_dir, cdir, model_dir, k=K, **overrides):
    cfg = load_config(**{**FAST, **overrides})
    return CandidateTask(CandidateSpec(cdir, k), SPACE, read_split(set_dir, "train"), read_split(set_dir, "dev"),
                         load_tokenizer(model_dir), code_descriptions(SPACE), cfg, 256)


def note_codes(examples, doc):
    return [c for e in examples if e.doc == doc for c in e.codes]


# ---- (a) which codes a note's prompts hold ----------------------------------------------------------------------

def test_training_lists_add_the_missed_gold_and_shuffle_by_seed_and_epoch():
    space = [f"{i:03d}.0" for i in range(40)]
    cands = [space[:30]]
    gold = [[space[3], space[35], space[36], "999.9"]]  # 35, 36 missed by stage 1; 999.9 is no label here
    one = training_code_lists(cands, gold, space, seed=0, epoch=0)[0]
    assert sorted(one) == sorted(space[:30] + [space[35], space[36]]) and len(set(one)) == len(one) == 32
    assert one == training_code_lists(cands, gold, space, seed=0, epoch=0)[0]  # reproducible
    assert one != training_code_lists(cands, gold, space, seed=1, epoch=0)[0]  # another seed, another order
    assert one != training_code_lists(cands, gold, space, seed=0, epoch=1)[0]  # reshuffled every epoch
    assert one != space[:30] + [space[35], space[36]]  # shuffled at all


def test_train_prompts_hold_top_k_plus_missed_gold_dev_prompts_top_k_only(cand_set, tiny_longformer_dir):
    set_dir, cdir = cand_set
    task = make_task(set_dir, cdir, tiny_longformer_dir)
    train, dev = read_split(set_dir, "train"), read_split(set_dir, "dev")
    examples = task.train_examples(0)
    for i, d in enumerate(train):
        codes = note_codes(examples, i)
        stage1 = [] if i == 0 else TOP_K  # the first train note has no candidates: its gold codes only
        want = set(stage1) | set(d.labels)
        assert sorted(codes) == sorted(want), (i, d.labels)  # each once
        for e in (e for e in examples if e.doc == i):
            assert e.labels == [float(c in d.labels) for c in e.codes]
    missed = sum(len(set(d.labels) - set(TOP_K)) for d in train[1:]) + len(train[0].labels)
    assert missed > 0 and task.record["candidate_training"]["gold_added_in_training"] == missed
    # dev: each note's top k in rank order, no gold added (427.31, 38.93 never appear)
    for i in range(len(dev)):
        assert note_codes(task.dev_examples, i) == TOP_K
    rec = task.record["candidate_training"]
    assert rec["train_notes_without_candidates"] == 1 and rec["dev_notes_without_candidates"] == 0
    assert rec["outside_label_space_ignored"] == {"train": 7, "dev": 8}  # 999.9 of each note with candidates
    assert rec["k"] == K and rec["prompt_codes"] == 4


# ---- (b) prompt size and description cut ------------------------------------------------------------------------

def test_prompts_respect_prompt_codes_and_desc_words(cand_set, tiny_longformer_dir):
    set_dir, cdir = cand_set
    task = make_task(set_dir, cdir, tiny_longformer_dir, prompt_codes=4, desc_words=2)
    tok = task.tokenizer
    for examples in (task.train_examples(0), task.dev_examples):
        for i in {e.doc for e in examples}:
            sizes = [len(e.codes) for e in examples if e.doc == i]
            assert all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4, sizes
    ex = task.dev_examples[0]
    batch = task.collate([ex])
    ids = batch["input_ids"][0].tolist()
    pos = batch["mask_positions"][0].tolist()
    desc = code_descriptions(SPACE)
    # paper template: the text between two masks is ", <first 2 words of the description> :"
    for j, code in enumerate(ex.codes):
        start = 1 if j == 0 else pos[j - 1] + 2
        text = tok.decode(ids[start:pos[j]]).replace(" ", "")
        assert text == (" ".join(desc[code].split()[:2]) + ":").lower().replace(" ", ""), (code, text)
    # the default cuts nothing: today's prompts are unchanged
    assert encode_prompt(tok, TOP_K, desc).input_ids == encode_prompt(tok, TOP_K, desc, desc_words=None).input_ids
    assert len(encode_prompt(tok, TOP_K, desc, desc_words=2).input_ids) < len(encode_prompt(tok, TOP_K, desc).input_ids)
    with pytest.raises(KeptError, match="desc_words"):
        load_config(desc_words=0)


# ---- batching different prompts ---------------------------------------------------------------------------------

def test_a_batch_of_different_prompts_scores_as_each_alone(cand_set, tiny_longformer_dir):
    from coder.models.scorer import build_scorer

    set_dir, cdir = cand_set
    task = make_task(set_dir, cdir, tiny_longformer_dir)
    model = build_scorer("prompt", tiny_longformer_dir, task.tokenizer, ("yes", "no")).eval()
    examples = [e for e in task.train_examples(0) if len(e.codes) == 4]
    batches = candidate_batches(task.train_examples(0), 3, shuffle=True, seed=5)
    assert all(len({len(task.train_examples(0)[i].codes) for i in b}) == 1 for b in batches)  # one size a batch
    exs = examples[:3]
    assert len({tuple(e.codes) for e in exs}) > 1 and len({len(task.collate([e])["input_ids"][0]) for e in exs}) > 1
    with torch.no_grad():
        together = model(task.collate(exs))
        alone = torch.cat([model(task.collate([e])) for e in exs])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert task.collate(exs)["labels"].tolist() == [e.labels for e in exs]
    short = [e for e in task.dev_examples if len(e.codes) == 2][:1]  # a note's last prompt: 6 = 4 + 2
    with pytest.raises(KeptError, match="mixes"):
        stack_batches([task.collate([examples[0]]), task.collate(short)], 0)


# ---- (c) a checkpoint `kept coder rerank` loads, with dev selection as rerank computes it ------------------------

@pytest.fixture(scope="module")
def trained(cand_set, tiny_longformer_dir, tmp_path_factory):
    set_dir, cdir = cand_set
    out = tmp_path_factory.mktemp("cand_run")
    summary = train_coder(set_dir, tiny_longformer_dir, out, load_config(**FAST), candidates=CandidateSpec(cdir, K))
    return out, summary


def test_candidate_checkpoint_reranks_with_the_dev_threshold_it_was_selected_with(cand_set, trained, tmp_path,
                                                                                     caplog):
    import pandas as pd

    from coder.models.scorer import load_coder
    from coder.retrieval.rerank import RERANK_SYSTEM, run_rerank

    set_dir, cdir = cand_set
    out, summary = trained
    info = json.loads((out / "best" / "kept_coder.json").read_text())
    rec = info["candidate_training"]
    assert rec["candidates"] == str(cdir) and rec["k"] == K and rec["prompt_codes"] == 4
    assert info["codes"] == SPACE and len(summary["history"]) == 2
    assert "candidate_micro_auc" in info["dev_metrics"] and "macro_auc" not in info["dev_metrics"]
    results = run_rerank(cdir, set_dir, tmp_path / "runs", out / "best", k=K, progress=False)
    res = results[RERANK_SYSTEM]
    # rerank tunes its fusion weight and threshold on the same dev candidates: the ones stored at training
    assert res["stage1_weight"] == rec["stage1_weight"] == info["dev_metrics"]["stage1_weight"]
    assert res["threshold"] == pytest.approx(info["threshold"], abs=1e-5)
    # the dev scores training selected on are the scores rerank computes
    coder = load_coder(out / "best", "cpu")
    assert coder.stage1_weight == rec["stage1_weight"]
    task = make_task(set_dir, cdir, out / "best")
    mine = task.dev_scores(coder.model, coder.device)
    dev = pd.read_parquet(tmp_path / "runs" / "reranked_dev.parquet")
    for i, d in enumerate(read_split(set_dir, "dev")):
        theirs = dev[dev.hadm_id == d.hadm_id].sort_values("rank")["rerank_score"].to_numpy()
        np.testing.assert_allclose(mine[i], theirs, atol=1e-5)
    npz = np.load(tmp_path / "runs" / RERANK_SYSTEM / "test_scores.npz")
    assert (npz["y_score"][:, [SPACE.index(c) for c in TOP_K]] > 0).all()
    # another prompt size than trained with: rerank says so
    with caplog.at_level(logging.WARNING):
        run_rerank(cdir, set_dir, tmp_path / "runs2", out / "best", k=K, progress=False, prompt_codes=2)
    assert "prompt_codes 4 -> 2" in caplog.text


# ---- (d) it learns ----------------------------------------------------------------------------------------------

# Learning set: TINY_CODES and three codes whose titles share no word with any note's cues; stage 1
# ranks the same 8 codes for every note and never finds 427.31 (added in training only).
LEARN_EXTRA = ["V58.61", "305.1", "V45.81"]
LEARN_ORDER = ["401.9", "V58.61", "428.0", "250.00", "305.1", "584.9", "V45.81", "38.93"]


def note_blind_candidate_micro_f1(set_dir) -> float:
    """The best a scorer that never reads the note can do on these candidates: each candidate code's
    training frequency as its score for every note (0 off the candidates), threshold tuned on these notes."""
    from coder.data.datasets import label_matrix
    from coder.evaluation.metrics import all_metrics, tune_threshold

    docs, space = read_split(set_dir, "train"), TINY_CODES + LEARN_EXTRA
    y = label_matrix(docs, space)
    s = np.zeros(y.shape, dtype=np.float32)
    cols = [space.index(c) for c in LEARN_ORDER]
    s[:, cols] = y[:, cols].mean(0)
    return all_metrics(y, s, tune_threshold(y, s, grid=np.unique(s[:, cols])))["micro_f1"]


def test_the_prompted_coder_learns_its_training_candidates(tiny_longformer_dir, tmp_path):
    """Train = dev (a handful of notes), so the dev figure is the fit of the training candidates:
    candidates reshuffled every epoch, two codes a prompt, so mask i must read code i's description."""
    notes = tiny_notes(12, 7)
    set_dir = write_set(tmp_path / "full", TINY_CODES + LEARN_EXTRA, {"train": notes, "dev": notes, "test": notes})
    cdir = write_cands(tmp_path / "cands", set_dir, splits=("train", "dev"), order=LEARN_ORDER)
    cfg = load_config(batch_size=4, grad_accum=1, eval_batch_size=8, warmup_ratio=0.0, max_length=256, device="cpu",
                      seed=0, epochs=15, lr=3e-3, prompt_codes=2)
    summary = train_coder(set_dir, tiny_longformer_dir, tmp_path / "run", cfg, candidates=CandidateSpec(cdir, 8))
    losses = [h["train_loss"] for h in summary["history"]]
    f1 = [round(h["dev"]["micro_f1"], 3) for h in summary["history"]]
    auc = [round(h["dev"]["candidate_macro_auc"], 3) for h in summary["history"]]
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    blind = note_blind_candidate_micro_f1(set_dir)  # 0.589 on these notes
    assert summary["best_dev_micro_f1"] >= blind + 0.05, (blind, f1)  # 0.70-0.76 over seeds 0-2
    # per code, a note-blind scorer ranks every note alike: AUC 0.5 for each; this one reads the notes
    assert max(auc) >= 0.75, auc  # 0.84-0.89 over seeds 0-2 (it swings from epoch to epoch)


# ---- (e) resume -------------------------------------------------------------------------------------------------

def test_resume_gives_the_numbers_of_an_unbroken_run(cand_set, tiny_longformer_dir, tmp_path, monkeypatch):
    set_dir, cdir = cand_set
    spec = CandidateSpec(cdir, K)
    whole = train_coder(set_dir, tiny_longformer_dir, tmp_path / "whole", load_config(**FAST), candidates=spec)
    interrupted(monkeypatch, CandidateTask, "train_examples", 1,  # killed as epoch 2 starts
                lambda: train_coder(set_dir, tiny_longformer_dir, tmp_path / "broken", load_config(**FAST),
                                    candidates=spec))
    torch.manual_seed(123)
    resumed = train_coder(set_dir, tiny_longformer_dir, tmp_path / "broken", load_config(**FAST), resume=True,
                          candidates=spec)
    assert resumed["history"] == whole["history"]


def test_cli_records_the_candidate_format_zero_shot(cand_set, tiny_longformer_dir, tmp_path, capsys):
    from kept.cli import main

    set_dir, cdir = cand_set
    out = tmp_path / "zs"
    assert main(["coder", "train", "--data", str(set_dir), "--model", str(tiny_longformer_dir), "--out", str(out),
                 "--epochs", "0", "--device", "cpu", "--max-length", "256", "--prompt-codes", "4", "--template",
                 "kept", "--candidates", str(cdir), "--candidates-k", "5", "--desc-words", "3"]) == 0
    assert "best dev micro-F1" in capsys.readouterr().out
    info = json.loads((out / "best" / "kept_coder.json").read_text())
    assert info["config"]["desc_words"] == 3 and info["config"]["template"] == "kept"
    rec = info["candidate_training"]
    assert (rec["k"], rec["desc_words"], rec["template"], rec["prompt_codes"]) == (5, 3, "kept", 4)


# ---- errors -----------------------------------------------------------------------------------------------------

def test_errors_name_the_folder_or_file(cand_set, tiny_longformer_dir, tmp_path, capsys):
    from kept.cli import main

    set_dir, cdir = cand_set
    base = ["coder", "train", "--data", str(set_dir), "--model", str(tiny_longformer_dir), "--epochs", "1",
            "--device", "cpu", "--max-length", "256", "--prompt-codes", "4"]

    def error(*extra: str) -> str:
        assert main([*base, "--out", str(tmp_path / "run"), *extra]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kept: error:")]
        assert len(err) == 1, err
        return err[0]

    assert f"{tmp_path / 'nowhere'}: no such folder" in error("--candidates", str(tmp_path / "nowhere"))
    only_dev = write_cands(tmp_path / "only_dev", set_dir, splits=("dev",))
    assert f"{only_dev / 'candidates_train.parquet'}: file not found" in error("--candidates", str(only_dev))
    assert "--candidates-k needs --candidates" in error("--candidates-k", "5")
    assert "not --head label-attention" in error("--candidates", str(cdir), "--head", "label-attention")
    assert "not --head tfidf-lr" in error("--candidates", str(cdir), "--head", "tfidf-lr")
    undotted = write_cands(tmp_path / "undotted", set_dir, order=["4019", "4280"])
    assert "label space" in error("--candidates", str(undotted))
    other = tmp_path / "other_notes"
    write_candidates(other / "candidates_train.parquet", ["1", "2"], [["401.9"]] * 2, [np.ones(1, np.float32)] * 2)
    assert "none of the 8 train notes has candidates" in error("--candidates", str(other))
    assert not (tmp_path / "run" / "best").exists()


def test_dev_notes_without_candidates_score_zero_and_are_counted(cand_set, tiny_longformer_dir, tmp_path, caplog):
    from coder.models.scorer import build_scorer

    set_dir, _ = cand_set
    cdir = write_cands(tmp_path / "c", set_dir, splits=("train",))
    write_cands(cdir, set_dir, splits=("dev",), order=["401.9", "999.9"], skip_first=("dev",))
    with caplog.at_level(logging.WARNING):
        task = make_task(set_dir, cdir, tiny_longformer_dir)
    assert "1 of 8 dev notes have no candidates (they score 0 for every code)" in caplog.text
    assert "candidates_dev.parquet: 7 candidate codes outside the label space (codes.txt) ignored" in caplog.text
    assert [e.doc for e in task.dev_examples] == list(range(1, 8)) and task.dev.no_candidates == 1
    model = build_scorer("prompt", tiny_longformer_dir, task.tokenizer, ("yes", "no")).eval()
    scores = task.dev_scores(model, torch.device("cpu"))
    assert scores[0].size == 0 and all(s.size == 1 and 0 < s[0] < 1 for s in scores[1:])
    _, metrics = task.dev_eval(model, torch.device("cpu"))
    assert metrics["candidate_recall"] < 1  # over the whole label space: the first note's gold all missed


def test_a_prompt_with_no_room_for_the_note_is_refused_before_training(cand_set, tiny_longformer_dir):
    set_dir, cdir = cand_set
    cfg = load_config(**FAST)
    args = (CandidateSpec(cdir, K), SPACE, read_split(set_dir, "train"), read_split(set_dir, "dev"),
            load_tokenizer(tiny_longformer_dir), code_descriptions(SPACE), cfg)
    # 48 tokens: the longest single-code prompt takes ~29 with the tiny tokenizer, whose vocabulary
    # (trained per test session) varies by a token or two; four codes take over 80
    with pytest.raises(KeptError, match=r"takes up to \d+ of 48 tokens.*--prompt-codes \(now 4\)"):
        CandidateTask(*args, 48)
    cfg.prompt_codes = 1
    CandidateTask(*args, 48)  # one code a prompt leaves room


def test_evidence_view_prompts_read_their_codes_sentences(cand_set, tiny_longformer_dir, index_dir):
    from coder.models.evidence import join_evidence, load_finder

    set_dir, cdir = cand_set
    task = make_task(set_dir, cdir, tiny_longformer_dir, note_view="evidence", evidence_index=str(index_dir),
                     prompt_codes=2)
    finder = load_finder(str(index_dir))
    # the evidence found as the task finds it (one call per split, same pools): the random tiny encoder
    # leaves near-ties between sentences that another batching could flip by float noise
    pools = {"dev": task.dev.codes, "train": task._train_pools()}
    for split, examples in (("dev", task.dev_examples), ("train", task.train_examples(0))):
        docs = read_split(set_dir, split)
        found = finder.find([d.text for d in docs], pools[split])
        for e in examples:
            text = docs[e.doc].text
            assert e.text == join_evidence(text, found[e.doc], e.codes)
            assert len(e.text) <= len(text)  # overlapping windows merged: never more than the note
    assert task.record["candidate_training"]["note_view"] == "evidence"

"""Second stage: merging candidate scores into the full label space, dev-only thresholds, AUC over
candidates, and `kept coder rerank` with a real (tiny, briefly trained) prompted coder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny import TINY_CODES, tiny_notes, write_set

EXTRA = ["250.01", "428.1", "V45.81"]


def test_merge_scores_hand_example():
    from coder.retrieval.rerank import merge_scores

    space = ["a", "b", "c", "d"]
    s, m = merge_scores([["c", "a"], []], [np.array([.9, .4]), np.zeros(0)], space)
    np.testing.assert_allclose(s, [[.4, 0, .9, 0], [0, 0, 0, 0]])
    assert m.tolist() == [[True, False, True, False], [False] * 4]


def test_candidate_lists_keep_rank_order_inside_label_space():
    from coder.retrieval.rerank import candidate_lists
    from kept.errors import KeptError

    cands = {"1": (["x", "b", "a", "c"], np.array([.9, .8, .7, .6]))}
    codes, scores = candidate_lists(cands, ["1"], k=2, label_space=["a", "b", "c"])
    assert codes == [["b", "a"]] and scores[0].tolist() == pytest.approx([.8, .7])
    with pytest.raises(KeptError, match="no candidates"):
        candidate_lists(cands, ["2"], 2, ["a"])


def test_candidate_auc_hand_example():
    from coder.retrieval.rerank import candidate_auc

    y = np.array([[1, 0, 0], [0, 1, 1]])
    s = np.array([[.9, .5, .0], [.2, .8, .0]])
    m = np.array([[True, True, False], [True, True, False]])
    # candidate cells: (1,.9) (0,.5) (0,.2) (1,.8): positives outrank every negative -> 1
    # code 0 over docs 0,1: pos .9 > neg .2 -> 1; code 1: pos .8 > neg .5 -> 1; code 2 never a candidate
    out = candidate_auc(y, s, m)
    assert out["candidate_micro_auc"] == 1.0 and out["candidate_macro_auc"] == 1.0
    assert out["n_codes_candidate_auc"] == 2
    s2 = s.copy()
    s2[0, 0] = .1  # now pos .1 < negs .5, .2; pos .8 > both: micro AUC 2/4
    assert candidate_auc(y, s2, m)["candidate_micro_auc"] == pytest.approx(0.5)


def test_threshold_is_tuned_on_dev_only():
    from coder.evaluation.metrics import all_metrics, tune_threshold
    from coder.retrieval.rerank import evaluate_scores

    rng = np.random.default_rng(0)
    y_dev = (rng.random((30, 12)) < 0.2).astype(np.uint8)
    s_dev = np.clip(0.5 * y_dev + 0.6 * rng.random((30, 12)), 0.01, 1).astype(np.float32)
    m_dev = np.ones_like(y_dev, dtype=bool)
    y_test = (rng.random((20, 12)) < 0.2).astype(np.uint8)
    s_test = rng.random((20, 12)).astype(np.float32)
    m_test = rng.random((20, 12)) < 0.5
    s_test[~m_test] = 0
    t, metrics = evaluate_scores((y_dev, s_dev, m_dev), (y_test, s_test, m_test))
    assert t == tune_threshold(y_dev, s_dev, grid=np.unique(s_dev))
    t2, _ = evaluate_scores((y_dev, s_dev, m_dev), (y_test, 1 - s_test, m_test))
    assert t2 == t  # test scores never move the threshold
    want = all_metrics(y_test, s_test, t, ks=(8, 15))
    for k in ("micro_f1", "macro_f1", "p@8", "r@15"):
        assert metrics[k] == want[k]
    assert "micro_auc" not in metrics and "macro_auc" not in metrics
    assert metrics["candidate_recall"] == pytest.approx((y_test.astype(bool) & m_test).sum() / y_test.sum())


@pytest.fixture(scope="module")
def full_set(tmp_path_factory):
    """A full set over TINY_CODES + EXTRA and stage-1 candidates (a fixed, deliberately imperfect
    order: 427.31 is never a candidate, so its gold labels count as misses)."""
    from coder.data.datasets import read_split
    from coder.retrieval.candidates import write_candidates

    root = tmp_path_factory.mktemp("full_data")
    (root / "dataset.json").write_text(json.dumps({"source": "fixture", "seed": 0}))
    set_dir = write_set(root / "full", TINY_CODES + EXTRA, {"train": tiny_notes(6, 1), "dev": tiny_notes(12, 2),
                                                            "test": tiny_notes(12, 3)})
    order = ["401.9", "V45.81", "428.0", "250.00", "584.9", "428.1", "38.93", "250.01", "999.9"]
    cdir = root / "cands"
    for split in ("dev", "test"):
        docs = read_split(set_dir, split)
        write_candidates(cdir / f"candidates_{split}.parquet", [d.hadm_id for d in docs], [order] * len(docs),
                         [np.linspace(0.9, 0.1, len(order), dtype=np.float32)] * len(docs))
    return set_dir, cdir


def test_rerank_end_to_end(coder_dir, full_set, tmp_path):
    from coder.data.datasets import read_split
    from coder.models.scorer import load_coder, score_codes
    from coder.retrieval.rerank import RERANK_ALONE_SYSTEM, RERANK_SYSTEM, STAGE1_SYSTEM, run_rerank

    set_dir, cdir = full_set
    results = run_rerank(cdir, set_dir, tmp_path / "runs", coder_dir, k=6, progress=False)
    assert set(results) == {STAGE1_SYSTEM, RERANK_SYSTEM, RERANK_ALONE_SYSTEM}
    space = (set_dir / "codes.txt").read_text().split()
    for system, res in results.items():
        assert res["system"] == system and res["split"] == "test" and res["data_source"] == "fixture"
        assert {"micro_f1", "macro_f1", "p@8", "p@15", "r@8", "r@15", "candidate_micro_auc"} <= set(res["metrics"])
        hier = res["hierarchical"]["metrics"]
        assert hier["exact_f1@code"] == pytest.approx(res["metrics"]["micro_f1"]) and "hier_f1" not in res["metrics"]
        npz = np.load(tmp_path / "runs" / system / "test_scores.npz")
        assert npz["y_score"].shape == npz["y_true"].shape == (12, len(space))
        assert npz["codes"].tolist() == space
        # 999.9 is outside the label space and k=6 keeps the first 6 codes inside it
        cand_cols = [space.index(c) for c in ["401.9", "V45.81", "428.0", "250.00", "584.9", "428.1"]]
        others = np.setdiff1d(np.arange(len(space)), cand_cols)
        assert (npz["y_score"][:, others] == 0).all() and (npz["y_score"][:, cand_cols] > 0).all()
    gold = sum(len(d.labels) for d in read_split(set_dir, "test"))
    missed = sum(len(set(d.labels) - {"401.9", "V45.81", "428.0", "250.00", "584.9", "428.1"})
                 for d in read_split(set_dir, "test"))
    assert results[STAGE1_SYSTEM]["metrics"]["candidate_recall"] == pytest.approx(1 - missed / gold)
    # the merged rerank scores are the coder's own scores of the candidates, in rank order
    coder = load_coder(coder_dir, "cpu")
    doc = read_split(set_dir, "test")[0]
    cands = ["401.9", "V45.81", "428.0", "250.00", "584.9", "428.1"]
    from coder.models.prompts import code_descriptions

    desc = {**code_descriptions(["V45.81", "428.1"]), **coder.descriptions}
    direct = score_codes(coder.model, coder.tokenizer, doc.text, cands, desc, coder.config, coder.device)
    npz = np.load(tmp_path / "runs" / RERANK_ALONE_SYSTEM / "test_scores.npz")
    row = npz["hadm_ids"].tolist().index(doc.hadm_id)
    cols = [space.index(c) for c in cands]
    np.testing.assert_allclose(npz["y_score"][row, cols], direct, atol=1e-5)
    # the fused system: the dev-tuned weight of stage 1's probability, (1 + cos) / 2, plus the rest of the coder's
    w = results[RERANK_SYSTEM]["stage1_weight"]
    assert results[RERANK_SYSTEM]["stage1_weight_from"] == "dev" and results[RERANK_ALONE_SYSTEM]["stage1_weight"] == 0
    stage1 = (1 + np.linspace(0.9, 0.1, 9)[:6]) / 2
    fused = np.load(tmp_path / "runs" / RERANK_SYSTEM / "test_scores.npz")["y_score"][row, cols]
    np.testing.assert_allclose(fused, w * stage1 + (1 - w) * np.asarray(direct), atol=1e-5)


def test_rerank_with_a_given_stage1_weight(coder_dir, full_set, tmp_path):
    from coder.retrieval.rerank import RERANK_ALONE_SYSTEM, RERANK_SYSTEM, run_rerank
    from kept.errors import KeptError

    set_dir, cdir = full_set
    results = run_rerank(cdir, set_dir, tmp_path / "runs", coder_dir, k=6, progress=False, stage1_weight=0.0)
    assert results[RERANK_SYSTEM]["stage1_weight"] == 0.0 and results[RERANK_SYSTEM]["stage1_weight_from"] == "given"
    assert results[RERANK_SYSTEM]["metrics"] == results[RERANK_ALONE_SYSTEM]["metrics"]
    with pytest.raises(KeptError, match="stage1-weight"):
        run_rerank(cdir, set_dir, tmp_path / "bad", coder_dir, k=6, progress=False, stage1_weight=1.5)
    assert not (tmp_path / "bad").exists()


def test_rerank_cli_stage1_only(full_set, tmp_path, capsys):
    from kept.cli import main

    set_dir, cdir = full_set
    assert main(["coder", "rerank", "--candidates", str(cdir / "candidates_test.parquet"), "--data", str(set_dir),
                 "--out", str(tmp_path / "r"), "--top-k", "4", "--no-progress"]) == 0
    assert "faiss-stage1" in capsys.readouterr().out
    res = json.loads((tmp_path / "r" / "faiss-stage1" / "metrics.json").read_text())
    assert res["top_k"] == 4 and not (tmp_path / "r" / "faiss+kept-rerank").exists()


def test_a_prompt_with_no_room_for_the_note_is_found_before_scoring(coder_dir):
    from coder.models.scorer import load_coder
    from coder.retrieval.rerank import check_prompt_room
    from kept.errors import KeptError

    coder = load_coder(coder_dir, "cpu")
    codes = TINY_CODES + EXTRA
    long_titles = {c: "long title words " * 4 for c in codes}
    coder.config.prompt_codes = len(codes)
    with pytest.raises(KeptError, match="--prompt-codes"):
        check_prompt_room(coder, [codes], long_titles)
    coder.config.prompt_codes = 2
    check_prompt_room(coder, [codes], long_titles)  # run_rerank calls it on both splits before scoring

"""`kept report` on run directories built on the fly with known scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coder.evaluation import report as R
from coder.evaluation.metrics import all_metrics
from kept.cli import main
from kept.errors import InputFileError, KeptError

CODES = ["401.9", "428.0", "427.31", "584.9", "250.00", "038.9"]


def gold(n_docs: int = 60, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n_docs, len(CODES))) < 0.3).astype(np.uint8)
    y[0] = 0  # a document with no codes
    y[1:4, 0] = 1  # every code has a positive...
    y[4:7, 0] = 0  # ...and a negative
    return y, [f"1{i:05d}" for i in range(n_docs)]


def write_run(root: Path, system: str, seed: int, y: np.ndarray, s: np.ndarray, hadm_ids: list[str],
              dataset: str = "50", threshold: float = 0.5, codes: list[str] = CODES) -> Path:
    run = root / f"{dataset}-{system}-seed{seed}"
    run.mkdir(parents=True)
    meta = {"system": system, "dataset": dataset, "split": "test", "seed": seed, "threshold": threshold,
            "data_source": "synthetic", "metrics": all_metrics(y, s, threshold)}
    (run / "metrics.json").write_text(json.dumps(meta))
    np.savez(run / "test_scores.npz", y_true=y.astype(np.uint8), y_score=s.astype(np.float32),
             hadm_ids=np.array(hadm_ids), codes=np.array(codes))
    return run


def noisy(y: np.ndarray, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    return np.round(np.clip(0.5 * y + 0.25 + rng.normal(0, noise, y.shape), 0, 1), 2)


def test_unit_weights_and_resamples_match_all_metrics():
    y, _ = gold(40)
    s = noisy(y, 0, 0.3)
    names = ["micro_f1", "micro_precision", "micro_recall", "macro_f1", "macro_precision", "macro_recall",
             "macro_f1_mean", "macro_auc", "p@5", "r@5", "p@8"]
    idx = np.random.default_rng(1).integers(0, 40, size=40)
    weights = np.vstack([np.ones(40), np.bincount(idx, minlength=40)])
    got = R.weighted_metrics(weights, y, s, 0.5, names)
    whole, resampled = all_metrics(y, s, 0.5), all_metrics(y[idx], s[idx], 0.5)
    for name in names:
        # row 1 must equal the metric on the explicitly duplicated documents
        assert got[name] == pytest.approx([whole[name], resampled[name]], abs=1e-12), name


def test_b_better_on_every_doc_gives_a_ci_above_zero(tmp_path):
    y, ids = gold()
    for seed in range(3):
        write_run(tmp_path, "msmn", seed, y, noisy(y, seed, 0.35), ids)
        write_run(tmp_path, "kept", seed, y, noisy(y, seed + 10, 0.05), ids)  # ranks every doc right
    result = R.report([tmp_path], n_boot=300, seed=0)
    comps = {c["metric"]: c for c in result["comparisons"]}
    assert set(comps) == {"micro_f1", "macro_f1", "macro_auc"}
    for c in comps.values():
        assert (c["a"], c["b"], c["n_a"], c["n_b"]) == ("kept", "msmn", 3, 3)  # alphabetical: b - a = msmn - kept
        assert c["ci_high"] < 0 and c["ci_low"] <= c["diff"] <= c["ci_high"] and c["p_b_le_a"] == 1.0
    # named the other way round, the difference flips sign and its CI lies above 0
    named = R.report([tmp_path], a="msmn", b="kept", n_boot=300, seed=0)["comparisons"]
    for c in named:
        assert c["ci_low"] > 0 and c["p_b_le_a"] == 0.0
        assert c["diff"] == pytest.approx(-comps[c["metric"]]["diff"])


def test_identical_systems_give_a_zero_width_ci_at_zero(tmp_path):
    y, ids = gold()
    for seed in range(2):
        s = noisy(y, seed, 0.3)
        write_run(tmp_path, "a", seed, y, s, ids)
        # same scores, documents and codes stored in another order: matched by hadm_id and code
        rows, cols = np.random.default_rng(seed).permutation(len(ids)), np.arange(len(CODES))[::-1]
        write_run(tmp_path, "b", seed, y[rows][:, cols], s[rows][:, cols], [ids[i] for i in rows],
                  codes=[CODES[j] for j in cols])
    for c in R.report([tmp_path], n_boot=100)["comparisons"]:
        assert c["diff"] == 0.0 and c["ci_low"] == 0.0 and c["ci_high"] == 0.0


def _meta_only_run(root: Path, seed: int, micro_f1: float, macro_auc: float) -> None:
    run = root / f"seed{seed}"
    run.mkdir(parents=True)
    meta = {"system": "kept", "dataset": "rare50", "split": "test", "seed": seed, "threshold": 0.4,
            "data_source": "synthetic", "metrics": {"micro_f1": micro_f1, "macro_auc": macro_auc, "n_codes_macro": 50}}
    (run / "metrics.json").write_text(json.dumps(meta))


def test_median_over_three_seeds_by_hand(tmp_path):
    # micro_f1 over seeds 0.50, 0.70, 0.60 -> median 0.60; macro_auc 0.80, 0.90, 0.85 -> 0.85
    for seed, mf1, mauc in [(0, 0.50, 0.80), (1, 0.70, 0.90), (2, 0.60, 0.85)]:
        _meta_only_run(tmp_path / "runs", seed, mf1, mauc)
    shown = ["micro_f1", "macro_auc", "n_codes_macro"]
    result = R.report([tmp_path / "runs" / "seed0", tmp_path / "runs"], metrics=shown)
    (group,) = result["groups"]  # seed0 given twice is counted once
    assert (group["n"], group["seeds"]) == (3, [0, 1, 2])
    assert group["median"] == pytest.approx({"micro_f1": 0.60, "macro_auc": 0.85, "n_codes_macro": 50})
    assert (group["min"]["micro_f1"], group["max"]["micro_f1"]) == (0.50, 0.70)
    text = R.format_report(result)
    assert "rare50" in text and "0.6000" in text and "0.8500" in text and "  50" in text


def test_mismatched_test_sets_are_an_error(tmp_path):
    y, ids = gold()
    write_run(tmp_path, "a", 0, y, noisy(y, 0, 0.3), ids)
    write_run(tmp_path, "b", 0, y[:-1], noisy(y, 1, 0.3)[:-1], ids[:-1])
    with pytest.raises(KeptError, match="test sets differ.*59 hadm_ids.*60"):
        R.report([tmp_path], n_boot=10)
    other = tmp_path / "other"
    write_run(other, "a", 0, y, noisy(y, 0, 0.3), ids)
    flipped = y.copy()
    flipped[5, 1] ^= 1
    write_run(other, "b", 0, flipped, noisy(y, 1, 0.3), ids)
    with pytest.raises(KeptError, match="different gold codes"):
        R.report([other], n_boot=10)


def test_bad_run_directories_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeptError, match=f"{empty}: no metrics.json"):
        R.find_runs([empty])
    with pytest.raises(KeptError, match="no such file"):
        R.find_runs([tmp_path / "missing"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{\n  'system': 1\n}")
    with pytest.raises(InputFileError, match=f"{bad / 'metrics.json'}:2: not valid JSON"):
        R.find_runs([bad])
    (bad / "metrics.json").write_text(json.dumps({"system": "x", "dataset": "50", "seed": 0, "metrics": {}}))
    with pytest.raises(InputFileError, match="missing key 'threshold'"):
        R.find_runs([bad])
    (bad / "metrics.json").write_text(json.dumps({"system": "x", "dataset": "50", "seed": 0, "threshold": 0.5,
                                                  "metrics": {}}))
    with pytest.raises(InputFileError, match="test_scores.npz: file not found"):
        R.load_scores(R.find_runs([bad])[0])


def test_duplicate_seed_and_unknown_names_are_errors(tmp_path):
    y, ids = gold()
    write_run(tmp_path / "x", "a", 0, y, noisy(y, 0, 0.3), ids)
    write_run(tmp_path / "y", "a", 0, y, noisy(y, 0, 0.3), ids)
    with pytest.raises(KeptError, match="two runs of 'a' on '50' with seed 0"):
        R.find_runs([tmp_path])
    with pytest.raises(KeptError, match="metric.*bogus"):
        R.report([tmp_path / "x"], metrics=["bogus"])
    with pytest.raises(KeptError, match="both --a and --b"):
        R.report([tmp_path / "x"], a="a")
    with pytest.raises(KeptError, match="no dataset has runs of both 'a' and 'zzz'"):
        R.report([tmp_path / "x"], a="a", b="zzz")


def test_cli_text_json_and_error(tmp_path, capsys):
    y, ids = gold()
    for system, noise in (("msmn", 0.3), ("kept", 0.1)):
        write_run(tmp_path, system, 0, y, noisy(y, 0, noise), ids)
    assert main(["report", "--runs", str(tmp_path), "--n-boot", "50", "--metric", "micro_f1", "p@5", "micro_auc"]) == 0
    text = capsys.readouterr().out
    assert "Median over seeds" in text and "Bootstrap difference" in text and "(no bootstrap CI for micro_auc)" in text
    assert main(["report", "--runs", str(tmp_path), "--n-boot", "50", "--a", "msmn", "--b", "kept", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["metric"] for c in data["comparisons"]] == ["micro_f1", "macro_f1", "macro_auc"]
    assert all(c["a"] == "msmn" and c["diff"] > 0 for c in data["comparisons"])
    assert {g["system"] for g in data["groups"]} == {"msmn", "kept"}
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["report", "--runs", str(empty)]) == 1
    assert f"kept: error: {empty}: no metrics.json" in capsys.readouterr().err


def test_metric_left_out_of_metrics_json_gets_no_ci(tmp_path):
    """Rerank runs drop full-label AUC (a candidate cut ties every other code at 0): no CI for it."""
    y, ids = gold()
    for system, noise in (("faiss-stage1", 0.3), ("faiss+kept-rerank", 0.1)):
        run = write_run(tmp_path, system, 0, y, noisy(y, 0, noise), ids, dataset="full")
        meta = json.loads((run / "metrics.json").read_text())
        for key in ("micro_auc", "macro_auc"):
            del meta["metrics"][key]
        (run / "metrics.json").write_text(json.dumps(meta))
    write_run(tmp_path, "kept-prompt", 0, y, noisy(y, 0, 0.2), ids, dataset="50")  # a run that has AUC
    res = R.report([tmp_path], a="faiss-stage1", b="faiss+kept-rerank")
    assert {c["metric"] for c in res["comparisons"]} == {"micro_f1", "macro_f1"}


def _with_hierarchical(run: Path, graph: str | None = None) -> dict:
    """Add the `hierarchical` entry kept coder eval writes, computed from the run's own scores."""
    from coder.evaluation.hierarchy_metrics import hierarchical_block

    meta = json.loads((run / "metrics.json").read_text())
    npz = np.load(run / "test_scores.npz")
    meta["hierarchical"] = hierarchical_block(npz["y_true"], npz["y_score"] >= meta["threshold"],
                                              npz["codes"].tolist())
    meta["hierarchical"]["graph"] = graph
    (run / "metrics.json").write_text(json.dumps(meta))
    return meta


def test_hierarchical_f1_is_shown_and_bootstrapped(tmp_path):
    y, ids = gold()
    hier = {}
    for system, noise in (("a", 0.35), ("b", 0.05)):
        hier[system] = _with_hierarchical(write_run(tmp_path, system, 0, y, noisy(y, 0, noise), ids))
    res = R.report([tmp_path], metrics=["micro_f1", "hier_f1", "cophe_f1@category", "fp_share_sibling"], n_boot=50)
    med = {g["system"]: g["median"] for g in res["groups"]}
    assert med["a"]["hier_f1"] == hier["a"]["hierarchical"]["metrics"]["hier_f1"]
    assert med["b"]["fp_share_sibling"] == hier["b"]["hierarchical"]["metrics"]["fp_share_sibling"]
    comps = {c["metric"]: c for c in res["comparisons"]}
    assert set(comps) == {"micro_f1", "hier_f1", "cophe_f1@category"}  # FP shares get no CI
    for name in ("hier_f1", "cophe_f1@category"):
        want = hier["b"]["hierarchical"]["metrics"][name] - hier["a"]["hierarchical"]["metrics"][name]
        assert comps[name]["diff"] == pytest.approx(want)  # the row of unit weights is the test set
        assert comps[name]["ci_low"] <= comps[name]["diff"] <= comps[name]["ci_high"]
    # hier_f1 is a default column and a default CI when every run has it
    assert "hier_f1" in R.report([tmp_path], n_boot=10)["ci_metrics"]


def test_hierarchical_entry_errors_are_one_line(tmp_path, capsys):
    y, ids = gold()
    run = write_run(tmp_path, "a", 0, y, noisy(y, 0, 0.3), ids)
    meta = _with_hierarchical(run, graph=str(tmp_path / "no-graph"))
    write_run(tmp_path, "b", 0, y, noisy(y, 1, 0.3), ids)
    _with_hierarchical(tmp_path / "50-b-seed0", graph=str(tmp_path / "no-graph"))
    assert main(["report", "--runs", str(tmp_path), "--metric", "hier_f1", "--n-boot", "5"]) == 1
    assert "no-graph: not a kept graph directory" in capsys.readouterr().err
    meta["hierarchical"] = {"metrics": {"micro_f1": 0.1}}
    (run / "metrics.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="micro_f1 both under 'metrics' and 'hierarchical'"):
        R.load_run(run / "metrics.json")


def test_saved_logits_order_the_ranking_metrics(tmp_path):
    # Saturated sigmoids tie; the run's logits break the ties in P@k and AUC, and travel through align.
    y, hadm = gold(30)
    logits = np.where(y == 1, 30.0, 20.0) + np.random.default_rng(0).normal(0, 0.1, y.shape)
    s = np.ones_like(logits)  # every float32 sigmoid of a logit >= 17 is 1.0
    run = write_run(tmp_path, "a", 0, y, s, hadm)
    with np.load(run / "test_scores.npz") as z:
        arrays = dict(z)
    np.savez(run / "test_scores.npz", **arrays, logits=logits.astype(np.float32))
    scores = R.load_scores(R.Run(run, "a", "50", "synthetic", 0, 0.5))
    assert scores.logits is not None and scores.logits.shape == y.shape
    names = ["p@5", "macro_auc", "micro_f1"]
    got = R.weighted_metrics(np.ones((1, 30)), y, s, 0.5, names, rank_score=scores.logits)
    ref = all_metrics(y, s, 0.5, rank_score=scores.logits)
    for name in names:
        assert got[name][0] == pytest.approx(ref[name]), name
    assert got["macro_auc"][0] == 1.0 and all_metrics(y, s, 0.5)["macro_auc"] == 0.5

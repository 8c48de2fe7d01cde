"""`kept demo` end to end at tiny budgets: every stage runs and lands in one labelled results table."""

from __future__ import annotations

import json

import pytest

from kept.cli import main


def test_demo_runs_every_stage_and_labels_its_data(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["demo", "--out", str(out), "--hsap-steps", "2", "--synth-docs", "200", "--coder-epochs", "1",
               "--coder-train-docs", "4", "--rerank-k", "10", "--rerank-train-docs", "4", "--hsap-eval-candidates", "300",
               "--triplet-batches", "3", "--eval-docs", "6"])
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())
    stages = {r["stage"] for r in rows}
    assert stages == {"hsap", "coder", "retrieval", "full", "full: rerank gain"}
    systems = {(r["stage"], r["system"], r["dataset"]) for r in rows}
    for s in ("50", "rare50"):
        assert ("coder", "kept-prompt-evidence", f"synth-{s}") in systems
        assert ("coder", "tfidf-lr", f"synth-{s}") in systems
        assert ("coder", "label-attention", f"synth-{s}") in systems
    assert {("full", "faiss-stage1", "synth-full"), ("full", "faiss+kept-rerank", "synth-full"),
            ("full", "kept-rerank-alone", "synth-full")} <= systems
    for r in rows:
        # HSAP is scored on CMS titles, everything after on the synthetic corpus: never unlabelled.
        assert r["data_source"].startswith("real public" if r["stage"] == "hsap" else "synthetic"), r
        assert (-1.0 if r["stage"] == "full: rerank gain" else 0.0) <= r["value"] <= 1.0, r
    # the gain row is the fused system's test micro-F1 minus stage 1's, its CI around it
    full = {(r["system"], r["metric"]): r["value"] for r in rows if r["stage"].startswith("full")}
    gain = {m.split()[1]: v for (s, m), v in full.items() if m.startswith("micro_f1 ")}
    assert gain["diff"] == pytest.approx(full[("faiss+kept-rerank", "micro_f1")] - full[("faiss-stage1", "micro_f1")])
    assert gain["ci_low"] <= gain["diff"] <= gain["ci_high"]
    for stage in ("coder", "full"):  # graph-aware columns beside the exact-match ones
        assert {"hier_f1", "fp_share_sibling", "fp_share_unrelated"} <= {r["metric"] for r in rows
                                                                         if r["stage"] == stage}
    recall = {r["metric"]: r["value"] for r in rows if r["stage"] == "retrieval"}
    assert recall["recall@50"] <= recall["recall@100"] <= recall["recall@300"]
    for s in ("50", "rare50"):
        assert (out / f"f1_by_frequency_{s}.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert "### hsap" in md and "kept-prompt-evidence" in md and "faiss+kept-rerank" in md
    reranker = json.loads((out / "coder" / "full-rerank" / "best" / "kept_coder.json").read_text())
    assert reranker["candidate_training"]["note_view"] == "evidence"  # the full rows rerank with a trained reranker
    assert json.loads((out / "demo_config.json").read_text())["hsap_steps"] == 2
    assert "results:" in capsys.readouterr().out

"""kept.results: the demo's results table (JSON + Markdown) and its per-code F1 plot."""

import numpy as np

from kept.results import markdown_table, metric_rows, plot_f1_by_frequency, train_frequency, write_table


def test_table_and_plot(tmp_path):
    rows = metric_rows("coder", "kept-prompt", "synth-50", "synthetic", {"micro_f1": 0.5, "macro_auc": 0.75, "x": 1},
                       ["micro_f1", "macro_auc"])
    rows += metric_rows("coder", "label-attention", "synth-50", "synthetic", {"micro_f1": 0.25}, ["micro_f1"])
    md = markdown_table(rows)
    assert md.splitlines()[0] == "| stage | system | dataset | data | micro_f1 | macro_auc |"
    assert "| coder | label-attention | synth-50 | synthetic | 0.2500 |  |" in md
    two = markdown_table(rows + metric_rows("hsap", "MiniLM", "titles", "real public", {"acc@1": 0.4}, ["acc@1"]))
    assert two.startswith("### coder\n\n| stage |") and "### hsap\n\n| stage | system | dataset | data | acc@1 |" in two
    j, m = write_table(rows, tmp_path)
    assert j.exists() and m.read_text() == md
    freq = train_frequency([["a", "b"], ["a"], []], ["a", "b", "c"])
    assert freq.tolist() == [2, 1, 0]
    png = plot_f1_by_frequency({"s": (freq, np.array([0.5, 1.0, np.nan]))}, tmp_path / "f1.png", "t", "synthetic")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

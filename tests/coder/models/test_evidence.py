"""The evidence view (`note_view = "evidence"`): which sentence each code gets, what a prompt reads,
that a short input under a narrowed Longformer window scores as under the full one, the settings it
needs, and that a coder trained on evidence is scored on evidence by `eval`."""

from __future__ import annotations

import pytest
import torch

from coder.config import load_config
from coder.models.evidence import join_evidence, load_finder
from kept.errors import KeptError

NOTE = ("Chief complaint: chest pain. The patient has essential hypertension, treated with lisinopril. "
        "Type 2 diabetes mellitus without complication is controlled on metformin. Discharged home.")


def test_each_code_gets_the_sentence_that_names_it(index_dir):
    ev = load_finder(str(index_dir)).find([NOTE], [["401.9", "250.00"]])[0]
    assert set(ev) == {"401.9", "250.00"}
    a, b, _ = ev["401.9"]
    assert "hypertension" in NOTE[a:b] and "diabetes" not in NOTE[a:b]
    a, b, _ = ev["250.00"]
    assert "diabetes" in NOTE[a:b] and "hypertension" not in NOTE[a:b]


def test_a_codes_evidence_does_not_depend_on_its_prompt_mates(index_dir):
    finder = load_finder(str(index_dir))
    alone = finder.find([NOTE], [["428.0"]])[0]["428.0"]
    together = finder.find([NOTE], [["401.9", "428.0", "250.00", "584.9"]])[0]["428.0"]
    assert alone[:2] == together[:2] and alone[2] == pytest.approx(together[2], abs=1e-5)


def test_codes_without_indexed_terms_read_nothing(index_dir, caplog):
    ev = load_finder(str(index_dir)).find([NOTE], [["401.9", "999.99"]])[0]
    assert set(ev) == {"401.9"}
    assert "no term in the evidence index" in caplog.text
    assert join_evidence(NOTE, ev, ["999.99"]) == ""


def test_a_prompt_reads_its_codes_sentences_once_in_note_order():
    text = "aaa. bbb. ccc."
    ev = {"x": (10, 14, 0.9), "y": (0, 4, 0.8), "z": (10, 14, 0.7)}
    assert join_evidence(text, ev, ["x", "y", "z"]) == "aaa. ccc."
    assert join_evidence(text, ev, ["x"]) == "ccc."
    windows = {"x": (0, 8, 0.9), "y": (4, 14, 0.8)}  # overlapping word windows of one long sentence
    assert join_evidence(text, windows, ["x", "y"]) == text


def test_short_inputs_score_the_same_under_the_narrowed_window(tiny_longformer_dir):
    from transformers import AutoModelForMaskedLM

    from coder.models.prompt_coder import PromptCoder
    from coder.models.tuning import base_encoder, lm_head_module
    from kept.hf import set_attention_windows

    mlm = AutoModelForMaskedLM.from_pretrained(str(tiny_longformer_dir)).eval()
    wide = [64, 64]
    set_attention_windows(mlm, wide)  # a window far wider than the input: Longformer pads every input to 64
    coder = PromptCoder(mlm, 5, 6)
    torch.manual_seed(0)
    ids = torch.randint(10, 100, (3, 9))
    att = torch.ones_like(ids)
    att[1, 6:] = 0
    glob = torch.zeros_like(ids)
    glob[:, :3] = 1
    batch = {"input_ids": ids, "attention_mask": att, "global_attention_mask": glob,
             "mask_positions": torch.tensor([[2]] * 3)}
    with torch.no_grad():
        narrowed = coder(batch)  # 9 tokens: run under a window of 18, not 64
        hidden = base_encoder(mlm)(input_ids=ids, attention_mask=att, global_attention_mask=glob).last_hidden_state
        logits = lm_head_module(mlm)(hidden[:, [2]])
        full = logits[..., 5] - logits[..., 6]
    assert mlm.config.attention_window == wide  # restored
    assert torch.allclose(narrowed, full, atol=1e-5)


def test_evidence_view_needs_an_index_and_the_prompted_coder():
    with pytest.raises(KeptError, match="--evidence-index"):
        load_config(note_view="evidence")
    with pytest.raises(KeptError, match="prompted coder"):
        load_config(note_view="evidence", evidence_index="idx", head="label-attention")
    with pytest.raises(KeptError, match="note view"):
        load_config(note_view="sentences")
    with pytest.raises(KeptError, match="not-an-index"):
        load_finder("not-an-index")

"""Prompt building: mask i belongs to code i, strides, truncation, verbalizer ids, both templates."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from coder.models.prompts import (build_examples, build_input, build_prompts, chunk_codes, collate, encode_note,
                                  encode_prompt, global_positions, make_batches, short_description)
from coder.models.verbalizer import build_verbalizer
from kept.errors import KeptError
from tests.tiny import TINY_CODES, bpe_tokenizer, tiny_descriptions


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def test_paper_template_masks_follow_code_order(tok):
    desc = tiny_descriptions()
    p = encode_prompt(tok, TINY_CODES, desc, "paper")
    assert p.input_ids[0] == tok.cls_token_id
    assert [p.input_ids[m] for m in p.mask_positions] == [tok.mask_token_id] * len(TINY_CODES)
    assert sum(i == tok.mask_token_id for i in p.input_ids) == len(TINY_CODES)
    # the text right before mask i is code i's description followed by ':'
    for i, code in enumerate(TINY_CODES):
        start = p.mask_positions[i - 1] + 2 if i else 1
        before = tok.decode(p.input_ids[start:p.mask_positions[i]])
        assert before.replace(" ", "") == (desc[code] + ":").lower().replace(" ", "")
    text = tok.decode(p.input_ids)
    assert text.endswith("[MASK].") and text.count(", ") >= len(TINY_CODES) - 1


def test_kept_template_uses_short_lowercased_titles(tok):
    desc = {"1": "Diabetes mellitus without mention of complication, type II", "2": "Heart failure"}
    assert short_description(desc["1"]) == "diabetes mellitus without mention of complication"
    p = encode_prompt(tok, ["1", "2"], desc, "kept")
    assert "type" not in tok.decode(p.input_ids)
    assert len(p.mask_positions) == 2
    with pytest.raises(KeptError, match="template"):
        encode_prompt(tok, ["1"], desc, "other")


def test_labels_align_with_masks(tok):
    """Mask i is trained on code i's label, also when codes are split across prompts."""
    desc = tiny_descriptions()
    prompts = build_prompts(tok, TINY_CODES, desc, n_prompt=4)
    assert [p.codes for p in prompts] == chunk_codes(TINY_CODES, 4) == [TINY_CODES[:4], TINY_CODES[4:]]
    gold = [TINY_CODES[1], TINY_CODES[5]]
    exs = build_examples(tok, ["heart failure note"], [gold], prompts, max_length=256)
    assert [e.chunk for e in exs] == [0, 1]
    for e in exs:
        prompt = prompts[e.chunk]
        for i, code in enumerate(prompt.codes):
            assert e.labels[i] == (1.0 if code in gold else 0.0)
            assert e.input_ids[prompt.mask_positions[i]] == tok.mask_token_id
        batch = collate([e], prompt, tok.pad_token_id, stride=1)
        assert batch["labels"][0].tolist() == e.labels
        assert batch["mask_positions"][0].tolist() == prompt.mask_positions


def test_global_stride_marks_every_sth_prompt_token_and_all_masks(tok):
    p = encode_prompt(tok, TINY_CODES, tiny_descriptions(), "paper")
    for stride in (1, 3, 5, 10):
        pos = set(global_positions(p, stride))
        assert set(p.mask_positions) <= pos
        assert set(range(0, len(p.input_ids), stride)) <= pos
        assert max(pos) < len(p.input_ids)  # never a note token
    assert len(global_positions(p, 10)) < len(global_positions(p, 1)) == len(p.input_ids)
    exs = build_examples(tok, ["a note about diabetes"] * 2, None, [p], 256)
    batch = collate(exs, p, tok.pad_token_id, stride=3)
    assert batch["global_attention_mask"][0].nonzero().flatten().tolist() == global_positions(p, 3)
    with pytest.raises(KeptError):
        global_positions(p, 0)


def test_note_truncated_to_limit_keeping_sections(tok):
    p = encode_prompt(tok, TINY_CODES[:2], tiny_descriptions(), "paper")
    filler = " ".join(["pain"] * 300)
    text = f"social history: {filler} chief complaint: edema. brief hospital course: lasix given."
    ids = build_input(tok, p, text, encode_note(tok, text), max_length=64)
    assert len(ids) <= 64 and ids[-1] == tok.sep_token_id
    note = tok.decode(ids[len(p.input_ids):-1])
    assert "edema" in note and "lasix" in note and "social" not in note  # kept sections survive
    ids = build_input(tok, p, filler, encode_note(tok, filler), max_length=64)
    assert len(ids) == 64 and ids[-1] == tok.sep_token_id  # no sections: cut at the limit
    short = "chief complaint: edema"
    assert build_input(tok, p, short, encode_note(tok, short), 64)[len(p.input_ids):-1] == encode_note(tok, short)
    with pytest.raises(KeptError, match="fewer codes"):
        build_input(tok, encode_prompt(tok, TINY_CODES, tiny_descriptions()), text, encode_note(tok, text), 40)


def test_batches_group_chunks_and_similar_lengths(tok):
    prompts = build_prompts(tok, TINY_CODES, tiny_descriptions(), n_prompt=3)
    texts = ["word " * n for n in (5, 40, 6, 41, 7, 42)]
    exs = build_examples(tok, texts, None, prompts, 256)
    batches = make_batches(exs, 3, shuffle=False)
    assert sorted(i for b in batches for i in b) == list(range(len(exs)))
    for b in batches:
        assert len({exs[i].chunk for i in b}) == 1
    lengths = [sorted(len(exs[i].input_ids) for i in b) for b in batches]
    assert all(max(l) - min(l) < 10 for l in lengths)  # short notes with short notes
    batch = collate([exs[i] for i in batches[0]], prompts[exs[batches[0][0]].chunk], tok.pad_token_id, 1)
    assert batch["input_ids"].shape[1] == max(len(exs[i].input_ids) for i in batches[0])  # dynamic padding
    assert torch.equal(batch["attention_mask"].sum(1),
                       torch.tensor([len(exs[i].input_ids) for i in batches[0]]))


def test_verbalizer_ids_and_errors(tok):
    v = build_verbalizer(tok)
    assert tok.convert_ids_to_tokens([v.yes_id, v.no_id]) == ["yes", "no"]
    v2 = build_verbalizer(tok, ("true", "false"))
    assert tok.convert_ids_to_tokens([v2.yes_id]) == ["true"]
    word = "yesnohypertension"
    assert len(tok(word, add_special_tokens=False)["input_ids"]) > 1
    with pytest.raises(KeptError, match="not a single token"):
        build_verbalizer(tok, (word, "no"))
    with pytest.raises(KeptError, match="same token"):
        build_verbalizer(tok, ("yes", "yes"))
    # WordPiece has one form: both settings give the same ids
    assert build_verbalizer(tok, form="bare") == v
    with pytest.raises(KeptError, match="form"):
        build_verbalizer(tok, form="prefixed")


def test_verbalizer_forms_on_a_bpe_vocabulary(tmp_path):
    """RoBERTa-style BPE keeps `yes` and `Ġyes`: kept's default scores the spaced token, KEPT's code
    the bare one; `verbalizer_form` picks either, and a word with one form only falls back (spaced)."""
    tok = bpe_tokenizer(["yes it is", "no it is not", "the answer is yes", "the answer is no", "maybe"] * 50, 300)
    vocab = tok.get_vocab()
    assert {"yes", "\u0120yes", "no", "\u0120no"} <= set(vocab)
    spaced, bare = build_verbalizer(tok), build_verbalizer(tok, form="bare")
    assert tok.convert_ids_to_tokens([spaced.yes_id, spaced.no_id]) == ["\u0120yes", "\u0120no"]
    assert tok.convert_ids_to_tokens([bare.yes_id, bare.no_id]) == ["yes", "no"]
    assert (bare.yes_id, bare.no_id) == (vocab["yes"], vocab["no"])

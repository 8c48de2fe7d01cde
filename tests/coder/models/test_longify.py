"""longify: the long model must compute what the short one does on inputs both can read."""

from __future__ import annotations

import pytest
import torch

from coder.models.longify import longify, longify_model
from kept.errors import KeptError
from tests.tiny import tiny_bert, tiny_longformer


def _short_input(tokenizer):
    enc = tokenizer(["heart failure with edema", "atrial fibrillation and diabetes insulin"],
                    padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_long_mlm_logits_equal_short_on_short_input(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    short = tiny_bert(len(tok))
    # window 32: every token of a <= 16-token input sees every other, as in full attention
    long = longify_model(short, max_length=256, attention_window=32)
    ids, mask = _short_input(tok)
    assert ids.shape[1] <= 16
    with torch.no_grad():
        a = short(input_ids=ids, attention_mask=mask).logits
        b = long(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max().item() < 1e-4
    assert long.config.max_position_embeddings == 256 + tok.pad_token_id + 1
    # positions are tiled: long row k+1 = short row k mod 64
    pe_s = short.bert.embeddings.position_embeddings.weight
    pe_l = long.longformer.embeddings.position_embeddings.weight
    assert torch.equal(pe_l[1 + 70], pe_s[70 % 64])
    layer = long.longformer.encoder.layer[1].attention.self
    assert torch.equal(layer.query_global.weight, layer.query.weight)
    assert torch.equal(layer.value_global.bias, layer.value.bias)


def test_long_model_with_global_attention_runs_past_short_limit(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    long = longify_model(tiny_bert(len(tok)), max_length=256, attention_window=16)
    ids = torch.randint(5, len(tok), (1, 200))
    glob = torch.zeros_like(ids)
    glob[0, :5] = 1
    with torch.no_grad():
        out = long(input_ids=ids, attention_mask=torch.ones_like(ids), global_attention_mask=glob).logits
    assert out.shape == (1, 200, len(tok)) and torch.isfinite(out).all()


def test_headless_encoder_gets_tied_head(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, LongformerForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    enc = tiny_bert(len(tok), head="none")
    src = tmp_path / "src"
    enc.save_pretrained(str(src))
    tok.save_pretrained(str(src))
    out = longify(src, tmp_path / "long", max_length=128, attention_window=16)
    long = LongformerForMaskedLM.from_pretrained(str(out)).eval()
    head = long.lm_head
    assert head.decoder.weight.data_ptr() == long.longformer.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(head.dense.weight, torch.eye(32))
    ids, mask = _short_input(tok)
    with torch.no_grad():
        h_short = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        h_long = long.longformer(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert (h_short[keep] - h_long[keep]).abs().max().item() < 1e-4
    assert AutoTokenizer.from_pretrained(str(out)).model_max_length == 128


def test_odd_window_and_longformer_source_rejected(tiny_tokenizer_dir, tiny_longformer_dir):
    from transformers import AutoModelForMaskedLM

    short = tiny_bert(50)
    with pytest.raises(KeptError, match="even"):
        longify_model(short, max_length=128, attention_window=15)
    with pytest.raises(KeptError, match="already a Longformer of 512 tokens"):
        longify_model(AutoModelForMaskedLM.from_pretrained(str(tiny_longformer_dir)), 512)


def test_longformer_source_is_extended_to_more_positions(tiny_tokenizer_dir, tmp_path):
    # Clinical-Longformer has 4,096 positions; the paper reads 8,192. Here: 256 -> 512.
    from transformers import AutoTokenizer, LongformerForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    pad = tok.pad_token_id
    src_model = tiny_longformer(len(tok), pad, seed=1, positions=256, type_vocab_size=1).eval()
    with torch.no_grad():  # trained global projections differ from the local ones: they must survive
        for layer in src_model.longformer.encoder.layer:
            layer.attention.self.query_global.weight.add_(0.5)
    src = tmp_path / "src"
    src_model.save_pretrained(str(src))
    tok.save_pretrained(str(src))
    out = longify(src, tmp_path / "long", max_length=512)
    long = LongformerForMaskedLM.from_pretrained(str(out)).eval()
    assert long.config.max_position_embeddings == 512 + pad + 1
    assert long.config.attention_window == [16, 16]  # the source's window
    pe_s = src_model.longformer.embeddings.position_embeddings.weight
    pe_l = long.longformer.embeddings.position_embeddings.weight
    n = pe_s.shape[0]
    assert torch.equal(pe_l[:n], pe_s)  # the source's positions, offset rows included
    assert torch.equal(pe_l[n + 5], pe_s[pad + 1 + (n - pad - 1 + 5) % (n - pad - 1)])  # tiled from them
    for a, b in zip(src_model.longformer.encoder.layer, long.longformer.encoder.layer):
        assert torch.equal(a.attention.self.query_global.weight, b.attention.self.query_global.weight)
        assert not torch.equal(b.attention.self.query_global.weight, b.attention.self.query.weight)
    assert long.lm_head.decoder.weight.data_ptr() == long.longformer.embeddings.word_embeddings.weight.data_ptr()
    # same computation on an input both read; a 500-token input runs
    ids = torch.randint(5, len(tok), (1, 200))
    glob = torch.zeros_like(ids)
    glob[0, :4] = 1
    with torch.no_grad():
        a = src_model(input_ids=ids, global_attention_mask=glob).logits
        b = long(input_ids=ids, global_attention_mask=glob).logits
        assert (a - b).abs().max().item() < 1e-4
        ids = torch.randint(5, len(tok), (1, 500))
        glob = torch.zeros_like(ids)
        glob[0, :4] = 1
        logits = long(input_ids=ids, attention_mask=torch.ones_like(ids), global_attention_mask=glob).logits
    assert logits.shape == (1, 500, len(tok)) and torch.isfinite(logits).all()
    assert AutoTokenizer.from_pretrained(str(out)).model_max_length == 512

"""Shared fixtures: a tiny WordPiece tokenizer, a tiny random Longformer MLM and a tiny data set in
the contract layout. Real classes, random weights: fast enough for every test (~2 s to build)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

# Codes with bundled ICD-9 titles; each note mentions words tied to its codes so a model can learn.
TINY_CODES = ["401.9", "428.0", "427.31", "584.9", "250.00", "38.93"]
_CUES = {
    "401.9": "hypertension blood pressure high",
    "428.0": "heart failure edema lasix",
    "427.31": "atrial fibrillation irregular rhythm",
    "584.9": "acute kidney injury creatinine",
    "250.00": "diabetes insulin glucose",
    "38.93": "central line catheter placed",
}
_FILLER = ("patient admitted with history of pain and was discharged home in stable condition after "
           "treatment chief complaint brief hospital course discharge diagnosis past medical history").split()


def tiny_descriptions() -> dict[str, str]:
    from kgraph.icd9 import bundled_descriptions

    d = bundled_descriptions()
    return {c: d[c] for c in TINY_CODES}


def _notes(n: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        labels = [c for c in TINY_CODES if rng.random() < 0.35]
        words = [rng.choice(_FILLER) for _ in range(rng.randint(20, 60))]
        for c in labels:
            words[rng.randrange(len(words)):0] = _CUES[c].split()
        out.append((" ".join(words), labels))
    return out


def wordpiece_tokenizer(corpus: list[str], vocab_size: int, model_max_length: int):
    """A BERT-style WordPiece tokenizer trained with `tokenizers` on `corpus` (no download)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length)


def build_tokenizer(out_dir: Path):
    """The tiny world's tokenizer, trained on its own text (yes/no single tokens)."""
    corpus = [" ".join(tiny_descriptions().values()), " ".join(_CUES.values()), " ".join(_FILLER),
              "yes no yes no : , . ; true false"] * 20
    fast = wordpiece_tokenizer(corpus, vocab_size=400, model_max_length=512)
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_bert_mlm(vocab_size: int, headless: bool = False, seed: int = 0):
    """A 2-layer random BERT (hidden 32): the short model longify converts in tests."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    model = BertModel(cfg, add_pooling_layer=False) if headless else BertForMaskedLM(cfg)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_tok")
    build_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_longformer_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random LongformerForMaskedLM (2 layers, hidden 32, window 16, 512 tokens) + tokenizer."""
    import torch
    from transformers import AutoTokenizer, LongformerConfig, LongformerForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    cfg = LongformerConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=513, pad_token_id=tok.pad_token_id,
                           attention_window=[16, 16], type_vocab_size=2)
    d = tmp_path_factory.mktemp("tiny_longformer")
    LongformerForMaskedLM(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def write_set(set_dir: Path, codes: list[str], splits: dict[str, list[tuple[str, list[str]]]]) -> Path:
    """Write a set directory in the contract layout (train/dev/test.csv + codes.txt)."""
    set_dir.mkdir(parents=True, exist_ok=True)
    (set_dir / "codes.txt").write_text("".join(c + "\n" for c in codes), encoding="utf-8")
    hadm = 100
    for split, docs in splits.items():
        with open(set_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["SUBJECT_ID", "HADM_ID", "TEXT", "LABELS", "length"])
            for text, labels in docs:
                hadm += 1
                w.writerow([hadm + 1000, hadm, text, ";".join(labels), len(text.split())])
    return set_dir


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """DIR/dataset.json + DIR/50/ with 24 train, 10 dev, 10 test notes over TINY_CODES."""
    import json

    root = tmp_path_factory.mktemp("tiny_data")
    (root / "dataset.json").write_text(json.dumps({"source": "fixture", "seed": 0}), encoding="utf-8")
    write_set(root / "50", TINY_CODES, {"train": _notes(24, 1), "dev": _notes(10, 2), "test": _notes(10, 3)})
    return root


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's own status once the summary is printed: native libraries loaded by the
    tests (torch and FAISS threads, the embedded JVM of the Neo4j tests) have crashed the
    interpreter's teardown (SIGSEGV, rc 139) after every test had passed."""
    import os
    import sys

    if _EXIT_STATUS and os.environ.get("KEPT_TEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0])

"""The tiny world every test shares, built here once: codes, notes that mention them, tokenizers
trained on that text, tiny random BERT and Longformer models, and sets in the contract layout. Real
classes, random weights, no download: fast enough for every test (~2 s to build)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

__all__ = ["FIXTURES", "TINY_CODES", "tiny_descriptions", "tiny_notes", "write_set", "wordpiece_tokenizer",
           "bpe_tokenizer", "build_tokenizer", "tiny_bert", "tiny_longformer"]

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # the UMLS and MIMIC-III stand-ins

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


def tiny_notes(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """`n` (text, labels) notes over TINY_CODES: filler words with each label's cue words put in."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        labels = [c for c in TINY_CODES if rng.random() < 0.35]
        words = [rng.choice(_FILLER) for _ in range(rng.randint(20, 60))]
        for c in labels:
            words[rng.randrange(len(words)):0] = _CUES[c].split()
        out.append((" ".join(words), labels))
    return out


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


def bpe_tokenizer(corpus: list[str], vocab_size: int):
    """A RoBERTa-style byte-level BPE tokenizer trained on `corpus` (space-prefixed tokens `Ġword`)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   mask_token="<mask>", bos_token="<s>", eos_token="</s>")


def build_tokenizer(out_dir: Path):
    """The tiny world's tokenizer, trained on its own text (yes/no single tokens), saved to `out_dir`."""
    corpus = [" ".join(tiny_descriptions().values()), " ".join(_CUES.values()), " ".join(_FILLER),
              "yes no yes no : , . ; true false"] * 20
    fast = wordpiece_tokenizer(corpus, vocab_size=400, model_max_length=512)
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_bert(vocab_size: int, head: str = "mlm", seed: int = 0):
    """A 2-layer random BERT (hidden 32, 64 positions) in eval mode: `mlm` BertForMaskedLM, `none` a
    bare BertModel, `pooler` a BertModel with its pooler (as BERT checkpoints ship)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    model = BertForMaskedLM(cfg) if head == "mlm" else BertModel(cfg, add_pooling_layer=head == "pooler")
    return model.eval()


def tiny_longformer(vocab_size: int, pad_token_id: int, seed: int = 0, positions: int = 512,
                    attention_window: int = 16, type_vocab_size: int = 2):
    """A 2-layer random LongformerForMaskedLM (hidden 32) reading `positions` tokens (a fresh module:
    train mode)."""
    import torch
    from transformers import LongformerConfig, LongformerForMaskedLM

    torch.manual_seed(seed)
    cfg = LongformerConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=positions + pad_token_id + 1,
                           pad_token_id=pad_token_id, attention_window=[attention_window] * 2,
                           type_vocab_size=type_vocab_size)
    return LongformerForMaskedLM(cfg)


def interrupted(monkeypatch, cls, name: str, when, run) -> None:
    """Run `run()` with `cls.name` raising KeyboardInterrupt when called with `when` (a step, an
    epoch): a crash mid-training, for the resume tests; the method is restored afterwards."""
    import pytest

    real = getattr(cls, name)

    def killed(self, arg, *args, **kwargs):
        if arg == when:
            raise KeyboardInterrupt
        return real(self, arg, *args, **kwargs)

    monkeypatch.setattr(cls, name, killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(cls, name, real)

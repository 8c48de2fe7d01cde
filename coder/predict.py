"""`kept coder predict NOTE.txt`: the codes a trained coder assigns to one note, with probabilities.

With a term index (`--index`) the note is coded over the whole indexed label space: the first stage
(coder/retrieval/hybrid.py) proposes candidates and the span of the note that matched each, the coder scores
the candidates, and each printed code carries that span as its evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from coder.models.scorer import Coder, load_coder, score_codes
from kept.errors import InputFileError, require_file


@dataclass(frozen=True)
class Prediction:
    code: str
    probability: float
    description: str
    # First-stage evidence (predict_with_index only): the note's span, offsets into the text as given.
    evidence: str = ""
    start: int = -1
    end: int = -1
    stage1_score: float | None = None
    stage1_rank: int | None = None


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
    from coder.data.notes import preprocess

    if not isinstance(coder, Coder):
        coder = load_coder(coder)
    t = coder.threshold if threshold is None else threshold
    scores = score_codes(coder.model, coder.tokenizer, preprocess(text), coder.codes, coder.descriptions,
                         coder.config, coder.device)
    order = sorted(range(len(coder.codes)), key=lambda j: -scores[j])
    out = [Prediction(coder.codes[j], float(scores[j]), coder.descriptions.get(coder.codes[j], ""))
           for j in order if scores[j] >= t]
    return out[:top] if top else out


def predict_with_index(coder: Coder | str | Path, index_dir: str | Path, text: str, config=None,
                       threshold: float | None = None, top: int | None = None, model: str | Path | None = None,
                       device: str = "auto") -> list[Prediction]:
    """Code one note over every indexed code: first-stage candidates (with the span that matched
    each), scored by the coder (fused with the first stage's score as `kept coder rerank` fuses them,
    for a reranker trained on candidates); those >= threshold (default: dev-tuned), best first.

    The first stage reads the note as given, so evidence offsets index the user's own text; the
    coder reads it preprocessed, as in training. `config` is a RetrieveConfig (top_k: candidates).
    """
    from coder.data.notes import preprocess
    from coder.models.prompts import code_descriptions
    from coder.retrieval.candidates import RetrieveConfig
    from coder.retrieval.hybrid import load_lexical, search_spans
    from coder.retrieval.index import load_index

    if not isinstance(coder, Coder):
        coder = load_coder(coder, device)
    config = config or RetrieveConfig()
    ti = load_index(index_dir)
    encoder = None
    if config.method != "lexical":
        from kept.encoder import load_encoder

        encoder = load_encoder(model or ti.meta["model"], ti.meta["pooling"], device)
    lex = load_lexical(ti) if config.method != "dense" else None
    hits = search_spans(ti, encoder, lex, [text], config, progress=False)[0]
    cands = [ti.codes[j] for j in hits.codes]
    descriptions = {**code_descriptions([c for c in cands if c not in coder.descriptions]), **coder.descriptions}
    scores = score_codes(coder.model, coder.tokenizer, preprocess(text), cands, descriptions, coder.config,
                         coder.device) if cands else []
    if cands and coder.stage1_weight:  # a reranker trained on candidates: its dev-tuned fused score
        from coder.retrieval.fusion import fuse
        from coder.retrieval.rerank import stage1_probability

        scores = fuse([stage1_probability(hits.scores)], [scores], coder.stage1_weight)[0]
    t = coder.threshold if threshold is None else threshold
    out = []
    for j in sorted(range(len(cands)), key=lambda j: -scores[j]):
        if scores[j] >= t:
            a, b = (int(x) for x in hits.spans[j])
            out.append(Prediction(cands[j], float(scores[j]), descriptions.get(cands[j], ""), text[a:b], a, b,
                                  float(hits.scores[j]), j + 1))
    return out[:top] if top else out


def predictions_json(preds: list[Prediction]) -> list[dict]:
    """Predictions as plain dicts; the evidence fields only when a first stage produced them."""
    rows = [asdict(p) for p in preds]
    for r in rows:
        if r["start"] < 0:
            for k in ("evidence", "start", "end", "stage1_score", "stage1_rank"):
                r.pop(k)
    return rows


def format_predictions(preds: list[Prediction], threshold: float, tuned: bool = True) -> str:
    """A header naming the threshold, then one line per code: code, probability, description, and
    under it the evidence span when a first stage found one."""
    how = "tuned on dev" if tuned else "from --threshold"
    if not preds:
        return f"no code scores at or above the threshold {threshold:.3f} ({how})"
    width = max(len(p.code) for p in preds + [Prediction("code", 0.0, "")])
    lines = [f"{len(preds)} code(s) at or above the threshold {threshold:.3f} ({how})",
             f"{'code':<{width}}  {'prob':>5}  description"]
    for p in preds:
        lines.append(f"{p.code:<{width}}  {p.probability:.3f}  {p.description}")
        if p.start >= 0:
            lines.append(f"{'':<{width}}  evidence [{p.start}:{p.end}] \"{' '.join(p.evidence.split())}\"")
    return "\n".join(lines)

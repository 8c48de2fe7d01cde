"""The classical baseline of every coder table: TF-IDF (word 1-2-grams) + one-vs-rest logistic
regression (scikit-learn). It is what a user tries first, trains in seconds on CPU, and tells
whether a set is learnable at all; a neural coder that does not beat it has not earned its cost.

Saved as plain arrays (no pickle, so a checkpoint folder is safe to load from anyone):
    tfidf.npz   vocabulary terms, idf, coef (codes x features), intercept, codes
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kept.errors import InputFileError, KeptError
from kept.io import atomic_path

log = logging.getLogger(__name__)

WEIGHTS_FILE = "tfidf.npz"
# logit given to a code the training notes never show: the model cannot score it, so it ranks last
UNSEEN_LOGIT = -20.0


def _vectorizer(max_features: int, vocabulary: dict[str, int] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    # sublinear tf: a code mentioned ten times is not ten times as present; no min_df: a rare code's
    # one telling word may occur in a single training note
    return TfidfVectorizer(ngram_range=(1, 2), max_features=max_features,
                           sublinear_tf=True, lowercase=True, vocabulary=vocabulary, dtype=np.float32)


@dataclass
class TfidfLR:
    """A fitted TF-IDF + logistic-regression scorer over a fixed list of codes."""

    vectorizer: object
    codes: list[str]
    coef: np.ndarray  # (codes, features) float32
    intercept: np.ndarray  # (codes,) float32

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[Sequence[str]], codes: Sequence[str],
            c: float = 10.0, max_features: int = 100_000) -> "TfidfLR":
        """One binary logistic regression per code; a code with no positive (or no negative)
        training note gets a constant score instead of a failed fit."""
        from sklearn.linear_model import LogisticRegression

        if not texts:
            raise KeptError("no training notes: the TF-IDF baseline needs at least one")
        vec = _vectorizer(max_features)
        x = vec.fit_transform(texts)
        gold = [set(ls) for ls in labels]
        coef = np.zeros((len(codes), x.shape[1]), dtype=np.float32)
        intercept = np.full(len(codes), UNSEEN_LOGIT, dtype=np.float32)
        for j, code in enumerate(codes):
            y = np.array([code in g for g in gold])
            if y.all():
                intercept[j] = -UNSEEN_LOGIT
            elif y.any():
                lr = LogisticRegression(C=c, solver="liblinear", max_iter=1000).fit(x, y)
                coef[j], intercept[j] = lr.coef_[0], lr.intercept_[0]
        unseen = sum(1 for j in range(len(codes)) if intercept[j] == UNSEEN_LOGIT and not coef[j].any())
        if unseen:
            log.info("%d of %d codes have no positive training note: they score %.0f (logit)",
                     unseen, len(codes), UNSEEN_LOGIT)
        return cls(vec, list(codes), coef, intercept)

    def logits(self, texts: Sequence[str], codes: Sequence[str] | None = None) -> np.ndarray:
        """(notes, codes) logits; a code outside the trained list gets UNSEEN_LOGIT."""
        x = self.vectorizer.transform(list(texts))
        z = np.asarray(x @ self.coef.T, dtype=np.float32) + self.intercept
        if codes is None or list(codes) == self.codes:
            return z
        col = {c: j for j, c in enumerate(self.codes)}
        out = np.full((z.shape[0], len(codes)), UNSEEN_LOGIT, dtype=np.float32)
        for k, c in enumerate(codes):
            if c in col:
                out[:, k] = z[:, col[c]]
        return out

    def scores(self, texts: Sequence[str], codes: Sequence[str] | None = None) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(texts, codes)))

    def save(self, out_dir: str | Path) -> None:
        vocab = self.vectorizer.vocabulary_
        terms = np.empty(len(vocab), dtype=object)
        for term, i in vocab.items():
            terms[i] = term
        with atomic_path(Path(out_dir) / WEIGHTS_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, terms=terms.astype(str), idf=self.vectorizer.idf_.astype(np.float32),
                                    coef=self.coef, intercept=self.intercept, codes=np.array(self.codes, dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> "TfidfLR":
        p = Path(path) / WEIGHTS_FILE
        if not p.is_file():
            raise InputFileError(p, "missing: not a TF-IDF coder folder (run `kept coder train --head tfidf-lr`)")
        try:
            z = np.load(p, allow_pickle=False)
            terms, idf = [str(t) for t in z["terms"]], z["idf"]
            coef, intercept, codes = z["coef"], z["intercept"], [str(c) for c in z["codes"]]
        except (OSError, ValueError, KeyError) as exc:
            raise InputFileError(p, f"unreadable TF-IDF weights ({exc})") from None
        vec = _vectorizer(len(terms), {t: i for i, t in enumerate(terms)})
        vec.fit(["x"])  # marks the fixed vocabulary as fitted; idf is set next
        vec.idf_ = idf
        return cls(vec, codes, coef, intercept)


def train_tfidf(set_dir: Path, out: Path, config, codes: list[str], train_docs, dev_docs) -> dict:
    """`kept coder train --head tfidf-lr` (called by `coder.training.train_coder`, which reads and
    checks the set): fit on train, tune the threshold on dev, write OUT/best in the same layout as
    the neural coders (kept_coder.json beside the weights) and history.json."""
    from coder.data.datasets import label_matrix
    from coder.evaluation.metrics import all_metrics, tune_threshold
    from coder.models.checkpoint import write_coder_file
    from coder.models.prompts import code_descriptions
    from kept.io import atomic_dir, atomic_write, dump_json

    model = TfidfLR.fit([d.text for d in train_docs], [d.labels for d in train_docs], codes,
                        c=config.tfidf_c, max_features=config.tfidf_max_features)
    y = label_matrix(dev_docs, codes)
    scores = model.scores([d.text for d in dev_docs])
    threshold = tune_threshold(y, scores, grid=config.threshold_search)
    metrics = all_metrics(y, scores, threshold)
    with atomic_dir(out / "best") as tmp:
        model.save(tmp)
        write_coder_file(tmp, config, codes, code_descriptions(codes, config.graph), threshold,
                         {"epoch": 1, "dev_metrics": metrics, "trained_on": str(set_dir)})
    history = [{"epoch": 1, "train_loss": None, "dev_threshold": threshold, "dev": metrics}]
    with atomic_write(out / "history.json") as fh:
        dump_json(history, fh, indent=1)  # NaN-free, as the neural coders' history
    log.info("tfidf-lr: %d train notes, %d features; dev micro-F1 %.4f macro-AUC %.4f (threshold %.3f)",
             len(train_docs), model.coef.shape[1], metrics["micro_f1"], metrics["macro_auc"], threshold)
    return {"best_dev_micro_f1": metrics["micro_f1"], "epochs": 1, "history": history, "best": str(out / "best")}

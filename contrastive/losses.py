"""HSAP losses over the embeddings of one batch and its mined triplets (the trainer takes either).

`HierarchicalTripletLoss` is KEPT's eq. 3-4: per-triplet hinge max(0, m - |a - neg| + |a - pos|) with
margin pi/2 (parent), pi/2 + arccos(|cos(a, neg)|) (sibling), pi (inter-class), summed and divided by
2N. |x - y| is the Euclidean distance of the raw vectors (eq. 3 writes a vector distance, as Ge et al.
2018 whose loss it follows); `distance="angular"` (arccos of the cosine) is kept as an option, though
no angle can reach the inter-class margin pi. `InfoNCELoss` is the ablation (paper Table A.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from contrastive.triplets import INTER, KINDS, PARENT, SIBLING, Triplets


@dataclass
class LossOutput:
    loss: torch.Tensor
    # kind -> (sum of per-triplet losses, number of triplets), detached: for logging per kind.
    per_kind: dict[str, tuple[float, int]] = field(default_factory=dict)


def safe_arccos(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """arccos with its argument clamped to [-1+eps, 1-eps]: arccos' gradient is infinite at +-1, and
    float rounding puts the cosine of two equal vectors just above 1 (NaN without the clamp)."""
    return torch.arccos(x.clamp(-1.0 + eps, 1.0 - eps))


def cosine_matrix(emb: torch.Tensor) -> torch.Tensor:
    # float32 whatever the autocast dtype: bf16 cosines near 1 are too coarse for arccos.
    e = F.normalize(emb.float(), dim=-1)
    return e @ e.T


def _index(t: Triplets, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(x, device=device, dtype=torch.long)
                 for x in (t.anchor, t.positive, t.negative, t.kind))


DISTANCES = ("euclidean", "angular")


def euclidean(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise |x - y| in float32; the square root's argument is clamped so that equal vectors
    (distance 0) get a finite gradient."""
    diff = x.float() - y.float()
    return (diff * diff).sum(-1).clamp(min=eps).sqrt()


class HierarchicalTripletLoss(nn.Module):
    """KEPT's minibatch triplet loss with dynamic margin.

    `distance` (default "euclidean"): d(x, y) = |x - y| on the raw, un-normalised vectors, as eq. 3
    and Ge et al. 2018; "angular": d = arccos(cos(x, y)) in [0, pi], under which the inter-class
    margin pi can never be met and every hinge stays active. The sibling margin's
    arccos(|cos(a, neg)|) is an angle either way, taken on the cosine.

    `detach_sibling_margin` (default True): the sibling margin's arccos(|cos(a, neg)|) is treated as
    a constant. Without the detach, for cos(a, neg) >= 0 the margin equals d(a, neg) itself, the two
    cancel and a sibling negative gets no gradient at all (the loss is pi/2 + d(a, pos)); for
    cos < 0 its push is doubled. Detached, the margin is what the paper describes: a per-triplet
    target in [pi/2, pi] that is smaller for siblings that already look alike.
    The paper's 1/(2N) normalisation is kept (N = number of triplets in the batch).

    `hard_negatives` (not in the paper; None = every triplet): keep, for each (anchor, positive)
    pair, only the `hard_negatives` negatives closest to the anchor (by `distance`). With margins of pi/2..pi
    almost no hinge ever switches off, so over all triplets the loss is sum(d(a,p) - d(a,n)) and
    pushes every term from every other with equal weight; mining puts the push where the
    confusable codes are (docs/contrastive.md has the measurements).
    """

    def __init__(self, parent_margin: float = math.pi / 2, inter_margin: float = math.pi,
                 detach_sibling_margin: bool = True, eps: float = 1e-6, hard_negatives: int | None = None,
                 distance: str = "euclidean"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")
        self.distance = distance
        self.parent_margin, self.inter_margin = parent_margin, inter_margin
        self.detach_sibling_margin, self.eps = detach_sibling_margin, eps
        if hard_negatives is not None and hard_negatives < 1:
            raise ValueError(f"hard_negatives must be >= 1 or None; got {hard_negatives}")
        self.hard_negatives = hard_negatives

    def forward(self, emb: torch.Tensor, triplets: Triplets) -> LossOutput:
        if len(triplets) == 0:
            return LossOutput(emb.sum() * 0.0, {})
        a, p, n, kind = _index(triplets, emb.device)
        cos = cosine_matrix(emb)
        if self.hard_negatives is not None:
            # closest = highest cosine (angular) or smallest distance (Euclidean)
            close = cos[a, n] if self.distance == "angular" else -euclidean(emb[a], emb[n])
            keep = hardest_per_pair(a * emb.shape[0] + p, close.detach(), self.hard_negatives)
            a, p, n, kind = a[keep], p[keep], n[keep], kind[keep]
        cos_an = cos[a, n]
        if self.distance == "angular":
            d_ap, d_an = safe_arccos(cos[a, p], self.eps), safe_arccos(cos_an, self.eps)
        else:
            d_ap, d_an = euclidean(emb[a], emb[p]), euclidean(emb[a], emb[n])
        sib_cos = cos_an.detach() if self.detach_sibling_margin else cos_an
        sibling_margin = math.pi / 2 + safe_arccos(sib_cos.abs(), self.eps)
        margin = torch.where(kind == PARENT, torch.full_like(d_an, self.parent_margin),
                             torch.where(kind == SIBLING, sibling_margin,
                                         torch.full_like(d_an, self.inter_margin)))
        per = F.relu(margin - d_an + d_ap)
        loss = per.sum() / (2 * len(a))
        return LossOutput(loss, _per_kind(per, kind))


class InfoNCELoss(nn.Module):
    """InfoNCE over the same batch: for each (anchor, positive) pair of the mined triplets, the
    positive against every negative the anchor has in its triplets, cosine / temperature."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, emb: torch.Tensor, triplets: Triplets) -> LossOutput:
        if len(triplets) == 0:
            return LossOutput(emb.sum() * 0.0, {})
        a, p, n, _ = _index(triplets, emb.device)
        size = emb.shape[0]
        neg = torch.zeros(size, size, dtype=torch.bool, device=emb.device)
        neg[a, n] = True
        pairs = torch.unique(a * size + p)
        pa, pp = pairs // size, pairs % size
        logits = cosine_matrix(emb)[pa] / self.temperature        # (pairs, n)
        keep = neg[pa].clone()
        keep[torch.arange(len(pairs), device=emb.device), pp] = True
        logits = logits.masked_fill(~keep, float("-inf"))
        per = torch.logsumexp(logits, dim=1) - logits[torch.arange(len(pairs), device=emb.device), pp]
        return LossOutput(per.mean(), {"pair": (float(per.detach().sum()), len(pairs))})


def hardest_per_pair(pair: torch.Tensor, cos_an: torch.Tensor, h: int) -> torch.Tensor:
    """Indices of the `h` triplets with the highest closeness score `cos_an` (cos(anchor, negative),
    or minus their distance) within each pair id."""
    by_cos = torch.argsort(cos_an, descending=True, stable=True)
    order = by_cos[torch.argsort(pair[by_cos], stable=True)]  # grouped by pair, hardest first
    grouped = pair[order]
    starts = torch.ones_like(grouped, dtype=torch.bool)
    starts[1:] = grouped[1:] != grouped[:-1]
    idx = torch.arange(len(order), device=pair.device)
    group_start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=0).values
    return order[(idx - group_start) < h]


def _per_kind(per: torch.Tensor, kind: torch.Tensor) -> dict[str, tuple[float, int]]:
    per, kind = per.detach(), kind.detach()
    member = torch.stack([kind == k for k in (PARENT, SIBLING, INTER)]).to(per.dtype)  # (3, triplets)
    sums, counts = torch.stack([member @ per, member.sum(1)]).tolist()  # one host sync, not six
    return {name: (s, int(c)) for name, s, c in zip(("parent", "sibling", "inter"), sums, counts) if c}


LOSSES = {"triplet": HierarchicalTripletLoss, "infonce": InfoNCELoss}
__all__ = ["HierarchicalTripletLoss", "InfoNCELoss", "LossOutput", "safe_arccos", "euclidean", "DISTANCES",
           "LOSSES", "KINDS"]

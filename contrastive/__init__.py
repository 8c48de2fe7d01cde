"""contrastive: hierarchical triplet sampling and HSAP (hierarchical self-alignment pretraining).

Stages: `sampling` draws level-wise mini-batches of terms from the graph, `triplets` mines the
(anchor, positive, negative) triplets of a batch and exports them, `losses` holds the hierarchical
triplet loss and InfoNCE, `train` and `evaluate` run HSAP (through the shared loop of kept/trainer.py,
on the term encoder of kept/encoder.py) and the licence-free short-title -> long-title evaluation.
"""

from __future__ import annotations

__all__ = [
    "BatchSampler", "SamplerConfig", "TermBatch", "heldout_split",
    "Triplets", "mine_triplets", "export_triplets",
    "HierarchicalTripletLoss", "InfoNCELoss",
]


def __getattr__(name: str):
    # Lazy: `import contrastive.sampling` must not pull torch in.
    if name in ("BatchSampler", "SamplerConfig", "TermBatch", "heldout_split"):
        from contrastive import sampling

        return getattr(sampling, name)
    if name in ("Triplets", "mine_triplets", "export_triplets"):
        from contrastive import triplets

        return getattr(triplets, name)
    if name in ("HierarchicalTripletLoss", "InfoNCELoss"):
        from contrastive import losses

        return getattr(losses, name)
    raise AttributeError(name)

"""HSAP losses against values worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastive.losses import HierarchicalTripletLoss, InfoNCELoss, safe_arccos
from contrastive.triplets import INTER, PARENT, SIBLING, Triplets


def trip(rows: list[tuple[int, int, int, int]]) -> Triplets:
    a, p, n, k = (np.array(x) for x in zip(*rows))
    return Triplets(a.astype(np.int64), p.astype(np.int64), n.astype(np.int64), k.astype(np.int8))


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_safe_arccos_is_finite_at_the_ends():
    x = torch.tensor([1.0, -1.0, 1.0000001, 0.0], requires_grad=True)
    d = safe_arccos(x)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all()
    assert d[0].item() == pytest.approx(0.0, abs=2e-3) and d[1].item() == pytest.approx(math.pi, abs=2e-3)
    assert d[3].item() == pytest.approx(math.pi / 2)


def test_orthogonal_negative_by_hand():
    # anchor = positive (d_ap = 0), negative orthogonal (d_an = pi/2):
    # parent: pi/2 - pi/2 + 0 = 0; sibling: pi/2 + arccos(0) - pi/2 = pi/2; inter: pi - pi/2 = pi/2.
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = HierarchicalTripletLoss(distance="angular")
    for kind, hinge in ((PARENT, 0.0), (SIBLING, math.pi / 2), (INTER, math.pi / 2)):
        out = loss(emb, trip([(0, 1, 2, kind)]))
        assert out.loss.item() == pytest.approx(hinge / 2, abs=2e-3)  # 1/(2N), N = 1


def test_three_kinds_at_30_and_120_degrees_by_hand():
    # a at 0 deg, p at 30 deg (d_ap = pi/6), n at 120 deg (d_an = 2pi/3, cos = -1/2).
    # parent: pi/2 - 2pi/3 + pi/6 = 0; sibling: (pi/2 + arccos(1/2)) - 2pi/3 + pi/6 = pi/3;
    # inter: pi - 2pi/3 + pi/6 = pi/2. Sum 5pi/6 over 2N = 6 -> 5pi/36.
    emb = torch.tensor([unit(0), unit(30), unit(120)]) * 3.0  # scale must not matter
    out = HierarchicalTripletLoss(distance="angular")(emb, trip([(0, 1, 2, PARENT), (0, 1, 2, SIBLING),
                                                                  (0, 1, 2, INTER)]))
    assert out.loss.item() == pytest.approx(5 * math.pi / 36, abs=1e-4)
    assert out.per_kind["sibling"][0] == pytest.approx(math.pi / 3, abs=1e-4)
    assert out.per_kind["inter"] == (pytest.approx(math.pi / 2, abs=1e-4), 1)


def test_sibling_margin_detach_changes_the_gradient():
    # cos(a, n) > 0: attached, arccos(|cos|) cancels d(a, n) and the negative gets no gradient.
    base = torch.tensor([unit(0), unit(10), unit(45)])
    grads = {}
    for detach in (True, False):
        emb = base.clone().requires_grad_(True)
        HierarchicalTripletLoss(detach_sibling_margin=detach, distance="angular")(emb, trip([(0, 1, 2, SIBLING)])).loss.backward()
        grads[detach] = emb.grad[2].norm().item()
    assert grads[False] == pytest.approx(0.0, abs=1e-6)
    assert grads[True] > 0.1


def test_equal_vectors_give_finite_gradients():
    for distance in ("angular", "euclidean"):
        emb = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], requires_grad=True)
        out = HierarchicalTripletLoss(distance=distance)(emb, trip([(0, 1, 2, INTER)]))
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(emb.grad).all()
        assert out.loss.item() == pytest.approx(math.pi / 2, abs=2e-3)  # (pi - 0 + 0) / 2


def test_euclidean_is_the_default_and_uses_raw_vectors():
    # a ~ origin (1e-3, 0), p = (5, 0): |a-p| ~ 5; n = (0, 4): |a-n| ~ 4, cos(a, n) = 0.
    # parent: pi/2 - 4 + 5 = pi/2 + 1; sibling (margin pi/2 + arccos(0) = pi): pi + 1; inter: pi + 1.
    # Sum (5pi/2 + 3) over 2N = 6.
    emb = torch.tensor([[1e-3, 0.0], [5.0, 0.0], [0.0, 4.0]])
    loss = HierarchicalTripletLoss()
    assert loss.distance == "euclidean"
    out = loss(emb, trip([(0, 1, 2, PARENT), (0, 1, 2, SIBLING), (0, 1, 2, INTER)]))
    assert out.loss.item() == pytest.approx((5 * math.pi / 2 + 3) / 6, abs=2e-3)
    # the scale matters now (it did not for angles): far apart, every hinge switches off
    assert loss(emb * 10, trip([(0, 2, 1, INTER)])).loss.item() == 0.0
    # |a - n| = 40 > pi + |a - p|: the inter-class margin can be met, unlike any angle's
    assert HierarchicalTripletLoss(distance="angular")(emb * 10, trip([(0, 2, 1, INTER)])).loss.item() > 0


def test_euclidean_sibling_margin_is_taken_on_the_cosine():
    # a and n at 60 degrees (arccos(|cos|) = pi/3, margin 5pi/6) whatever their lengths; p = a.
    a, n = torch.tensor(unit(0)), torch.tensor(unit(60))
    for scale in (1.0, 2.0):
        emb = torch.stack([a, a, n * scale])
        d_an = float((a - n * scale).norm())
        out = HierarchicalTripletLoss()(emb, trip([(0, 1, 2, SIBLING)]))
        assert out.loss.item() == pytest.approx(max(0.0, 5 * math.pi / 6 - d_an) / 2, abs=1e-4)


def test_unknown_distance_is_refused():
    with pytest.raises(ValueError, match="distance"):
        HierarchicalTripletLoss(distance="cosine")


def test_infonce_by_hand():
    # pairs (0,1) and (1,0); each anchor's only negative is slot 2. tau = 0.5.
    a, p, n = unit(0), unit(60), unit(180)
    emb = torch.tensor([a, p, n])
    tau = 0.5
    cos_ap, cos_an, cos_pn = 0.5, -1.0, math.cos(math.radians(120))
    l0 = -math.log(math.exp(cos_ap / tau) / (math.exp(cos_ap / tau) + math.exp(cos_an / tau)))
    l1 = -math.log(math.exp(cos_ap / tau) / (math.exp(cos_ap / tau) + math.exp(cos_pn / tau)))
    out = InfoNCELoss(temperature=tau)(emb, trip([(0, 1, 2, INTER), (1, 0, 2, SIBLING)]))
    assert out.loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-5)
    # duplicated triplets do not count a pair twice
    out2 = InfoNCELoss(temperature=tau)(emb, trip([(0, 1, 2, INTER), (0, 1, 2, INTER), (1, 0, 2, SIBLING)]))
    assert out2.loss.item() == pytest.approx(out.loss.item(), abs=1e-6)


def test_empty_triplets_give_zero_loss_with_a_graph():
    emb = torch.randn(4, 8, requires_grad=True)
    empty = trip([(0, 1, 2, 0)])
    empty = Triplets(empty.anchor[:0], empty.positive[:0], empty.negative[:0], empty.kind[:0])
    for loss in (HierarchicalTripletLoss(), InfoNCELoss()):
        out = loss(emb, empty)
        out.loss.backward()
        assert out.loss.item() == 0.0


def test_hard_negative_mining_keeps_the_closest_negatives_per_pair():
    from contrastive.losses import hardest_per_pair

    pair = torch.tensor([7, 3, 7, 7, 3, 7])
    cos = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.2, 0.8])
    assert sorted(hardest_per_pair(pair, cos, 2).tolist()) == [1, 2, 4, 5]  # pair 7: 0.9, 0.8; pair 3: both
    assert sorted(hardest_per_pair(pair, cos, 1).tolist()) == [1, 2]
    # Mined loss equals the plain loss over the kept triplets only.
    emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    t = Triplets(np.array([0, 0, 0, 1]), np.array([1, 1, 1, 0]), np.array([2, 3, 4, 5]), np.array([2, 1, 2, 0], dtype=np.int8))
    cos_an = torch.nn.functional.normalize(emb, dim=-1)
    c = (cos_an[[0, 0, 0, 1]] * cos_an[[2, 3, 4, 5]]).sum(-1)
    keep = sorted(torch.argsort(c[:3], descending=True)[:1].tolist()) + [3]
    sub = Triplets(t.anchor[keep], t.positive[keep], t.negative[keep], t.kind[keep])
    mined = HierarchicalTripletLoss(hard_negatives=1, distance="angular")(emb, t).loss
    assert torch.allclose(mined, HierarchicalTripletLoss(distance="angular")(emb, sub).loss)
    # Euclidean: the closest negative by distance
    d = (emb[[0, 0, 0]] - emb[[2, 3, 4]]).norm(dim=-1)
    keep = [int(torch.argmin(d))] + [3]
    sub = Triplets(t.anchor[keep], t.positive[keep], t.negative[keep], t.kind[keep])
    mined = HierarchicalTripletLoss(hard_negatives=1)(emb, t).loss
    assert torch.allclose(mined, HierarchicalTripletLoss()(emb, sub).loss)

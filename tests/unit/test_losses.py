import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from codistill.losses import codistillation_loss, distillation_loss, soften


def test_distillation_loss_is_t_squared_times_kl():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=g)
    target = torch.softmax(torch.randn(16, 10, generator=g), -1)
    T = 2.5
    q = soften(logits, T)
    kl = (target * (target.log() - q.log())).sum(1).mean()
    assert_close(distillation_loss(logits, target, T), T**2 * kl)


@pytest.mark.parametrize("T", [0.5, 2.0, 4.0])
def test_loss_scales_with_t_squared(T):
    # Same softened student (logits scale with T), same target: only the T² factor differs.
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=g)
    target = torch.softmax(torch.randn(8, 5, generator=g), -1)
    base = distillation_loss(z, target, 1.0)
    assert_close(distillation_loss(z * T, target, T), T**2 * base)


def test_loss_is_zero_when_student_matches_target():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    assert distillation_loss(logits, soften(logits, 3.0), 3.0).abs() < 1e-5


def test_invalid_examples_are_skipped():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, generator=g)
    target = torch.softmax(torch.randn(4, 3, generator=g), -1)
    valid = torch.tensor([True, False, True, False])
    assert_close(distillation_loss(logits, target, 2.0, valid), distillation_loss(logits[valid], target[valid], 2.0))
    assert distillation_loss(logits, target, 2.0, torch.zeros(4, dtype=torch.bool)) == 0


def test_codistillation_loss_combines_terms():
    g = torch.Generator().manual_seed(2)
    logits, tl = torch.randn(8, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.randint(0, 4, (8,), generator=g)
    target = torch.softmax(torch.randn(6, 4, generator=g), -1)
    total, sup, dist = codistillation_loss(logits, labels, tl, target, temperature=2.0, weight=0.7)
    assert_close(sup, F.cross_entropy(logits, labels))
    assert_close(dist, distillation_loss(tl, target, 2.0))
    assert_close(total, sup + 0.7 * dist)
    assert dist > 0  # a random target differs from the student: the sum above is not sup + 0


@pytest.mark.parametrize("drop", ["no_target", "zero_weight"])
def test_codistillation_without_a_target_is_the_supervised_loss(drop):
    g = torch.Generator().manual_seed(3)
    logits, tl = torch.randn(8, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.randint(0, 4, (8,), generator=g)
    target = torch.softmax(torch.randn(6, 4, generator=g), -1)
    if drop == "no_target":
        total, sup, dist = codistillation_loss(logits, labels, None, None, temperature=2.0, weight=0.7)
    else:
        total, sup, dist = codistillation_loss(logits, labels, tl, target, temperature=2.0, weight=0.0)
    assert_close(sup, F.cross_entropy(logits, labels))
    assert_close(total, sup)
    assert dist == 0

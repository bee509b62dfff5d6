"""Losses for co-distillation.

The distillation term is Hinton et al. (2015): KL from the consensus target to
the student's temperature-softened prediction, scaled by T² so that its
gradients keep the same magnitude as the hard-label term when T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax of logits / T: [B, C] -> [B, C]."""
    return torch.softmax(logits / temperature, dim=-1)


def distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """T² · KL(target ‖ softmax(logits / T)), averaged over valid examples.

    logits: [B, C] raw student outputs; target: [B, C] probabilities;
    valid: [B] bool, examples without a target are skipped. Returns a scalar
    (zero when no example is valid).
    """
    log_q = F.log_softmax(logits / temperature, dim=-1)
    # Σ p (log p − log q), with 0·log 0 = 0.
    kl = (torch.xlogy(target, target) - target * log_q).sum(-1)  # [B]
    if valid is not None:
        kl = kl[valid]
    if kl.numel() == 0:
        return logits.sum() * 0.0
    return temperature**2 * kl.mean()


def codistillation_loss(
    labeled_logits: torch.Tensor,
    labels: torch.Tensor,
    transfer_logits: torch.Tensor | None,
    target: torch.Tensor | None,
    *,
    temperature: float,
    weight: float,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy on labels + weight · T² · KL(consensus ‖ student at T).

    Returns (total, supervised, distillation) scalars.
    """
    supervised = F.cross_entropy(labeled_logits, labels)
    if transfer_logits is None or target is None or weight == 0.0:
        zero = supervised.detach() * 0.0
        return supervised, supervised, zero
    distill = distillation_loss(transfer_logits, target, temperature, valid)
    return supervised + weight * distill, supervised, distill

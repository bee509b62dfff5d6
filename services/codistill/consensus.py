"""Per-example consensus of peer predictions.

Each region combines the softened predictions its peers sent for a transfer
example into one target distribution. The weighted rules follow GLOM's
attention between columns (Hinton, 2021): a peer's weight is a softmax over
peers of β times its agreement with the region's own opinion, or of its
confidence. The robust rules (coordinate-wise median and trimmed mean) bound
the influence of a minority of lying peers. `screened_mean` judges peers, not
coordinates: a peer whose predictions disagree with the crowd across the whole
batch is left out, and the others are averaged.

Shapes: P peers, B examples, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

_EPS = 1e-12


class Rule(str, Enum):
    MEAN = "mean"
    ATTENTION = "attention"
    CONFIDENCE = "confidence"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    ROBUST_ATTENTION = "robust_attention"
    SCREENED_MEAN = "screened_mean"


# screened_mean keeps every peer within this much agreement of the typical one, however
# tightly the peers agree (MAD 0 for identical peers must not screen out rounding noise).
MIN_SCREEN_MARGIN = 0.05
# Scales a median absolute deviation to a standard deviation for normal data.
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Consensus:
    target: torch.Tensor  # [B, C] rows sum to 1 where `valid`, zero elsewhere
    weights: torch.Tensor  # [P, B] per-example peer weights; columns sum to 1 where `valid`
    valid: torch.Tensor  # [B] bool: at least one unmasked peer


def similarity(own: torch.Tensor, peers: torch.Tensor) -> torch.Tensor:
    """Bhattacharyya coefficient Σ_c sqrt(p_c q_c) in [0, 1].

    own: [B, C], peers: [P, B, C] -> [P, B]. Bounded, symmetric and 1 only for
    identical distributions, so β has the same meaning for every class count.
    """
    return torch.sqrt(own.unsqueeze(0).clamp_min(0) * peers.clamp_min(0)).sum(-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis: [..., C] -> [...]."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(-1)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over peers (dim 0) of scores [P, B], with masked peers at weight 0.

    Columns with no unmasked peer come out all zero instead of NaN.
    """
    masked = scores.masked_fill(~mask, float("-inf"))
    any_valid = mask.any(0, keepdim=True)
    masked = torch.where(any_valid, masked, torch.zeros_like(masked))
    weights = torch.softmax(masked, dim=0)
    return weights * any_valid


def cap_weights(weights: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Limit any single peer's weight to `cap` and give the excess to the others.

    weights, mask: [P, B]. Water-filling: repeatedly clip and redistribute the
    excess proportionally among unclipped, unmasked peers. When fewer than
    1/cap peers are available, the cap is relaxed to 1/n_valid (uniform).
    """
    if cap >= 1.0:
        return weights
    n_valid = mask.sum(0, keepdim=True).clamp_min(1)
    limit = torch.maximum(torch.full_like(weights[:1], cap), 1.0 / n_valid)
    w = weights.clone()
    for _ in range(weights.shape[0]):
        over = w > limit + 1e-9
        if not over.any():
            break
        excess = ((w - limit) * over).sum(0, keepdim=True)
        w = torch.where(over, limit.expand_as(w), w)
        free = mask & ~over & (w < limit - 1e-9)
        share = w * free
        total = share.sum(0, keepdim=True)
        # Peers with zero weight still deserve a share when all others are capped.
        uniform = free.float() / free.sum(0, keepdim=True).clamp_min(1)
        share = torch.where(total > 0, share / total.clamp_min(_EPS), uniform)
        w = w + excess * share
    return w


def peer_weights(
    rule: Rule,
    own: torch.Tensor,
    peers: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Weights over peers [P, B] for the weighted rules (mean, attention, confidence)."""
    if rule is Rule.MEAN:
        scores = torch.zeros(mask.shape, dtype=peers.dtype, device=peers.device)
    elif rule is Rule.ATTENTION:
        scores = beta * similarity(own, peers)
    elif rule is Rule.CONFIDENCE:
        scores = -beta * entropy(peers)
    elif rule is Rule.ROBUST_ATTENTION:
        # Query with the peers' coordinate-wise median instead of the region's own view:
        # a minority of liars cannot move the median, and a region that never saw a
        # class still listens to the peers that agree with the crowd about it.
        scores = beta * similarity(_median_center(peers, mask), peers)
    else:
        raise ValueError(f"{rule.value} is not a weighted rule")
    return masked_softmax(scores, mask)


def _renormalise(p: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    p = p.clamp_min(0)
    total = p.sum(-1, keepdim=True)
    return torch.where(valid.unsqueeze(-1) & (total > 0), p / total.clamp_min(_EPS), torch.zeros_like(p))


def _median(peers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # [P, B, C] -> [B, C]; the lower median of the unmasked peers, per class.
    filled = peers.masked_fill(~mask.unsqueeze(-1), float("nan"))
    return torch.nanmedian(filled, dim=0).values.nan_to_num(0.0)


def _median_center(peers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # [P, B, C] -> [B, C]: the peers' coordinate-wise median as a distribution, the crowd's view.
    return _renormalise(_median(peers, mask), mask.any(0))


def _trimmed_mean(peers: torch.Tensor, mask: torch.Tensor, trim: float) -> torch.Tensor:
    # Per class, drop the floor(trim·n) largest and smallest of the n unmasked peers.
    m = mask.unsqueeze(-1).expand_as(peers)  # [P, B, C]
    ordered, _ = torch.sort(peers.masked_fill(~m, float("inf")), dim=0)
    n = m.sum(0, keepdim=True)  # [1, B, C]
    k = torch.floor(trim * n.to(peers.dtype)).to(n.dtype)
    rank = torch.arange(peers.shape[0], device=peers.device).view(-1, 1, 1)
    keep = (rank >= k) & (rank < n - k)
    kept = torch.where(keep, ordered, torch.zeros_like(ordered))
    return kept.sum(0) / keep.sum(0).clamp_min(1)


def peer_agreement(peers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each peer's mean agreement with the peers' coordinate-wise median: [P, B, C] -> [P].

    Bhattacharyya coefficient per example, averaged over the examples the peer
    covered (0 for a peer that covered none).
    """
    m = mask.to(peers.dtype)
    return (similarity(_median_center(peers, mask), peers) * m).sum(1) / m.sum(1).clamp_min(1)


def screen_peers(peers: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    """Peers to keep [P] bool: those whose agreement is not a low outlier.

    A peer is screened out when its agreement with the median falls more than
    max(k scaled MADs, MIN_SCREEN_MARGIN) below the median peer's agreement. A
    confident liar disagrees with the crowd on nearly every example; an honest
    peer with skewed labels disagrees only on the classes it knows or lacks, so
    on a whole batch it stays within the crowd's spread. Fewer than three
    present peers cannot be judged, and are all kept.
    """
    present = mask.any(1)
    if int(present.sum()) < 3:
        return present
    agreement = peer_agreement(peers, mask)
    a = agreement[present]
    med = a.median()
    mad = (a - med).abs().median()
    margin = torch.clamp_min(k * _MAD_TO_SD * mad, MIN_SCREEN_MARGIN)
    return present & (agreement >= med - margin)


def consensus(
    rule: Rule | str,
    own: torch.Tensor,
    peers: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 1.0,
    trim: float = 0.2,
    max_weight: float = 1.0,
    screen: float = 3.0,
) -> Consensus:
    """Combine peer predictions into one target per example.

    own:   [B, C]    the region's own softened prediction (used by `attention`)
    peers: [P, B, C] peers' softened predictions (rows sum to 1 where unmasked)
    mask:  [P, B]    True where the peer's prediction is present and fresh
    beta:  inverse temperature of the attention/confidence softmax
    trim:  fraction cut from each end by `trimmed_mean`, in [0, 0.5)
    max_weight: cap on any one peer's weight for the weighted rules
    screen: MADs of peer agreement below the median that screen a peer out (`screened_mean`)
    """
    rule = Rule(rule)
    if peers.dim() != 3 or own.dim() != 2 or mask.shape != peers.shape[:2]:
        raise ValueError(
            f"expected own [B, C], peers [P, B, C], mask [P, B]; got {tuple(own.shape)}, "
            f"{tuple(peers.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    valid = mask.any(0)
    if rule in (Rule.MEDIAN, Rule.TRIMMED_MEAN):
        raw = _median(peers, mask) if rule is Rule.MEDIAN else _trimmed_mean(peers, mask, trim)
        weights = mask.to(peers.dtype) / mask.sum(0, keepdim=True).clamp_min(1)
        return Consensus(_renormalise(raw, valid), weights, valid)
    if rule is Rule.SCREENED_MEAN:
        mask = mask & screen_peers(peers, mask, screen).unsqueeze(1)
        valid = mask.any(0)
        rule = Rule.MEAN
    weights = peer_weights(rule, own, peers, mask, beta)
    weights = cap_weights(weights, mask, max_weight)
    target = (weights.unsqueeze(-1) * peers).sum(0)
    return Consensus(_renormalise(target, valid), weights, valid)

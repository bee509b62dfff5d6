"""Checks every incoming prediction message passes before it touches state."""

from __future__ import annotations

import math

import torch

from codistill.region.messages import MessageRejected, PredictionBatch, Rejection

# float16 rounding of 10+ probabilities can move a row sum by ~1e-3.
ROW_SUM_TOLERANCE = 1e-2
# The wire carries the temperature as a float32: 1e-6 relative covers its rounding.
TEMPERATURE_TOLERANCE = 1e-6


def check_temperature(temperature: float, expected: float | None) -> None:
    """Finite and positive; with `expected` (the receiver's own), equal to it up to float32 rounding."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise MessageRejected(Rejection.BAD_TEMPERATURE, f"temperature must be finite and > 0, got {temperature}")
    # Predictions softened at another temperature would distil a different target.
    if expected is not None and abs(temperature - expected) > TEMPERATURE_TOLERANCE * expected:
        raise MessageRejected(Rejection.BAD_TEMPERATURE, f"temperature {temperature:g} differs from this region's {expected:g}")


def check_content(batch: PredictionBatch, num_classes: int, transfer_size: int, temperature: float | None = None) -> None:
    """Stateless checks: temperature, shape, class count, values, sample ids."""
    check_temperature(batch.temperature, temperature)
    probs, ids = batch.probs, batch.sample_ids
    if probs.dim() != 2:
        raise MessageRejected(Rejection.BAD_SHAPE, f"probs must be 2-D [n, C], got shape {tuple(probs.shape)}")
    if probs.shape[1] != num_classes:
        raise MessageRejected(Rejection.BAD_CLASS_COUNT, f"expected {num_classes} classes, got {probs.shape[1]}")
    if probs.shape[0] != ids.numel() or probs.shape[0] == 0:
        raise MessageRejected(Rejection.BAD_SHAPE, f"{probs.shape[0]} rows for {ids.numel()} sample ids")
    if not torch.isfinite(probs).all():
        raise MessageRejected(Rejection.NON_FINITE, "probabilities contain NaN or Inf")
    if (probs < 0).any():
        raise MessageRejected(Rejection.NEGATIVE, "probabilities contain negative values")
    worst = (probs.sum(1) - 1).abs().max().item()
    if worst > ROW_SUM_TOLERANCE:
        raise MessageRejected(Rejection.NOT_NORMALISED, f"a row sums to 1{worst:+.3g}, beyond ±{ROW_SUM_TOLERANCE}")
    if (ids < 0).any() or (ids >= transfer_size).any():
        raise MessageRejected(Rejection.UNKNOWN_SAMPLE, f"sample ids must lie in 0..{transfer_size - 1}")
    if torch.unique(ids).numel() != ids.numel():
        raise MessageRejected(Rejection.DUPLICATE_SAMPLE, "sample ids repeat")


def check_origin(
    batch: PredictionBatch, run_id: str, sources: set[int], last_version: int, newest: int | None = None
) -> None:
    """Checks against the receiver's state: run, sender, replay, and a version beyond `newest`."""
    if batch.run_id != run_id:
        raise MessageRejected(Rejection.WRONG_RUN, "message belongs to another run")
    if batch.sender not in sources:
        raise MessageRejected(Rejection.UNKNOWN_SENDER, f"region {batch.sender} is not a peer of this region")
    if batch.version <= last_version:
        raise MessageRejected(
            Rejection.REPLAY, f"version {batch.version} from region {batch.sender} is not newer than {last_version}"
        )
    if newest is not None and batch.version > newest:
        raise MessageRejected(
            Rejection.FUTURE_VERSION, f"version {batch.version} from region {batch.sender} is beyond {newest}, the newest this region takes now"
        )

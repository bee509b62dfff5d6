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


# ------------------------------------------------------------ compressed predictions
# Sizes are checked on the message's counts before anything is built from it; contents once
# decoded, before the receiver makes the rows dense.


def check_topk_sizes(rows: int, values_shape: list[int], classes: int, num_classes: int, expected: int | None) -> int:
    """A top-k message's sizes: values [rows, k], rows x k class indices, 1 <= k <= classes.

    `expected` is the receiver's class count. Returns k."""
    if rows == 0:
        raise MessageRejected(Rejection.BAD_SHAPE, "a top-k message with no sample ids")
    if len(values_shape) != 2 or values_shape[0] != rows:
        raise MessageRejected(Rejection.BAD_SHAPE, f"top-k values shape {values_shape[:3]} is not [{rows}, k] for {rows} sample ids")
    k = values_shape[1]
    if k < 1:
        raise MessageRejected(Rejection.BAD_SHAPE, f"top-k keeps {k} classes per row; at least 1 is needed")
    if expected is not None and num_classes != expected:
        raise MessageRejected(Rejection.BAD_CLASS_COUNT, f"expected {expected} classes, got {num_classes}")
    if k > num_classes:
        raise MessageRejected(Rejection.BAD_CLASS_COUNT, f"top-k keeps {k} classes of {num_classes}")
    if classes != rows * k:
        raise MessageRejected(Rejection.BAD_SHAPE, f"{classes} class indices for {rows} rows of {k}")
    return k


def check_topk(values: torch.Tensor, classes: torch.Tensor, num_classes: int) -> None:
    """Kept classes in range and distinct within a row; values finite, >= 0, a row's kept mass <= 1."""
    if ((classes < 0) | (classes >= num_classes)).any():
        raise MessageRejected(Rejection.BAD_CLASS_INDEX, f"top-k class indices must lie in 0..{num_classes - 1}")
    ordered = classes.sort(1).values
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise MessageRejected(Rejection.DUPLICATE_CLASS, "a top-k row keeps one class twice")
    if not torch.isfinite(values).all():
        raise MessageRejected(Rejection.NON_FINITE, "top-k values contain NaN or Inf")
    if (values < 0).any():
        raise MessageRejected(Rejection.NEGATIVE, "top-k values contain negative values")
    kept = values.sum(1).max().item()
    if kept > 1 + ROW_SUM_TOLERANCE:
        raise MessageRejected(Rejection.NOT_NORMALISED, f"a top-k row keeps mass {kept:.4g}, beyond 1+{ROW_SUM_TOLERANCE}")


def check_quantized_sizes(rows: int, shape: list[int], nbytes: int, expected: int | None = None) -> int:
    """A uint8 message's sizes: shape [rows, C] with C >= 1, one byte per probability.

    `expected` is the receiver's class count. Returns C."""
    if rows == 0:
        raise MessageRejected(Rejection.BAD_SHAPE, "a uint8 message with no sample ids")
    if len(shape) != 2 or shape[0] != rows or shape[1] < 1:
        raise MessageRejected(Rejection.BAD_SHAPE, f"uint8 shape {shape[:3]} is not [{rows}, C] for {rows} sample ids")
    # Python integers: a huge shape must not wrap around to the data's length.
    if nbytes != rows * shape[1]:
        raise MessageRejected(Rejection.BAD_SHAPE, f"{nbytes} bytes do not match uint8 shape {shape}")
    if expected is not None and shape[1] != expected:
        raise MessageRejected(Rejection.BAD_CLASS_COUNT, f"expected {expected} classes, got {shape[1]}")
    return shape[1]


def check_quantized(q: torch.Tensor) -> None:
    """Every row's bytes sum to 255 give or take one step per class (what any rounding of a
    distribution can produce), and never to 0 (nothing to renormalise)."""
    sums = q.sum(1, dtype=torch.int64)
    if (sums == 0).any():
        raise MessageRejected(Rejection.NOT_NORMALISED, "a uint8 row carries no mass")
    off = sums - 255
    worst = off[off.abs().argmax()].item()
    if abs(worst) > q.shape[1]:
        raise MessageRejected(Rejection.NOT_NORMALISED, f"a uint8 row sums to 255{worst:+d}/255, beyond one step per class")

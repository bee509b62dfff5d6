"""Every error type of codistill, in one place.

A `UserError` is bad input (a config, a data file, a suite, a run folder, TLS
files): it is found before anything starts, and the command line prints it as
one line and exits with code 2. A `RegionError` is a run that failed while it
ran (exit code 1); a `CheckpointError` raised inside a region reaches the user
as one. `MessageRejected` is a peer's message refused by a region;
it never reaches the user, only the gRPC status code and a counter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codistill.region.messages import Rejection


class UserError(ValueError):
    """Bad input, found before anything started: one line, exit code 2."""


class ConfigError(UserError):
    """A config value, override or file the run cannot use."""


class DataError(UserError):
    """A dataset that cannot be found, fetched or read."""


class PartitionError(UserError):
    """A split of the labeled data that cannot be made (e.g. a region would get no example)."""


class SecurityError(UserError):
    """A token or TLS file that cannot be read."""


class CertsError(UserError):
    """Certificates that `codistill certs` cannot write."""


class ResumeError(UserError):
    """A folder that `--resume` cannot continue."""


class CheckpointError(UserError):
    """A checkpoint that holds more than tensors and plain values: refused, never unpickled."""


class SavedModelError(UserError):
    """A run's saved models that cannot be found or used: no models, a region that is not there, a model.json edited into nonsense."""


class ReportError(UserError):
    """A run folder that `codistill report` cannot plot."""


class MixedVersions(UserError):
    """Bench cells computed by different code: their figures cannot stand side by side."""


class RegionError(RuntimeError):
    """A region failed while the run ran; carries its id so the driver can say which."""

    def __init__(self, region: int, message: str):
        super().__init__(f"region {region}: {message}")
        self.region = region
        self.message = message

    def __reduce__(self):
        return (RegionError, (self.region, self.message))


class MessageRejected(Exception):
    """A peer's message a region refused, with the reason (a bounded set, safe as a metric label)."""

    def __init__(self, reason: Rejection, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        return (MessageRejected, (self.reason, self.detail))

"""Moved to codistill.report.aggregate (MixedVersions to codistill.errors); this name stays until
the command line imports from there."""

from codistill.errors import MixedVersions

__all__ = ["MixedVersions"]

"""The value types of the run configuration: checked numbers, paths, plugin names, port ranges.

Each type states what it accepts; the config sections (codistill.config) are built from them.
Error excerpts live here too, so every message cuts a user's value the same way.
"""

from __future__ import annotations

import json
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any

from annotated_types import MaxLen
from pydantic import AfterValidator, BeforeValidator, Strict
from pydantic_core import PydanticCustomError


# A value echoed in an error is cut to this many characters, so a huge string or list in a
# config cannot flood the terminal; paths get more room, keeping their informative tail.
EXCERPT_CHARS = 40
PATH_EXCERPT_CHARS = 80
# A config is a few KB of YAML; reading a huge file whole would only exhaust memory.
MAX_CONFIG_BYTES = 1024 * 1024
INT32_MAX = 2**31 - 1
# The longest wait any timeout may ask for: longer is indistinguishable from a hang
# (and far longer overflows the clocks behind sleeps and RPC deadlines).
DAY_S = 86_400.0


def excerpt(value: object) -> str:
    """A short, single-line repr of a user-supplied value for an error message."""
    try:
        text = repr(value) if isinstance(value, str) else reprlib.repr(value)
    except ValueError:  # ints beyond Python's str-conversion limit
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def excerpt_path(path: str | Path) -> str:
    """A path for an error message: its tail when long, never more than one line."""
    text = repr(str(path))[1:-1]
    return text if len(text) <= PATH_EXCERPT_CHARS else "..." + text[3 - PATH_EXCERPT_CHARS :]


def _int32(value: int) -> int:
    # A validator rather than a Field bound, so a field's own tighter `le` is not overridden.
    if value > INT32_MAX:
        raise PydanticCustomError("less_than_equal", "Input should be less than or equal to {le}", {"le": INT32_MAX})
    return value


def _not_bool(value: Any) -> Any:
    # Python's bool is a number, so a stray `true` would silently become 1.0.
    if isinstance(value, bool):
        raise ValueError("expects a number, not true/false")
    return value


# Counts, sizes, steps and ids: YAML and `--set key=3` give real ints; a bool (an int to Python)
# or a float is a mistake. int32 is ample for all of them, and numpy, torch and gRPC overflow past it.
Int = Annotated[int, Strict(), AfterValidator(_int32)]
# Rates, weights, fractions and seconds: never a bool, and finite (see _Strict's allow_inf_nan).
Real = Annotated[float, BeforeValidator(_not_bool)]
# Filesystem paths: PATH_MAX on Linux; longer ones fail in the OS with a confusing error.
PathText = Annotated[str, MaxLen(4096)]


# A user plugin: `package.module:attribute` (the attribute may be dotted, e.g. `nets:Zoo.small`).
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
BUILTIN_MODELS: tuple[str, ...] = ("mlp", "cnn")
BUILTIN_DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "synthetic", "npz")


def is_import_path(text: str) -> bool:
    return IMPORT_PATH.fullmatch(text) is not None


def _builtin_or_import_path(builtins: tuple[str, ...], what: str):
    expected = ", ".join(builtins) + f" or an import path 'package.module:{what}'"

    def check(value: str) -> str:
        if value not in builtins and not is_import_path(value):
            raise PydanticCustomError("plugin_name", "expected {expected}", {"expected": expected})
        return value

    return check


def _plain_data(value: dict[str, Any]) -> dict[str, Any]:
    # Recorded in config.yaml and results.json, so a run can be repeated from its folder.
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise PydanticCustomError("plain_data", "values must be plain data (numbers, strings, lists, mappings)") from None
    return value


ModelName = Annotated[str, MaxLen(300), AfterValidator(_builtin_or_import_path(BUILTIN_MODELS, "factory"))]
DatasetName = Annotated[str, MaxLen(300), AfterValidator(_builtin_or_import_path(BUILTIN_DATASETS, "loader"))]
PluginArgs = Annotated[dict[str, Any], AfterValidator(_plain_data)]


def _port_range(value: str) -> str:
    # "50100-50199": the ports an operator opens between nodes; checked here, parsed by port_range().
    lo, sep, hi = value.partition("-")
    if not (sep and lo.strip().isdigit() and hi.strip().isdigit()):
        raise PydanticCustomError("port_range", "expected LOW-HIGH, e.g. 50100-50199")
    if not 1024 <= int(lo) <= int(hi) <= 65535:
        raise PydanticCustomError("port_range", "expected 1024 <= LOW <= HIGH <= 65535")
    return value


PortRange = Annotated[str, MaxLen(20), AfterValidator(_port_range)]


def port_range(value: str | None) -> tuple[int, int] | None:
    """(low, high) of a validated PortRange; None for any free port."""
    if value is None:
        return None
    lo, _, hi = value.partition("-")
    return int(lo), int(hi)

"""How every command reports a result: one JSON object on stdout with `--json`, text otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(result: Any) -> str:
    return json.dumps(result, default=_default, indent=None, sort_keys=False)


def emit(result: dict, as_json: bool, human: Callable[[dict], str] | None = None) -> None:
    """Print `result`: exactly one JSON object when `as_json`, else the human rendering."""
    if as_json:
        sys.stdout.write(to_json(result) + "\n")
    else:
        typer.echo(human(result) if human else json.dumps(result, default=_default, indent=2))
    sys.stdout.flush()


def fail(message: str, as_json: bool = False, code: int = 1, **extra: Any) -> None:
    """Exit with a clear message (stderr) and, with `--json`, an error object on stdout."""
    typer.echo(f"error: {message}", err=True)
    if as_json:
        sys.stdout.write(to_json({"error": message, **extra}) + "\n")
    raise typer.Exit(code)

"""A click group that imports each subcommand's module only when that subcommand runs.

Keeps `leukoflow --help` and every command's start-up free of TensorFlow,
Evidently and Great Expectations unless the command needs them.
"""

from __future__ import annotations

import importlib

import click
import typer


class LazyGroup(click.Group):
    """Subcommands given as ``{"name": "package.module:attribute"}``."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module_name, attribute = self.lazy[name].split(":")
        target = getattr(importlib.import_module(module_name), attribute)
        if isinstance(target, typer.Typer):
            command = typer.main.get_command(target)
            command.name = name
            return command
        return target

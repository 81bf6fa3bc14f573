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
            return _TyperCommand(name, typer.main.get_command(target))
        return target


class _TyperCommand(click.Command):
    """Runs a Typer app through its own `main`.

    Typer (>= 0.20) vendors its own click, so its exceptions (`typer.Exit`, usage
    errors) are not click's: invoked directly from this click group they would
    surface as tracebacks. Handing the raw arguments to the Typer command's own
    standalone `main` lets Typer report them and exit with the right code.
    """

    def __init__(self, name: str, command) -> None:
        super().__init__(
            name,
            help=command.help,
            short_help=getattr(command, "short_help", None),
            add_help_option=False,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )
        self.params = [click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)]
        self.command = command

    def invoke(self, ctx: click.Context):
        # obj carries what the root hands down (e.g. the local pipeline runner for `monitor drift --trigger`).
        return self.command.main(
            list(ctx.params["args"]), prog_name=ctx.command_path, standalone_mode=True, obj=ctx.obj
        )

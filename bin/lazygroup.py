"""A click group that imports a subcommand's module only when that subcommand is used."""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """A click.Group whose subcommands are given by name, one-line help and "module:attribute".

    `lazy_commands` maps each name to (its one-line help, "module:attribute"). The group's --help
    lists the names with those helps, so it imports no subcommand; running a subcommand, or showing
    its own --help, imports that one's module alone.
    """

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand's name, sorted."""
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The subcommand `name` (importing its module if it is a lazy one), or None."""
        if name not in self.lazy_commands:
            return super().get_command(ctx, name)
        module, _, attribute = self.lazy_commands[name][1].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, but a mistyped name is also compared with the lazy names ("Did you mean ...")."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            # click suggests close names from self.commands only, which holds no lazy command
            raise click.exceptions.NoSuchCommand(exc.command_name, possibilities=self.list_commands(ctx),
                                                 ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The "Commands" section of --help, from the one-line helps given here: no module imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(map(len, names))  # the room click's own listing leaves
        rows = []
        for name in names:
            if name in self.lazy_commands:
                # a stand-in command, so that the help is shortened to `limit` exactly as click does it
                command = click.Command(name, help=self.lazy_commands[name][0])
            else:
                command = self.commands[name]
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

"""Regenerate the site's command-line reference (docs/cli.md) from the commands' own --help.

    python docs/generate_cli_reference.py          # rewrites docs/cli.md between the markers
    python docs/generate_cli_reference.py --check  # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlflow_okr.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parent))  # generated_section, a sibling
from generated_section import GeneratedSection  # noqa: E402

PAGE = Path(__file__).resolve().parent / "cli.md"
SECTION = GeneratedSection(PAGE, "cli-reference", "docs/generate_cli_reference.py", lambda: reference())
START, END = SECTION.start, SECTION.end


def command_help(command: click.Command, path: list[str]) -> str:
    """The --help text of `mlflow-okr PATH...`, as the terminal shows it at 100 columns."""
    root = click.Context(cli, info_name="mlflow-okr", terminal_width=100, max_content_width=100,
                         **cli.context_settings)
    context = click.Context(command, info_name=" ".join(path), parent=root)
    return command.get_help(context)


def walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    """Every command under `command`, depth first, in alphabetical order."""
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            found += walk(command.commands[name], [*path, name])
    return found


def reference() -> str:
    """The Markdown reference: one section per command, its help in a code block."""
    parts = [START]
    for path, command in walk(cli, [])[1:]:
        depth = "##" if len(path) == 1 else "###"
        parts.append(f"{depth} `mlflow-okr {' '.join(path)}`\n\n```text\n"
                     f"{command_help(command, path).rstrip()}\n```")
    parts.append(END)
    return "\n\n".join(parts)


updated_page = SECTION.updated


def main() -> None:
    SECTION.main(__doc__.splitlines()[0])


if __name__ == "__main__":
    main()

"""`challengectl completion show|install SHELL`: shell completion for an explicitly named shell, using
typer's completion scripts (the root's `--install-completion`/`--show-completion` keep working too)."""

from __future__ import annotations

from enum import Enum

import typer
from typer.completion import get_completion_script, install

from challengectl.context import command_group, examples, get_cli

PROG_NAME = "challengectl"
COMPLETE_VAR = "_CHALLENGECTL_COMPLETE"

app = command_group("Shell completion scripts (bash, zsh, fish, powershell).")

SHOW_EXAMPLES = examples(
    "challengectl completion show bash > ~/.local/share/bash-completion/completions/challengectl",
    'eval "$(challengectl completion show zsh)"',
    "challengectl completion install fish -o json | jq -r .path",
)

INSTALL_EXAMPLES = examples(
    "challengectl completion install bash",
    "challengectl completion install zsh && exec zsh",
    "challengectl completion install fish -o json | jq -r .path",
)


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"


@app.command("show", epilog=SHOW_EXAMPLES)
def show(shell: Shell = typer.Argument(..., help="bash, zsh, fish or powershell")) -> None:
    """Print the completion script of SHELL on stdout."""
    typer.echo(get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell.value))


@app.command("install", epilog=INSTALL_EXAMPLES)
def install_completion(
    ctx: typer.Context, shell: Shell = typer.Argument(..., help="bash, zsh, fish or powershell")
) -> None:
    """Install the completion script of SHELL into its usual place (shell rc file or completions dir)."""
    cli = get_cli(ctx)
    installed_shell, path = install(shell=shell.value, prog_name=PROG_NAME, complete_var=COMPLETE_VAR)
    out = cli.output
    if out.explicit and out.format in ("json", "yaml"):
        out.emit_object({"shell": installed_shell, "path": str(path)})
    else:
        out.write(f"installed {installed_shell} completion in {path}; open a new shell to use it")


def register(root: typer.Typer) -> None:
    """Add the `completion` group to the root app."""
    root.add_typer(app, name="completion")

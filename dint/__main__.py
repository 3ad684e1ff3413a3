"""`python -m dint`: the same as the `dint` command."""

from dint.commands.cli import app

app()

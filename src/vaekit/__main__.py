"""`python -m vaekit ...`: the same as the `vaekit` command."""

from .cli.main import run

run()

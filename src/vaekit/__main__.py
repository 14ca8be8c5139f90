"""`python -m vaekit ...`: the same as the `vaekit` command."""

from .cli import run

run()

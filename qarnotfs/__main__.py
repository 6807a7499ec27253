"""``python -m qarnotfs``: the same as the ``qarnotfs`` command."""

from .cli import run

run()

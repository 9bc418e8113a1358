"""``python -m arena.judge`` runs the ``arena-judge`` command line."""

from arena.judge.cli import app

app()

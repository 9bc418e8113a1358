"""The leaderboard: the job that turns votes into stored rating snapshots, its CLI and the
periodic refresher.

- :mod:`arena.leaderboard.votes` reads counted votes (with the exclusions) from the database;
- :mod:`arena.leaderboard.job` annotates battles, flags anomalous voters, fits and stores snapshots;
- :mod:`arena.leaderboard.view` reads the newest snapshot for pages, the API and the CLI;
- :mod:`arena.leaderboard.refresher` reruns the job periodically inside the web app;
- :mod:`arena.leaderboard.cli` is ``arena leaderboard``.

The page itself lives in :mod:`arena.web.leaderboard`; the ``active`` pair sampler, which reads
the same vote counts (:func:`arena.leaderboard.votes.grouped_pair_votes`), in
:mod:`arena.battles.sampling`. This package's ``__init__`` imports nothing, so ``arena --help``
does not pay for pandas and SciPy.
"""

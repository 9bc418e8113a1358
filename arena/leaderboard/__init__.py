"""The leaderboard: the job that turns votes into stored rating snapshots, its CLI, the periodic
refresher, and the active pair sampler that reads the same vote counts.

- :mod:`arena.leaderboard.votes` reads counted votes (with the exclusions) from the database;
- :mod:`arena.leaderboard.job` annotates battles, flags anomalous voters, fits and stores snapshots;
- :mod:`arena.leaderboard.view` reads the newest snapshot for pages, the API and the CLI;
- :mod:`arena.leaderboard.refresher` reruns the job periodically inside the web app;
- :mod:`arena.leaderboard.cli` is ``arena leaderboard``;
- :mod:`arena.leaderboard.active_sampler` is the ``active`` pair-sampling policy.

The page itself lives in :mod:`arena.web.leaderboard`. This package's ``__init__`` imports nothing,
so ``arena --help`` does not pay for pandas and SciPy.
"""

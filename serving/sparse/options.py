"""``arena-serve`` flags of sparse attention, and the :class:`EngineConfig` fields they set.

``--sparse-attention MODE`` applies to every served model; ``--sparse-attention NAME=MODE`` to
one (repeatable; MODE is ``dense``, ``double-sparsity`` or ``h2o``). The ``--ds-*`` and
``--h2o-*`` flags tune the two modes for all models that use them.
"""

from __future__ import annotations

import argparse
from typing import Any

from serving.sparse.settings import DoubleSparsityConfig, H2OConfig

MODES = ("dense", "double-sparsity", "h2o")


def _mode_spec(spec: str) -> tuple[str | None, str]:
    name, sep, mode = spec.rpartition("=")
    if mode not in MODES:
        raise argparse.ArgumentTypeError(
            f"sparse attention mode must be one of {', '.join(MODES)}; got {mode!r}"
        )
    return (name if sep else None), mode


def _budget(value: str) -> float:
    budget = float(value)
    if budget <= 0 or (budget > 1 and not budget.is_integer()):
        raise argparse.ArgumentTypeError("--h2o-budget is a fraction in (0, 1] or a whole number of tokens")
    return budget


def add_sparse_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sparse-attention flags to the server's parser."""
    group = parser.add_argument_group("sparse attention (Double Sparsity, H2O)")
    group.add_argument(
        "--sparse-attention", action="append", type=_mode_spec, default=[], metavar="[NAME=]MODE",
        help="dense (default), double-sparsity or h2o; NAME= for one model only (repeat)",
    )  # fmt: skip
    defaults = DoubleSparsityConfig()
    group.add_argument(
        "--ds-channels", default=None, help="channel file (default: MODEL/double_sparsity_channels.json)"
    )
    group.add_argument(
        "--ds-heavy-channels", type=int, default=defaults.heavy_channels, help="label channels per KV head"
    )
    group.add_argument(
        "--ds-token-fraction",
        type=float,
        default=defaults.token_fraction,
        help="heavy tokens, of the context",
    )
    group.add_argument("--ds-min-tokens", type=int, default=defaults.min_tokens, help="heavy tokens at least")
    group.add_argument("--ds-sink", type=int, default=defaults.sink, help="first tokens always attended")
    group.add_argument("--ds-recent", type=int, default=defaults.recent, help="last tokens always attended")
    group.add_argument(
        "--ds-dense-below", type=int, default=defaults.dense_below, help="dense below this context"
    )
    h2o = H2OConfig()
    group.add_argument("--h2o-budget", type=_budget, default=h2o.budget_fraction,
                       help="KV kept per sequence: a fraction of its length, or a token count")  # fmt: skip
    group.add_argument("--h2o-recent-fraction", type=float, default=h2o.recent_fraction,
                       help="share of the budget that is the recent window (the rest: heavy hitters)")  # fmt: skip


def sparse_engine_fields(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """``EngineConfig`` keyword arguments for one model from the parsed flags (ValueError on
    bad settings)."""
    mode = "dense"
    for name, chosen in args.sparse_attention:
        if name is None or name == model_name:
            mode = chosen
    budget = args.h2o_budget
    return {
        "attention_backend": mode,
        "double_sparsity": DoubleSparsityConfig(
            heavy_channels=args.ds_heavy_channels, token_fraction=args.ds_token_fraction,
            min_tokens=args.ds_min_tokens, sink=args.ds_sink, recent=args.ds_recent,
            dense_below=args.ds_dense_below, channels_path=args.ds_channels,
        ),
        "h2o": H2OConfig(
            budget_fraction=budget if budget <= 1 else 1.0,
            budget_tokens=int(budget) if budget > 1 else None,
            recent_fraction=args.h2o_recent_fraction,
        ),
    }  # fmt: skip

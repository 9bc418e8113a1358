"""FastChat's own rating code as the leaderboard benchmark's peer, loaded without making it a
project dependency.

* ``fschat`` from PyPI (newest release 0.2.36): ``fastchat/serve/monitor/elo_analysis.py`` fits
  Bradley-Terry with scikit-learn's ``LogisticRegression`` on a duplicated dense design matrix
  and bootstraps by resampling battle rows. Installed with ``pip install --no-deps --target``
  into a cache folder outside the repository the first time (it needs scikit-learn, pytz,
  plotly and tqdm, which the venv has), never into the venv.
* ``rating_systems.py`` (newer than any PyPI release; the code lmarena runs, with style
  control): only from a FastChat checkout given with ``--fastchat-src``; imported by file path.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

FSCHAT_VERSION = "0.2.36"
CACHE = Path.home() / ".cache" / "arena-benchmarks" / f"fschat-{FSCHAT_VERSION}"
FASTCHAT_WINNERS = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}


def fschat_elo_analysis() -> ModuleType:
    """``fastchat.serve.monitor.elo_analysis`` from PyPI's fschat (installed into CACHE if needed)."""
    try:
        return importlib.import_module("fastchat.serve.monitor.elo_analysis")
    except ImportError:
        pass
    if not (CACHE / "fastchat").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(CACHE),
                        f"fschat=={FSCHAT_VERSION}"], check=True)
    sys.path.insert(0, str(CACHE))
    return importlib.import_module("fastchat.serve.monitor.elo_analysis")


def rating_systems(src: Path) -> ModuleType:
    """FastChat's ``fastchat/serve/monitor/rating_systems.py`` from the checkout at ``src``."""
    path = Path(src) / "fastchat" / "serve" / "monitor" / "rating_systems.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --fastchat-src must be a FastChat checkout")
    spec = importlib.util.spec_from_file_location("fastchat_rating_systems", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its process pool pickles the fit functions by module name
    spec.loader.exec_module(module)
    return module


def fastchat_battles(battles: pd.DataFrame) -> pd.DataFrame:
    """Our synthetic battles in FastChat's clean_battle layout (winner names, conv_metadata)."""
    frame = pd.DataFrame({"model_a": battles["model_a"], "model_b": battles["model_b"],
                          "winner": battles["winner"].map(FASTCHAT_WINNERS)})
    if "tokens_a" in battles:
        columns = {side: {f: battles[f"{f}_{side}"].to_numpy(np.int64) for f in ("tokens", "headers", "lists", "bold")}
                   for side in ("a", "b")}
        frame["conv_metadata"] = [
            {f"sum_assistant_{s}_tokens": int(columns[s]["tokens"][i]) for s in ("a", "b")}
            | {f"header_count_{s}": {"h1": int(columns[s]["headers"][i])} for s in ("a", "b")}
            | {f"list_count_{s}": {"ordered": int(columns[s]["lists"][i])} for s in ("a", "b")}
            | {f"bold_count_{s}": {"**": int(columns[s]["bold"][i])} for s in ("a", "b")}
            for i in range(len(battles))
        ]
    return frame

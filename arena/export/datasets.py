"""The exportable datasets by name and what each holds.

Kept apart from the pipeline so that ``arena --help`` can describe them without importing it
(pyarrow, lingua, datasketch: about a second).
"""

from __future__ import annotations

DATASET_DESCRIPTIONS = {
    "conversations": (
        "Real conversations between arena visitors and the models the arena hosts: direct chats "
        "and each side of every battle, one row per conversation."
    ),
    "battles": (
        "Pairwise battles: two models answer the same prompts side by side and a visitor votes. "
        "One row per voted battle whose two models may both be released."
    ),
}

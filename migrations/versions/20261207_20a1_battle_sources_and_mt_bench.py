"""battle sources (imported battle logs), prompt de-duplication, MT-bench scores

Revision ID: 20a1
Revises: 0001
Create Date: 2026-12-07 01:45:00

Battles get ``source`` (``live`` or ``import:<label>``), ``source_key`` (the identity of an
imported row, so a re-import skips it), ``prompt_hash`` and ``prompt_downsampled`` (lmarena's
top-0.1% prompt de-duplication). ``mt_bench_scores`` holds arena-judge's single-mode results.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20a1"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("battles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=100), server_default="live", nullable=False))
        batch_op.add_column(sa.Column("source_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("prompt_hash", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("prompt_downsampled", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index(batch_op.f("ix_battles_source"), ["source"], unique=False)
        batch_op.create_index(batch_op.f("ix_battles_prompt_hash"), ["prompt_hash"], unique=False)
        batch_op.create_unique_constraint(batch_op.f("uq_battles_source_key"), ["source_key"])

    op.create_table(
        "mt_bench_scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("judge", sa.String(length=200), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("turn_1", sa.Float(), nullable=True),
        sa.Column("turn_2", sa.Float(), nullable=True),
        sa.Column("judged_turns", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mt_bench_scores")),
        sa.UniqueConstraint("model", "judge", name="uq_mt_bench_scores_model"),
    )
    with op.batch_alter_table("mt_bench_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mt_bench_scores_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mt_bench_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mt_bench_scores_created_at"))
    op.drop_table("mt_bench_scores")
    with op.batch_alter_table("battles", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_battles_source_key"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_battles_prompt_hash"))
        batch_op.drop_index(batch_op.f("ix_battles_source"))
        batch_op.drop_column("prompt_downsampled")
        batch_op.drop_column("prompt_hash")
        batch_op.drop_column("source_key")
        batch_op.drop_column("source")

"""sweeps: the Optuna study of a sweep that samples by TPE or prunes, and when the sweep ended

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 01:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("study", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_sweeps_finished_at", ["finished_at"])
    # Sweeps with nothing left to launch or run have finished (the reaper looks only at the others).
    op.execute(
        """
        UPDATE sweeps SET finished_at = CURRENT_TIMESTAMP
        WHERE (cancelled_at IS NOT NULL OR launched >= size)
          AND NOT EXISTS (
            SELECT 1 FROM jobs
            WHERE jobs.sweep_id = sweeps.id AND jobs.status NOT IN ('succeeded', 'failed', 'cancelled')
          )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_index("ix_sweeps_finished_at")
        batch.drop_column("finished_at")
        batch.drop_column("study")

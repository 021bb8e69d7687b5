"""evaluation reports kept per job checkpoint

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 23:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation_reports",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "checkpoint_sha256"),
    )


def downgrade() -> None:
    op.drop_table("evaluation_reports")

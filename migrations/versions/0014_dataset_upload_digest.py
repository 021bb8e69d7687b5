"""datasets: a digest of the uploaded archive with its name and options, so that the same upload
sent again answers the dataset it made instead of making another

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 15:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("upload_digest", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_datasets_upload_digest"), ["upload_digest"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index(batch.f("ix_datasets_upload_digest"))
        batch.drop_column("upload_digest")

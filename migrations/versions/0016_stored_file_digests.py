"""stored files' sizes and sha256 digests (checked by every reader), the key of a job's resumable
training state and of an upload waiting to be decoded, so that files can live in an object store;
and the built-in datasets each worker has, since the API's machine may have none

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 22:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("file_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("upload_file", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("resume_state", sa.JSON(), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("datasets", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("datasets")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resume_state")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("upload_file")
        batch.drop_column("file_sha256")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("sha256")
        batch.drop_column("size_bytes")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("sha256")

"""a model version outlives its job: model_versions.job_id keeps the job's id without a foreign key

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 13:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# SQLite names no constraint; batch mode reflects the table under this convention so that the
# foreign key has a name to drop.
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _job_foreign_key() -> str:
    for fk in sa.inspect(op.get_bind()).get_foreign_keys("model_versions"):
        if fk["referred_table"] == "jobs":
            return fk["name"] or "fk_model_versions_job_id_jobs"
    raise RuntimeError("model_versions has no foreign key to jobs")


def upgrade() -> None:
    name = _job_foreign_key()
    with op.batch_alter_table("model_versions", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.create_foreign_key("fk_model_versions_job_id_jobs", "jobs", ["job_id"], ["id"], ondelete="RESTRICT")

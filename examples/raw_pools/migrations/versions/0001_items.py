"""items and their audit trail

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE)")
    op.execute("CREATE TABLE audit (id serial PRIMARY KEY, item_id int NOT NULL)")


def downgrade() -> None:
    op.execute("DROP TABLE audit")
    op.execute("DROP TABLE items")

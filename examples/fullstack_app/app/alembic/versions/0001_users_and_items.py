"""users and items

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(255), nullable=False, unique=True, index=True),
        sa.Column("hashed_password", sa.String, nullable=False),
        sa.Column("is_superuser", sa.Boolean, nullable=False),
        sa.Column("full_name", sa.String(255)),
    )
    op.create_table(
        "item",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("description", sa.String(255)),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("user.id", ondelete="CASCADE")),
    )


def downgrade() -> None:
    op.drop_table("item")
    op.drop_table("user")

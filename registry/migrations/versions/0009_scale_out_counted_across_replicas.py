"""scale-out across replicas: each worker's last prediction, and the extra workers being started

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('pending_workers', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('pending_workers')
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('last_used_at')

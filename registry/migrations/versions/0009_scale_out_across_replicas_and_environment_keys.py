"""scale-out across replicas: each worker's last prediction, and the extra workers being started;
environment artifacts found by their requirements key

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
        batch.add_column(sa.Column('pending_since', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('manifests') as batch:
        batch.add_column(sa.Column('environment_key', sa.String(length=64), nullable=True))
        batch.create_index('ix_manifests_environment_key', ['environment_key'])


def downgrade() -> None:
    with op.batch_alter_table('manifests') as batch:
        batch.drop_index('ix_manifests_environment_key')
        batch.drop_column('environment_key')
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('pending_since')
        batch.drop_column('pending_workers')
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('last_used_at')

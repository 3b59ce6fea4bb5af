"""replicas: spent demo tickets and the claimer of each async run, in the database

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'spent_tickets',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_spent_tickets_expires_at', 'spent_tickets', ['expires_at'])
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('claimed_by', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('claimed_by')
    op.drop_index('ix_spent_tickets_expires_at', table_name='spent_tickets')
    op.drop_table('spent_tickets')

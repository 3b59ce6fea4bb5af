"""catalog columns for listing and search

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('manifests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('thumbnail', sa.LargeBinary(), nullable=True))

    with op.batch_alter_table('repositories', schema=None) as batch_op:
        batch_op.add_column(sa.Column('latest_digest', sa.String(length=135), nullable=True))
        batch_op.add_column(sa.Column('task', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('framework', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('license', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('tags', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('input_types', sa.String(length=255), nullable=False,
                                      server_default=sa.text("''")))
        batch_op.add_column(sa.Column('output_types', sa.String(length=255), nullable=False,
                                      server_default=sa.text("''")))
        batch_op.add_column(sa.Column('search_text', sa.Text(), nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('run_count', sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch_op.create_index(batch_op.f('ix_repositories_run_count'), ['run_count'], unique=False)
        batch_op.create_index(batch_op.f('ix_repositories_task'), ['task'], unique=False)
        batch_op.create_index(batch_op.f('ix_repositories_updated_at'), ['updated_at'], unique=False)
    # the rest of the catalog is filled from each repository's newest version when the registry starts
    op.execute("UPDATE repositories SET run_count = "
               "(SELECT count(*) FROM runs WHERE runs.repository_id = repositories.id)")



def downgrade() -> None:
    with op.batch_alter_table('repositories', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_repositories_updated_at'))
        batch_op.drop_index(batch_op.f('ix_repositories_task'))
        batch_op.drop_index(batch_op.f('ix_repositories_run_count'))
        batch_op.drop_column('run_count')
        batch_op.drop_column('search_text')
        batch_op.drop_column('output_types')
        batch_op.drop_column('input_types')
        batch_op.drop_column('tags')
        batch_op.drop_column('license')
        batch_op.drop_column('framework')
        batch_op.drop_column('task')
        batch_op.drop_column('latest_digest')

    with op.batch_alter_table('manifests', schema=None) as batch_op:
        batch_op.drop_column('thumbnail')


"""workers as endpoints with a journal cursor; the files the platform stored for each run

Revision ID: 0005
Revises: 0004
"""

import json
from pathlib import PurePath

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('handle', sa.String(length=255), nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('endpoint', sa.String(length=255), nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('journal_cursor', sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch_op.add_column(sa.Column('journal_error', sa.Text(), nullable=True))
    workers = sa.table('workers', sa.column('id'), sa.column('socket'), sa.column('pid'), sa.column('handle'),
                       sa.column('endpoint'))
    connection = op.get_bind()
    for worker_id, socket, pid in connection.execute(sa.select(workers.c.id, workers.c.socket, workers.c.pid)).all():
        connection.execute(workers.update().where(workers.c.id == worker_id).values(
            handle=f"{PurePath(socket).stem}:{pid or 0}", endpoint=f"unix:{socket}"))
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('socket')
        batch_op.drop_column('pid')

    op.create_table('run_files',
                    sa.Column('run_id', sa.String(length=36), nullable=False),
                    sa.Column('digest', sa.String(length=135), nullable=False),
                    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('run_id', 'digest'))
    _record_stored_files(connection)


def _record_stored_files(connection: sa.Connection) -> None:
    """Earlier runs' files, as the platform stored them. An async run's inputs are left out (the
    caller wrote those), and so is any digest that is also a pushed blob: a caller or a model could
    have written a layer's digest into a run, and that is exactly what must not become a run's file."""
    runs = sa.table('runs', sa.column('id'), sa.column('source'), sa.column('inputs'), sa.column('outputs'))
    run_files = sa.table('run_files', sa.column('run_id'), sa.column('digest'))
    blob_links = sa.table('blob_links', sa.column('digest'))
    pushed = set(connection.execute(sa.select(blob_links.c.digest).distinct()).scalars())
    for run_id, source, inputs, outputs in connection.execute(
            sa.select(runs.c.id, runs.c.source, runs.c.inputs, runs.c.outputs)).all():
        values = [*_loaded(outputs).values(), *([] if source == 'async' else _loaded(inputs).values())]
        digests = {value['digest'] for value in values if isinstance(value, dict) and isinstance(value.get('digest'), str)}
        for digest in digests - pushed:
            connection.execute(run_files.insert().values(run_id=run_id, digest=digest))


def _loaded(value: object) -> dict:
    loaded = json.loads(value) if isinstance(value, str) else value
    return loaded if isinstance(loaded, dict) else {}


def downgrade() -> None:
    op.drop_table('run_files')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('socket', sa.String(length=255), nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch_op.drop_column('journal_error')
        batch_op.drop_column('journal_cursor')
        batch_op.drop_column('endpoint')
        batch_op.drop_column('handle')

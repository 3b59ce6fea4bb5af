"""The migrations build the schema the models describe, on both databases: a column added to a model
without its migration (or the reverse) fails here, not on an operator's upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conftest import _postgres_database
from modelhall.registry.db.models import Base
from modelhall.registry.db.session import make_engine, migrate


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migrated_schema_is_the_models_schema(kind: str, tmp_path: Path) -> None:
    databases = _postgres_database() if kind == "postgresql" else iter([f"sqlite:///{tmp_path}/schema.db"])
    for url in databases:
        engine = make_engine(url)
        try:
            migrate(engine)
            with engine.connect() as connection:
                assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        finally:
            engine.dispose()

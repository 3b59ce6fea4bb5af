"""Alembic migrations of the registry database (run by modelhall.registry.db.session.migrate)."""

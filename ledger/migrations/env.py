"""Alembic environment: migrates the connection it is given, or the configured database."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from ledger.models import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters tables by copying them.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from ledger.db import make_engine
    from ledger.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings.database_url, timeouts=settings.timeouts())
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
run_migrations_online()

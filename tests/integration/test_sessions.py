"""What a PostgreSQL session of the ledger's tells the server about itself."""

from __future__ import annotations

import pytest

from ledger.db import Database

postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _names(db: Database) -> tuple[str, str]:
    """The session's ``application_name``, and what ``pg_stat_activity`` shows of it."""
    try:
        with db.transaction(write=False) as conn:
            own = conn.exec_driver_sql("SHOW application_name").scalar()
            seen = conn.exec_driver_sql(
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).scalar()
    finally:
        db.dispose()
    return str(own), str(seen)


@postgresql_only
def test_sessions_are_named_creditledger_unless_the_url_or_pgappname_names_them(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator reading ``pg_stat_activity`` sees whose sessions these are; a name
    given in the URL or ``PGAPPNAME`` is kept."""
    monkeypatch.delenv("PGAPPNAME", raising=False)
    assert _names(Database.from_url(database_url)) == ("creditledger", "creditledger")
    named = f"{database_url}?application_name=gateway-ledger"
    assert _names(Database.from_url(named)) == ("gateway-ledger", "gateway-ledger")
    monkeypatch.setenv("PGAPPNAME", "billing-eu")
    assert _names(Database.from_url(database_url)) == ("billing-eu", "billing-eu")

"""The holds indexed by wallet: a wallet's holds read without reading all it ever had.

Three reads of one wallet's holds found them by ``ix_holds_account_id`` alone, and then
read every hold the wallet ever had (20,000 holds: 20 to 35 ms, growing with each
request it makes):

* a refused authorization or charge of a wallet with holds pending looks for those past
  their expiry that no sweeper has released yet: under the write lock, on SQLite every
  writer waited for it, again with every refused request of a customer out of credits;
* a page of its authorizations, newest first, sorted all of them for each page;
* its balance at an instant (``as_of``) summed the holds open then from all of them.

The replacements index the same rows, so that an authorization and its capture write no
more keys than before, if wider ones (measured per authorize+capture pair: SQLite's WAL
pages 39.9 before, 39.8 after; PostgreSQL's WAL bytes 7,047 before, 7,183 after):

* ``ix_holds_account_created`` (``account_id, created_at, id``) for ``ix_holds_account_id``:
  the pages of a wallet's authorizations, in their order;
* ``ix_holds_account_pending`` (``account_id, expires_at``, pending holds only) for
  ``ix_holds_pending_expires``: a wallet's pending holds, those past their expiry first.
  The hold sweeper walks it whole: the holds open now, not the history;
* ``ix_holds_account_resolved`` (``account_id, resolved_at``, resolved holds only) for
  ``ix_holds_resolved``: the holds of a wallet open at an instant and resolved since. A
  report of every wallet finds them wallet by wallet.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "status = 'pending'"
RESOLVED = "resolved_at IS NOT NULL"


def _index(name: str, columns: list[str], where: str | None = None) -> None:
    if where is None:
        op.create_index(name, "holds", columns)
    else:
        predicate = sa.text(where)
        op.create_index(name, "holds", columns, sqlite_where=predicate, postgresql_where=predicate)


def upgrade() -> None:
    _index("ix_holds_account_created", ["account_id", "created_at", "id"])
    op.drop_index("ix_holds_account_id", table_name="holds")
    _index("ix_holds_account_pending", ["account_id", "expires_at"], PENDING)
    op.drop_index("ix_holds_pending_expires", table_name="holds")
    _index("ix_holds_account_resolved", ["account_id", "resolved_at"], RESOLVED)
    op.drop_index("ix_holds_resolved", table_name="holds")


def downgrade() -> None:
    _index("ix_holds_resolved", ["resolved_at"], RESOLVED)
    op.drop_index("ix_holds_account_resolved", table_name="holds")
    _index("ix_holds_pending_expires", ["expires_at"], PENDING)
    op.drop_index("ix_holds_account_pending", table_name="holds")
    _index("ix_holds_account_id", ["account_id"])
    op.drop_index("ix_holds_account_created", table_name="holds")

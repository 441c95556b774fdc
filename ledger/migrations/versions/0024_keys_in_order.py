"""The API keys indexed in the order they are listed: a page of keys without reading all.

``GET /v1/keys`` (``creditledger keys list``) answered with every key, sorted for each
request, and one wallet's customer keys were found by reading every key (``api_keys``
had no index but its primary key). The list is now paged, like every other listing, and
read in its order by an index:

* ``ix_api_keys_created`` (``created_at, id``): the keys in the order they were made;
* ``ix_api_keys_account`` (``account_id, created_at, id``, customer keys only): one
  wallet's customer keys, in that order.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 20:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CUSTOMER = "account_id IS NOT NULL"


def upgrade() -> None:
    op.create_index("ix_api_keys_created", "api_keys", ["created_at", "id"])
    predicate = sa.text(CUSTOMER)
    op.create_index(
        "ix_api_keys_account",
        "api_keys",
        ["account_id", "created_at", "id"],
        sqlite_where=predicate,
        postgresql_where=predicate,
    )


def downgrade() -> None:
    op.drop_index("ix_api_keys_account", table_name="api_keys")
    op.drop_index("ix_api_keys_created", table_name="api_keys")

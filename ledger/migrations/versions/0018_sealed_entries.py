"""PostgreSQL: a written entry is sealed, as on SQLite: no posting can be added to it.

The journal is append-only, entry by entry: an entry is the postings it was written with.
SQLite refused a posting to an entry already written from the start (``postings_sealed``).
PostgreSQL refused only an UPDATE or DELETE, and checked at each commit that an entry's
postings sum to zero per unit: a later transaction could still add to an old entry a pair
of postings that kept it balanced (a script, a bad migration), changing what the entry
moved after the fact, unseen by ``verify()`` once the balances were moved to match.

The check that runs at the commit for each posting (``ledger_check_entry``, deferred)
now refuses a posting written by another transaction than its entry: the two rows'
``xmin`` differ. It cannot be SQLite's test (does the entry exist yet, when the posting
is inserted?): on PostgreSQL the ledger sends an entry and its postings as one statement
(data-modifying CTEs), whose parts run in no set order. (A transaction cannot see an
entry another has not committed yet, so this does not refuse postings added to one that
is still being written; its id is random and known to no one else until then.)

A posting written with its entry is no longer summed with the entry's others on its own
account: the entry's check, which runs at the same commit, does that once for all of
them (a posting of no entry fails its deferred foreign key). So the commit of a capture
of two postings runs one sum rather than three.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 19:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEALED = """
    CREATE OR REPLACE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_TABLE_NAME = 'postings' THEN
        IF EXISTS (SELECT 1 FROM entries e, postings p
                   WHERE e.id = NEW.entry_id AND p.id = NEW.id AND NOT (e.xmin = p.xmin)) THEN
          RAISE EXCEPTION
            'entry % is sealed: no posting can be added to a written entry', NEW.entry_id
            USING ERRCODE = 'restrict_violation';
        END IF;
        -- Written with its entry: the entry's own check sums it, at the same commit.
        RETURN NULL;
      END IF;
      IF (SELECT COUNT(*) FROM postings WHERE entry_id = NEW.id) < 2
         OR EXISTS (SELECT 1 FROM postings WHERE entry_id = NEW.id
                    GROUP BY unit HAVING SUM(amount) <> 0) THEN
        RAISE EXCEPTION 'unbalanced entry %: two or more postings summing to zero per unit',
          NEW.id USING ERRCODE = 'check_violation';
      END IF;
      RETURN NULL;
    END $$
"""

#: 0001's, made again on the way down.
_BALANCED = """
    CREATE OR REPLACE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      target varchar;
    BEGIN
      IF TG_TABLE_NAME = 'entries' THEN target := NEW.id; ELSE target := NEW.entry_id; END IF;
      IF (SELECT COUNT(*) FROM postings WHERE entry_id = target) < 2
         OR EXISTS (SELECT 1 FROM postings WHERE entry_id = target
                    GROUP BY unit HAVING SUM(amount) <> 0) THEN
        RAISE EXCEPTION 'unbalanced entry %: two or more postings summing to zero per unit',
          target USING ERRCODE = 'check_violation';
      END IF;
      RETURN NULL;
    END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_SEALED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_BALANCED)

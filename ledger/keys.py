"""API keys: who may call, in which role, for which wallet.

A key reads ``clk_<id>_<secret>``. The id finds the row; the secret (256 random bits) is
checked against the stored SHA-256 digest in constant time. Only the digest is stored, so
a dump of the database holds no usable key, and a key is shown once, when it is created.

Roles: ``admin`` may do everything; ``service`` (the gateway) estimates, authorizes,
captures, voids and charges for any wallet and reads balances; ``customer`` is bound to one
wallet and reads its balance, entries and usage, and estimates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from ledger import kernel
from ledger.db import BOOTSTRAP_LOCK, Database
from ledger.errors import InvalidInput, NotFound
from ledger.models import KEY_ROLES, accounts, api_keys
from ledger.services import SYSTEM_ACTOR, aware_instant, page_in_order, page_limit, wallet_id

PREFIX = "clk"
#: The id of the key given in ``CREDITLEDGER_ADMIN_KEY`` (it has no row).
ENVIRONMENT_KEY_ID = "environment"


def _now() -> datetime:
    return datetime.now(UTC)


def _searchable(value: Any, field: str) -> str:
    """A text to filter by, or an error: one no database can hold (NUL, a lone
    surrogate) is refused, not sent."""
    if not isinstance(value, str) or kernel.text_problem(value) is not None:
        raise InvalidInput(f"{field} must be text without NUL or a lone surrogate", field=field)
    return value


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``account`` is the wallet's external id for customers."""

    key_id: str
    role: str
    account: str | None = None


class KeyView(BaseModel):
    """A key as listed: never its secret."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    role: str
    account_id: str | None
    created_at: datetime
    revoked_at: datetime | None
    #: From then on the key is refused (null: never).
    expires_at: datetime | None = None
    #: Who made it and who revoked it, as a journal entry's ``actor``: ``key:<id>`` (the
    #: admin key of the request), ``cli:<user>`` or ``system`` (the first start's admin
    #: key); null for keys made or revoked before revision 0020.
    created_by: str | None = None
    revoked_by: str | None = None


class KeyPage(BaseModel):
    """Keys in the order they were made; ``next_cursor`` reads on (None: no more)."""

    model_config = ConfigDict(frozen=True)

    items: list[KeyView]
    next_cursor: str | None


class CreatedKey(KeyView):
    #: The whole key, to send as ``Authorization: Bearer <key>``. Shown this once.
    key: str


class Keys:
    """Create, revoke, list and check API keys."""

    def __init__(
        self,
        db: Database,
        *,
        admin_key: str | None = None,
        clock: Callable[[], datetime] = _now,
        cache_seconds: float = 1.0,
        cache_size: int = 10_000,
    ) -> None:
        self.db = db
        self.clock = clock
        # The operator's configured admin key, kept only as a digest.
        self._admin_digest = _digest(admin_key) if admin_key else None
        # Keys recently found valid, by digest of the whole token, with their expiry: a
        # request need not read the database to authenticate. A revocation through this
        # process takes effect at once; one made by another process (the CLI) within
        # ``cache_seconds`` (the key_cache_seconds setting). An expiry takes effect at its
        # instant.
        self.cache_seconds = cache_seconds
        # At most this many keys are remembered; the one found valid longest ago makes
        # room for a new one (it is read from the database again when it comes back).
        self.cache_size = cache_size
        self._valid: dict[str, tuple[Principal, float, datetime | None]] = {}
        # ``authenticate`` runs on the server's worker threads: what changes the cache in
        # more than one step (a refresh, an eviction, a revocation's purge) holds this.
        self._changing = threading.Lock()
        # Revocations made through this process: an authentication that read its key
        # before one committed does not cache what it read (the key may be the one
        # revoked).
        self._revocations = 0

    def create(
        self,
        role: str,
        *,
        name: str = "",
        account_id: str | None = None,
        expires_at: datetime | None = None,
        actor: str | None = None,
    ) -> CreatedKey:
        """A new key (refused from ``expires_at`` on, if given), made by ``actor``; its
        secret is in the result and nowhere else."""
        if role not in KEY_ROLES:
            raise InvalidInput(f"unknown role {role!r}", field="role", allowed=list(KEY_ROLES))
        if not isinstance(name, str) or len(name) > 200:
            raise InvalidInput("name must be text of at most 200 characters", field="name")
        if (role == "customer") != (account_id is not None):
            raise InvalidInput(
                "a customer key names exactly one account_id; other roles name none",
                field="account_id",
            )
        now = self.clock()
        expires_at = aware_instant(expires_at, "expires_at")
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at must be in the future", field="expires_at")
        with self.db.transaction() as conn:
            return self._insert(
                conn, role, now, name=name, account_id=account_id, expires=expires_at, actor=actor
            )

    def _insert(
        self,
        conn: sa.Connection,
        role: str,
        now: datetime,
        *,
        name: str,
        account_id: str | None,
        expires: datetime | None,
        actor: str | None,
    ) -> CreatedKey:
        """A new key made at ``now``, inserted on ``conn``; its secret is in the result and
        nowhere else."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        internal = None if account_id is None else wallet_id(conn, account_id)
        conn.execute(
            api_keys.insert().values(
                id=key_id,
                name=name,
                role=role,
                account_id=internal,
                secret_sha256=_digest(secret),
                created_at=now,
                expires_at=expires,
                created_by=actor,
            )
        )
        return CreatedKey(
            id=key_id,
            name=name,
            role=role,
            account_id=account_id,
            created_at=now,
            revoked_at=None,
            expires_at=expires,
            created_by=actor,
            key=f"{PREFIX}_{key_id}_{secret}",
        )

    def revoke(self, key_id: str, *, actor: str | None = None) -> KeyView:
        """Revoke a key (at once, for every later request), by ``actor``. Revoking twice
        is harmless: the first revocation's instant and actor are kept."""
        with self.db.transaction() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self.clock(), revoked_by=actor)
            )
            view = self._view(conn, key_id)
        # Committed: every later read finds the key revoked. What was read before is
        # forgotten, and what is still being read is not cached.
        with self._changing:
            self._revocations += 1
            for digest, (principal, _, _) in list(self._valid.items()):
                if principal.key_id == key_id:
                    del self._valid[digest]
        if view is None:
            raise NotFound(f"no key {key_id!r}", field="id")
        return view

    def get(self, key_id: str) -> KeyView:
        with self.db.transaction(write=False) as conn:
            view = self._view(conn, key_id)
        if view is None:
            raise NotFound(f"no key {key_id!r}", field="id")
        return view

    def page(
        self,
        *,
        cursor: str | None = None,
        limit: int = 50,
        role: str | None = None,
        account_id: str | None = None,
        active: bool | None = None,
        created_by: str | None = None,
    ) -> KeyPage:
        """The keys in the order they were made, ``limit`` at a time: of one ``role``, of
        one wallet's customers (``account_id``), only those accepted now (``active``: not
        revoked and not expired) or only those refused, and only those ``created_by`` one
        actor (the keys a leaked key made), if given.

        The pages are read by an index in their order (one wallet's by one of its own);
        the filters other than ``account_id`` are read from each key's row, so a page of
        a filter few keys match may read many to fill."""
        page_limit(limit)
        if role is not None and role not in KEY_ROLES:
            raise InvalidInput(f"unknown role {role!r}", field="role", allowed=list(KEY_ROLES))
        stmt = self._select()
        if role is not None:
            stmt = stmt.where(api_keys.c.role == role)
        if account_id is not None:
            wallet = sa.select(accounts.c.id).where(
                accounts.c.external_id == _searchable(account_id, "account_id")
            )
            stmt = stmt.where(api_keys.c.account_id == wallet.scalar_subquery())
        if active is not None:
            if not isinstance(active, bool):
                raise InvalidInput("active must be true or false", field="active")
            accepted = sa.and_(
                api_keys.c.revoked_at.is_(None),
                sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > self.clock()),
            )
            stmt = stmt.where(accepted if active else sa.not_(accepted))
        if created_by is not None:
            stmt = stmt.where(api_keys.c.created_by == _searchable(created_by, "created_by"))
        with self.db.transaction(write=False) as conn:
            rows, next_cursor = page_in_order(
                conn, stmt, api_keys.c.created_at, api_keys.c.id, cursor, limit, newest=False
            )
        return KeyPage(items=[self._to_view(r) for r in rows], next_cursor=next_cursor)

    def cached(self, token: str) -> Principal | None:
        """The caller of a token found valid within ``cache_seconds``; None otherwise.

        Never reads the database (safe on an event loop); on None, call ``authenticate``.
        """
        digest = _digest(token)
        if self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest):
            return Principal(ENVIRONMENT_KEY_ID, "admin")
        found = self._valid.get(digest)
        if found is None or found[1] < time.monotonic():
            return None
        principal, _, expires_at = found
        if expires_at is not None and expires_at <= self.clock():
            return None
        return principal

    def authenticate(self, token: str) -> Principal | None:
        """The caller a bearer token belongs to, or None (unknown, malformed, revoked or
        expired)."""
        digest = _digest(token)
        if self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest):
            return Principal(ENVIRONMENT_KEY_ID, "admin")
        revocations = self._revocations
        prefix, _, rest = token.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != PREFIX or len(key_id) != 16 or not secret:
            return None
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                sa.select(
                    api_keys.c.role,
                    api_keys.c.secret_sha256,
                    api_keys.c.revoked_at,
                    api_keys.c.expires_at,
                    accounts.c.external_id,
                )
                .select_from(api_keys.outerjoin(accounts, accounts.c.id == api_keys.c.account_id))
                .where(api_keys.c.id == key_id)
            ).first()
        if row is None or not hmac.compare_digest(_digest(secret), row.secret_sha256):
            return None
        if row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= self.clock():
            return None
        principal = Principal(key_id, row.role, row.external_id)
        if self.cache_seconds > 0 and self.cache_size > 0:
            expiry = time.monotonic() + self.cache_seconds
            with self._changing:
                if self._revocations != revocations:
                    return principal  # valid when read; a revocation committed since
                self._valid.pop(digest, None)  # found valid again: now the newest
                while len(self._valid) >= self.cache_size:
                    del self._valid[next(iter(self._valid))]  # dicts keep insertion order
                self._valid[digest] = (principal, expiry, row.expires_at)
        return principal

    def bootstrap_admin(self) -> CreatedKey | None:
        """A first admin key when none is configured or active (not revoked, not expired);
        None when one exists. Replicas started together on a new ledger make one: the
        look and the insert are one transaction, one replica at a time (SQLite: the write
        lock; PostgreSQL: an advisory lock), and the others then find it."""
        if self._admin_digest is not None:
            return None
        with self.db.transaction(write=False) as conn:
            if self._admin_active(conn):  # the usual start: no lock taken
                return None
        name = "bootstrap admin (first start)"
        with self.db.transaction() as conn:
            if not self.db.is_sqlite:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(BOOTSTRAP_LOCK)))
            if self._admin_active(conn):
                return None
            return self._insert(
                conn,
                "admin",
                self.clock(),
                name=name,
                account_id=None,
                expires=None,
                actor=SYSTEM_ACTOR,
            )

    def _admin_active(self, conn: sa.Connection) -> bool:
        """Whether an admin key is stored that is accepted now (not revoked or expired)."""
        active = conn.execute(
            sa.select(sa.func.count())
            .select_from(api_keys)
            .where(
                api_keys.c.role == "admin",
                api_keys.c.revoked_at.is_(None),
                sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > self.clock()),
            )
        ).scalar_one()
        return bool(active)

    @staticmethod
    def _select() -> sa.Select[Any]:
        return sa.select(
            api_keys.c.id,
            api_keys.c.name,
            api_keys.c.role,
            accounts.c.external_id,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
            api_keys.c.expires_at,
            api_keys.c.created_by,
            api_keys.c.revoked_by,
        ).select_from(api_keys.outerjoin(accounts, accounts.c.id == api_keys.c.account_id))

    def _view(self, conn: sa.Connection, key_id: str) -> KeyView | None:
        row = conn.execute(self._select().where(api_keys.c.id == key_id)).first()
        return None if row is None else self._to_view(row)

    @staticmethod
    def _to_view(row: Any) -> KeyView:
        key_id, name, role, account, created_at, revoked_at, expires_at, made_by, revoked_by = row
        return KeyView(
            id=key_id,
            name=name,
            role=role,
            account_id=account,
            created_at=created_at,
            revoked_at=revoked_at,
            expires_at=expires_at,
            created_by=made_by,
            revoked_by=revoked_by,
        )

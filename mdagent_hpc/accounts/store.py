"""Users, API keys and daily usage in a SQL database (SQLAlchemy Core).

The URL is `MDAGENT_USERS_DB`, else a SQLite file `users.db` under MDAGENT_HOME (mode 600). A shared deployment
points it at PostgreSQL (`postgresql://user@host/db`; read with psycopg 3). Tables are created on first use and are
prefixed `mdagent_`, so they can live in a database shared with other things.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from mdagent_hpc.accounts.keys import hash_key, key_prefix, looks_like_key, new_key
from mdagent_hpc.accounts.quotas import Quota
from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.home import ensure_home

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}")  # one @, no spaces

metadata = MetaData()
users = Table(
    "mdagent_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("email", String(254)),
    Column("admin", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    # the fields of Quota; None is no limit
    Column("tokens_per_day", BigInteger),
    Column("requests_per_minute", Integer),
    Column("concurrent_runs", Integer),
    Column("sweep_points", Integer),
    Column("core_hours_per_day", Float),
)
api_keys = Table(
    "mdagent_api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("mdagent_users.id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)
usage = Table(
    "mdagent_usage",
    metadata,
    Column("user_id", ForeignKey("mdagent_users.id"), primary_key=True),
    Column("day", String(10), primary_key=True),  # UTC, YYYY-MM-DD
    Column("requests", BigInteger, nullable=False, default=0),
    Column("refused", BigInteger, nullable=False, default=0),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
)

submissions = Table(  # the client's request id of each submission (Idempotency-Key): a retry gets the same run
    "mdagent_submissions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("mdagent_users.id"), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("pk", BigInteger),  # NULL until the run exists (the key is stored first, so a crash cannot lose it)
    Column("uuid", String(36)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("user_id", "request_id"),
)
LOCK_SPACE = 0x6D64  # the first key of the advisory locks this store takes ("md"), the user's id the second


# Built once: building a statement costs more than running it (~0.4 ms against ~0.1 ms on SQLite).
_BY_KEY = (
    select(users)
    .join(api_keys, api_keys.c.user_id == users.c.id)
    .where(api_keys.c.key_hash == bindparam("key_hash"), api_keys.c.revoked_at.is_(None), users.c.revoked_at.is_(None))
)
_TOKENS = select(usage.c.prompt_tokens + usage.c.completion_tokens).where(
    usage.c.user_id == bindparam("user_id"), usage.c.day == bindparam("day")
)


class AccountsError(MDAgentError):
    """A user mistake or an unusable database, in one sentence."""


class KeyInfo(BaseModel):
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class User(BaseModel):
    id: int
    name: str
    email: str | None = None
    admin: bool = False
    created_at: datetime
    revoked_at: datetime | None = None
    quota: Quota = Quota()
    keys: list[KeyInfo] = []  # filled by `Store.users()` only

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class UsageDay(BaseModel):
    user: str
    day: str
    requests: int = 0
    refused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def default_url() -> str:
    from mdagent_hpc.settings import env

    if url := env("MDAGENT_USERS_DB"):
        return url
    return f"sqlite:///{ensure_home() / 'users.db'}"


def _utc(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t  # SQLite gives naive datetimes back


def _now() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, url: str | None = None, *, pool_size: int | None = None):
        """`pool_size`: at most this many connections at once (callers beyond it wait), else SQLAlchemy's default."""
        url = url or default_url()
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError:
            raise AccountsError(
                f"the users database URL {url!r} is not a database URL; give e.g. "
                "sqlite:////path/users.db or postgresql://user@host/dbname"
            ) from None
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what is installed
        self.url = parsed.render_as_string(hide_password=True)
        try:
            pool = {"pool_size": pool_size, "max_overflow": 0} if pool_size else {}
            self.engine = create_engine(parsed, pool_pre_ping=True, **pool)  # a dropped connection is replaced
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
            raise AccountsError(f"cannot use the users database {self.url}: {exc}") from None
        if parsed.get_backend_name() == "sqlite":
            _sqlite_setup(self.engine, parsed.database)
        self._upsert = _usage_upsert(self.engine.dialect.name)
        self._local_locks: dict[int, threading.Lock] = {}  # SQLite has no advisory locks: one process only
        try:
            metadata.create_all(self.engine)
        except sa_exc.SQLAlchemyError as exc:
            raise AccountsError(
                f"cannot open the users database {self.url} ({_reason(exc)}); check MDAGENT_USERS_DB or --db"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    # -- administration ------------------------------------------------------------------------------------------
    def add_user(
        self,
        name: str,
        quota: Quota | None = None,
        *,
        email: str | None = None,
        admin: bool = False,
        identity: Callable[[str, str | None], str] | None = None,
        reserved: frozenset[str] = frozenset(),
    ) -> tuple[User, str]:
        """A new user and their first key, which is returned here and never again.

        `identity` gives the AiiDA user a user's work is recorded under; no two users may share one (compared
        without case), and none may be one of `reserved` (the profile's own default user)."""
        if not NAME.fullmatch(name):
            raise AccountsError(
                f"user name {name!r} is not valid: use 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit"
            )
        if email is not None and not EMAIL.fullmatch(email):
            raise AccountsError(f"email {email[:80]!r} is not valid: give one address (NAME@DOMAIN, no spaces)")
        mine = (identity(name, email) if identity else email or name).lower()
        if mine in {r.lower() for r in reserved}:
            raise AccountsError(f"{mine!r} is reserved for the profile's own work; give the user another email")
        quota = quota or Quota()
        with self._db(write=True) as db:
            if db.dialect.name == "postgresql":  # two adds at once: the second waits, then sees the first
                db.exec_driver_sql(f"LOCK TABLE {users.name} IN SHARE ROW EXCLUSIVE MODE")
            if db.execute(select(users.c.id).where(users.c.name == name)).first():
                raise AccountsError(f"user {name!r} exists already; `mdagent users key {name}` gives them a new key")
            for other, their_email in db.execute(select(users.c.name, users.c.email)).all():
                if (identity(other, their_email) if identity else their_email or other).lower() == mine:
                    raise AccountsError(f"user {other!r} already has the identity {mine!r}; give another email")
            row = {"name": name, "email": email, "admin": admin, "created_at": _now(), **quota.model_dump()}
            user_id = db.execute(users.insert().values(**row)).inserted_primary_key[0]
            key = self._insert_key(db, user_id)
        return self.user(name), key

    def new_key(self, name: str) -> str:
        """Another key for an active user (their other keys stay valid until revoked)."""
        user = self._active(name)
        with self._db(write=True) as db:
            return self._insert_key(db, user.id)

    def revoke(self, name: str, prefix: str | None = None) -> int:
        """Revoke the user (all their keys), or with `prefix` that one key; returns the number of keys revoked."""
        user = self.user(name)
        now = _now()
        with self._db(write=True) as db:
            keys = update(api_keys).where(api_keys.c.user_id == user.id, api_keys.c.revoked_at.is_(None))
            if prefix is not None:
                keys = keys.where(api_keys.c.prefix == prefix)
            n = db.execute(keys.values(revoked_at=now)).rowcount
            if prefix is None:
                db.execute(
                    update(users).where(users.c.id == user.id, users.c.revoked_at.is_(None)).values(revoked_at=now)
                )
            elif n == 0:
                raise AccountsError(
                    f"user {name!r} has no active key starting {prefix!r}; `mdagent users list` shows their keys"
                )
        return n

    def set_quota(self, name: str, **changes: float | None) -> User:
        """Change some quota fields (None: no limit); the others stay."""
        user = self.user(name)
        quota = Quota.model_validate({**user.quota.model_dump(), **changes})
        with self._db(write=True) as db:
            db.execute(update(users).where(users.c.id == user.id).values(**quota.model_dump()))
        return self.user(name)

    # -- reading -------------------------------------------------------------------------------------------------
    def user(self, name: str) -> User:
        with self._db() as db:
            row = db.execute(select(users).where(users.c.name == name)).mappings().first()
        if row is None:
            raise AccountsError(f"no user {name!r}; `mdagent users list` shows who exists")
        return _user(row)

    def users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute(select(users).order_by(users.c.name)).mappings().all()
            keys = db.execute(select(api_keys).order_by(api_keys.c.id)).mappings().all()
        found = [_user(r) for r in rows]
        by_id = {u.id: u for u in found}
        for k in keys:
            by_id[k["user_id"]].keys.append(
                KeyInfo(prefix=k["prefix"], created_at=_utc(k["created_at"]), revoked_at=_utc(k["revoked_at"]))
            )
        return found

    def authenticate(self, key: str) -> User | None:
        """The active user holding this active key, or None (unknown, revoked key or revoked user)."""
        if not looks_like_key(key):
            return None
        with self._db() as db:
            row = db.execute(_BY_KEY, {"key_hash": hash_key(key)}).mappings().first()
        return _user(row) if row else None

    def usage(self, name: str | None = None, since: str | None = None) -> list[UsageDay]:
        """Usage per user and UTC day (`since`: YYYY-MM-DD, inclusive), newest day first."""
        query = (
            select(users.c.name, usage)
            .join(users, users.c.id == usage.c.user_id)
            .order_by(usage.c.day.desc(), users.c.name)
        )
        if name is not None:
            query = query.where(users.c.id == self.user(name).id)
        if since is not None:
            query = query.where(usage.c.day >= since)
        with self._db() as db:
            rows = db.execute(query).mappings().all()
        return [UsageDay(user=r["name"], **{k: r[k] for k in UsageDay.model_fields if k != "user"}) for r in rows]

    def tokens_used(self, user_id: int, day: str) -> int:
        with self._db() as db:
            return db.execute(_TOKENS, {"user_id": user_id, "day": day}).scalar() or 0

    # -- recording -----------------------------------------------------------------------------------------------
    def record(
        self,
        user_id: int,
        day: str,
        *,
        requests: int = 1,
        refused: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Add to a user's usage of `day` (one upsert, safe with concurrent writers)."""
        counts = {
            "requests": requests,
            "refused": refused,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
        with self._db(write=True) as db:
            db.execute(self._upsert, {"user_id": user_id, "day": day, **counts})

    # -- token reservations (the LLM gateway's budget check; added for issue 19) ---------------------------------
    def reserve_tokens(
        self, user_id: int, day: str, grant: Callable[[int], tuple[int, int] | None]
    ) -> tuple[int, int] | None:
        """Check and charge a user's tokens of `day` as one step: `grant(used)` says how many (prompt, completion)
        tokens to charge now, or None to charge nothing; no other reservation of that user runs in between.

        The gateway settles a reservation to what the request really used with `record` (differences may be
        negative). The first upsert makes the day's row and locks it (PostgreSQL: the row; SQLite: the database)
        until the transaction ends.
        """
        zero = {"user_id": user_id, "day": day, "requests": 0, "refused": 0, "prompt_tokens": 0, "completion_tokens": 0}
        with self._db(write=True) as db:
            db.execute(self._upsert, zero)
            used = db.execute(_TOKENS, {"user_id": user_id, "day": day}).scalar() or 0
            granted = grant(used)
            if granted is not None:
                prompt, completion = granted
                db.execute(self._upsert, {**zero, "prompt_tokens": prompt, "completion_tokens": completion})
        return granted

    # -- submissions ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def user_lock(self, user_id: int):
        """A transaction holding the user's submission lock until it ends, across server processes (a PostgreSQL
        advisory lock); quotas are counted and the run made inside it, so two submissions cannot both pass.
        What fails inside is not wrapped: it may be another database's failure."""
        local = self._local_locks.setdefault(user_id, threading.Lock())  # SQLite: one server process only
        with contextlib.ExitStack() as stack:
            if self.engine.dialect.name != "postgresql":
                stack.enter_context(local)
            try:
                db = stack.enter_context(self.engine.begin())
                if self.engine.dialect.name == "postgresql":
                    db.execute(select(func.pg_advisory_xact_lock(LOCK_SPACE, user_id)))
            except sa_exc.SQLAlchemyError as exc:
                raise self._unusable(exc) from None
            yield db

    def submitted(self, db, user_id: int, request_id: str) -> tuple[int | None, str | None] | None:
        """The (pk, uuid) a submission with this request id made; (None, None) when one began and made no run
        that it recorded (it may have been cut short after making it); None when none began."""
        query = select(submissions.c.pk, submissions.c.uuid).where(
            submissions.c.user_id == user_id, submissions.c.request_id == request_id
        )
        try:
            row = db.execute(query).first()
        except sa_exc.SQLAlchemyError as exc:
            raise self._unusable(exc) from None
        return (row[0], row[1]) if row else None

    def claim(self, user_id: int, request_id: str) -> None:
        """Record that a submission with this request id begins, committed at once (before its run exists)."""
        row = {"user_id": user_id, "request_id": request_id, "pk": None, "uuid": None, "created_at": _now()}
        with self._db(write=True) as db:
            db.execute(submissions.insert().values(**row))

    def settle(self, user_id: int, request_id: str, pk: int, uuid: str) -> None:
        """The run a claimed submission made."""
        where = (submissions.c.user_id == user_id) & (submissions.c.request_id == request_id)
        with self._db(write=True) as db:
            db.execute(submissions.update().where(where).values(pk=pk, uuid=uuid))

    # -- helpers -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self, write: bool = False):
        """A connection (a transaction when `write`); a database that fails is an AccountsError in one sentence.

        On SQLite a write transaction takes the database's write lock as it begins (BEGIN IMMEDIATE): its reads and
        writes are then one step for every other process (pysqlite would begin it only at the first write, after the
        checks had read)."""
        try:
            with self.engine.begin() if write else self.engine.connect() as db:
                if write and db.dialect.name == "sqlite":
                    db.exec_driver_sql("BEGIN IMMEDIATE")
                yield db
        except sa_exc.SQLAlchemyError as exc:
            raise self._unusable(exc) from None

    def _unusable(self, exc: sa_exc.SQLAlchemyError) -> AccountsError:
        return AccountsError(
            f"the users database {self.url} cannot be used ({_reason(exc)}); check that it is running and "
            "that MDAGENT_USERS_DB points at it"
        )

    def _active(self, name: str) -> User:
        user = self.user(name)
        if not user.active:
            raise AccountsError(f"user {name!r} is revoked; add them again under another name")
        return user

    @staticmethod
    def _insert_key(db, user_id: int) -> str:
        key = new_key()
        db.execute(
            api_keys.insert().values(user_id=user_id, key_hash=hash_key(key), prefix=key_prefix(key), created_at=_now())
        )
        return key


def _usage_upsert(dialect: str):
    """INSERT ... ON CONFLICT DO UPDATE adding to the day's counters (SQLite and PostgreSQL spell it alike)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise AccountsError(f"the users database must be SQLite or PostgreSQL, not {dialect}")
    counters = ("requests", "refused", "prompt_tokens", "completion_tokens")
    stmt = insert(usage).values({c: bindparam(c) for c in ("user_id", "day", *counters)})
    return stmt.on_conflict_do_update(
        index_elements=[usage.c.user_id, usage.c.day], set_={c: usage.c[c] + stmt.excluded[c] for c in counters}
    )


def _user(row) -> User:
    quota = Quota.model_validate({k: row[k] for k in Quota.model_fields})
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        admin=row["admin"],
        created_at=_utc(row["created_at"]),
        revoked_at=_utc(row["revoked_at"]),
        quota=quota,
    )


def _reason(exc: sa_exc.SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return (str(orig) if orig else str(exc)).strip().splitlines()[0]


def _sqlite_setup(engine: Engine, path: str | None) -> None:
    """WAL (the gateway writes while `mdagent users` reads), a busy timeout, and a file only its owner reads."""
    if path and path != ":memory:":
        file = os.path.abspath(path)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        if not os.path.exists(file):
            os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o600))

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

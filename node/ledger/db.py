"""Engine and sessions for the ledger: SQLite (WAL, fsync on commit) by default, PostgreSQL by URL.

SQLite runs with ``journal_mode=WAL`` and ``synchronous=FULL`` (a committed row survives power loss), a 30 s
busy timeout, foreign keys on, and every transaction opened with ``BEGIN IMMEDIATE`` so concurrent
associations serialise their writes instead of failing with "database is locked" on a read-to-write upgrade
(the pysqlite recipe of the SQLAlchemy documentation). PostgreSQL URLs use psycopg 3
(``postgresql+psycopg://user@host:5432/db``; a bare ``postgresql://`` is mapped to it).

Opening a ledger creates the missing tables, and adds the columns a later release added to a table an earlier
one created (:data:`ADDED_COLUMNS`: ``ALTER TABLE ... ADD COLUMN``, nullable, on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from node.errors import ConfigError, TransientError
from node.ledger.tables import Base

logger = logging.getLogger(__name__)


#: execution option of a read-only transaction (:meth:`Ledger.read`): a plain ``BEGIN`` on SQLite
READ_ONLY = "ledger_read_only"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" hook issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # a read (Ledger.read) needs no write lock: WAL readers never wait for the writer
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


#: Columns added after a table was first released: (table, column, SQL type). Each is nullable, so rows written
#: before it get NULL and the code reading it says what NULL means.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("deliveries", "path", "TEXT"),  # the result file; older rows keep it in ``detail``
    ("jobs", "result_sop_class_uid", "VARCHAR(64)"),  # the finished job's SR (NULL: none recorded)
    ("jobs", "result_series_instance_uid", "VARCHAR(64)"),
    ("jobs", "result_sop_instance_uid", "VARCHAR(64)"),
    ("jobs", "purpose", "VARCHAR(16)"),  # NULL = process the study; "failure-sr" = only its failure SR
    ("deliveries", "first_attempt_at", "FLOAT"),  # NULL: not tried yet in this series (older rows: unknown)
    ("deliveries", "next_attempt_at", "FLOAT"),  # NULL: due now, or computed from attempts (older rows)
    ("deliveries", "last_error", "TEXT"),
    ("deliveries", "commit_transaction_uid", "VARCHAR(64)"),  # Storage Commitment (NULL: none asked)
    ("deliveries", "commit_requested_at", "FLOAT"),
    ("deliveries", "committed_at", "FLOAT"),
    # a job's lease (``node.ledger.leases``): NULL = never leased (counts 0)
    ("jobs", "lease", "VARCHAR(64)"),
    ("jobs", "heartbeat_at", "FLOAT"),
    ("jobs", "running_since", "FLOAT"),
    ("jobs", "attempts", "INTEGER"),
    ("jobs", "worker_deaths", "INTEGER"),
    ("jobs", "sent_at", "FLOAT"),  # the task message handed to the broker (NULL: not confirmed, send again)
)


def _columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the :data:`ADDED_COLUMNS` an older database lacks; returns them as ``table.column``.

    Two processes opening the same old database at once may both try: PostgreSQL's ``IF NOT EXISTS`` makes the
    second a no-op, and on SQLite (which has no such clause) the error of the second is ignored once the column
    is seen to exist.
    """
    added = []
    for table, column, sql_type in ADDED_COLUMNS:
        if column in _columns(engine, table):
            continue
        if_not_exists = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {if_not_exists}{column} {sql_type}")
        except OperationalError:
            if column not in _columns(engine, table):
                raise
            continue  # another process added it meanwhile
        logger.info("ledger upgraded: column %s.%s added", table, column)
        added.append(f"{table}.{column}")
    return added


def normalise_url(url: str) -> str:
    """Map ``postgresql://`` / ``postgres://`` to the psycopg 3 driver; check the URL parses."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database URL is not valid: {exc}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"database URL: only sqlite and postgresql are supported, got {parsed.get_backend_name()}")
    return url


class Ledger:
    """A database connection pool plus a session factory; share one per process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._quick: sqlite3.Connection | None = None  # read_row's own connection (SQLite)
        self._quick_lock = threading.Lock()
        self._compiled: dict[int, tuple[Select[Any], str, tuple[str, ...]]] = {}

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Ledger:
        """Connect to ``url`` and (by default) create any missing tables."""
        url = normalise_url(url)
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False})
            _configure_sqlite(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        ledger = cls(engine)
        if create:
            ledger.create_schema()
        return ledger

    def create_schema(self) -> None:
        """Create the missing tables, and the columns a previous version's tables lack."""
        try:
            Base.metadata.create_all(self.engine)
            add_missing_columns(self.engine)
        except OperationalError as exc:
            raise TransientError(f"the ledger database cannot be reached: {exc.orig}") from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any exception."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (no write lock on SQLite: it neither waits for nor blocks a writer)."""
        with self.engine.connect() as connection:
            connection = connection.execution_options(**{READ_ONLY: True})
            with connection.begin():
                yield connection

    def read_row(self, statement: Select[Any], params: dict[str, Any]) -> tuple[Any, ...]:
        """The one row of a one-row ``SELECT``, as a tuple: on SQLite from a connection of its own in autocommit
        (each statement sees the last commit; ~4 us instead of ~85 us through a pooled connection and its
        transaction: the listener asks once per instance); elsewhere through :meth:`read`."""
        if self.engine.dialect.name != "sqlite" or self.engine.url.database in (None, "", ":memory:"):
            with self.read() as connection:
                return tuple(connection.execute(statement, params).one())
        entry = self._compiled.get(id(statement))
        if entry is None or entry[0] is not statement:
            compiled = statement.compile(dialect=self.engine.dialect)
            entry = self._compiled[id(statement)] = (statement, compiled.string, tuple(compiled.positiontup or ()))
        _, sql, order = entry
        with self._quick_lock:
            if self._quick is None:
                quick = sqlite3.connect(str(self.engine.url.database), check_same_thread=False,
                                        isolation_level=None)
                quick.execute("PRAGMA busy_timeout=30000")
                quick.execute("PRAGMA query_only=ON")
                self._quick = quick
            rows = self._quick.execute(sql, [params[name] for name in order]).fetchall()
        if len(rows) != 1:
            raise ValueError(f"expected one row, got {len(rows)}")
        return tuple(rows[0])

    def dispose(self) -> None:
        with self._quick_lock:
            if self._quick is not None:
                self._quick.close()
                self._quick = None
        self.engine.dispose()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

"""The incident store: one engine per URL, schema kept by Alembic migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session as _S  # noqa: F401  (re-exported type for callers)
from sqlmodel import Session

MIGRATIONS = Path(__file__).with_name("migrations")
_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()
_writers: dict[str, threading.BoundedSemaphore] = {}


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use psycopg 3, the driver we ship."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def get_engine(url: str) -> sa.Engine:
    url = normalize_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 30}
                )
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10)
                sa.event.listen(engine, "connect", _postgres_settings)
            _engines[url] = engine
        return engine


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    # WAL lets the runbook flows read while the intake writes; foreign keys are off by default.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _postgres_settings(dbapi_conn: object, _record: object) -> None:
    # psycopg prepares a statement after 5 runs and PostgreSQL may then keep one generic
    # plan for it. The intake's lookups were planned on a young, small table (a sequential
    # scan), and stayed so while the table grew: 22 ms per post in an alert storm instead of
    # 2.5 ms. Planning each run costs a fraction of a millisecond.
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("SET plan_cache_mode = force_custom_plan")
    cur.close()
    dbapi_conn.commit()  # type: ignore[attr-defined]


def migrate(url: str) -> None:
    """Bring the schema to the newest revision; safe to call at every start."""
    # Imported here: every flow run process imports this module, and only servers migrate.
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = get_engine(url)
    command.upgrade(cfg, "head")


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def writer_slot(url: str, concurrency: int = 2) -> Iterator[None]:
    """Let at most `concurrency` of this process's threads write at once (one on SQLite).

    SQLite has one writer anyway; threads that race for its lock wait in its busy handler,
    which sleeps in steps of up to 100 ms, or fail at once with "database is locked" when
    a read snapshot went stale. A Python lock hands over in microseconds. On PostgreSQL two
    posts in flight overlap one's round trips with the other's work; four took about 30%
    more CPU for no more throughput (threads contending for the interpreter lock; measured
    with 10,000 alerts in posts of 50 fed to the ingest from 2 and 4 threads).
    """
    url = normalize_url(url)
    limit = 1 if url.startswith("sqlite") else max(1, concurrency)
    with _lock:
        slot = _writers.get(url)
        if slot is None:
            slot = _writers[url] = threading.BoundedSemaphore(limit)
    with slot:
        yield


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()

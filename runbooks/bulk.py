"""Many rows into one table in one round trip: the intake's alert and timeline writes.

On PostgreSQL this is COPY, with the ids taken from the table's sequence first when the
caller needs them. A multi-row INSERT ... RETURNING of a 50-alert post is a 700-parameter
statement that the driver re-parses in Python on every post (too long for its statement
cache): the intake spent more time there than in everything else. Elsewhere (SQLite) it is
SQLAlchemy's multi-row INSERT, which SQLite compiles cheaply.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlmodel import Session


def insert_rows(
    session: Session, table: sa.Table, rows: list[dict[str, Any]], *, ids: bool = False
) -> list[int]:
    """Insert `rows` (dicts with the same keys) into `table`, in the session's transaction.

    Returns the new primary keys in the order of `rows` when `ids` is set, else [].
    """
    if not rows:
        return []
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        return _copy(conn, table, rows, ids)
    if not ids:
        conn.execute(sa.insert(table), rows)
        return []
    pk = table.primary_key.columns[0]
    result = conn.execute(sa.insert(table).returning(pk, sort_by_parameter_order=True), rows)
    return list(result.scalars())


def _copy(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], ids: bool) -> list[int]:
    keys = list(rows[0])
    names = keys
    raw: Any = conn.connection.driver_connection
    new_ids: list[int] = []
    if ids:
        pk = table.primary_key.columns[0].name
        with raw.cursor() as cur:
            cur.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                (table.name, pk, len(rows)),
            )
            new_ids = [r[0] for r in cur.fetchall()]
        names = [pk, *names]
    as_json = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    quote = conn.dialect.identifier_preparer.quote
    sql = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
    with raw.cursor() as cur, cur.copy(sql) as copy:
        for i, row in enumerate(rows):
            # orjson: encoding the label sets was the costliest part of a row.
            values = [orjson.dumps(row[k]).decode() if k in as_json else row[k] for k in keys]
            copy.write_row([new_ids[i], *values] if ids else values)
    return new_ids

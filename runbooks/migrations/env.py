"""Alembic environment: the engine comes from runbooks.store, the schema from models."""

from alembic import context
from sqlalchemy import text
from sqlmodel import SQLModel

from runbooks import models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata
engine = context.config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        # Replicas starting together on one database: one migrates, the others wait for it
        # and then find the schema at head. Released at commit.
        connection.execute(text("SELECT pg_advisory_xact_lock(1920298605)"))  # "runm"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()

"""Alembic environment: runs on the connection kms.store.database.upgrade hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from kms.store.tables import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        context.run_migrations()
        return
    # Standalone use (alembic revision --autogenerate with -x url=...).
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: name the database with -x url=... (or sqlalchemy.url)")
    with create_engine(url).connect() as standalone:
        context.configure(connection=standalone, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()

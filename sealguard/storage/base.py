"""Declarative base and the column types every table module shares."""

from __future__ import annotations

from sqlalchemy import BigInteger, MetaData, String
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so Alembic migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def AccountCol() -> String:  # noqa: N802 - reads like a type
    return String(21)


Ms = BigInteger  # a timestamp in milliseconds since the epoch

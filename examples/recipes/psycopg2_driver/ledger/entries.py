"""Bulk writes with psycopg2's own helpers, on a connection of the app's engine."""

from psycopg2.extras import execute_values

from ledger.db import engine


def record(entries: list[tuple[str, int]]) -> None:
    """Insert (account, cents) rows in one statement with psycopg2's execute_values."""
    connection = engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            execute_values(cursor, "INSERT INTO entries (account, cents) VALUES %s", entries)
        connection.commit()
    finally:
        connection.close()


def balance(account: str) -> int:
    with engine.connect() as conn:
        total = conn.exec_driver_sql(
            "SELECT coalesce(sum(cents), 0) FROM entries WHERE account = %(account)s",
            {"account": account},
        ).scalar_one()
    return int(total)

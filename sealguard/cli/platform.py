"""Platform commands: the embedded broker and the database schema (`up` lives in sealguard/up.py)."""

from __future__ import annotations

import signal
import threading

import typer

from sealguard.cli.app import app, settings, setup_logging

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command()
def broker() -> None:
    """Start the embedded Kafka broker (Tansu) and keep it running until Ctrl-C / SIGTERM."""
    from sealguard.broker import EmbeddedBroker

    setup_logging()
    s = settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(s, log_path=s.state_dir / "broker.log") as b:
        print(f"broker: bootstrap={b.bootstrap}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every Alembic migration to SEALGUARD_DB_URL (or the default SQLite file)."""
    from sealguard.storage import upgrade

    setup_logging()
    s = settings()
    upgrade(s.database_url)
    print(f"db: url={s.database_url.split('@')[-1]} upgraded=1")

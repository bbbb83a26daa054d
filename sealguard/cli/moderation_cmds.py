"""Moderation commands: the API, the console, reviewer accounts, account deletion, retention."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import signal
import sys
import threading

import typer

from sealguard.cli.app import app, settings, setup_logging

log = logging.getLogger("sealguard.moderation")

reviewer_app = typer.Typer(help="Reviewer accounts of the moderation console.", no_args_is_help=True)
account_app = typer.Typer(help="Messenger accounts: deletion.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention of scores, cases, reports and notices.", no_args_is_help=True)
app.add_typer(reviewer_app, name="reviewer")
app.add_typer(account_app, name="account")
app.add_typer(retention_app, name="retention")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def api(host: str = typer.Option(None, help="Address to bind (default SEALGUARD_API_HOST)."),
        port: int = typer.Option(None, help="Port (default SEALGUARD_API_PORT; 0 = a free port)."),
        claim_ttl_s: int = typer.Option(15 * 60, min=10, max=86_400,
                                        help="A claim older than this may be taken over by another reviewer.")) -> None:
    """Run the moderation API (FastAPI) until Ctrl-C / SIGTERM; prints `api: listening=URL`."""
    from moderation.decisions import KafkaEnforcementPublisher, republish_unpublished
    from moderation.server import ApiServer
    from sealguard.storage import Database

    setup_logging()
    s = settings()
    db = Database(s.database_url)
    publisher = None
    if s.kafka:
        publisher = KafkaEnforcementPublisher(s.kafka, s.enforcement_topic)
        republished = republish_unpublished(db, publisher)
        if republished:
            log.info("republished %d decisions that were written but never published", republished)
    else:
        log.warning("SEALGUARD_KAFKA is unset: decisions are written to the database only; the relay loads "
                    "them at its next start")
    server = ApiServer(s, db, publisher, host=host, port=port, claim_ttl_s=claim_ttl_s)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"api: listening={server.url}", flush=True)
    try:
        ticks = 0
        while not stop.wait(0.5) and server._thread is not None and server._thread.is_alive():
            ticks += 1
            if publisher is not None and ticks % 60 == 0:  # every 30 s: what a broker outage held back
                try:
                    if (n := republish_unpublished(db, publisher)):
                        log.info("republished %d decisions", n)
                except Exception:  # keep serving; the next round retries
                    log.exception("republishing decisions failed")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if publisher is not None:
            publisher.close(5)
        db.dispose()


@app.command()
def console(port: int = typer.Option(None, help="Port (default SEALGUARD_CONSOLE_PORT; 0 = a free port)."),
            host: str = typer.Option("127.0.0.1", help="Address to bind."),
            api_url: str = typer.Option(None, help="The moderation API (default SEALGUARD_API_URL).")) -> None:
    """Run the Streamlit review console headless; prints `console: listening=URL`."""
    from dashboard.launcher import Console, ConsoleError

    setup_logging()
    s = settings()
    url = api_url or os.environ.get("SEALGUARD_API_URL")
    if not url:
        _fail("the console needs the API's URL: --api-url or SEALGUARD_API_URL")
    c = Console(str(url), host=host, port=port or s.console_port, log_path=s.state_dir / "console.log")
    # Only forward the signal: the main thread is inside Popen.wait(), which a nested wait would deadlock.
    signal.signal(signal.SIGTERM, lambda *_: c.terminate())
    try:
        c.start()
    except ConsoleError as exc:
        _fail(str(exc))
    log.info("console: listening=%s (api %s)", c.url, url)
    print(f"console: listening={c.url}", flush=True)
    try:
        c.wait()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()


@reviewer_app.command("add")
def reviewer_add(username: str,
                 role: str = typer.Option("reviewer", help="reviewer, lead or admin."),
                 password: str = typer.Option(None, help="Default: prompt (or generate one when stdin is not a tty).")) -> None:
    """Create a reviewer account (argon2-hashed password)."""
    from moderation.auth import Role, do_add_reviewer
    from moderation.errors import ModerationError
    from sealguard.storage import Database

    setup_logging()
    try:
        r = Role(role)
    except ValueError:
        _fail(f"role must be one of {', '.join(x.value for x in Role)}, not {role!r}")
        return
    generated = False
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {username}: ")
        else:
            password, generated = secrets.token_urlsafe(12), True
    db = Database(settings().database_url)
    try:
        row = do_add_reviewer(db, username, password, r, actor="system:cli")
    except ModerationError as exc:
        _fail(exc.message)
        return
    finally:
        db.dispose()
    if generated:
        typer.echo(f"password: {password}", err=True)
    print(f"reviewer: id={row.id} username={row.username} role={row.role}")


@account_app.command("delete")
def account_delete(account: str, actor: str = typer.Option("system:cli", help="Who asked (audit log).")) -> None:
    """Delete an account's data, keeping its tombstone and the audit log."""
    from moderation.errors import ModerationError
    from moderation.retention import do_delete_account
    from sealguard.storage import Database

    setup_logging()
    db = Database(settings().database_url)
    try:
        removed = do_delete_account(db, account, actor=actor)
    except ModerationError as exc:
        _fail(exc.message)
        return
    finally:
        db.dispose()
    print(f"account: deleted={account} rows={sum(removed.values())}")


@retention_app.command("apply")
def retention_apply() -> None:
    """Apply the retention policy (SEALGUARD_RETENTION_*_DAYS) once."""
    from moderation.retention import RetentionPolicy, do_apply_retention
    from sealguard.storage import Database

    setup_logging()
    db = Database(settings().database_url)
    try:
        removed = do_apply_retention(db, RetentionPolicy(), actor="system:cli")
    finally:
        db.dispose()
    print("retention: " + " ".join(f"{k}={v}" for k, v in removed.items()))

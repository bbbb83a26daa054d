"""`sealguard up`: the whole platform on one machine — broker, relay, detection, API, console and a
live simulated population — and `up --headless`, which runs traffic for a while and reports figures.

This is wiring only: every part runs as its own `sealguard` child process (the simulated population
runs here, as real E2E clients of the relay), so `up` is the same as an operator starting each one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from pathlib import Path

import typer

from sealguard.cli.app import app, print_figures, settings, setup_logging
from sealguard.cli.supervisor import Supervisor
from sealguard.settings import REPO_ROOT, Settings

log = logging.getLogger("sealguard.up")

DEFAULT_SCENARIO = REPO_ROOT / "data" / "scenarios" / "spine.yaml"
# The operating point of the model `up` trains on one minute of warm-up. Early on, its scores cannot
# tell a teacher's or community admin's first messages to strangers from a spammer's (both reached
# 1.0), so a model ban here also needs two objections from recipients (blocks or verified reports:
# victims block spam at ~15%, parents a teacher at ~1%); until then the account goes to review.
UP_BAN_THRESHOLD = 0.98
UP_MIN_OBJECTIONS = 2
# Objections arrive minutes after the spam, while the warm-up model's score of a spammer may sink as
# it keeps sending: a score that reached the threshold stays decisive for an hour (Policy.recent_score_s).
UP_RECENT_SCORE_S = 3600


@app.command()
def up(
    headless: bool = typer.Option(False, help="Run traffic for --duration seconds, drain, print figures, stop."),
    duration: float = typer.Option(90.0, min=1, help="Seconds of simulated traffic (headless)."),
    users: int = typer.Option(200, min=2, help="Simulated accounts."),
    spam_share: float = typer.Option(0.05, min=0.0, max=1.0, help="Share of spammers among them."),
    scenario: Path = typer.Option(DEFAULT_SCENARIO, exists=True, dir_okay=False, help="Population scenario."),
    drain: float = typer.Option(30.0, min=0, help="Most seconds to let the pipeline drain after traffic (headless)."),
) -> None:
    """Start everything; Ctrl-C or SIGTERM stops all of it."""
    setup_logging()
    s = settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    from sealguard.broker import EmbeddedBroker
    from sealguard.storage import Database

    broker: EmbeddedBroker | None = None
    sup = Supervisor(s.state_dir / "logs")
    try:
        started = time.monotonic()
        if s.kafka is None:
            broker = EmbeddedBroker(s, log_path=s.state_dir / "logs" / "broker.log").start()
            bootstrap = broker.bootstrap
        else:
            from sealguard.stream import ensure_topics, wait_for_broker

            bootstrap = s.kafka
            wait_for_broker(bootstrap)
            ensure_topics(bootstrap, s.topics, s.partitions)
        s = s.model_copy(update={"kafka": bootstrap})
        sup.env.update({"SEALGUARD_KAFKA": bootstrap, "SEALGUARD_STATE_DIR": str(s.state_dir)})
        if s.db_url:
            sup.env["SEALGUARD_DB_URL"] = s.db_url
        db = Database(s.database_url)  # migrations run here, once, before any service starts
        db.dispose()

        # Independent services start side by side; each is ready when it prints its line.
        pending = [sup.spawn("relay", "relay"), sup.spawn("api", "api")]
        relay, api = (service.wait_ready(90) for service in pending)
        host, port = relay["listening"].rsplit(":", 1)

        from models.artifacts import champion_version

        version = champion_version(s.state_dir)
        if version is None:
            from sealguard.cli.up_model import train_from_live_warmup

            version = train_from_live_warmup(s, host, int(port))
        log.info("serving model %s (auto-ban at score >= %.2f with %d objections)", version, UP_BAN_THRESHOLD,
                 UP_MIN_OBJECTIONS)
        sup.start("detect", "detect", "--ban-threshold", str(UP_BAN_THRESHOLD),
                  "--min-objections", str(UP_MIN_OBJECTIONS), "--recent-score-s", str(UP_RECENT_SCORE_S),
                  timeout=90)
        urls = {"api": api.get("listening", "nan"), "relay": relay["listening"], "broker": bootstrap}
        if not headless:
            console = sup.start("console", "console", env={"SEALGUARD_API_URL": urls["api"]})
            urls["console"] = console.get("listening", "nan")
            from moderation.bootstrap import ensure_default_reviewers

            db = Database(s.database_url, migrate=False)
            for username, password, role in ensure_default_reviewers(db, s.state_dir):
                log.info("console login: %s / %s (%s)", username, password, role)
            db.dispose()
        log.info("platform up in %.1fs", time.monotonic() - started)

        if headless:
            result = _run_population(s, scenario, host, int(port), duration, users, spam_share, stop, drain)
            from sealguard.cli.up_report import headless_figures

            print_figures("up", headless_figures(s, result))
        else:
            print(f"up: console={urls['console']} api={urls['api']} relay={urls['relay']} broker={bootstrap}",
                  flush=True)
            population = _run_population(s, scenario, host, int(port), None, users, spam_share, stop, 0.0)
            stop.wait()
            population.join(30)  # type: ignore[attr-defined]  # its books and figures, before services stop
    finally:
        sup.stop_all()
        if broker is not None:
            broker.stop()


def _run_population(s: Settings, scenario: Path, host: str, port: int, duration: float | None, users: int,
                    spam_share: float, stop: threading.Event, drain: float) -> object:
    """Run the live population until `duration` passes (or forever, until stop), then drain."""
    from simulator.live import run_live
    from simulator.scenario import load_scenario

    sc = load_scenario(scenario)
    if duration is None:
        def population() -> None:
            result = asyncio.run(run_live(sc, host, port, None, users=users, spam_share=spam_share, stop_event=stop))
            from sealguard.cli.up_report import headless_figures

            log.info("population: %s", " ".join(f"{k}={v}" for k, v in headless_figures(s, result).items()))

        thread = threading.Thread(target=population, name="population")
        thread.start()
        return thread
    return asyncio.run(run_live(sc, host, port, duration, users=users, spam_share=spam_share, stop_event=stop,
                                drain_s=drain))

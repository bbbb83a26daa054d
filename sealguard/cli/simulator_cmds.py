"""`sealguard simulate`: a scenario offline to Parquet, or live through the relay with real clients."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from sealguard.cli.app import app, print_figures, setup_logging


@app.command()
def simulate(
    scenario: Path = typer.Option(..., "--scenario", help="Scenario YAML (schema: docs/scenarios.md)."),
    out: Path | None = typer.Option(None, "--out", help="Write signals.parquet and labels.parquet here."),
    seed: int | None = typer.Option(None, "--seed", help="Override the scenario's seed."),
    live: bool = typer.Option(False, "--live", help="Drive real SDK clients through the relay instead."),
    relay: str | None = typer.Option(None, "--relay", help="HOST:PORT of the relay (default: settings)."),
    duration: float = typer.Option(60.0, "--duration", help="Live mode: seconds to run."),
    users: int | None = typer.Option(None, "--users", help="Live mode: number of clients (default: scenario)."),
) -> None:
    """Simulate a population; ends stdout with `simulate: accounts=.. signals=.. seconds=..`."""
    setup_logging()
    from simulator.scenario import ScenarioError, load_scenario

    try:
        spec = load_scenario(scenario)
    except ScenarioError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if live:
        _live(spec, relay, duration, users)
        return
    if out is None:
        raise typer.BadParameter("give --out DIR (offline) or --live", param_hint="--out")
    from simulator.offline import simulate as run
    from simulator.offline import write_parquet

    started = time.perf_counter()
    result = run(spec, seed=seed)
    write_parquet(result, out)
    seconds = time.perf_counter() - started
    print_figures("simulate", {"accounts": result.accounts, "signals": len(result.events), "seconds": seconds,
                               "signals_per_min": len(result.events) / seconds * 60 if seconds else None,
                               "spammers": int(result.truth["label"].sum())})


def _live(spec: object, relay: str | None, duration: float, users: int | None) -> None:
    import uvloop

    from sealguard.cli.app import settings as load_settings
    from simulator.live import LiveError, run_live

    s = load_settings()
    host, port = s.relay_host, s.relay_port
    if relay:
        host, _, p = relay.rpartition(":")
        try:
            port = int(p)
        except ValueError:
            raise typer.BadParameter(f"{relay!r} is not HOST:PORT", param_hint="--relay") from None
    started = time.perf_counter()
    try:
        result = uvloop.run(run_live(spec, host or "127.0.0.1", port, duration, users=users))  # type: ignore[arg-type]
    except LiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    figures = result.figures()
    print_figures("simulate", {"accounts": figures.pop("accounts"), "signals": result.sent,
                               "seconds": time.perf_counter() - started, **figures})

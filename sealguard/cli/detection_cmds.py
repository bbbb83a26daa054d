"""Detection commands: `sealguard detect` (the stream worker) and `sealguard evaluate` (a scenario
played through the same features, rules, model and policy)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import typer

from sealguard.cli.app import app, print_figures, settings, setup_logging


@app.command()
def detect(
    group: str = typer.Option("sg-detect", help="Consumer group (workers in one group split partitions)."),
    rules: Path = typer.Option(None, help="Rules YAML (default: detection/rules/default.yaml); hot-reloaded."),
    model: Path = typer.Option(None, help="Serve this model directory (default: follow champion/challenger)."),
    metrics_port: int = typer.Option(0, help="Port of /metrics (0: a free port)."),
    ban_threshold: float = typer.Option(None, min=0.5, max=1.0,
                                        help="Score at or above which the model may auto-ban (with minimum "
                                             "evidence); below it, a review case. Default: the policy's."),
    min_objections: int = typer.Option(0, min=0, help="A model ban also needs this many blocks or verified "
                                                      "reports from recipients (0: off)."),
    recent_score_s: float = typer.Option(None, min=0.0, help="A ban score that reached the ban threshold stays "
                                                             "decisive this many seconds (default: off)."),
    max_poll_interval_ms: int = typer.Option(15_000, min=1000, help="Kafka max.poll.interval.ms; on Tansu a group "
                                                                    "join takes this long (tests shorten it)."),
    checkpoint_interval: float = typer.Option(10.0, min=0.05, help="Seconds between checkpoints of state + offsets."),
) -> None:
    """Run the detection worker until Ctrl-C / SIGTERM."""
    from detection.policy import Policy
    from detection.service import run_worker
    from detection.worker import WorkerConfig

    setup_logging()
    s = settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    policy = Policy(min_objections=min_objections, recent_score_s=recent_score_s)
    if ban_threshold is not None:
        policy.ban_threshold = ban_threshold
    cfg = WorkerConfig(group=group, rules_path=rules, model_dir=model, metrics_port=metrics_port, policy=policy,
                       max_poll_interval_ms=max_poll_interval_ms, checkpoint_interval_s=checkpoint_interval)

    def ready(worker: object) -> None:
        print(f"detect: group={group} metrics={getattr(worker, 'metrics_url', None) or 'nan'}", flush=True)

    run_worker(s, stop, cfg, on_ready=ready)


@app.command()
def evaluate(
    scenario: Path = typer.Option(..., exists=True, dir_okay=False, help="Scenario YAML."),
    model: str = typer.Option(None, help="Model directory, version or alias (default: the champion)."),
    seed: int = typer.Option(None, help="Override the scenario's seed."),
    rules: Path = typer.Option(None, help="Rules YAML (default: detection/rules/default.yaml)."),
) -> None:
    """Play a scenario through features, rules, model and policy; print recall and false bans."""
    from detection.evaluate import evaluate_scenario
    from detection.model import resolve_model
    from detection.rules import RuleBook

    setup_logging()
    s = settings()
    model_dir = resolve_model(model, s.state_dir)
    detail: dict[str, object] = {}
    figs = evaluate_scenario(scenario, model_dir, seed=seed, rules=RuleBook(rules) if rules else None,
                             detail=detail)
    out = sys.stdout
    out.write(f"model: {model_dir}\n")
    for name, value in sorted(detail.get("recall_per_strategy", {}).items()):  # type: ignore[union-attr]
        out.write(f"recall[{name}] = {value:.3f}\n")
    for name, value in detail.get("false_bans_per_case", {}).items():  # type: ignore[union-attr]
        out.write(f"false_bans[{name}] = {value}\n")
    print_figures("evaluate", figs)

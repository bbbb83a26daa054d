"""Model lifecycle commands: `train`, `dataset build`, `models list|promote|rollback|report`, `replay`.

Each command imports `models` lazily (LightGBM, scikit-learn and MLflow take seconds to import),
turns any `models.errors.ModelsError` into a clear message on stderr and exit code 2, and ends
stdout with its figures line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from sealguard.cli.app import app, print_figures, settings, setup_logging

log = logging.getLogger("sealguard.models")

models_app = typer.Typer(help="The model registry: list versions, promote, roll back, report.", no_args_is_help=True)
dataset_app = typer.Typer(help="Build training datasets from the recorded stream or simulator Parquet.",
                          no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(dataset_app, name="dataset")


@contextmanager
def _refusals() -> Iterator[None]:
    """Bad input and refused promotions end the command with the reason and exit 2."""
    from models.errors import ModelsError

    try:
        yield
    except ModelsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(2) from exc


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields `advance(n=1, description=None)`."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None, total: int | None = None) -> None:
            kwargs: dict[str, Any] = {}
            if description is not None:
                kwargs["description"] = description
            if total is not None:
                kwargs["total"] = total
            bar.update(task, advance=n, **kwargs)

        yield advance


@app.command()
def train(
    table: Path | None = typer.Option(None, help="A labelled CSV table (bring your own)."),
    label: str | None = typer.Option(None, help="The label column of --table."),
    id_column: str | None = typer.Option(None, "--id", help="An id column of --table (not a feature)."),
    dataset: Path | None = typer.Option(None, help="A dataset directory (simulator Parquet or `dataset build`)."),
    folds: int = typer.Option(5, min=2, max=20, help="Cross-validation folds for --table."),
    seed: int = typer.Option(0, help="Random seed (splits, bagging)."),
    threads: int = typer.Option(2, min=1, max=64, help="LightGBM / scikit-learn threads."),
) -> None:
    """Train LightGBM (small search, early stopping, isotonic calibration) next to a baseline."""
    setup_logging()
    if (table is None) == (dataset is None):
        sys.stderr.write("error: give exactly one of --table FILE.csv or --dataset DIR\n")
        raise typer.Exit(2)
    with _refusals():
        if table is not None:
            _train_table(table, label, id_column, folds=folds, seed=seed, threads=threads)
        else:
            assert dataset is not None
            _train_dataset(dataset, seed=seed, threads=threads)


def _train_table(path: Path, label: str | None, id_column: str | None, *, folds: int, seed: int,
                 threads: int) -> None:
    import time

    from models.errors import TableError
    from models.tabular import cross_validate, load_table, prepare

    if not label:
        raise TableError("--table needs --label COLUMN (the column holding the 0/1 label)")
    started = time.perf_counter()
    frame = load_table(path)
    prepared = prepare(frame, label, id_column)
    for note in prepared.notes:
        sys.stderr.write(f"note: {note}\n")
    log.info("%s: %d rows, %d features, positive class %s", path, len(prepared.y), prepared.X.shape[1],
             prepared.positive_label)
    with _progress("cross-validating", folds) as advance:
        result = cross_validate(prepared, folds=folds, seed=seed, num_threads=threads,
                                on_fold=lambda i, n: advance())
    figures = result.figures()
    figures["seconds"] = round(time.perf_counter() - started, 2)
    print_figures("train", figures)


class _Bar:
    """`models.training.Progress` on a rich progress bar: one task per stage."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True))
        self.task: Any = None

    def stage(self, description: str, total: int | None) -> None:
        if self.task is not None and self.progress.tasks[-1].total is not None:
            self.progress.update(self.task, completed=self.progress.tasks[-1].total)
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        self.progress.update(self.task, advance=n)


def _train_dataset(path: Path, *, seed: int, threads: int) -> None:
    from models.training import train_dataset

    bar = _Bar()
    with bar.progress:
        result = train_dataset(settings(), path, seed=seed, threads=threads, progress=bar)
    log.info("%s registered as %s; served from %s", result.version, result.role, result.artifact)
    print_figures("train", result.figures())


@models_app.command("list")
def models_list() -> None:
    """Registered versions with their aliases and training figures."""
    setup_logging(logging.WARNING)
    with _refusals():
        from models.registry import Registry

        registry = Registry(settings())
        versions = registry.versions()
        champion, challenger = registry.alias("champion"), registry.alias("challenger")
        for info in versions:
            m = info.metrics
            sys.stdout.write(f"{info.version:<10} {','.join(info.aliases) or '-':<20} "
                             f"pr_auc={_fmt(m.get('pr_auc'))} auc={_fmt(m.get('auc'))} "
                             f"baseline_pr_auc={_fmt(m.get('baseline_pr_auc'))} signals={m.get('signals', 'nan')} "
                             f"run={info.run_id or '-'}\n")
    print_figures("models", {"versions": len(versions), "champion": champion, "challenger": challenger})


def _fmt(value: Any) -> str:
    from sealguard.cli.app import figure

    return figure(float(value)) if isinstance(value, (int, float)) else "nan"


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="The version to promote, e.g. lgbm-3."),
    force: bool = typer.Option(False, "--force", help="Promote even if it is worse on the held-out scenarios."),
    challenger: bool = typer.Option(False, "--challenger", help="Make it the challenger (shadow) instead."),
    heldout: Path | None = typer.Option(None, help="Held-out scenario directory (default data/scenarios/heldout)."),
) -> None:
    """Make V the champion — refused (exit 2) if its false-ban rate or recall is worse than the champion's."""
    setup_logging()
    with _refusals():
        if challenger:
            from models.registry import Registry

            registry = Registry(settings())
            registry.version(version)
            registry.set_challenger(version)
            print_figures("promote", {"version": version, "alias": "challenger"})
            return
        from models.promotion import HELDOUT_DIR, promote

        result = promote(settings(), version, force=force, heldout=heldout or HELDOUT_DIR,
                         on_scenario=lambda name: log.info("evaluated held-out %s", name))
        for reason in result.reasons:
            sys.stderr.write(f"warning: forced over: {reason}\n")
    print_figures("promote", result.figures())


@models_app.command("rollback")
def models_rollback() -> None:
    """Return the champion to the previous one (MLflow alias and the served pointer)."""
    setup_logging()
    with _refusals():
        from models.registry import Registry

        old, new = Registry(settings()).rollback()
    print_figures("rollback", {"from": old, "to": new})


@dataset_app.command("build")
def dataset_build(
    out: Path = typer.Option(..., help="The dataset directory to write."),
    parquet: Path | None = typer.Option(None, help="Signals from a simulator Parquet directory (or file)."),
    stream: bool = typer.Option(False, "--stream", help="Signals from the recorded signals topic, from the start."),
    truth: Path | None = typer.Option(None, help="Simulator truth (labels.parquet); default: the one beside --parquet."),
    db: bool = typer.Option(True, "--db/--no-db", help="Add reviewer and appeal labels from the database."),
    idle: float = typer.Option(5.0, help="--stream: stop after this many seconds without a record."),
) -> None:
    """Write signals.parquet + labels.parquet + manifest.json (schema: docs/datasets.md)."""
    setup_logging()
    with _refusals():
        from models.datasets import build_dataset
        from models.errors import DatasetError

        s = settings()
        source: tuple[str, str] | None = None
        if stream:
            if not s.kafka:
                raise DatasetError("--stream needs SEALGUARD_KAFKA (the broker `sealguard up` or `broker` printed)")
            source = (s.kafka, s.signals_topic)
        database = None
        if db:
            from sealguard.storage import Database

            database = Database(s.database_url)
        try:
            with _progress("records" if stream else "signals", None) as advance:
                result = build_dataset(out, parquet=parquet, stream=source, truth=truth, db=database, idle_s=idle,
                                       on_records=lambda n: advance(n))
        finally:
            if database is not None:
                database.dispose()
    log.info("dataset written to %s", result.out)
    print_figures("dataset", result.figures())


@app.command()
def replay(
    model: str = typer.Option(..., help="The version to replay, e.g. lgbm-3."),
    dataset: Path = typer.Option(..., help="A dataset directory (signals.parquet + labels.parquet)."),
    against: str | None = typer.Option(None, help="Compare with this version instead of the champion."),
) -> None:
    """What V would have done with the production policy code, against the champion."""
    setup_logging()
    with _refusals():
        from models.replay import replay as run_replay

        result = run_replay(settings(), model, dataset, against=against)
        log.info("%s: precision %.4f recall %.4f; %s: precision %.4f recall %.4f", result.version, result.precision,
                 result.recall, result.champion, result.champion_precision, result.champion_recall)
    print_figures("replay", result.figures())


@models_app.command("report")
def models_report(
    version: str = typer.Argument(..., help="The version to report on, e.g. lgbm-3."),
    out: Path = typer.Option(..., help="The HTML file to write."),
    dataset: Path | None = typer.Option(None, help="Evaluate scores on this dataset (default: a held-out scenario)."),
    heldout: Path | None = typer.Option(None, help="Held-out scenario directory (default data/scenarios/heldout)."),
) -> None:
    """HTML: PR/ROC, calibration, thresholds, recall per strategy, false bans per case, importance, SHAP."""
    setup_logging()
    with _refusals():
        from models.report import build_report

        figures = build_report(settings(), version, out, dataset=dataset, heldout=heldout)
    log.info("report written to %s", out)
    print_figures("report", figures)


@dataset_app.command("export")
def dataset_export(
    dataset: Path = typer.Option(..., help="A dataset directory (signals.parquet + labels.parquet)."),
    out: Path = typer.Option(..., help="The CSV file to write (one row per labelled account)."),
) -> None:
    """An account-feature CSV (highest value of each feature, and the label) for `train --table`."""
    setup_logging()
    with _refusals():
        from models.datasets import account_table

        table = account_table(dataset)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    print_figures("export", {"accounts": len(table), "positives": int(table.label.sum()),
                             "features": table.shape[1] - 2})

"""The Typer application and what every command shares: settings, logging, the figures line."""

from __future__ import annotations

import logging
import math
import sys

import typer

from sealguard.settings import Settings

app = typer.Typer(
    name="sealguard",
    help="Abuse detection and moderation over an end-to-end-encrypted relay, from metadata only.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def setup_logging(level: int = logging.INFO) -> None:
    """Logs go to stderr; stdout is kept for each command's final `NAME: key=value` line."""
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    for chatty in ("alembic", "mlflow", "httpx", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def settings() -> Settings:
    s = Settings()
    s.ensure_state_dir()
    return s


def figure(value: object) -> str:
    """Format one figure: booleans as 1/0, undefined as nan, floats compactly."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return "nan"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"
    return str(value)


def print_figures(name: str, figures: dict[str, object]) -> str:
    """The last stdout line of a command that reports figures: `NAME: key=value ...`."""
    line = f"{name}: " + " ".join(f"{k}={figure(v)}" for k, v in figures.items())
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return line

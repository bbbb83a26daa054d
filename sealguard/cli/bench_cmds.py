"""`sealguard bench NAME [ARGS...]`: each benchmark is `bench/NAME.py` with `main(argv) -> None`
that ends stdout with `bench NAME: key=value ...` (or its own NAME line, as its issue specifies)."""

from __future__ import annotations

import importlib
import pkgutil

import typer

from sealguard.cli.app import app, setup_logging


def _available() -> list[str]:
    import bench

    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: str = typer.Argument(..., help="relay, detect, faults, fuzz, soak, cluster")) -> None:
    """Run a benchmark; it prints its figures as `key=value` on its last stdout line."""
    setup_logging()
    if name not in _available():
        raise typer.BadParameter(f"no benchmark {name!r}; available: {', '.join(_available()) or 'none'}")
    module = importlib.import_module(f"bench.{name}")
    module.main(list(ctx.args))

"""`sealguard` — the front door. The only kernel module that imports the other packages,
and it does so lazily inside each command so `sealguard --help` stays fast.

One module per area registers its commands on `app`:
platform (broker, db, up), relay_cmds (relay, chat), simulator_cmds (simulate), detection_cmds (detect, evaluate),
model_cmds (dataset, train, models, replay), moderation_cmds (api, console, reviewer), bench_cmds (bench).
"""

from __future__ import annotations

import importlib

from sealguard.cli.app import app

for _module in ("platform", "up", "relay_cmds", "simulator_cmds", "detection_cmds", "model_cmds", "moderation_cmds",
                "bench_cmds"):
    try:
        importlib.import_module(f"sealguard.cli.{_module}")
    except ModuleNotFoundError as exc:  # an area not built yet
        if exc.name != f"sealguard.cli.{_module}":
            raise


def main() -> None:
    app()


__all__ = ["app", "main"]

"""Guarded promotion: a version becomes champion only if it is no worse on the held-out scenarios.

"No worse" is two numbers, both pooled over every held-out scenario (data/scenarios/heldout/,
which nothing ever trains or tunes on) and both computed by `detection.evaluate` — the production
feature, rule, model and policy code, so the gate judges what the worker would really do:

* false-ban rate = legitimate accounts banned / legitimate accounts — must not rise;
* recall = spammers banned / spammers — must not fall.

Either failing refuses the promotion with the figures side by side (exit 2), unless `--force`,
which is recorded in the MLflow version's tags. Each held-out scenario is simulated once per call
and every model is replayed over the same events; a version's figures are cached next to its
artifact (keyed by the scenario file's hash and seed), so the champion is not re-evaluated for
every candidate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.artifacts import artifact_dir
from models.errors import PromotionRefused, RegistryError

log = logging.getLogger(__name__)

HELDOUT_DIR = Path(__file__).resolve().parent.parent / "data" / "scenarios" / "heldout"
CACHE_FILE = "heldout.json"


@dataclass
class HeldoutFigures:
    """One model's pooled figures over the held-out scenarios, and each scenario's own."""

    version: str
    spammers: int = 0
    spammers_banned: int = 0
    legit: int = 0
    false_bans: int = 0
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return self.spammers_banned / self.spammers if self.spammers else float("nan")

    @property
    def false_ban_rate(self) -> float:
        return self.false_bans / self.legit if self.legit else float("nan")

    def add(self, name: str, figs: dict[str, Any], detail: dict[str, Any]) -> None:
        spam = int(figs["spammers"])
        self.spammers += spam
        self.spammers_banned += int(round(float(figs["recall"]) * spam))
        self.legit += int(figs["normal"])
        self.false_bans += int(figs["false_bans"])
        self.scenarios[name] = {**figs, "recall_per_strategy": detail.get("recall_per_strategy", {}),
                                "false_bans_per_case": detail.get("false_bans_per_case", {})}


def scenario_files(heldout: Path) -> list[Path]:
    files = sorted(Path(heldout).glob("*.yaml")) + sorted(Path(heldout).glob("*.yml"))
    if not files:
        raise RegistryError(f"no held-out scenarios (*.yaml) in {heldout}")
    return files


def _key(path: Path) -> str:
    return f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def _cached(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(model_dir: Path, cache: dict[str, Any]) -> None:
    tmp = model_dir / f".{CACHE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, model_dir / CACHE_FILE)


def evaluate_heldout(state_dir: Path, versions: list[str], heldout: Path = HELDOUT_DIR,
                     on_scenario: Callable[[str], None] | None = None) -> dict[str, HeldoutFigures]:
    """Held-out figures of each version (simulating each scenario at most once)."""
    from detection.evaluate import evaluate_events
    from simulator.offline import simulate
    from simulator.scenario import load_scenario

    dirs = {v: artifact_dir(state_dir, v) for v in versions}
    caches = {v: _cached(d) for v, d in dirs.items()}
    out = {v: HeldoutFigures(v) for v in versions}
    for path in scenario_files(heldout):
        key = _key(path)
        missing = [v for v in versions if key not in caches[v]]
        if missing:
            log.info("simulating held-out scenario %s for %s", path.name, ", ".join(missing))
            sim = simulate(load_scenario(path))
            for v in missing:
                figs, detail = evaluate_events(sim.events, sim.truth, dirs[v])
                caches[v][key] = {"figures": figs, "detail": detail}
                _store(dirs[v], caches[v])
        for v in versions:
            entry = caches[v][key]
            out[v].add(path.stem, entry["figures"], entry["detail"])
        if on_scenario is not None:
            on_scenario(path.name)
    return out


def refusal_reasons(candidate: HeldoutFigures, champion: HeldoutFigures) -> list[str]:
    """Why `candidate` is worse than `champion` (empty: it may be promoted)."""
    reasons = []
    if candidate.false_ban_rate > champion.false_ban_rate:
        reasons.append(f"false-ban rate {candidate.false_ban_rate:.5f} ({candidate.false_bans}/{candidate.legit}) "
                       f"is worse than champion {champion.version}'s {champion.false_ban_rate:.5f} "
                       f"({champion.false_bans}/{champion.legit})")
    if candidate.recall < champion.recall:
        reasons.append(f"recall {candidate.recall:.4f} ({candidate.spammers_banned}/{candidate.spammers}) is worse "
                       f"than champion {champion.version}'s {champion.recall:.4f} "
                       f"({champion.spammers_banned}/{champion.spammers})")
    return reasons


@dataclass
class PromotionResult:
    version: str
    previous: str | None
    forced: bool
    candidate: HeldoutFigures | None
    champion: HeldoutFigures | None
    reasons: list[str]

    def figures(self) -> dict[str, object]:
        c, p = self.candidate, self.champion
        return {"version": self.version, "previous": self.previous or "none", "forced": self.forced,
                "recall": c.recall if c else None, "false_ban_rate": c.false_ban_rate if c else None,
                "champion_recall": p.recall if p else None,
                "champion_false_ban_rate": p.false_ban_rate if p else None}


def promote(settings: Any, version: str, *, force: bool = False, heldout: Path = HELDOUT_DIR,
            on_scenario: Callable[[str], None] | None = None) -> PromotionResult:
    """Make `version` the champion if it is no worse than the current one (or `force`)."""
    from models.registry import Registry

    registry = Registry(settings)
    registry.version(version)  # RegistryError if it was never registered
    artifact_dir(settings.state_dir, version)  # ArtifactError if it is not served here
    current = registry.alias("champion")
    if current == version:
        raise RegistryError(f"{version} is already the champion")
    candidate = champion = None
    reasons: list[str] = []
    if current is not None:
        figures = evaluate_heldout(settings.state_dir, [version, current], heldout, on_scenario)
        candidate, champion = figures[version], figures[current]
        reasons = refusal_reasons(candidate, champion)
        if reasons and not force:
            raise PromotionRefused(f"refusing to promote {version} over {current}: " + "; ".join(reasons)
                                   + " (use --force to promote anyway)")
    registry.set_champion(version)
    if force and reasons:
        registry.client.set_model_version_tag("sealguard-spam", str(registry.version(version).number),
                                              "forced_over", f"{current}: " + "; ".join(reasons))
    return PromotionResult(version, current, bool(force and reasons), candidate, champion, reasons)

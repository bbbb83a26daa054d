"""MLflow as the registry of record: runs (params, metrics, artifacts), model versions, aliases.

Served versions are named `lgbm-N` where N is the MLflow model-version number of the registered
model `sealguard-spam`, so the name in a score row, a ban's evidence, the console and `mlflow ui`
is the same. Aliases `champion` and `challenger` live in MLflow; the pointer files detection
hot-reloads (`models.artifacts`) are written right after, from the same call, so the two never
disagree for longer than one rename. The order of past champions (what `rollback` returns to) is
kept as a tag on the registered model, so it lives in the registry too.

A `MlflowClient` bound to the configured URI is used instead of the `mlflow.*` fluent API: no
process-global tracking URI or active run, so two registries (tests, tools) never cross.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.artifacts import check_version, models_root, read_meta, version_key, write_pointer
from models.errors import RegistryError
from sealguard.settings import Settings

log = logging.getLogger(__name__)

MODEL_NAME = "sealguard-spam"
EXPERIMENT = "sealguard"
HISTORY_TAG = "champion_history"
HISTORY_KEEP = 50
PREFIX = "lgbm-"


@dataclass
class VersionInfo:
    version: str
    number: int
    aliases: list[str]
    created_ms: int
    run_id: str | None
    source: str
    metrics: dict[str, Any]


def version_name(number: int) -> str:
    return f"{PREFIX}{number}"


def version_number(version: str) -> int:
    check_version(version)
    if not version.startswith(PREFIX) or not version[len(PREFIX):].isdigit():
        raise RegistryError(f"{version!r} is not a registered version name (they look like {PREFIX}3)")
    return int(version[len(PREFIX):])


class Registry:
    """The MLflow tracking store and model registry at `settings.mlflow_tracking_uri`."""

    def __init__(self, settings: Settings) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mlflow's import-time deprecation/future notices
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

        self.settings = settings
        self.uri = settings.mlflow_tracking_uri
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._missing = MlflowException

    # -- runs --------------------------------------------------------------------------------
    def experiment_id(self, name: str = EXPERIMENT) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        # Artifacts next to the store, never ./mlruns in whatever directory we were started from.
        location = (Path(self.settings.state_dir).resolve() / "mlflow-artifacts").as_uri()
        return str(self.client.create_experiment(name, artifact_location=location))

    def start_run(self, run_name: str, params: dict[str, Any], experiment: str = EXPERIMENT) -> str:
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name)
        self.log_params(run.info.run_id, params)
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def log_artifacts(self, run_id: str, local_dir: Path, path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), path)

    def finish_run(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    # -- versions ----------------------------------------------------------------------------
    def _ensure_model(self) -> None:
        try:
            self.client.get_registered_model(MODEL_NAME)
        except self._missing:
            self.client.create_registered_model(
                MODEL_NAME, description="Account spam/abuse classifier over metadata-only signals (LightGBM).")

    def next_number(self) -> int:
        self._ensure_model()
        versions = self.client.search_model_versions(f"name='{MODEL_NAME}'")
        return max((int(v.version) for v in versions), default=0) + 1

    def register(self, artifact: Path, run_id: str | None) -> str:
        """Register the exported directory `artifact` (named after its version) as a model version."""
        meta = read_meta(artifact)
        mv = self.client.create_model_version(MODEL_NAME, source=str(Path(artifact).resolve()), run_id=run_id,
                                              tags={"version": meta["version"]})
        name = version_name(int(mv.version))
        if name != meta["version"]:
            raise RegistryError(f"registry numbered the model {name} but it was exported as {meta['version']} "
                                f"(another training finished at the same time); train again")
        return name

    def versions(self) -> list[VersionInfo]:
        try:
            found = self.client.search_model_versions(f"name='{MODEL_NAME}'")
        except self._missing:
            return []
        # search_model_versions does not fill aliases on every backend: ask for the two we use.
        holders = {alias: self.alias(alias) for alias in ("champion", "challenger")}
        out = []
        for mv in found:
            try:
                metrics = read_meta(Path(mv.source)).get("metrics", {})
            except Exception:  # noqa: BLE001 - a listing shows what it can
                metrics = {}
            out.append(VersionInfo(version=version_name(int(mv.version)), number=int(mv.version),
                                   aliases=[a for a, v in holders.items() if v == version_name(int(mv.version))],
                                   created_ms=int(mv.creation_timestamp or 0), run_id=mv.run_id,
                                   source=str(mv.source), metrics=metrics))
        return sorted(out, key=lambda v: version_key(v.version))

    def version(self, version: str) -> VersionInfo:
        number = version_number(version)
        for info in self.versions():
            if info.number == number:
                return info
        raise RegistryError(f"no registered version {version!r} (see `sealguard models list`)")

    def alias(self, alias: str) -> str | None:
        try:
            mv = self.client.get_model_version_by_alias(MODEL_NAME, alias)
        except self._missing:
            return None
        return version_name(int(mv.version))

    # -- aliases + pointers ------------------------------------------------------------------
    def history(self) -> list[str]:
        try:
            tags = self.client.get_registered_model(MODEL_NAME).tags or {}
        except self._missing:
            return []
        try:
            value = json.loads(tags.get(HISTORY_TAG, "[]"))
        except ValueError:
            return []
        return [str(v) for v in value] if isinstance(value, list) else []

    def set_champion(self, version: str, *, record: bool = True) -> None:
        """MLflow alias, then the pointer file detection watches; `record` appends to the history."""
        self._ensure_model()
        number = version_number(version)
        self.client.set_registered_model_alias(MODEL_NAME, "champion", str(number))
        write_pointer(self.settings.state_dir, "champion", version)
        if record:
            history = [*self.history(), version][-HISTORY_KEEP:]
            self.client.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history))
        if self.alias("challenger") == version:
            self.clear_challenger()
        log.info("champion is now %s", version)

    def set_challenger(self, version: str) -> None:
        self._ensure_model()
        self.client.set_registered_model_alias(MODEL_NAME, "challenger", str(version_number(version)))
        write_pointer(self.settings.state_dir, "challenger", version)
        log.info("challenger (shadow) is now %s", version)

    def clear_challenger(self) -> None:
        from models.artifacts import clear_pointer

        try:
            self.client.delete_registered_model_alias(MODEL_NAME, "challenger")
        except self._missing:
            pass
        clear_pointer(self.settings.state_dir, "challenger")

    def rollback(self) -> tuple[str, str]:
        """Return to the champion before the current one; (from, to)."""
        current = self.alias("champion")
        history = self.history()
        if current is None:
            raise RegistryError("there is no champion to roll back")
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(f"{current} is the first champion; there is nothing to roll back to")
        previous = history[-1]
        self.client.set_registered_model_alias(MODEL_NAME, "champion", str(version_number(previous)))
        write_pointer(self.settings.state_dir, "champion", previous)
        self.client.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history))
        log.info("rolled back champion %s → %s", current, previous)
        return current, previous

    def served_dir(self, version: str) -> Path:
        return models_root(self.settings.state_dir) / check_version(version)

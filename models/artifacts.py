"""Served model artifacts and the champion/challenger pointers — the files detection reads.

The format is fixed (detection.model loads it):
    state_dir/models/<version>/model.txt   LightGBM Booster.save_model text
    state_dir/models/<version>/meta.json   {"version", "features", "calibration" {x, y} | null,
                                            "trained_at" (ms), "metrics" {...}}
    state_dir/models/champion.json         {"version": V, "path": "<abs dir>"}   (and challenger.json)

Pointers are replaced atomically (write a temporary file, `os.replace`), so the worker's hot reload
never reads half a file. Nothing here imports mlflow: `ensure_model` reads the pointer on every
`sealguard up` and must stay fast.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.errors import ArtifactError

VERSION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
ALIASES = ("champion", "challenger")


def models_root(state_dir: Path) -> Path:
    return Path(state_dir) / "models"


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise ArtifactError(f"model version {version!r} must match {VERSION_RE.pattern}")
    return version


def write_artifact(out_dir: Path, booster: Any, version: str, features: Sequence[str],
                   calibration: dict[str, list[float]] | None, metrics: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write model.txt + meta.json into `out_dir` (meta.json last, so a directory with it is whole)."""
    check_version(version)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.txt"), num_iteration=booster.best_iteration or None)
    meta = {"version": version, "features": list(features), "calibration": calibration,
            "trained_at": int(time.time() * 1000), "metrics": _plain(metrics)}
    if extra:
        meta.update(_plain(extra))
    tmp = out / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, out / "meta.json")
    return out


def _plain(value: Any) -> Any:
    """JSON-friendly copies of numpy scalars and nested containers (NaN becomes None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_meta(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{model_dir} is not a model artifact (no meta.json)") from None
    except ValueError as exc:
        raise ArtifactError(f"{path}: not JSON ({exc})") from None
    if not isinstance(meta, dict) or "version" not in meta:
        raise ArtifactError(f"{path}: needs a 'version'")
    return meta


def artifact_dir(state_dir: Path, version: str) -> Path:
    """The served directory of `version`; ArtifactError when it was never exported here."""
    path = models_root(state_dir) / check_version(version)
    if not (path / "meta.json").is_file() or not (path / "model.txt").is_file():
        raise ArtifactError(f"no model {version!r} under {models_root(state_dir)} (train it, or check "
                            f"`sealguard models list`)")
    return path


def read_pointer(state_dir: Path, alias: str) -> dict[str, str] | None:
    """{"version", "path"} of `alias`, or None when there is no such pointer."""
    path = models_root(state_dir) / f"{alias}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ArtifactError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        raise ArtifactError(f"{path}: needs a string 'version'")
    return data


def write_pointer(state_dir: Path, alias: str, version: str) -> Path:
    """Point `alias` at `version`'s directory, atomically."""
    if alias not in ALIASES:
        raise ArtifactError(f"unknown alias {alias!r}; aliases are {', '.join(ALIASES)}")
    target_dir = artifact_dir(state_dir, version).resolve()
    root = models_root(state_dir)
    target = root / f"{alias}.json"
    tmp = root / f".{alias}.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"version": version, "path": str(target_dir)}))
    os.replace(tmp, target)
    return target


def clear_pointer(state_dir: Path, alias: str) -> None:
    try:
        (models_root(state_dir) / f"{alias}.json").unlink()
    except FileNotFoundError:
        pass


def champion_version(state_dir: Path) -> str | None:
    """The served champion, if its pointer exists and its directory is whole."""
    data = read_pointer(state_dir, "champion")
    if data is None:
        return None
    path = Path(data.get("path") or models_root(state_dir) / data["version"])
    if not (path / "meta.json").is_file() or not (path / "model.txt").is_file():
        return None
    return data["version"]


def local_versions(state_dir: Path) -> list[str]:
    """Versions exported under state_dir/models, oldest first by their number."""
    root = models_root(state_dir)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and (p / "meta.json").is_file()]
    return sorted(found, key=version_key)


def version_key(version: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", version)
    return (int(m.group(1)) if m else -1, version)

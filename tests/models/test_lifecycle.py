"""The model lifecycle on real components: simulator Parquet → features → MLflow (SQLite) → served
artifacts and pointers → guarded promotion → rollback → bootstrap for `up`.

One small simulated population and one MLflow store are shared by the module (creating an MLflow
SQLite store costs seconds); tests run in file order and build on each other's versions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sealguard.cli import app
from sealguard.settings import Settings

MINI = """
name: {name}
seed: {seed}
duration_h: 8
population:
  normal: 200
hard_cases:
  small_business: {{count: 1}}
  teacher: {{count: 1}}
  community_admin: {{count: 1}}
  new_user_onboarding: {{count: 2}}
spam:
  - {{strategy: blaster, count: 5}}
  - {{strategy: slow_drip, count: 5}}
  - {{strategy: farm, farms: 1, accounts_per_farm: 5}}
  - {{strategy: hijacked, count: 3}}
  - {{strategy: conversational_scam, count: 3}}
  - {{strategy: group_spam, count: 3}}
"""

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def write_scenario(path: Path, name: str, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MINI.format(name=name, seed=seed))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from simulator.offline import simulate, write_parquet
    from simulator.scenario import load_scenario

    root = tmp_path_factory.mktemp("lab")
    scenario = write_scenario(root / "mini.yaml", "mini", 5)
    write_parquet(simulate(load_scenario(scenario)), root / "dataset")
    write_scenario(root / "heldout" / "mini_heldout.yaml", "mini_heldout", 9)
    return {"root": root, "dataset": root / "dataset", "state": root / "state", "heldout": root / "heldout"}


def run(lab: dict[str, Path], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"SEALGUARD_STATE_DIR": str(lab["state"])})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def figures(stdout: str, name: str) -> dict[str, str]:
    line = stdout.strip().splitlines()[-1]
    head, _, rest = line.partition(": ")
    assert head == name, line
    return dict(pair.split("=", 1) for pair in rest.split())


def test_train_dataset_registers_exports_and_crowns_the_first(lab: dict[str, Path]) -> None:
    from detection.features import FEATURE_NAMES
    from detection.model import load_model

    code, out, err = run(lab, "train", "--dataset", str(lab["dataset"]))
    assert code == 0, err
    figs = figures(out, "train")
    assert list(figs) == ["version", "seconds", "pr_auc", "auc", "baseline_pr_auc"]
    assert figs["version"] == "lgbm-1"
    assert 0.0 <= float(figs["auc"]) <= 1.0 and float(figs["seconds"]) > 0
    assert "features" in err  # the progress bar went to stderr
    served = lab["state"] / "models" / "lgbm-1"
    meta = json.loads((served / "meta.json").read_text())
    assert meta["version"] == "lgbm-1" and meta["features"] == list(FEATURE_NAMES)
    assert meta["calibration"]["x"] == sorted(meta["calibration"]["x"])
    assert {"pr_auc", "auc", "baseline_pr_auc", "signals"} <= set(meta["metrics"])
    pointer = json.loads((lab["state"] / "models" / "champion.json").read_text())
    assert pointer == {"version": "lgbm-1", "path": str(served.resolve())}
    model = load_model(served)  # detection loads what we wrote
    scores = model.score(np.zeros((3, len(FEATURE_NAMES))))
    assert np.all((scores >= 0) & (scores <= 1))


def test_mlflow_holds_the_run_and_the_alias(lab: dict[str, Path]) -> None:
    from mlflow import MlflowClient

    settings = Settings(state_dir=lab["state"])
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    mv = client.get_model_version_by_alias("sealguard-spam", "champion")
    assert str(mv.version) == "1"
    run = client.get_run(mv.run_id)
    assert {"pr_auc", "auc", "baseline_pr_auc", "train_rows"} <= set(run.data.metrics)
    assert run.data.tags["model_version"] == "lgbm-1" and "lgbm_num_leaves" in run.data.params
    assert {a.path for a in client.list_artifacts(mv.run_id, "model")} == {"model/meta.json", "model/model.txt"}


def test_second_version_is_the_challenger_and_listed(lab: dict[str, Path]) -> None:
    code, out, err = run(lab, "train", "--dataset", str(lab["dataset"]), "--seed", "1")
    assert code == 0, err
    assert figures(out, "train")["version"] == "lgbm-2"
    assert json.loads((lab["state"] / "models" / "challenger.json").read_text())["version"] == "lgbm-2"
    code, out, _ = run(lab, "models", "list")
    assert code == 0
    assert figures(out, "models") == {"versions": "2", "champion": "lgbm-1", "challenger": "lgbm-2"}
    assert "lgbm-2     challenger" in out


def _register_reckless_copy(lab: dict[str, Path]) -> str:
    """lgbm-3: lgbm-2's trees with a calibration that calls everyone a spammer."""
    from models.artifacts import read_meta
    from models.registry import Registry

    settings = Settings(state_dir=lab["state"])
    registry = Registry(settings)
    version = f"lgbm-{registry.next_number()}"
    target = lab["state"] / "models" / version
    shutil.copytree(lab["state"] / "models" / "lgbm-2", target)
    meta = read_meta(target) | {"version": version, "calibration": {"x": [0.0, 1.0], "y": [1.0, 1.0]}}
    (target / "meta.json").write_text(json.dumps(meta))
    assert registry.register(target, None) == version
    return version


def test_promotion_refuses_a_worse_model_unless_forced_and_rollback_returns(lab: dict[str, Path]) -> None:
    reckless = _register_reckless_copy(lab)
    code, out, err = run(lab, "models", "promote", reckless, "--heldout", str(lab["heldout"]))
    assert code == 2, out
    assert f"refusing to promote {reckless} over lgbm-1" in err and "false-ban rate" in err
    assert json.loads((lab["state"] / "models" / "champion.json").read_text())["version"] == "lgbm-1"

    code, out, err = run(lab, "models", "promote", reckless, "--heldout", str(lab["heldout"]), "--force")
    assert code == 0, err
    assert figures(out, "promote")["forced"] == "1"
    assert json.loads((lab["state"] / "models" / "champion.json").read_text())["version"] == reckless

    code, out, err = run(lab, "models", "rollback")
    assert code == 0, err
    assert figures(out, "rollback") == {"from": reckless, "to": "lgbm-1"}
    assert json.loads((lab["state"] / "models" / "champion.json").read_text())["version"] == "lgbm-1"
    code, _, err = run(lab, "models", "rollback")
    assert code == 2 and "nothing to roll back to" in err


def test_replay_compares_bans_with_the_champion(lab: dict[str, Path]) -> None:
    code, out, err = run(lab, "replay", "--model", "lgbm-3", "--dataset", str(lab["dataset"]))
    assert code == 0, err
    figs = figures(out, "replay")
    assert list(figs) == ["new_bans", "lost_bans", "unchanged", "precision_delta", "recall_delta"]
    assert int(figs["new_bans"]) > 0  # the reckless copy bans everyone with minimum evidence
    assert int(figs["lost_bans"]) == 0
    code, _, err = run(lab, "replay", "--model", "lgbm-42", "--dataset", str(lab["dataset"]))
    assert code == 2 and "no model 'lgbm-42'" in err


def test_report_is_a_self_contained_html_page(lab: dict[str, Path]) -> None:
    out = lab["root"] / "report.html"
    code, stdout, err = run(lab, "models", "report", "lgbm-2", "--out", str(out), "--dataset", str(lab["dataset"]),
                            "--heldout", str(lab["heldout"]))
    assert code == 0, err
    figs = figures(stdout, "report")
    assert figs["version"] == "lgbm-2" and figs["champion"] == "lgbm-1"
    page = out.read_text()
    for heading in ("Scores on dataset", "Threshold table — lgbm-2", "Threshold table — lgbm-1", "Recall per strategy",
                    "False bans per case", "Feature importance", "SHAP summary"):
        assert heading in page, heading
    assert page.count("data:image/png;base64,") == 4 and "Not available" not in page


def test_promote_unknown_version_is_exit_2(lab: dict[str, Path]) -> None:
    code, _, err = run(lab, "models", "promote", "lgbm-99", "--heldout", str(lab["heldout"]))
    assert code == 2 and "no registered version 'lgbm-99'" in err
    code, _, err = run(lab, "models", "promote", "../etc", "--heldout", str(lab["heldout"]))
    assert code == 2 and "must match" in err


def _broken(lab: dict[str, Path], name: str) -> Path:
    target = lab["root"] / name
    shutil.copytree(lab["dataset"], target)
    return target


def test_bad_datasets_exit_2_naming_the_problem(lab: dict[str, Path]) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    no_labels = _broken(lab, "no_labels")
    (no_labels / "labels.parquet").unlink()
    bad_label = _broken(lab, "bad_label")
    truth = pd.read_parquet(bad_label / "labels.parquet")
    truth.loc[3, "label"] = 7
    truth.to_parquet(bad_label / "labels.parquet")
    unsorted = _broken(lab, "unsorted")
    table = pq.read_table(unsorted / "signals.parquet")
    pq.write_table(table.take(pa.array(np.arange(table.num_rows)[::-1])), unsorted / "signals.parquet")
    unknown = _broken(lab, "unknown_type")
    frame = pq.read_table(unknown / "signals.parquet").to_pandas()
    frame.loc[10, "type"] = "message.deleted"
    frame.to_parquet(unknown / "signals.parquet")
    cases = [(no_labels, "labels.parquet does not exist"), (bad_label, "row 3: label 7 is not 0 or 1"),
             (unsorted, "not in time order"), (unknown, "row 10: unknown signal type 'message.deleted'"),
             (lab["root"] / "nowhere", "is not a directory")]
    for path, message in cases:
        code, _, err = run(lab, "train", "--dataset", str(path))
        assert code == 2, (path, err)
        assert message in err, err


def test_ensure_model_trains_once_then_is_instant(tmp_path: Path) -> None:
    from models.bootstrap import ensure_model

    settings = Settings(state_dir=tmp_path / "state")
    scenario = write_scenario(tmp_path / "boot.yaml", "boot", 3)
    version = ensure_model(settings, scenario=scenario)
    assert version == "lgbm-1"
    assert json.loads((tmp_path / "state" / "models" / "champion.json").read_text())["version"] == "lgbm-1"
    probe = ("import sys, time; from pathlib import Path; from sealguard.settings import Settings; "
             "from models.bootstrap import ensure_model; t = time.perf_counter(); "
             f"v = ensure_model(Settings(state_dir=Path({str(tmp_path / 'state')!r}))); "
             "print(v, 'mlflow' in sys.modules, 'lightgbm' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out[:3] == ["lgbm-1", "False", "False"], out

"""Bring-your-own tables nobody tuned for: LightGBM must meet the RandomForest baseline on each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, make_classification
from typer.testing import CliRunner

from models.errors import TableError
from models.tabular import cross_validate, load_table, prepare
from sealguard.cli import app

TOLERANCE = 0.005


def _figures(line: str) -> dict[str, float]:
    name, _, rest = line.partition(": ")
    assert name == "train"
    return {k: float(v) for k, v in (pair.split("=") for pair in rest.split())}


def test_breast_cancer_through_the_cli(tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    frame["clinic"] = np.where(np.arange(len(frame)) % 3 == 0, "north", "south")  # text → one-hot
    frame["patient"] = [f"p{i}" for i in range(len(frame))]
    path = tmp_path / "bc.csv"
    frame.to_csv(path, index=False)
    result = CliRunner().invoke(app, ["train", "--table", str(path), "--label", "target", "--id", "patient"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    figures = _figures(line)
    assert set(figures) == {"rows", "seconds", "cv_auc", "cv_f1", "baseline_cv_auc"}
    assert figures["rows"] == len(frame)
    assert figures["cv_auc"] >= figures["baseline_cv_auc"] - TOLERANCE, line
    assert "one-hot" in result.stderr


@pytest.mark.parametrize(("seed", "rows", "weights"), [(1, 1200, None), (2, 1200, None), (3, 3000, [50 / 51])],
                         ids=["seed1", "seed2", "seed3-imbalanced-1to50"])
def test_make_classification_meets_the_forest(seed: int, rows: int, weights: list[float] | None) -> None:
    X, y = make_classification(n_samples=rows, n_features=20, n_informative=6, weights=weights, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]).assign(label=y)
    result = cross_validate(prepare(frame, "label"))
    assert result.folds == 5
    assert result.cv_auc >= result.baseline_cv_auc - TOLERANCE, result


def test_label_names_and_encodings_are_reported() -> None:
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({
        "user": [f"u{i}" for i in range(n)],             # identifier-like text → dropped
        "plan": rng.choice(["a", "b", "c"], n),          # few categories → one-hot
        "city": rng.choice([f"c{i}" for i in range(40)], n),  # many categories → frequency
        "amount": rng.normal(size=n).astype(str),        # numbers as text → parsed
        "flag": rng.random(n) > 0.5,                      # bool → 0/1
        "same": 1,                                        # constant → dropped
        "kind": rng.choice(["spam", "ham"], n),
    })
    prepared = prepare(frame, "kind")
    assert prepared.positive_label == "spam"
    notes = " | ".join(prepared.notes)
    expected_notes = ("'user': dropped", "'plan': 3 categories one-hot", "'city': 40 categories encoded as their frequency",
                      "'amount': text parsed", "constant")
    for expected in expected_notes:
        assert expected in notes, notes
    assert "user" not in prepared.feature_names and "flag" in prepared.feature_names


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", ["--label", "y"], "empty"),
        ("a,b\n", ["--label", "b"], "no rows"),
        ("a,b\n1,0\n2,1\n", ["--label", "c"], "label column 'c' not in the table"),
        ("a,y\n" + "".join(f"{i},1\n" for i in range(30)), ["--label", "y"], "one class only"),
        ("a,y\n" + "".join(f"{i},{i % 3}\n" for i in range(30)), ["--label", "y"], "not binary"),
        ("a,y\n" + "".join(f"{i},{int(i < 3)}\n" for i in range(30)), ["--label", "y"], "only 3 rows of one class"),
        ("y\n" + "".join(f"{i % 2}\n" for i in range(30)), ["--label", "y"], "no usable feature"),
        ("a,y\n1,0\n", [], "--table needs --label"),
    ],
    ids=["empty-file", "header-only", "missing-label", "one-class", "three-classes", "too-few", "no-features",
         "no-label-option"],
)
def test_bad_tables_exit_2_naming_the_problem(tmp_path: Path, content: str, args: list[str], message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(content)
    result = CliRunner().invoke(app, ["train", "--table", str(path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_missing_file_is_a_table_error(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="does not exist"):
        load_table(tmp_path / "nope.csv")


@pytest.mark.slow
def test_heldout_scenario_exported_as_csv_meets_the_forest(tmp_path: Path) -> None:
    """A held-out population (never trained on), exported per account and trained as a plain table."""
    from models.promotion import HELDOUT_DIR
    from simulator.offline import simulate, write_parquet
    from simulator.scenario import load_scenario

    write_parquet(simulate(load_scenario(HELDOUT_DIR / "heldout_a.yaml")), tmp_path / "ds")
    csv = tmp_path / "heldout_a.csv"
    runner = CliRunner()
    result = runner.invoke(app, ["dataset", "export", "--dataset", str(tmp_path / "ds"), "--out", str(csv)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--table", str(csv), "--label", "label", "--id", "account"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    print(line)  # the figures, for `pytest -m slow -s`
    figures = _figures(line)
    assert figures["cv_auc"] >= figures["baseline_cv_auc"] - TOLERANCE, figures

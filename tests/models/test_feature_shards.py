"""Training's feature stage in parallel processes: the same table as in-process, errors named the same way."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from models.errors import DatasetError
from models.training import _Quiet, build_features

SCENARIO = """
name: shards
seed: 3
duration_h: 4
population:
  normal: 120
spam:
  - {strategy: blaster, count: 3}
  - {strategy: farm, farms: 1, accounts_per_farm: 6}
  - {strategy: slow_drip, count: 3}
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulator.offline import simulate, write_parquet
    from simulator.scenario import load_scenario

    root = tmp_path_factory.mktemp("shards")
    (root / "s.yaml").write_text(SCENARIO)
    write_parquet(simulate(load_scenario(root / "s.yaml")), root / "dataset")
    return root / "dataset"


def test_two_processes_build_the_in_process_table(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alone, n = build_features(dataset, _Quiet(), processes=1)
    monkeypatch.setattr("models.training.PARALLEL_SIGNALS", 0)
    timings: dict[str, float] = {}
    sharded, n2 = build_features(dataset, _Quiet(), processes=2, timings=timings)
    assert n == n2 > 1000 and len(alone) > 100
    assert timings["feature_shards"] == 2 and timings["features_replay_cpu"] > 0
    pd.testing.assert_frame_equal(sharded, alone, check_exact=True)


def test_a_shard_s_dataset_error_reaches_the_caller(dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    table = pq.read_table(dataset / "signals.parquet")
    reversed_ts = table.set_column(table.schema.get_field_index("ts"), "ts", pc.negate(table.column("ts")))
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(reversed_ts.set_column(reversed_ts.schema.get_field_index("ts"), "ts",
                                          pc.add(reversed_ts.column("ts"), 2 * pc.max(table.column("ts")).as_py())),
                   bad / "signals.parquet")
    monkeypatch.setattr("models.training.PARALLEL_SIGNALS", 0)
    with pytest.raises(DatasetError, match="not in time order"):
        build_features(bad, _Quiet(), processes=2)
    with pytest.raises(DatasetError, match="not in time order"):
        build_features(bad, _Quiet(), processes=1)

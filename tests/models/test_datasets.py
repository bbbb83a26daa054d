"""`dataset build` from simulator Parquet and from the recorded stream, labels resolved from the
simulator's truth, reviewer decisions and appeal outcomes in a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import insert

from models.datasets import build_dataset
from models.errors import DatasetError
from sealguard.contracts import new_decision_id
from sealguard.settings import Settings
from sealguard.storage import AppealRow, Database, DecisionRow, LabelRow

SCENARIO = """
name: tiny
seed: 4
duration_h: 4
population:
  normal: 80
spam:
  - {strategy: blaster, count: 3}
  - {strategy: slow_drip, count: 3}
"""


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    import yaml

    from simulator.offline import simulate, write_parquet
    from simulator.scenario import parse_scenario

    root = tmp_path_factory.mktemp("sim")
    result = simulate(parse_scenario(yaml.safe_load(SCENARIO)))
    write_parquet(result, root)
    return root, result


@pytest.mark.postgres
def test_labels_resolve_simulator_reviewer_and_appeal(db_url: str, tmp_path: Path,
                                                      simulated: tuple[Path, object]) -> None:
    root, result = simulated
    truth = result.truth  # type: ignore[attr-defined]
    normal = truth[truth.label == 0].account.iloc[0]
    spammer = truth[truth.label == 1].account.iloc[0]
    db = Database(db_url)
    try:
        reviewer_ban, overturned = new_decision_id(), new_decision_id()
        with db.session() as s:
            s.execute(insert(DecisionRow), [
                {"id": reviewer_ban, "account": normal, "action": "ban", "reason_code": "spam", "source": "reviewer",
                 "actor": "r1", "created_at": 1000, "status": "active"},
                {"id": overturned, "account": spammer, "action": "ban", "reason_code": "spam", "source": "auto",
                 "actor": "lgbm-1", "created_at": 1000, "status": "lifted"},
            ])
            s.execute(insert(LabelRow), [{"account": normal, "label": 1, "source": "reviewer",
                                          "decision_id": reviewer_ban, "ts": 2000}])
            s.execute(insert(AppealRow), [{"account": spammer, "decision_id": overturned, "status": "overturned",
                                           "filed_at": 1500, "resolved_at": 3000, "resolved_by": "lead1"}])
            s.commit()
        built = build_dataset(tmp_path / "ds", parquet=root, db=db)
    finally:
        db.dispose()
    labels = pd.read_parquet(tmp_path / "ds" / "labels.parquet").set_index("account")
    assert list(labels.columns) == ["label", "source", "role", "first_spam_ts", "decision_id", "ts", "n_labels"]
    assert len(labels) == len(truth) == built.accounts
    assert (labels.loc[normal, "label"], labels.loc[normal, "source"]) == (1, "reviewer")
    assert labels.loc[normal, "role"] == "normal" and labels.loc[normal, "n_labels"] == 2
    assert (labels.loc[spammer, "label"], labels.loc[spammer, "source"]) == (0, "appeal")  # overturned → negative
    assert labels.loc[spammer, "decision_id"] == overturned and pd.isna(labels.loc[spammer, "first_spam_ts"])
    assert built.sources == {"simulator": len(truth) - 2, "reviewer": 1, "appeal": 1}
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["signals"] == len(result.events) and manifest["schema_version"] == 1  # type: ignore[attr-defined]


def test_build_from_the_stream_counts_every_record(topics: Settings, tmp_path: Path,
                                                   simulated: tuple[Path, object]) -> None:
    from sealguard.contracts import encode, key_of
    from sealguard.stream import producer

    root, result = simulated
    events = result.events  # type: ignore[attr-defined]
    p = producer(topics.kafka)  # type: ignore[arg-type]
    for ev in reversed(events):  # out of order on purpose: the dataset must come out in ts order
        p.produce(topics.signals_topic, key=key_of(ev), value=encode(ev))
    p.produce(topics.signals_topic, key=b"x", value=b"{not json")
    assert p.flush(30) == 0
    built = build_dataset(tmp_path / "ds", stream=(topics.kafka, topics.signals_topic),  # type: ignore[arg-type]
                          truth=root / "labels.parquet", idle_s=2.0)
    assert built.signals == len(events) and built.bad_records == 1
    signals = pd.read_parquet(tmp_path / "ds" / "signals.parquet")
    assert len(signals) == len(events) and signals.ts.is_monotonic_increasing
    assert sorted(signals.id) == sorted(e.id for e in events)


def test_no_labels_and_bad_sources_are_clear_errors(tmp_path: Path, simulated: tuple[Path, object]) -> None:
    root, _ = simulated
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "signals.parquet").write_bytes((root / "signals.parquet").read_bytes())
    with pytest.raises(DatasetError, match="no labels"):
        build_dataset(tmp_path / "out", parquet=bare)
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        build_dataset(tmp_path / "out", parquet=tmp_path / "nowhere")

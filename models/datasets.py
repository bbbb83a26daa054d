"""`sealguard dataset build`: signals + resolved labels → a dataset directory `train --dataset` reads.

A dataset directory (schema in docs/datasets.md) holds
    signals.parquet   one row per v1 signal, in ts order — the simulator's Parquet schema
    labels.parquet    one row per labelled account: account, label, source, role, first_spam_ts,
                      decision_id, ts, n_labels
    manifest.json     where it came from, counts, label sources, schema version

Signals come from the recorded stream (the signals topic read from the beginning; see
`read_stream`) or from a simulator Parquet directory. Labels come from up to three places, and one
account's labels are resolved by precedence — an appeal outcome beats a reviewer decision, which
beats the simulator's ground truth; within one source the latest wins:
    simulator   the truth file of a simulated population (labels.parquet of `simulate --out`);
    reviewer    rows of the labels table written by reviewer decisions (1 = abusive, 0 = cleared);
    appeal      rows of the labels table from appeals, and every appeal with status `overturned`
                in the appeals table — an overturned ban is a negative label (0).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.errors import DatasetError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PRECEDENCE = {"appeal": 3, "reviewer": 2, "simulator": 1}
LABEL_COLUMNS = ["account", "label", "source", "role", "first_spam_ts", "decision_id", "ts", "n_labels"]


@dataclass
class BuildResult:
    out: Path
    signals: int
    accounts: int
    positives: int
    sources: dict[str, int]
    seconds: float
    bad_records: int = 0

    def figures(self) -> dict[str, object]:
        return {"signals": self.signals, "labelled_accounts": self.accounts, "positives": self.positives,
                **{f"{k}_labels": v for k, v in sorted(self.sources.items())}, "bad_records": self.bad_records,
                "seconds": round(self.seconds, 2)}


# -- labels ----------------------------------------------------------------------------------
def truth_labels(path: Path) -> pd.DataFrame:
    """The simulator's truth (labels.parquet of a simulated population) as raw label rows."""
    file = path / "labels.parquet" if path.is_dir() else path
    try:
        truth = pd.read_parquet(file)
    except FileNotFoundError:
        raise DatasetError(f"{file} does not exist (simulator truth is labels.parquet)") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise DatasetError(f"{file}: not a readable Parquet file: {exc}") from None
    for column in ("account", "label"):
        if column not in truth:
            raise DatasetError(f"{file}: no {column!r} column (columns: {', '.join(truth.columns)})")
    return pd.DataFrame({
        "account": truth["account"].astype(str), "label": truth["label"].astype(int), "source": "simulator",
        "role": truth["role"].astype(str) if "role" in truth else None,
        "first_spam_ts": pd.to_numeric(truth["first_spam_ts"], errors="coerce") if "first_spam_ts" in truth
        else np.nan,
        "decision_id": None, "ts": pd.NA,
    })


def database_labels(db: Any) -> pd.DataFrame:
    """Reviewer and appeal labels from the labels table, plus overturned appeals as negatives."""
    from sqlalchemy import select

    from sealguard.storage import AppealRow, DecisionRow, LabelRow

    with db.session() as s:
        labels = s.execute(select(LabelRow.account, LabelRow.label, LabelRow.source, LabelRow.decision_id,
                                  LabelRow.ts)).all()
        overturned = s.execute(select(AppealRow.account, AppealRow.decision_id, AppealRow.resolved_at,
                                      DecisionRow.action)
                               .join(DecisionRow, DecisionRow.id == AppealRow.decision_id, isouter=True)
                               .where(AppealRow.status == "overturned")).all()
    rows = [{"account": a, "label": int(lab), "source": src, "decision_id": d, "ts": ts}
            for a, lab, src, d, ts in labels]
    rows += [{"account": a, "label": 0, "source": "appeal", "decision_id": d, "ts": ts}
             for a, d, ts, action in overturned if action in (None, "ban", "restrict")]
    frame = pd.DataFrame(rows, columns=["account", "label", "source", "decision_id", "ts"])
    unknown = set(frame.source) - set(PRECEDENCE)
    if unknown:
        raise DatasetError(f"labels table has unknown sources {sorted(unknown)}; expected {sorted(PRECEDENCE)}")
    frame["role"] = None
    frame["first_spam_ts"] = np.nan
    return frame


def resolve_labels(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per account by precedence (appeal > reviewer > simulator), the latest within a source.

    The simulator's role and first_spam_ts are kept whatever source wins (they describe the account,
    not the verdict); `n_labels` counts every raw label the account had.
    """
    if raw.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LABEL_COLUMNS})
    bad = ~raw["label"].isin([0, 1])
    if bad.any():
        row = raw[bad].iloc[0]
        raise DatasetError(f"label {row['label']!r} for account {row['account']} ({row['source']}) is not 0 or 1")
    frame = raw.copy()
    frame["_rank"] = frame["source"].map(PRECEDENCE)
    frame["_ts"] = pd.to_numeric(frame["ts"], errors="coerce").fillna(-1)
    frame = frame.sort_values(["account", "_rank", "_ts"], kind="stable")
    counts = frame.groupby("account").size()
    winners = frame.groupby("account").tail(1).set_index("account")
    sim = frame[frame.source == "simulator"].groupby("account").last()
    out = pd.DataFrame({
        "account": winners.index.astype(str),
        "label": winners["label"].astype("int8").to_numpy(),
        "source": winners["source"].astype(str).to_numpy(),
        "role": sim["role"].reindex(winners.index).to_numpy() if len(sim) else None,
        "first_spam_ts": sim["first_spam_ts"].reindex(winners.index).astype(float).to_numpy() if len(sim)
        else np.nan,
        "decision_id": winners["decision_id"].to_numpy(),
        "ts": pd.array(pd.to_numeric(winners["ts"], errors="coerce"), dtype="Int64"),
        "n_labels": counts.reindex(winners.index).astype("int32").to_numpy(),
    })
    # A human verdict that an account is legitimate cancels the simulator's first-spam time.
    out.loc[out.label == 0, "first_spam_ts"] = np.nan
    return out.reset_index(drop=True)


# -- signals ---------------------------------------------------------------------------------
def copy_signals(source: Path, out: Path) -> int:
    """Copy a signals Parquet file into the dataset, sorted by ts (a plain copy when it already is)."""
    from models.signals_io import _signals_path, count_signals, is_sorted_by_ts

    file = _signals_path(source)
    if not file.is_file():
        raise DatasetError(f"{file} does not exist (a simulator directory holds signals.parquet)")
    try:
        rows = count_signals(file)
        ordered = is_sorted_by_ts(file)
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise DatasetError(f"{file}: not a readable signals Parquet file: {exc}") from None
    if ordered:
        shutil.copyfile(file, out)
    else:
        table = pq.read_table(file)
        pq.write_table(table.sort_by([("ts", "ascending")]), out)
    return rows


def read_stream(bootstrap: str, topic: str, out: Path, *, idle_s: float = 5.0, max_records: int | None = None,
                on_records: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Consume `topic` from the beginning into `out` (sorted by ts); (signals, undecodable records).

    Partitions are assigned directly (no consumer group: nothing to join, no offsets to commit).
    The broker's high watermark can lag (Tansu), so it is only a floor: reading goes on until the
    count reaches it *and* no record arrived for `idle_s` seconds.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from sealguard.contracts import ContractError, decode
    from sealguard.stream import consumer
    from simulator.offline import signals_frame

    c = consumer(bootstrap, f"sg-dataset-{os.getpid()}", **{"enable.partition.eof": False})
    try:
        meta = c.list_topics(topic, timeout=10)
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise DatasetError(f"topic {topic!r} does not exist on {bootstrap}")
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(info.partitions)]
        floor = 0
        for tp in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            floor += max(0, high - low)
        c.assign(parts)
        events: list[Any] = []
        bad = 0
        seen = 0
        last = time.monotonic()
        while True:
            batch = c.consume(num_messages=10_000, timeout=0.5)
            if batch:
                last = time.monotonic()
            for m in batch:
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise DatasetError(f"reading {topic}: {m.error()}")
                seen += 1
                try:
                    events.append(decode(m.value()))
                except ContractError as exc:
                    bad += 1
                    if bad <= 10:
                        log.warning("skipping undecodable record %s[%d]@%d: %s", topic, m.partition(), m.offset(), exc)
            if on_records is not None and batch:
                on_records(len(batch))
            if max_records is not None and seen >= max_records:
                break
            if seen >= floor and time.monotonic() - last >= idle_s:
                break
    finally:
        c.close()
    events = [e for e in events if e.type != "enforcement"]
    events.sort(key=lambda e: e.ts)
    frame = signals_frame(events)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    return len(events), bad


# -- the whole build -------------------------------------------------------------------------
def build_dataset(out: Path, *, parquet: Path | None = None, stream: tuple[str, str] | None = None,
                  truth: Path | None = None, db: Any = None, idle_s: float = 5.0,
                  on_records: Callable[[int], None] | None = None) -> BuildResult:
    """Write a dataset directory from simulator Parquet or the stream, with resolved labels."""
    started = time.perf_counter()
    if (parquet is None) == (stream is None):
        raise DatasetError("give exactly one signal source: simulator Parquet or the stream")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp_signals = out / ".signals.parquet.tmp"
    bad = 0
    if parquet is not None:
        n = copy_signals(Path(parquet), tmp_signals)
        if truth is None and (Path(parquet) / "labels.parquet").is_file():
            truth = Path(parquet) / "labels.parquet"
    else:
        assert stream is not None
        n, bad = read_stream(stream[0], stream[1], tmp_signals, idle_s=idle_s, on_records=on_records)
    raw = [truth_labels(Path(truth))] if truth is not None else []
    if db is not None:
        raw.append(database_labels(db))
    frames = [f for f in raw if not f.empty]
    labels = resolve_labels(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["account", "label", "source", "role", "first_spam_ts", "decision_id", "ts"]))
    if labels.empty:
        tmp_signals.unlink(missing_ok=True)
        raise DatasetError("no labels: give simulator truth (--truth) or a database with reviewer/appeal labels")
    table = pa.Table.from_pandas(labels[LABEL_COLUMNS], preserve_index=False)
    pq.write_table(table, out / ".labels.parquet.tmp")
    os.replace(tmp_signals, out / "signals.parquet")
    os.replace(out / ".labels.parquet.tmp", out / "labels.parquet")
    sources = {str(k): int(v) for k, v in labels.source.value_counts().items()}
    manifest = {
        "schema_version": SCHEMA_VERSION, "built_at": int(time.time() * 1000),
        "signals_from": str(Path(parquet).resolve()) if parquet is not None else f"kafka:{stream[1]}",  # type: ignore[index]
        "truth": str(Path(truth).resolve()) if truth is not None else None, "database": db is not None,
        "signals": n, "undecodable_records": bad, "labelled_accounts": len(labels),
        "positives": int(labels.label.sum()), "label_sources": sources,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return BuildResult(out=out, signals=n, accounts=len(labels), positives=int(labels.label.sum()), sources=sources,
                       seconds=time.perf_counter() - started, bad_records=bad)


# -- an account table, for `train --table` and outside tools ---------------------------------
def account_table(dataset: Path) -> pd.DataFrame:
    """One row per labelled account: each feature's highest value over the account's scoring
    moments (a spammer's from its first spam on), then `label` — the shape of a bring-your-own
    table, so a scenario can be exported to CSV and trained with `--table`. The role is left out
    on purpose: it names the spam strategy, i.e. it *is* the label."""
    from detection.features import FEATURE_NAMES, build_feature_table
    from models.signals_io import iter_events
    from models.training import labelled_rows, read_labels

    labels = read_labels(Path(dataset))
    table, _ = labelled_rows(build_feature_table(iter_events(Path(dataset))), labels)
    per_account = table.groupby("account")[list(FEATURE_NAMES)].max()
    meta = labels.set_index("account")[["label"]]
    return per_account.join(meta, how="inner").reset_index()

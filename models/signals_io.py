"""Read a signals Parquet file fast enough for 10M rows, checked column-wise against the v1 contracts.

`simulator.offline.read_signals` validates every row through pydantic (~40 µs a row here): right
for a few hundred thousand events, ten minutes for ten million. Training reads whole files it
(or the simulator) wrote, so here the checks run per *column* with Arrow compute — the event type
is known, `ts` is a non-negative integer, every field the type requires is present, account ids
look like account ids — and rows come out as light named tuples with the same attribute names as
the contract's events, which is all the feature operators read (`ev.type`, `ev.ts`, `ev.sender` …).
Training does not even make those: `read_columns` returns only the columns the feature replay reads
(a pyarrow Table, for `detection.features.plan_replay`), checking every row group on the way.

A broken file raises DatasetError naming the file, the column, the event type and the first
offending row.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.errors import DatasetError
from sealguard.contracts import EVENTS_BY_NAME, SIGNAL_TYPES

ACCOUNT_COLUMNS = ("account", "sender", "recipient", "contact", "blocker", "blocked", "reporter", "reported",
                   "actor", "member")
ACCOUNT_PATTERN = r"^a[0-9a-f]{20}$"
SIGNAL_NAMES = frozenset(t.model_fields["type"].default for t in SIGNAL_TYPES)
_REQUIRED: dict[str, tuple[str, ...]] = {
    name: tuple(f for f, info in EVENTS_BY_NAME[name].model_fields.items() if info.is_required())
    for name in SIGNAL_NAMES
}


def _first_bad(mask: pa.ChunkedArray | pa.Array, offset: int) -> int:
    """Row number (in the file) of the first True in `mask`."""
    idx = pc.index(mask, True).as_py()
    return offset + int(idx)


def check_batch(batch: pa.RecordBatch, path: Path, offset: int) -> None:
    """Column-wise v1 checks of one batch; raises DatasetError at the first problem."""
    names = set(batch.schema.names)
    for column in ("type", "ts"):
        if column not in names:
            raise DatasetError(f"{path}: no {column!r} column (columns: {', '.join(batch.schema.names)})")
    types = batch.column("type")
    known = pc.is_in(types, value_set=pa.array(sorted(SIGNAL_NAMES)))
    unknown = pc.invert(pc.fill_null(known, False))
    if pc.any(unknown).as_py():
        row = _first_bad(unknown, offset)
        raise DatasetError(f"{path}: row {row}: unknown signal type {types[row - offset].as_py()!r}")
    ts = batch.column("ts")
    if not pa.types.is_integer(ts.type):
        raise DatasetError(f"{path}: column 'ts' must hold integers (ms), found {ts.type}")
    bad_ts = pc.fill_null(pc.less(ts, 0), True)
    if pc.any(bad_ts).as_py():
        row = _first_bad(bad_ts, offset)
        raise DatasetError(f"{path}: row {row}: 'ts' is missing or negative")
    present = set(pc.unique(types).to_pylist())
    for etype in present:
        is_type = pc.equal(types, etype)
        for field in _REQUIRED[etype]:
            if field in ("type", "ts"):
                continue
            if field not in names:
                raise DatasetError(f"{path}: {etype} rows need a {field!r} column, which the file lacks")
            missing = pc.and_(is_type, pc.is_null(batch.column(field)))
            if pc.any(missing).as_py():
                row = _first_bad(missing, offset)
                raise DatasetError(f"{path}: row {row}: {etype} without {field!r}")
    for column in ACCOUNT_COLUMNS:
        if column not in names:
            continue
        values = batch.column(column)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(
                values.type)):
            raise DatasetError(f"{path}: column {column!r} must hold account ids (text), found {values.type}")
        if pa.types.is_null(values.type):
            continue
        ok = pc.fill_null(pc.match_substring_regex(values, ACCOUNT_PATTERN), True)
        if not pc.all(ok).as_py():
            row = _first_bad(pc.invert(ok), offset)
            raise DatasetError(f"{path}: row {row}: {column!r} = {values[row - offset].as_py()!r} is not an account id")


def count_signals(path: Path) -> int:
    """Rows in a signals file, from the Parquet footer (no data read)."""
    return int(pq.ParquetFile(_signals_path(path)).metadata.num_rows)


def _signals_path(path: Path) -> Path:
    path = Path(path)
    return path / "signals.parquet" if path.is_dir() else path


def iter_events(path: Path, *, batch_size: int = 131_072, on_batch: Callable[[int], None] | None = None,
                ) -> Iterator[Any]:
    """Events from `path` (a file, or a directory holding signals.parquet), in file order.

    Rows are named tuples whose attributes are the file's columns (null → None); `on_batch(n)` is
    called after each batch for progress bars.
    """
    file = _signals_path(path)
    if not file.exists():
        raise DatasetError(f"{file} does not exist (a dataset directory needs signals.parquet)")
    try:
        pf = pq.ParquetFile(file)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"{file}: not a readable Parquet file: {exc}") from None
    fields = [re.sub(r"\W", "_", n) for n in pf.schema_arrow.names]
    Row = collections.namedtuple("Signal", fields, rename=True)  # type: ignore[misc]
    make = Row._make
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        check_batch(batch, file, offset)
        columns = [col.to_pylist() for col in batch.columns]
        for values in zip(*columns):
            yield make(values)
        offset += batch.num_rows
        if on_batch is not None:
            on_batch(batch.num_rows)


def is_sorted_by_ts(path: Path) -> bool:
    """True when `ts` never decreases through the file (the feature replay needs time order)."""
    file = _signals_path(path)
    last = None
    for batch in pq.ParquetFile(file).iter_batches(batch_size=1_000_000, columns=["ts"]):
        ts = batch.column(0)
        if len(ts) == 0:
            continue
        if last is not None and ts[0].as_py() < last:
            return False
        if len(ts) > 1 and pc.any(pc.less(ts.slice(1), ts.slice(0, len(ts) - 1))).as_py():
            return False
        last = ts[len(ts) - 1].as_py()
    return True


def open_signals(path: Path) -> tuple[Path, pq.ParquetFile]:
    file = _signals_path(path)
    if not file.exists():
        raise DatasetError(f"{file} does not exist (a dataset directory needs signals.parquet)")
    try:
        return file, pq.ParquetFile(file)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"{file}: not a readable Parquet file: {exc}") from None


def read_columns(path: Path, columns: tuple[str, ...], *, check: tuple[int, int] = (0, 1)) -> pa.Table:
    """The file's `columns` (those it has) as one Table, each row group checked with `check_batch`.

    `check=(k, n)` checks only row groups `k, k + n, k + 2n, …` (with all their columns): n readers
    of one file, each checking its share, together check every row once."""
    file, pf = open_signals(path)
    present = [c for c in columns if c in pf.schema_arrow.names]
    k, n = check
    parts = []
    offset = 0
    for g in range(pf.metadata.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        if g % n == k:
            group = pf.read_row_group(g)
            for batch in group.to_batches(max_chunksize=1 << 22):
                check_batch(batch, file, offset)
                offset += batch.num_rows
            group = group.select(present)
        else:
            group = pf.read_row_group(g, columns=present)
            offset += rows
        parts.append(group)
    if not parts:
        return pf.schema_arrow.empty_table().select(present)
    return pa.concat_tables(parts)


def ts_sorted(table: pa.Table) -> bool:
    """True when `ts` never decreases through the table."""
    import numpy as np

    ts = table.column("ts").to_numpy()
    return bool(len(ts) < 2 or (np.diff(ts) >= 0).all())


def feature_shard(path: str, shard: int, shards: int, out: str) -> dict[str, float]:
    """One process's share of the offline feature replay (see `detection.features.table`): read the
    replay columns (checking row groups shard, shard + shards, …), replay the doors of the accounts
    in `shard`, pickle its ShardRows to `out`. Returns its stage timings (CPU and wall seconds)."""
    import gc
    import pickle
    import time

    from detection.features.table import REPLAY_COLUMNS, plan_replay, replay_shard

    gc.disable()  # millions of small acyclic objects: the cyclic collector finds nothing in them
    cpu0, wall0 = time.process_time(), time.perf_counter()
    table = read_columns(Path(path), REPLAY_COLUMNS, check=(shard, shards))
    if not ts_sorted(table):
        raise DatasetError(f"{path} is not in time order; the feature replay needs ts order "
                           f"(`sealguard dataset build` writes it sorted)")
    cpu1 = time.process_time()
    plan = plan_replay(table)
    del table  # the plan holds what the replay needs
    cpu2 = time.process_time()
    rows = replay_shard(plan, shard, shards)
    cpu3 = time.process_time()
    with open(out, "wb") as fh:
        pickle.dump(rows, fh, protocol=5)
    return {"read_cpu": cpu1 - cpu0, "plan_cpu": cpu2 - cpu1, "replay_cpu": cpu3 - cpu2,
            "cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0, "rows": float(len(rows)),
            "signals": float(plan.events)}

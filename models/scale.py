"""Scale a dataset up for throughput measurement: K disjoint copies of one population, interleaved.

`python -m models.scale SRC OUT --copies K` writes OUT/signals.parquet and OUT/labels.parquet where
copy k is SRC with every id rewritten (one hex digit of each account, group, blob, net bucket and
event id set to k) so the copies never meet, merged in ts order. It is how the "10M signals in
≤ 5 minutes" target of `sealguard train` is measured without simulating ten million signals in
one process (the simulator holds its events in memory). The copies share the same hours, so the
feature engine sees K times the accounts at once — as it would on a K-times larger population.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.errors import DatasetError

ID_COLUMNS = ("account", "sender", "recipient", "contact", "blocker", "blocked", "reporter", "reported", "actor",
              "member", "group", "blob", "net_bucket")


def _rewrite(column: pa.ChunkedArray, copy: int, start: int) -> pa.ChunkedArray:
    return pc.utf8_replace_slice(column, start=start, stop=start + 1, replacement=f"{copy:x}")


def replicate(src: Path, out: Path, copies: int) -> int:
    """Write `copies` id-disjoint copies of the dataset at `src` into `out`; returns the signal count."""
    if not 1 <= copies <= 16:
        raise DatasetError(f"copies must be between 1 and 16 (one hex digit), got {copies}")
    signals = pq.read_table(Path(src) / "signals.parquet")
    labels = pq.read_table(Path(src) / "labels.parquet")
    parts, label_parts = [], []
    for k in range(copies):
        t = signals
        for name in ID_COLUMNS:
            if name in t.column_names and pa.types.is_string(t.schema.field(name).type):
                t = t.set_column(t.schema.get_field_index(name), name, _rewrite(t.column(name), k, 1))
        t = t.set_column(t.schema.get_field_index("id"), "id", _rewrite(t.column("id"), k, 0))
        parts.append(t)
        lab = labels.set_column(labels.schema.get_field_index("account"), "account",
                                _rewrite(labels.column("account"), k, 1))
        label_parts.append(lab)
    merged = pa.concat_tables(parts).sort_by([("ts", "ascending")])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(merged, out / "signals.parquet", row_group_size=1_000_000)
    pq.write_table(pa.concat_tables(label_parts), out / "labels.parquet")
    return merged.num_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args(argv)
    n = replicate(args.src, args.out, args.copies)
    sys.stdout.write(f"scale: copies={args.copies} signals={n}\n")


if __name__ == "__main__":
    main()

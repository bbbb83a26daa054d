"""Decode a whole poll of records at once: the same contract and the same answers as `decode`, for
consumers that read thousands of records per call (the detection worker).

`decode` builds one pydantic model per record (~6 µs). `decode_batch` parses the poll's JSON in
one call and validates it column by column — every event type's fields checked for all records of
that type together, with checks *derived from the v1 models themselves* (patterns, bounds, enums,
literals, required fields, `extra="forbid"`), so the contract stays the one source of truth. It
only ever *accepts* what it is sure of: any record it cannot vouch for (unusual layout, a null, a
coercion pydantic would make, a float where an int goes, a model validator it has no rule for, a
type with nested fields) goes through `decode` itself, which accepts it or raises the exact
`ContractError` it always raises. So a record is accepted iff `decode` accepts it, with the same
values (tests/sealguard/test_contracts_batch.py fuzzes that with the contract's own cases).

The result per record is a dict of its fields as on the wire (enum values as strings; optional
fields absent when unset, as `encode` writes them — read those with `.get`), or the ContractError.
"""

from __future__ import annotations

import enum
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic_core import from_json

from sealguard.contracts.base import Event
from sealguard.contracts.codec import ALL_EVENT_TYPES, ContractError, decode

Record = dict[str, Any]
ColumnCheck = Callable[[list[Any]], bool]  # True when every value of the column is valid

_INT = frozenset({int})
_BOOL = frozenset({bool})
_STR = frozenset({str})
_DICT = frozenset({dict})
_TYPE = itemgetter("type")
_FLOAT = frozenset({float})
_I64 = (-(2**63), 2**63 - 1)  # larger ints are left to pydantic
# Only simple anchored patterns are turned into column regexes (classes, literals, repeats);
# anything fancier leaves its event type to `decode`.
_SIMPLE_PATTERN = re.compile(r"\^([\w\[\]\-{},.:]*)\$")

# Model validators with a rule here are checked on the record's set of keys (the fast path takes
# no explicit nulls, so a key present means a value set). A model validator without a rule sends
# its event type to `decode` every time.
_LAYOUT_RULES: dict[str, Callable[[frozenset[str]], bool]] = {
    "MessageSent._one_destination": lambda keys: ("recipient" in keys) != ("group" in keys),
    "LimitBreached._one_subject": lambda keys: "account" in keys or "net_bucket" in keys,
}


def _bounds(metadata: Sequence[Any]) -> tuple[Any, Any, Any, Any] | None:
    """(ge, gt, le, lt) from annotated-types metadata; None when there is something else."""
    ge = gt = le = lt = None
    for m in metadata:
        if isinstance(m, Ge):
            ge = m.ge
        elif isinstance(m, Gt):
            gt = m.gt
        elif isinstance(m, Le):
            le = m.le
        elif isinstance(m, Lt):
            lt = m.lt
        else:
            return None
    return ge, gt, le, lt


def _in_bounds(col: list[Any], b: tuple[Any, Any, Any, Any]) -> bool:
    if not col:
        return True
    ge, gt, le, lt = b
    lo, hi = min(col), max(col)
    return (_I64[0] <= lo and hi <= _I64[1] and (ge is None or lo >= ge) and (gt is None or lo > gt)
            and (le is None or hi <= le) and (lt is None or hi < lt))


def _string_check(metadata: Sequence[Any]) -> ColumnCheck | None:
    pattern = max_len = min_len = None
    for m in metadata:
        if type(m).__name__ == "StringConstraints":
            if m.strip_whitespace or m.to_upper or m.to_lower or m.strict or m.ascii_only:
                return None
            pattern, max_len, min_len = m.pattern, m.max_length, m.min_length
        elif isinstance(m, MaxLen):
            max_len = m.max_length
        elif isinstance(m, MinLen):
            min_len = m.min_length
        else:
            return None
    if pattern is None:
        return None  # free text: not in v1; leave it to pydantic
    simple = _SIMPLE_PATTERN.fullmatch(pattern)
    if simple is None:
        return None
    body = simple.group(1)
    fixed = _fixed_classes(body)
    bounded = max_len is not None or min_len is not None
    if fixed is not None and not bounded or (fixed is not None and (max_len or 10**9) >= len(fixed)
                                              and (min_len or 0) <= len(fixed)):
        return _fixed_check(fixed)
    # All values joined by "\n" must be "value\nvalue\n...": one regex call per column. The body's
    # classes never match "\n" (checked below), so a value holding a "\n" adds a line and fails the count.
    if re.search(body, "\n"):
        return None
    column = re.compile(f"(?:{body}\n)*{body}")

    def check(col: list[Any]) -> bool:
        if not col:
            return True
        if not set(map(type, col)) <= _STR:
            return False
        joined = "\n".join(col)
        if joined.count("\n") != len(col) - 1 or column.fullmatch(joined) is None:
            return False
        if bounded:
            lengths = set(map(len, col))
            if (max_len is not None and max(lengths) > max_len) or (min_len is not None and min(lengths) < min_len):
                return False
        return True

    return check


_ATOM = re.compile(r"(\[[^\]\\^]+\]|[A-Za-z0-9_:-])(?:\{(\d+)\})?")


def _fixed_classes(body: str) -> list[bytes] | None:
    """For a fixed-length pattern (literals and [classes], each optionally {n}), the allowed bytes
    at each position; None for anything else (ranges of repeats, dots, ...)."""
    classes: list[bytes] = []
    pos = 0
    while pos < len(body):
        m = _ATOM.match(body, pos)
        if m is None:
            return None
        atom, count = m.group(1), int(m.group(2) or 1)
        if atom.startswith("["):
            inner, chars = atom[1:-1], set()
            i = 0
            while i < len(inner):
                if i + 2 < len(inner) and inner[i + 1] == "-":
                    chars.update(chr(c) for c in range(ord(inner[i]), ord(inner[i + 2]) + 1))
                    i += 3
                else:
                    chars.add(inner[i])
                    i += 1
        else:
            chars = {atom}
        if "\n" in chars or not all(c.isascii() for c in chars):
            return None
        classes += [bytes(sorted(map(ord, chars)))] * count
        pos = m.end()
    return classes or None


def _fixed_check(classes: list[bytes]) -> ColumnCheck:
    """Every value exactly len(classes) ASCII characters, each in its position's class: the column
    joined by "\n" is checked one position at a time (a byte slice with a stride, then a translate
    that deletes the allowed bytes: anything left is wrong) — C loops, no regex engine."""
    width = len(classes)
    stride = width + 1
    positions = list(enumerate(classes))

    def check(col: list[Any]) -> bool:
        if not col:
            return True
        if not set(map(type, col)) <= _STR:
            return False
        n = len(col)
        joined = "\n".join(col)
        if len(joined) != n * stride - 1 or joined.count("\n") != n - 1 or not joined.isascii():
            return False
        # n - 1 newlines in a string of n * stride - 1: a value of another length puts one at a
        # position below `width`, whose class has no "\n".
        data = joined.encode("ascii")
        return not any(data[p::stride].translate(None, allowed) for p, allowed in positions)

    return check


_CHECKS: dict[Any, ColumnCheck | None] = {}


def _column_check(annotation: Any, metadata: Sequence[Any]) -> ColumnCheck | None:
    """A check for one field's column (the fast path takes no nulls); None: not fast-pathable.
    Fields of one type share one check (the worker checks all account ids of a poll at once)."""
    try:
        key = (annotation, tuple(metadata))
        if key in _CHECKS:
            return _CHECKS[key]
    except TypeError:  # unhashable metadata: no sharing
        return _make_check(annotation, metadata)
    check = _CHECKS[key] = _make_check(annotation, metadata)
    return check


def _make_check(annotation: Any, metadata: Sequence[Any]) -> ColumnCheck | None:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = get_args(annotation)
        return _column_check(base, (*metadata, *meta))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1 or len(get_args(annotation)) != 2:
            return None
        return _column_check(args[0], metadata)  # an explicit null fails the check: decode judges it
    if origin is Literal:
        values = get_args(annotation)
        kinds = frozenset(type(v) for v in values)
        allowed = frozenset(values)
        if metadata or not kinds <= {int, str}:
            return None
        return lambda col: set(map(type, col)) <= kinds and set(col) <= allowed
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if metadata or not issubclass(annotation, str):
            return None
        names = frozenset(e.value for e in annotation)
        return lambda col: set(map(type, col)) <= _STR and set(col) <= names
    if annotation is bool:
        return None if metadata else (lambda col: set(map(type, col)) <= _BOOL)
    if annotation is int:
        b = _bounds(metadata)
        if b is None:
            return None
        return lambda col: set(map(type, col)) <= _INT and _in_bounds(col, b)
    if annotation is float:
        b = _bounds(metadata)
        if b is None:
            return None
        # Floats only (an int would become a float in the model: leave that to pydantic), finite.
        return (lambda col: set(map(type, col)) <= _FLOAT and all(map(math.isfinite, col))
                and _in_bounds(col, b))
    if annotation is str:
        return _string_check(metadata)
    return None


class _Spec:
    """What the fast path knows about one event type, derived from its model."""

    def __init__(self, cls: type[Event]) -> None:
        self.cls = cls
        self.fields: dict[str, ColumnCheck] = {}
        self.required: frozenset[str] = frozenset()
        self.must: frozenset[str] = frozenset()  # required, or defaulted by a factory (ts, id): must be sent
        self.rules: list[Callable[[frozenset[str]], bool]] = []
        self.ok = False
        required, must = set(), set()
        for name, info in cls.model_fields.items():
            if info.alias is not None and info.alias != name:
                return
            check = _column_check(info.annotation, info.metadata)
            if check is None:
                return
            self.fields[name] = check
            if info.is_required():
                required.add(name)
            if info.is_required() or info.default_factory is not None:
                must.add(name)
        for name in cls.__pydantic_decorators__.model_validators:
            rule = _LAYOUT_RULES.get(f"{cls.__name__}.{name}")
            if rule is None:
                return
            self.rules.append(rule)
        if cls.__pydantic_decorators__.field_validators or cls.__pydantic_decorators__.root_validators:
            return
        if cls.model_config.get("extra") != "forbid":
            return
        self.required, self.must = frozenset(required), frozenset(must)
        self.ok = True

    def layout_ok(self, keys: tuple[str, ...]) -> bool:
        """Whether records with exactly these keys can be validated column by column."""
        ks = frozenset(keys)
        return (len(ks) == len(keys) and ks <= self.fields.keys() and self.must <= ks
                and all(rule(ks) for rule in self.rules))


_SPECS: dict[str, _Spec] = {}
for _cls in ALL_EVENT_TYPES:
    _spec = _Spec(_cls)
    if _spec.ok:
        _SPECS[_cls.model_fields["type"].default] = _spec
FAST_TYPES: frozenset[str] = frozenset(_SPECS)  # event types the fast path can accept

_LAYOUTS: dict[tuple[Any, tuple[str, ...]], bool] = {}  # (type, keys) -> whether the layout is fast


def _layout(etype: Any, keys: tuple[str, ...]) -> bool:
    key = (etype, keys)
    ok = _LAYOUTS.get(key)
    if ok is None:
        spec = _SPECS.get(etype) if type(etype) is str else None
        ok = spec is not None and spec.layout_ok(keys)
        if len(_LAYOUTS) < 4096:  # a producer sending ever new key orders gets no fast path, not our memory
            _LAYOUTS[key] = ok
    return ok


def _slow(raw: Any) -> Record | ContractError:
    try:
        return decode(raw).model_dump(mode="json", exclude_none=True)
    except ContractError as exc:
        return exc


def _parse_joined(raws: list[bytes]) -> list[Any] | None:
    """The records' JSON values in one parse, or None when the batch does not parse as a whole.

    Each record was checked to start with "{" and end with "}". Joined with "," they parse as one
    array; the caller keeps the result only if every item is accepted — a flat object whose strings
    are all field names or validated ids and codes, none holding a brace, comma or quote. Then every
    record's leading "{" opens an item, so n records giving n items give one item each: a record
    cannot split in two, or merge with its neighbour, to sneak past the contract."""
    try:
        items = from_json(b"[" + b",".join(raws) + b"]", cache_strings="keys")
    except (ValueError, RecursionError):
        return None
    return items if type(items) is list and len(items) == len(raws) else None


def _parse_each(raws: list[bytes]) -> list[Any]:
    items: list[Any] = []
    for raw in raws:
        try:
            items.append(from_json(raw, cache_strings="keys"))
        except (ValueError, RecursionError):
            items.append(None)  # decode says what is wrong with it
    return items


def _columns(keys: tuple[str, ...], group: list[Record]) -> list[tuple[ColumnCheck, Sequence[Any]]] | None:
    """The (check, values) pairs of one layout (records with this tuple of keys); None when the
    layout cannot be fast (no type, an unknown one, a missing or an extra field)."""
    if "type" not in keys:
        return None
    etypes = list(map(_TYPE, group))
    if not set(map(type, etypes)) <= _STR:
        return None
    kinds = set(etypes)
    if len(kinds) > 1:  # one layout shared by several types (group.member_added/removed): each on its own
        pairs: list[tuple[ColumnCheck, Sequence[Any]]] = []
        for t in kinds:
            got = _columns(keys, [r for r in group if r["type"] == t])
            if got is None:
                return None
            pairs += got
        return pairs
    etype = etypes[0]
    if not _layout(etype, keys):
        return None
    fields = _SPECS[etype].fields
    # Every record of the group has exactly these keys in this order: their values in one C-level
    # pass, each column a strided slice of it (a pass per field, `map(itemgetter(k), group)`, cost
    # 1.2x as much; a transposition through per-record tuples, `zip(*...)`, 2.5x).
    flat = list(chain.from_iterable(map(dict.values, group)))
    width = len(keys)
    return [(fields[k], flat[j::width]) for j, k in enumerate(keys) if k != "type"]


def _validate(items: list[Any]) -> list[bool] | None:
    """None when the fast path accepts every item; else whether it accepts each (the rest: `decode`).

    Records are grouped by layout (their tuple of keys), each layout's fields cut into columns, and
    the columns of one kind (every account id of the poll, every ts, ...) checked in one call."""
    if not set(map(type, items)) <= _DICT:
        dicts = [j for j, item in enumerate(items) if type(item) is dict]
        flags = _validate([items[j] for j in dicts]) if dicts else None
        ok = [False] * len(items)
        for n, j in enumerate(dicts):
            ok[j] = flags is None or flags[n]
        return ok
    groups: dict[tuple[str, ...], list[Record]] = {}
    for item in items:
        keys = tuple(item)
        group = groups.get(keys)
        if group is None:
            groups[keys] = [item]
        else:
            group.append(item)
    bad: set[tuple[str, ...]] = set()
    layouts: dict[tuple[str, ...], list[tuple[ColumnCheck, Sequence[Any]]]] = {}
    by_check: dict[ColumnCheck, list[Sequence[Any]]] = {}
    for keys, group in groups.items():
        pairs = _columns(keys, group)
        if pairs is None:
            bad.add(keys)
            continue
        layouts[keys] = pairs
        for check, col in pairs:
            cols = by_check.get(check)
            if cols is None:
                by_check[check] = [col]
            else:
                cols.append(col)
    if not all(check(cols[0] if len(cols) == 1 else list(chain.from_iterable(cols)))
               for check, cols in by_check.items()):
        bad.update(keys for keys, pairs in layouts.items() if not all(check(col) for check, col in pairs))
    return [tuple(item) not in bad for item in items] if bad else None


_FIRST, _LAST = itemgetter(0), itemgetter(-1)
_BYTES, _OPEN, _CLOSE = {bytes}, {ord("{")}, {ord("}")}


def _braced(raws: Sequence[Any]) -> bool:
    """Whether every record is bytes starting with "{" and ending with "}" (three C-level passes)."""
    if not raws:
        return True
    try:
        return (set(map(type, raws)) == _BYTES and set(map(_FIRST, raws)) == _OPEN
                and set(map(_LAST, raws)) == _CLOSE)
    except IndexError:  # an empty record
        return False


def decode_batch(raws: Sequence[Any]) -> list[Record | ContractError]:
    """Decode every record: its fields as a dict (see the module doc) or the ContractError `decode` raises."""
    if _braced(raws):
        items = _parse_joined(raws) if raws else []  # type: ignore[arg-type]
        if items is not None and _validate(items) is None:
            return items  # the common case: one parse, every record accepted
    out: list[Any] = [None] * len(raws)
    where: list[int] = []
    fast: list[bytes] = []
    for i, raw in enumerate(raws):
        if type(raw) is bytes and raw[:1] == b"{" and raw[-1:] == b"}":
            where.append(i)
            fast.append(raw)
        else:
            out[i] = _slow(raw)
    items = _parse_each(fast)  # one by one: `_parse_joined`'s alignment argument needs every item accepted
    flags = _validate(items)
    for j, raw in enumerate(fast):
        out[where[j]] = items[j] if flags is None or flags[j] else _slow(raw)
    return out

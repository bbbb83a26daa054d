"""Feature operators: one statistic per class, its name derived from its parameters.

Updates are batched per account and window (`state.AccountState` adds each event to the shared
channels of a `RollingVector` once); each operator here only knows how to *read* its statistic
from those channels. So the update path costs one expiry check per window and event, and every
feature still has one small class with one definition — the one the parity tests check against
pandas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from detection.features.windows import WINDOWS, Window

if TYPE_CHECKING:
    from detection.features.state import AccountState, FeatureEngine

# Channels of an account's RollingVector (one ring per window).
SENDS = 0        # messages sent, direct and group
DIRECT = 1       # direct (one-to-one) messages sent
FIRST = 2        # direct messages that were a first contact
REPLY = 3        # direct messages to someone who had messaged this account first
RECIPIENTS = 4   # distinct direct recipients (see RollingDistinct)
BLOCKS = 5       # times this account was blocked
REPORTS = 6      # reports against this account, weighted (a verified report weighs VERIFIED_WEIGHT)
STRANGERS = 7    # members added to a group by this account who were not its contacts
GAPS = 8         # inter-send gaps ending in the window (count, sum, sum of squares, in ms)
GAP_SUM = 9
GAP_SQ = 10
RECEIVED = 11    # direct messages received
N_CHANNELS = 12

VERIFIED_WEIGHT = 3  # a report whose named messages the relay verified counts three times
SAVED_WINDOWS: tuple[Window, ...] = (WINDOWS[1], WINDOWS[2])  # saved strangers are counted over 1 h and 24 h


def burstiness(tot: list[float]) -> float:
    """Goh–Barabási burstiness (σ−μ)/(σ+μ) from a window's gap channels; 0 below two gaps."""
    return gap_burstiness(tot[GAPS], tot[GAP_SUM], tot[GAP_SQ])


def gap_burstiness(n: float, gap_sum: float, gap_sq: float) -> float:
    """`burstiness` from the three gap channels themselves (the fused row has them in locals)."""
    if n < 2:
        return 0.0
    mean = gap_sum / n
    var = gap_sq / n - mean * mean
    sd = math.sqrt(var) if var > 0 else 0.0
    return (sd - mean) / (sd + mean) if sd + mean > 0 else 0.0


class Operator:
    """A feature: `name`, and `expr` — one Python expression over `T` (each window's live channel
    sums, in WINDOWS order), `st` (the AccountState), `net` (registrations per bucket) and `ts`.

    The expression is the feature's single definition: `get` evaluates it alone, and
    `compile_row` fuses every operator's expression into one function that fetches each window's
    sums once — the batched form the worker and `build_feature_table` both run.
    """

    name: str
    expr: str
    kind: ClassVar[str] = "operator"

    def get(self, st: AccountState, engine: FeatureEngine, ts: int) -> float:
        fn = self.__dict__.get("_fn")
        if fn is None:
            fn = self._fn = eval(f"lambda T, st, net, ts: {self.expr}", _SCOPE)
        return float(fn(st.totals(ts), st, engine.net, ts))


class Count(Operator):
    """A windowed sum of one channel: `sends_1m`, `blocks_24h`, ..."""

    kind = "count"

    def __init__(self, label: str, channel: int, window: Window) -> None:
        self.name, self.channel, self.window, self.w = f"{label}_{window.name}", channel, window, WINDOWS.index(window)
        self.expr = f"float(T[{self.w}][{channel}])"


class Share(Operator):
    """num / den over one window, 0 when the window holds no `den`: `first_contact_share_1h`."""

    kind = "share"

    def __init__(self, label: str, num: int, den: int, window: Window) -> None:
        self.name, self.num, self.den, self.window = f"{label}_share_{window.name}", num, den, window
        self.w = w = WINDOWS.index(window)
        self.expr = f"(T[{w}][{num}] / T[{w}][{den}] if T[{w}][{den}] else 0.0)"


class PerRecipient(Operator):
    """A received count per distinct recipient reached in the window (at least 1): `blocks_per_recipient_1h`."""

    kind = "per_recipient"

    def __init__(self, label: str, channel: int, window: Window) -> None:
        self.name, self.channel, self.window = f"{label}_per_recipient_{window.name}", channel, window
        self.w = w = WINDOWS.index(window)
        self.expr = f"T[{w}][{channel}] / max(1.0, T[{w}][{RECIPIENTS}])"


class Burstiness(Operator):
    """Goh–Barabási burstiness (σ−μ)/(σ+μ) of inter-send gaps in the window: −1 clockwork, 0 Poisson, →1 bursts.

    Needs at least two gaps; 0 otherwise."""

    kind = "burstiness"

    def __init__(self, window: Window) -> None:
        self.name, self.window, self.w = f"burstiness_{window.name}", window, WINDOWS.index(window)
        self.expr = f"burstiness(T[{self.w}])"


class NetRegistrations(Operator):
    """Registrations from this account's network bucket in the window (farms register in bursts)."""

    kind = "net_registrations"

    def __init__(self, window: Window) -> None:
        self.name, self.window, self.w = f"net_registrations_{window.name}", window, WINDOWS.index(window)
        self.expr = f"net.count(st.net_bucket, {self.w}, ts)"


class AccountAge(Operator):
    """Seconds since registration (or since first seen, for accounts registered before the stream)."""

    kind = "age"
    name = "account_age_s"
    expr = "max(0.0, (ts - (st.first_ts if st.registered_ts is None else st.registered_ts)) / 1000.0)"


class Lifetime(Operator):
    """A lifetime total kept on the account: `sends_total`, `blocks_total`, ..."""

    kind = "lifetime"

    def __init__(self, attr: str) -> None:
        self.name, self.attr = attr, attr
        self.expr = f"float(st.{attr})"


def _operators() -> list[Operator]:
    ops: list[Operator] = []
    for w in WINDOWS:
        ops += [
            Count("sends", SENDS, w),
            Count("recipients", RECIPIENTS, w),
            Count("received", RECEIVED, w),
            Share("first_contact", FIRST, DIRECT, w),
            Share("reply", REPLY, DIRECT, w),
            PerRecipient("blocks", BLOCKS, w),
            PerRecipient("reports", REPORTS, w),
            Count("strangers_added", STRANGERS, w),
            Burstiness(w),
            NetRegistrations(w),
        ]
    ops += [AccountAge(), Lifetime("sends_total"), Lifetime("blocks_total"), Lifetime("reports_total"),
            Lifetime("verified_reports_total")]
    return ops + _behaviour_change_operators() + _network_operators() + _saved_operators()


class Ratio(Operator):
    """One channel per another over one window, the denominator at least 1: `first_contacts_per_recipient_24h`.

    Rate-free, unlike a count: a slow spammer and a fast one show the same ratio."""

    kind = "ratio"

    def __init__(self, label: str, num: int, den: int, window: Window) -> None:
        self.name, self.num, self.den, self.window = f"{label}_{window.name}", num, den, window
        self.w = w = WINDOWS.index(window)
        self.expr = f"T[{w}][{num}] / max(1.0, T[{w}][{den}])"


class Unanswered(Operator):
    """Direct messages in the window to people who had never messaged this account: `unanswered_sends_1h`
    (one-way outreach; a conversation's answers are replies)."""

    kind = "unanswered"

    def __init__(self, window: Window) -> None:
        self.name, self.window, self.w = f"unanswered_sends_{window.name}", window, WINDOWS.index(window)
        self.expr = f"(T[{self.w}][{DIRECT}] - T[{self.w}][{REPLY}])"


class RecentShare(Operator):
    """Change point: the share of a day's count that falls in the last hour, `recipients_1h_of_24h`.

    An account that suddenly behaves unlike its own day (a hijacked account turning to spam) has
    most of its 24-hour recipients in the last hour; one that keeps its habits, a small share."""

    kind = "recent_share"

    def __init__(self, label: str, channel: int, recent: Window, base: Window) -> None:
        self.name = f"{label}_{recent.name}_of_{base.name}"
        r, b = WINDOWS.index(recent), WINDOWS.index(base)
        self.expr = f"(T[{r}][{channel}] / T[{b}][{channel}] if T[{b}][{channel}] else 0.0)"


class Networks(Operator):
    """Networks (net buckets) the account's registration and sessions came from, ever: `networks_total`.

    People use a few (home, mobile); a hijacked account's sessions move to the hijacker's."""

    kind = "networks"
    name = "networks_total"
    expr = "float(st.nets_total)"


class NetworkAge(Operator):
    """Seconds since the account first used the network of its latest registration or session
    (`network_age_s`; 0 before any): small when it has just moved to a network it never used."""

    kind = "network_age"
    name = "network_age_s"
    expr = "((ts - st.nets[st.net_now]) / 1000.0 if st.nets is not None and st.net_now in st.nets else 0.0)"


def _network_operators() -> list[Operator]:
    """Network change (appended after the rate-free set, so older models keep their columns)."""
    return [Networks(), NetworkAge()]


class SavedFirst(Operator):
    """Strangers saved as contacts seconds before the account's first message to them, over one window
    (`saved_first_contacts_24h`): adding someone just before writing hides the relay's `first_contact`,
    so these are the strangers contacted that `first_contacts_W` misses (see `state._saved_first`)."""

    kind = "saved_first"

    def __init__(self, window: Window) -> None:
        self.name, self.window = f"saved_first_contacts_{window.name}", window
        k = SAVED_WINDOWS.index(window)
        self.expr = f"(st.saved[{k}].totals(ts)[0] + 0.0 if st.saved is not None else 0.0)"


def _saved_operators() -> list[Operator]:
    """Saved strangers (issue #4 round four; appended last, so older models keep their columns)."""
    return [SavedFirst(WINDOWS[1]), SavedFirst(WINDOWS[2])]


def _behaviour_change_operators() -> list[Operator]:
    """Rate-free and change-point features (appended after the original set, so old models keep
    their columns): strangers contacted, one-way outreach, objections per stranger, and how much of
    the day's activity is the last hour's."""
    w1h, w24h = WINDOWS[1], WINDOWS[2]
    return [
        Count("first_contacts", FIRST, w1h),
        Count("first_contacts", FIRST, w24h),
        Ratio("first_contacts_per_recipient", FIRST, RECIPIENTS, w24h),
        Unanswered(w1h),
        Unanswered(w24h),
        Ratio("messages_per_recipient", DIRECT, RECIPIENTS, w24h),
        Ratio("blocks_per_first_contact", BLOCKS, FIRST, w24h),
        Ratio("received_per_send", RECEIVED, DIRECT, w24h),
        RecentShare("recipients", RECIPIENTS, w1h, w24h),
        RecentShare("first_contacts", FIRST, w1h, w24h),
    ]


_SCOPE: dict[str, object] = {"burstiness": burstiness, "gap_burstiness": gap_burstiness, "max": max}


_CELL = re.compile(r"\bT\[(\d+)\]\[(\d+)\]")
_FLOAT_OF_CELL = re.compile(r"\bfloat\((T\d+_\d+)\)")
_MAX1_OF_CELL = re.compile(r"\bmax\(1\.0, (T\d+_\d+)\)")
_NET_COUNT = re.compile(r"\bnet\.count\(st\.net_bucket, (\d+), ts\)")
_BURSTINESS = re.compile(r"\bburstiness\(T\[(\d+)\]\)")


def _fused(expr: str) -> str:
    """An operator's expression over local names: `T[w][c]` → `Tw_c` (each window's sums unpacked
    once), and for such a name `float(x)` → `(x + 0.0)`, `max(1.0, x)` → `(x if x > 1.0 else 1.0)`
    — the same values (sums are integers), without a builtin call each."""
    expr = _BURSTINESS.sub(rf"(gap_burstiness(T\1_{GAPS}, T\1_{GAP_SUM}, T\1_{GAP_SQ}) if T\1_{GAPS} >= 2 else 0.0)", expr)
    expr = _CELL.sub(r"T\1_\2", expr)
    expr = _FLOAT_OF_CELL.sub(r"(\1 + 0.0)", expr)
    expr = _MAX1_OF_CELL.sub(r"(\1 if \1 > 1.0 else 1.0)", expr)
    return _NET_COUNT.sub(r"NR[\1]", expr)


def compile_row(ops: tuple[Operator, ...]) -> Callable[[AccountState, FeatureEngine, int], list[float]]:
    """One function computing every operator's feature for an account at `ts` (FEATURE_NAMES order).

    Each window's live sums are computed once into locals (`Tw_c`): the account's running sums
    minus the snapshot of the window's oldest live bucket (`AccountState.totals`, channel by channel,
    only the channels some expression reads); an expression that needs a whole window
    (`burstiness(T[w])`) reads its gap channels (`gap_burstiness`)."""
    exprs = [_fused(op.expr) for op in ops]
    used = {(int(w), int(c)) for w, c in re.findall(r"\bT(\d+)_(\d+)\b", " ".join(exprs))}
    if any(re.search(r"\bT\[", e) for e in exprs):  # pragma: no cover - every expression reads cells
        raise ValueError("an operator reads a whole window: fuse it into cells")
    chans = ", ".join(f"C{c}" for c in range(N_CHANNELS))
    snaps = ", ".join(f"S{c}" for c in range(N_CHANNELS))
    lines = ["def row(st, engine, ts):", "    st.expire(ts)", f"    {chans}, = cum = st.cum", "    wins = st.wins"]
    for w in range(len(WINDOWS)):
        lines += [f"    win = wins[{w}]", "    ring = win.ring", f"    {snaps}, = ring[1] if ring else cum"]
        lines += [f"    T{w}_{c} = " + ("win.dtot" if c == RECIPIENTS else f"C{c} - S{c}")
                  for c in range(N_CHANNELS) if (w, c) in used]
    lines.append("    net = engine.net")
    if any("NR[" in e for e in exprs):
        # `net.count(st.net_bucket, w, ts)` of every window: one `net.counts` read (NR[w]) for the row.
        lines.append("    NR = net.counts(st.net_bucket, ts)")
    body = ",\n        ".join(exprs)
    src = "\n".join(lines) + f"\n    return [\n        {body}]\n"
    scope = dict(_SCOPE)
    exec(compile(src, "<detection.features.row>", "exec"), scope)  # noqa: S102 - our own expressions
    return scope["row"]  # type: ignore[return-value]


OPERATORS: tuple[Operator, ...] = tuple(_operators())
feature_row = compile_row(OPERATORS)
FEATURE_NAMES: tuple[str, ...] = tuple(op.name for op in OPERATORS)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}

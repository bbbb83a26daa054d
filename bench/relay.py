"""`sealguard bench relay --users U --messages N`: our relay against mosquitto, same load, same machine.

What it does (issue 3, "Benchmark"):
1. starts a live broker (an EmbeddedBroker, unless SEALGUARD_KAFKA names one) and the relay as its
   own process (`python -m sealguard relay`, signals going to that broker), so its CPU and RSS
   can be read from /proc;
2. starts load processes (`bench/_load.py`; several, because U=10,000 sockets plus our own do not
   fit one process's 20,000 open files and the load must not be the bottleneck) that connect U
   users from distinct 127.x.y.1 source addresses; relay users register and log in with real
   vodozemac identities;
3. connects the same U users, from the same load processes, to mosquitto on 127.0.0.1:1883
   (MQTT 3.1.1, QoS 0, one topic per user), and measures per server: RSS with none and with U
   idle authenticated users; `--rounds` closed loops (3 by default) of N messages of 100 opaque
   bytes between random online pairs with at most `--inflight` in flight (delivered msgs/s,
   server CPU per delivered message, latency send → recipient receipt p50/p99), alternating
   relay, mosquitto, relay, ... so that the machine's minute-to-minute noise falls on both alike,
   each server reporting its median round; then, alternating likewise, open loops at 50% of its
   rate (the median round's p99). The relay is stopped (SIGSTOP) while mosquitto is timed, so its idle timers cost mosquitto nothing;
4. reads `signals_dropped` from the relay's /metrics and prints the figures line.

Figures other than the issue's line (mosquitto's rate, p50/p99 and RSS per connection, the load
side's schedule lag) go to stderr and, with `--json PATH`, to a file. `--profile PATH` records the
relay with py-spy during an extra closed-loop run after the measured one (so sampling does not
skew the figures) and logs where its time goes. `--floor` and `--floor-native` measure the
protocol's floor (no relay logic) in Python and in C in the same run; `--syscalls` counts every
server's syscalls per message with perf over an extra closed loop.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench._proc import cpu_seconds, metric_sum, percentile, raise_nofile, rss_bytes, thread_cpu
from sealguard.cli.app import print_figures
from sealguard.process import die_with_parent

log = logging.getLogger("bench.relay")
REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"relay: listening=(\S+):(\d+) metrics=(\S+)")


class BenchError(RuntimeError):
    """The benchmark could not run; the message says which step failed."""


# -- processes -------------------------------------------------------------------------------

class Loader:
    """One load process and its line-per-command pipe."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc = subprocess.Popen([sys.executable, "-m", "bench._load"], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
                                     preexec_fn=die_with_parent)  # noqa: PLW1509 - only a prctl; no orphans

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"load process {self.index} died (exit code {self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        if out.get("error") and "connected" not in out:
            raise BenchError(f"load process {self.index}: {out['error']}")
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="exit")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def all_do(loaders: list[Loader], cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send one command to every loader at once, then collect every reply."""
    for ld, cmd in zip(loaders, cmds):
        ld.send(**cmd)
    return [ld.reply() for ld in loaders]


class RelayProcess:
    """`python -m sealguard relay` in its own process; its log goes to a file in the state dir."""

    def __init__(self, state_dir: Path, kafka: str, extra_env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        env = dict(os.environ)
        env.update({"SEALGUARD_STATE_DIR": str(state_dir), "SEALGUARD_KAFKA": kafka,
                    "SEALGUARD_RELAY_HOST": "127.0.0.1", "SEALGUARD_RELAY_PORT": "0"})
        env.update(extra_env or {})
        env.pop("SEALGUARD_DB_URL", None)  # a fresh SQLite file in the state dir, never someone's database
        self.log_path = state_dir / "relay.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command or [sys.executable, "-m", "sealguard", "relay"], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True,
                                     preexec_fn=die_with_parent)  # noqa: PLW1509 - only a prctl; no orphans
        self.host = ""
        self.port = 0
        self.metrics_url = ""

    def wait_listening(self, timeout: float = 90.0) -> None:
        """Read stdout until `relay: listening=HOST:PORT metrics=URL ...`; keep draining it after."""
        assert self.proc.stdout is not None
        found: list[re.Match[str]] = []
        ready = threading.Event()

        def pump(stream: IO[str]) -> None:
            for line in stream:
                m = _LISTENING.search(line)
                if m and not found:
                    found.append(m)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        if not ready.wait(timeout) or not found:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"the relay did not print its listening line within {timeout:.0f}s "
                             f"(exit code {self.proc.poll()}); its log ends:\n{tail}")
        m = found[0]
        self.host, self.port, self.metrics_url = m.group(1), int(m.group(2)), m.group(3)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            return str(resp.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class PySpy:
    """py-spy sampling a running process in raw (collapsed stack) format."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        # --gil: only samples holding the GIL, i.e. Python (and C called from it) on CPU, not idle waits
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                                      "--gil", "--output", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            log.warning("py-spy wrote no profile: %s", (err or "").strip()[-500:])


def python_thread_names(pid: int) -> dict[str, str]:
    """Native thread id → Python thread name (MainThread, the DB executor, signal-emitter...),
    read with `py-spy dump`; empty when py-spy is missing or the process is not Python."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        out = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {m.group(1): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]+)"', out, re.MULTILINE)}


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        leaf = frames[-1]
        self_n[leaf] = self_n.get(leaf, 0) + count
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + count
    if not total:
        return "empty profile"
    lines = [f"{total} samples", "self%  function (top by self time)"]
    for f, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:5.1f}  {f}")
    lines.append("incl%  function (top by inclusive time)")
    for f, n in sorted(incl_n.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:5.1f}  {f}")
    return "\n".join(lines)


# -- contention: is a tail the server's or the machine's? ------------------------------------------

def cpu_pressure_us() -> int | None:
    """Microseconds during which some runnable task waited for a CPU (`/proc/pressure/cpu`, PSI
    "some" total), machine-wide; None without PSI."""
    try:
        with open("/proc/pressure/cpu", "rb") as f:
            for line in f:
                if line.startswith(b"some "):
                    return int(line.rsplit(b"total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def involuntary_switches(pid: int) -> int | None:
    """Times the server's threads were preempted while runnable (sum of every thread's
    `nonvoluntary_ctxt_switches`): the machine taking the CPU away from the server."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"nonvoluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


class Contention:
    """CPU pressure (share of the phase's wall time some task waited for a CPU) and the server's
    preemptions per second over one phase. Near 100% pressure and hundreds of preemptions a
    second mean the machine, not the server, set that phase's tail latency."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.psi0 = cpu_pressure_us()
        self.sw0 = involuntary_switches(pid)
        self.load0 = os.getloadavg()[0]

    def figures(self, prefix: str) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        psi, sw = cpu_pressure_us(), involuntary_switches(self.pid)
        return {
            f"{prefix}cpu_pressure_pct": math.nan if psi is None or self.psi0 is None
            else 100 * (psi - self.psi0) / 1e6 / wall,
            f"{prefix}server_preempted_per_s": math.nan if sw is None or self.sw0 is None else (sw - self.sw0) / wall,
            f"{prefix}loadavg": max(self.load0, os.getloadavg()[0]),
        }


_STALL_METRICS = {"loop_stalls": "loop_stalls", "loop_stall_ms": "loop_stall_seconds", "gc_pauses": "gc_pauses",
                  "gc_ms": "gc_pause_seconds"}


class RelayStalls:
    """The relay's own stalls over one phase, from its /metrics (relay/server/stalls.py): event-loop
    stalls over 5 ms (count, summed lateness) and garbage collections over 1 ms (count, summed
    time of all collections). Nothing when there is no such metrics endpoint (the floor, mosquitto)."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.t0 = self._read()

    def _read(self) -> dict[str, float] | None:
        if not self.url:
            return None
        try:
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        got = {k: metric_sum(text, name) for k, name in _STALL_METRICS.items()}
        return None if any(v is None for v in got.values()) else {k: float(v or 0.0) for k, v in got.items()}

    def figures(self, prefix: str) -> dict[str, float]:
        t1 = self._read()
        if self.t0 is None or t1 is None:
            return {}
        scale = {"loop_stall_ms": 1000.0, "gc_ms": 1000.0}
        return {f"{prefix}relay_{k}": (t1[k] - self.t0[k]) * scale.get(k, 1.0) for k in t1}


def user_system_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process in seconds: user space (the server's own code: Python,
    uvloop, libc, SQLite, librdkafka) apart from the kernel (the syscalls: TCP on loopback, epoll),
    which is the part no server code can make cheaper per syscall."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return math.nan, math.nan
    fields = raw[raw.rindex(b")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


# -- one server ------------------------------------------------------------------------------

def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _latencies(replies: list[dict[str, Any]]) -> list[float]:
    lat = array("q")
    for r in replies:
        lat.frombytes(base64.b64decode(r["lat_ns"]))
    return sorted(v / 1e6 for v in lat)


def _run(loaders: list[Loader], count: int, *, inflight: int = 0, rate: float = 0.0, timeout: float = 300.0,
         target: str | None = None) -> tuple[list[dict[str, Any]], float, list[float]]:
    """One load phase on every loader (over its users of `target`; by default the ones connected
    last); returns replies, wall seconds (first send → last receipt), and sorted latencies in ms."""
    k = len(loaders)
    counts = _split(count, k)
    windows = _split(inflight, k) if inflight else [0] * k
    cmds = [{"cmd": "run", "count": c, "inflight": max(1, w) if inflight else 0, "rate": rate / k if rate else 0.0,
             "timeout": timeout, **({"target": target} if target else {})} for c, w in zip(counts, windows)]
    replies = all_do(loaders, cmds)
    for i, r in enumerate(replies):
        if r.get("timed_out"):
            log.warning("load %d timed out: sent=%s received=%s acked=%s errors=%s last_error=%s", i, r["sent"],
                        r["received"], r["acked"], r["errors"], r["last_error"])
        elif r.get("errors"):
            log.warning("load %d saw %s error frames, last: %s", i, r["errors"], r["last_error"])
    wall = (max(r["t_end"] for r in replies) - min(r["t_start"] for r in replies)) / 1e9
    return replies, wall, _latencies(replies)


@dataclass
class Server:
    """A server under measurement and its figures. `own` servers are this bench's children: they are
    stopped (SIGSTOP) while another server is timed, so their timers take no CPU from it."""

    name: str  # in the logs: relay, floor, floor-native-write, mosquitto
    target: str  # what the load speaks to it: "relay" or "mqtt"
    pid: int
    host: str
    port: int
    run_id: str
    metrics_url: str | None = None
    own: bool = True
    out: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # closed loops
    half_rounds: list[dict[str, Any]] = field(default_factory=list)  # open loops at half the rate


@contextmanager
def alone(server: Server, others: list[Server]) -> Iterator[None]:
    """Time `server` with the bench's other servers stopped (mosquitto is the machine's: never stopped)."""
    stopped = [o for o in others if o is not server and o.own]
    for o in stopped:
        os.kill(o.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for o in stopped:
            os.kill(o.pid, signal.SIGCONT)


def connect_idle(server: Server, loaders: list[Loader], args: argparse.Namespace) -> None:
    """Connect the server's U users; RSS with none and with U idle; then a warm-up loop."""
    k = len(loaders)
    time.sleep(1.0)
    pid = server.pid
    rss_none = rss_bytes(pid)
    counts = _split(args.users, k)
    firsts = [sum(counts[:i]) for i in range(k)]
    t0 = time.monotonic()
    replies = all_do(loaders, [{"cmd": "connect", "target": server.target, "host": server.host, "port": server.port,
                                "first": f, "count": c, "concurrency": args.concurrency, "run_id": server.run_id,
                                "keepalive_s": args.keepalive, "partners": args.partners}
                               for f, c in zip(firsts, counts)])
    connected = sum(r["connected"] for r in replies)
    failed = sum(r["failed"] for r in replies)
    log.info("%s: %d users connected in %.1fs (%d failed%s)", server.name, connected, time.monotonic() - t0, failed,
             ": " + next(r["error"] for r in replies if r["error"]) if failed else "")
    if connected < 2 or failed > args.users * 0.01:
        raise BenchError(f"{server.name}: only {connected} of {args.users} users connected; first error: "
                         f"{next((r['error'] for r in replies if r['error']), '')}")
    idle0, idle_threads0 = cpu_seconds(pid), thread_cpu(pid)
    time.sleep(3.0)
    rss_idle = rss_bytes(pid)
    idle_cpu_pct = 100 * (cpu_seconds(pid) - idle0) / 3.0  # what U idle users cost (timers, sweeps)
    idle_threads1 = thread_cpu(pid)
    server.out.update({"connected": connected, "rss_none": rss_none, "rss_idle": rss_idle,
                       "rss_per_conn": (rss_idle - rss_none) / connected, "idle_cpu_pct": idle_cpu_pct,
                       "idle_thread_cpu_pct": {k: round(100 * (v - idle_threads0.get(k, 0.0)) / 3.0, 2)
                                               for k, v in idle_threads1.items() if v > idle_threads0.get(k, 0.0)}})
    _run(loaders, min(max(args.messages // 10, 100), 5000), inflight=args.inflight, target=server.target)


def closed_round(server: Server, loaders: list[Loader], args: argparse.Namespace) -> dict[str, Any]:
    """One measured closed loop of N messages: rate, CPU per delivered message (and per thread), latency."""
    pid = server.pid
    threads0 = thread_cpu(pid)
    cpu0 = cpu_seconds(pid)
    us0 = user_system_seconds(pid)
    contention = Contention(pid)
    stalls = RelayStalls(server.metrics_url)
    replies, wall, lat = _run(loaders, args.messages, inflight=args.inflight, target=server.target)
    cpu1 = cpu_seconds(pid)
    us1 = user_system_seconds(pid)
    threads1 = thread_cpu(pid)
    out: dict[str, Any] = {**contention.figures(""), **stalls.figures("")}
    delivered = sum(r["received"] for r in replies)
    if delivered:
        out.update(user_us_per_msg=(us1[0] - us0[0]) * 1e6 / delivered,
                   kernel_us_per_msg=(us1[1] - us0[1]) * 1e6 / delivered)
    out.update(delivered=delivered, wall_s=wall, msgs_per_s=delivered / wall if wall > 0 else math.nan,
               cpu_us_per_msg=(cpu1 - cpu0) * 1e6 / delivered if delivered else math.nan,
               p50_ms=percentile(lat, 50), p99_ms=percentile(lat, 99),
               lost=args.messages - delivered, max_inflight=sum(r["max_inflight"] for r in replies),
               load_cpu_us_per_msg=sum(r["load_cpu_s"] for r in replies) * 1e6 / delivered if delivered else math.nan,
               load_busiest_pct=100 * max(r["load_cpu_s"] for r in replies) / wall if wall > 0 else math.nan)
    names = python_thread_names(pid) if server.target == "relay" else {}

    def label(key: str) -> str:
        _comm, _, tid = key.rpartition("/")
        return f"{names[tid]}/{tid}" if tid in names else key

    per_thread = sorted(((label(name), (threads1[name] - threads0.get(name, 0.0)) * 1e6 / max(1, delivered))
                         for name in threads1), key=lambda kv: -kv[1])
    out["thread_cpu_us_per_msg"] = {name: round(us, 2) for name, us in per_thread if us > 0}
    log.info("%s closed loop %d: cpu_us_per_msg=%.1f (kernel %.1f + user %.1f) msgs_per_s=%.0f p99_ms=%.2f, "
             "CPU pressure %.0f%%", server.name, len(server.rounds) + 1, out["cpu_us_per_msg"],
             out.get("kernel_us_per_msg", math.nan), out.get("user_us_per_msg", math.nan), out["msgs_per_s"],
             out["p99_ms"], out.get("cpu_pressure_pct", math.nan))
    server.rounds.append(out)
    return out


def settle(server: Server, loaders: list[Loader], args: argparse.Namespace, profile: Path | None = None) -> None:
    """The server's closed-loop figures from its median round (by CPU per message); then, with
    --syscalls, its syscalls per message and, with --profile, a py-spy profile, each over an extra
    closed loop."""
    ranked = sorted(server.rounds, key=lambda r: r["cpu_us_per_msg"] if math.isfinite(r["cpu_us_per_msg"]) else 1e18)
    out = server.out
    out.update(ranked[len(ranked) // 2])
    out["rounds_cpu_us_per_msg"] = [round(r["cpu_us_per_msg"], 2) for r in server.rounds]
    if getattr(args, "syscalls", False):
        out.update(count_syscalls(server.pid, loaders, args, server.name, server.target))
    if profile is not None:
        spy = PySpy(server.pid, profile)
        _run(loaders, args.messages, inflight=args.inflight, target=server.target)
        spy.stop()


def half_round(server: Server, loaders: list[Loader], args: argparse.Namespace) -> None:
    """One open loop at half the rate of the server's median closed round: its p99."""
    pid = server.pid
    half_rate = server.out["msgs_per_s"] / 2
    half_n = args.half_messages if args.half_messages is not None else args.messages
    if not (half_n > 0 and half_rate > 0):
        return
    cpu2 = cpu_seconds(pid)
    contention = Contention(pid)
    stalls = RelayStalls(server.metrics_url)
    replies, wall_h, lat_h = _run(loaders, half_n, rate=half_rate, target=server.target)
    cpu3 = cpu_seconds(pid)
    got = sum(r["received"] for r in replies)
    out: dict[str, Any] = {**contention.figures("half_"), **stalls.figures("half_")}
    out.update(half_rate=half_rate, half_achieved=got / wall_h if wall_h > 0 else math.nan,
               half_p50_ms=percentile(lat_h, 50), half_p99_ms=percentile(lat_h, 99),
               half_cpu_us_per_msg=(cpu3 - cpu2) * 1e6 / got if got else math.nan,
               half_lost=half_n - got, half_max_lag_ms=max(r["max_lag_ms"] for r in replies))
    log.info("%s open loop %d at %.0f msgs/s: p99_ms=%.2f, CPU pressure %.0f%%", server.name,
             len(server.half_rounds) + 1, half_rate, out["half_p99_ms"], out.get("half_cpu_pressure_pct", math.nan))
    server.half_rounds.append(out)


def finish(server: Server, loaders: list[Loader]) -> None:
    """The half-load figures from the median open loop (by p99); then the server's users leave."""
    out = server.out
    if server.half_rounds:
        ranked = sorted(server.half_rounds, key=lambda r: r["half_p99_ms"] if math.isfinite(r["half_p99_ms"]) else 1e18)
        out.update(ranked[len(ranked) // 2])
        out["rounds_half_p99_ms"] = [round(r["half_p99_ms"], 3) for r in server.half_rounds]
    else:
        out.update(half_rate=math.nan, half_p99_ms=math.nan)
    all_do(loaders, [{"cmd": "close", "target": server.target}] * len(loaders))
    log.info("%s figures: %s", server.name, json.dumps({k2: round(v, 3) if isinstance(v, float) else v
                                                        for k2, v in out.items()}))


def measure(servers: list[Server], loaders: list[Loader], args: argparse.Namespace,
            profile: Path | None = None) -> None:
    """Every figure of each server (RSS per idle user, closed-loop rate/CPU/latency, half-load p99).
    With several servers, each one's users stay connected and the closed loops, then the open
    loops, alternate between them, `--rounds` each: the machine's minute-to-minute noise (±25%
    here) then falls on every server alike, and each reports its median round. Each is timed with
    the others stopped."""
    for s in servers:
        with alone(s, servers):
            connect_idle(s, loaders, args)
    for _ in range(args.rounds):
        for s in servers:
            with alone(s, servers):
                closed_round(s, loaders, args)
    for s in servers:
        with alone(s, servers):
            settle(s, loaders, args, profile if s.name == "relay" else None)
    for _ in range(args.rounds):
        for s in servers:
            with alone(s, servers):
                half_round(s, loaders, args)
    for s in servers:
        finish(s, loaders)


# The syscalls a message server makes, each counted by its own tracepoint; `raw_syscalls:sys_enter`
# counts all of them, the rest is "other". (All ~350 `syscalls:sys_enter_*` take perf 14 s to set
# up and tear down here.)
_SYSCALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "epoll_wait",
             "epoll_pwait", "epoll_ctl", "futex", "poll", "ppoll", "clock_nanosleep", "getrandom", "accept4",
             "close", "mmap", "munmap", "brk", "madvise", "fsync", "fdatasync", "pwrite64", "pread64", "lseek",
             "openat", "getpid", "sched_yield", "rt_sigprocmask")


def count_syscalls(pid: int, loaders: list[Loader], args: argparse.Namespace, name: str,
                   target: str | None = None) -> dict[str, Any]:
    """Syscalls per delivered message of one server: `perf stat -e syscalls:sys_enter_X ... -e
    raw_syscalls:sys_enter -p PID` (every thread) over an extra closed loop after the measured one,
    so the tracepoints cost the measured figures nothing. Empty (and a log line saying why) when
    perf cannot count them."""
    perf = shutil.which("perf")
    if perf is None:
        log.warning("%s: syscalls not counted: no perf on this machine", name)
        return {}
    n = min(args.messages, 20_000)
    with tempfile.NamedTemporaryFile(prefix="sg-perf-", suffix=".csv", delete=False) as f:
        out_path = Path(f.name)
    try:
        events = [a for sc in _SYSCALLS for a in ("-e", f"syscalls:sys_enter_{sc}")]
        proc = subprocess.Popen([perf, "stat", "-x,", "-o", str(out_path), *events, "-e", "raw_syscalls:sys_enter",
                                 "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # perf opens ~350 tracepoints per thread before it counts
        if proc.poll() is not None:
            log.warning("%s: syscalls not counted: perf stat exited: %s", name, (proc.stderr.read() if proc.stderr
                                                                                  else "")[-500:])
            return {}
        replies, _wall, _lat = _run(loaders, n, inflight=args.inflight, target=target)
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        counts: dict[str, int] = {}
        for line in out_path.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].isdigit() and int(parts[0]):
                counts[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0])
    finally:
        out_path.unlink(missing_ok=True)
    delivered = sum(r["received"] for r in replies)
    if not delivered or not counts:
        log.warning("%s: syscalls not counted (delivered %d, perf counted %d kinds)", name, delivered, len(counts))
        return {}
    total_n = counts.pop("raw_syscalls:sys_enter", 0)
    other = total_n - sum(counts.values())
    if other > 0:
        counts["other"] = other
    per = {k: v / delivered for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    total = total_n / delivered
    log.info("%s syscalls per message (perf, %d messages): %.2f in all; %s", name, delivered, total,
             ", ".join(f"{k} {v:.2f}" for k, v in per.items() if v >= 0.01))
    return {"syscalls_per_msg": total, "syscalls_by_kind_per_msg": {k: round(v, 3) for k, v in per.items()},
            "syscalls_msgs": delivered}


NATIVE_FLOOR_SRC = REPO / "bench" / "_floor_native.c"
NATIVE_VARIANTS = {"write": [], "coalesce": ["--coalesce"], "uring": ["--uring"]}
NATIVE_GROUPS = {"both": ["write", "coalesce"], "all": list(NATIVE_VARIANTS)}  # --floor-native values that run several


def compile_native_floor(dest: Path) -> Path:
    """bench/_floor_native.c built with the machine's gcc (-O2) into `dest`; returns the binary."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BenchError("--floor-native needs a C compiler (gcc or cc on PATH) to build bench/_floor_native.c")
    exe = dest / "floor_native"
    proc = subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(NATIVE_FLOOR_SRC)], capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise BenchError(f"gcc could not build {NATIVE_FLOOR_SRC}: {proc.stderr.strip()[-2000:]}")
    return exe


# -- the command -----------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sealguard bench relay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000, help="authenticated users connected at once")
    ap.add_argument("--messages", type=int, default=100_000, help="messages in the closed-loop run")
    ap.add_argument("--inflight", type=int, default=1000, help="most messages in flight at once (all loaders)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measured closed loops of --messages per server, alternating between the relay and "
                         "mosquitto; each reports its median round")
    ap.add_argument("--half-messages", type=int, default=None,
                    help="messages in the open-loop run at 50%% of the max (default: --messages)")
    ap.add_argument("--load-procs", type=int, default=0, help="load processes (0: enough for --users, at least 2)")
    ap.add_argument("--concurrency", type=int, default=100, help="handshakes in progress per load process")
    ap.add_argument("--partners", type=int, default=10,
                    help="conversations per user: each message goes from a random user to one of its partners")
    ap.add_argument("--keepalive", type=float, default=50.0,
                    help="seconds between pings of each idle relay user (keeps it inside the idle timeout)")
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--skip-relay", action="store_true", help="only mosquitto (to test the harness)")
    ap.add_argument("--skip-mosquitto", action="store_true", help="only the relay")
    ap.add_argument("--relay-cmd", default=None,
                    help="command that starts the relay (default: python -m sealguard relay); it must print "
                         "`relay: listening=HOST:PORT metrics=URL` and read SEALGUARD_* settings")
    ap.add_argument("--floor", action="store_true",
                    help="also measure the protocol's floor (bench/_floor_relay.py --coalesce) with the same load, "
                         "between the relay and mosquitto (figures on stderr and in --json)")
    ap.add_argument("--floor-native", nargs="?", const="both", default=None,
                    choices=[*NATIVE_GROUPS, *NATIVE_VARIANTS],
                    help="also measure the protocol's floor in C (bench/_floor_native.c, built with gcc -O2 into a "
                         "temp dir): `write` one write per frame, `coalesce` one write per connection per epoll "
                         "iteration, `uring` io_uring (one SEND per connection per iteration, multishot RECV), "
                         "`both` (the default: write and coalesce) or `all` one after the other; figures on stderr "
                         "and in --json")
    ap.add_argument("--syscalls", action="store_true",
                    help="count each server's syscalls per message (perf stat, every thread) over an extra "
                         "closed loop of min(--messages, 20000) after its measured one")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of the relay, written here")
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    args = ap.parse_args(argv)
    if args.users < 2:
        ap.error(f"--users must be at least 2 (got {args.users}): messages go between two online users")
    if args.messages < 1:
        ap.error(f"--messages must be positive (got {args.messages})")
    if args.rounds < 1:
        ap.error(f"--rounds must be positive (got {args.rounds})")
    if args.inflight < 1:
        ap.error(f"--inflight must be positive (got {args.inflight})")
    if args.users > 62_500:
        ap.error(f"--users {args.users} exceeds the 62,500 distinct source /24s the load side can bind")
    if not args.load_procs:
        args.load_procs = max(2, math.ceil(args.users / 6000))
    if args.users < 2 * args.load_procs:
        args.load_procs = max(1, args.users // 2)
    return args


def code_version() -> str:
    """The commit the relay ran from, `+dirty` when relay/ had uncommitted changes: figures of a
    relay under active development are only comparable with their code version."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "relay"], cwd=REPO, capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def mosquitto_pid() -> int:
    try:
        out = subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        out = ""
    pids = [int(p) for p in out.split()]
    if not pids:
        raise BenchError("mosquitto is not running (pgrep -x mosquitto found nothing); it should listen on "
                         "127.0.0.1:1883, or pass --skip-mosquitto")
    return pids[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    run_id = "m" + os.urandom(4).hex()
    version = code_version()
    log.info("relay code: %s", version)
    relay: dict[str, Any] = {}
    floor: dict[str, Any] = {}
    native: dict[str, dict[str, Any]] = {}
    mosq: dict[str, Any] = {}
    signals_dropped: float | None = None
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sg-bench-relay-")))
        loaders = [Loader(i) for i in range(args.load_procs)]
        stack.callback(lambda: [ld.stop() for ld in loaders])
        log.info("%d load processes for %d users", len(loaders), args.users)
        pair: list[Server] = []  # the relay and mosquitto, timed in alternation
        server = None
        if not args.skip_relay:
            kafka = os.environ.get("SEALGUARD_KAFKA")
            if not kafka:
                from sealguard.broker import EmbeddedBroker
                from sealguard.settings import Settings

                broker = stack.enter_context(EmbeddedBroker(Settings(state_dir=state)))
                kafka = broker.bootstrap
            server = RelayProcess(state, kafka, command=args.relay_cmd.split() if args.relay_cmd else None)
            stack.callback(server.stop)
            server.wait_listening()
            log.info("relay pid %d listening on %s:%d, metrics %s", server.proc.pid, server.host, server.port,
                     server.metrics_url)
            pair.append(Server("relay", "relay", server.proc.pid, server.host, server.port, run_id,
                               metrics_url=server.metrics_url))
        if not args.skip_mosquitto:
            pair.append(Server("mosquitto", "mqtt", mosquitto_pid(), args.mqtt_host, args.mqtt_port, run_id + "q",
                               own=False))
        measure(pair, loaders, args, profile=args.profile)
        relay = next((s.out for s in pair if s.name == "relay"), {})
        mosq = next((s.out for s in pair if s.name == "mosquitto"), {})
        if server is not None:
            try:
                signals_dropped = metric_sum(server.metrics(), "signals_dropped")
            except OSError as exc:
                log.warning("could not read the relay's metrics at %s: %s", server.metrics_url, exc)
            if signals_dropped is None:
                log.warning("the relay's /metrics has no signals_dropped metric")
            if args.profile is not None and args.profile.exists():
                log.info("relay profile (py-spy, %s):\n%s", args.profile, summarize_profile(args.profile))
        if args.floor:
            # The protocol's floor under the same load processes, after the relay and mosquitto: how
            # much of the relay's cost is the four-frame protocol on uvloop, how much its logic.
            fstate = state / "floor"
            fstate.mkdir()
            fserver = RelayProcess(fstate, "", command=[sys.executable, "-m", "bench._floor_relay", "--coalesce"])
            stack.callback(fserver.stop)
            fserver.wait_listening()
            fs = Server("floor", "relay", fserver.proc.pid, fserver.host, fserver.port, run_id + "f")
            measure([fs], loaders, args)
            floor = fs.out
            fserver.stop()
        if args.floor_native:
            # The same floor in C (epoll, non-blocking sockets, TCP_NODELAY): the least CPU per message
            # any implementation of the four-frame protocol costs here, measured with the same load.
            exe = compile_native_floor(state)
            for variant in NATIVE_GROUPS.get(args.floor_native, [args.floor_native]):
                nstate = state / f"native-{variant}"
                nstate.mkdir()
                nserver = RelayProcess(nstate, "", command=[str(exe), *NATIVE_VARIANTS[variant]])
                stack.callback(nserver.stop)
                nserver.wait_listening()
                ns = Server(f"floor-native-{variant}", "relay", nserver.proc.pid, nserver.host, nserver.port,
                            run_id + "n" + variant[0])
                measure([ns], loaders, args)
                native[variant] = ns.out
                nserver.stop()
    figures: dict[str, Any] = {
        "users": args.users, "msgs": args.messages,
        "msgs_per_s": _int(relay.get("msgs_per_s")), "server_cpu_us_per_msg": relay.get("cpu_us_per_msg"),
        "p50_ms": relay.get("p50_ms"), "p99_ms": relay.get("p99_ms"),
        "half_load_p99_ms": relay.get("half_p99_ms"), "rss_bytes_per_idle_conn": _int(relay.get("rss_per_conn")),
        "signals_dropped": None if signals_dropped is None else int(signals_dropped),
        "mosquitto_cpu_us_per_msg": mosq.get("cpu_us_per_msg"),
        "mosquitto_half_load_p99_ms": mosq.get("half_p99_ms"),
    }
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": figures, "relay_code": version, "relay": relay, "floor": floor,
                                         "floor_native": native, "mosquitto": mosq}, indent=2, default=str))
    if floor:
        log.info("floor (bench/_floor_relay.py --coalesce, same run): cpu_us_per_msg=%.1f msgs_per_s=%.0f "
                 "half_load_p99_ms=%.2f rss_bytes_per_idle_conn=%.0f; relay/floor=%.2f floor/mosquitto=%.2f",
                 floor["cpu_us_per_msg"], floor["msgs_per_s"], floor.get("half_p99_ms", math.nan),
                 floor["rss_per_conn"], _ratio(relay.get("cpu_us_per_msg"), floor["cpu_us_per_msg"]),
                 _ratio(floor["cpu_us_per_msg"], mosq.get("cpu_us_per_msg")))
    mcpu = mosq.get("cpu_us_per_msg")
    for variant, d in native.items():
        log.info("floor-native-%s (bench/_floor_native.c, same run): cpu_us_per_msg=%.1f (kernel %.1f + user %.1f) "
                 "msgs_per_s=%.0f half_load_p99_ms=%.2f rss_bytes_per_idle_conn=%.0f; native/mosquitto=%.2f "
                 "(the must: server_cpu_us_per_msg <= 1.5 x mosquitto = %.1f), relay/native=%.2f, floor/native=%.2f",
                 variant, d["cpu_us_per_msg"], d.get("kernel_us_per_msg", math.nan), d.get("user_us_per_msg", math.nan),
                 d["msgs_per_s"], d.get("half_p99_ms", math.nan), d["rss_per_conn"], _ratio(d["cpu_us_per_msg"], mcpu),
                 1.5 * mcpu if mcpu is not None else math.nan, _ratio(relay.get("cpu_us_per_msg"), d["cpu_us_per_msg"]),
                 _ratio(floor.get("cpu_us_per_msg"), d["cpu_us_per_msg"]))
    _verdict(figures, mosq, relay, floor, native)
    return figures


def _ratio(a: float | None, b: float | None) -> float:
    """a / b, or nan when either is missing or b is 0 (a tiny run can read 0 CPU ticks)."""
    return a / b if a is not None and b else math.nan


def _int(value: float | None) -> int | None:
    return None if value is None or not math.isfinite(value) else round(value)


def _verdict(f: dict[str, Any], mosq: dict[str, Any], relay: dict[str, Any] | None = None,
             floor: dict[str, Any] | None = None, native: dict[str, dict[str, Any]] | None = None) -> None:
    """Log issue 3's musts against this run (stderr only; the line carries the figures)."""
    servers = [("relay", relay or {}), ("floor", floor or {}),
               *((f"floor-native-{v}", d) for v, d in (native or {}).items()), ("mosquitto", mosq)]
    for name, d in servers:
        if "half_cpu_pressure_pct" in d:
            log.info("%s half-load phase: p99_ms=%.2f, CPU pressure %.0f%% of the time (some task waited for a "
                     "CPU), server preempted %.0f/s, load average %.1f, load schedule lag max %.1f ms", name,
                     d.get("half_p99_ms", math.nan), d["half_cpu_pressure_pct"], d["half_server_preempted_per_s"],
                     d["half_loadavg"], d.get("half_max_lag_ms", math.nan))
        if "half_relay_loop_stalls" in d:
            log.info("%s half-load phase, its own stalls: event loop more than 5 ms late %d times (%.1f ms in all), "
                     "garbage collections over 1 ms %d (%.1f ms of collection in all)", name,
                     d["half_relay_loop_stalls"], d["half_relay_loop_stall_ms"], d["half_relay_gc_pauses"],
                     d["half_relay_gc_ms"])
    for name, d in servers:
        if "kernel_us_per_msg" in d:
            log.info("%s CPU per message (closed loop): %.1f µs in the kernel (syscalls), %.1f µs in user space",
                     name, d["kernel_us_per_msg"], d["user_us_per_msg"])
    counted = [(name, d["syscalls_per_msg"]) for name, d in servers if "syscalls_per_msg" in d]
    if counted:
        log.info("syscalls per message (perf, extra closed loop): %s", ", ".join(f"{n} {v:.2f}" for n, v in counted))
    if mosq:
        log.info("mosquitto: msgs_per_s=%.0f p50_ms=%.3f p99_ms=%.3f rss_bytes_per_idle_conn=%.0f",
                 mosq.get("msgs_per_s", math.nan), mosq.get("p50_ms", math.nan), mosq.get("p99_ms", math.nan),
                 mosq.get("rss_per_conn", math.nan))
    cpu, mcpu = f["server_cpu_us_per_msg"], f["mosquitto_cpu_us_per_msg"]
    checks = {
        "server_cpu_us_per_msg <= 1.5 x mosquitto": cpu is not None and mcpu is not None and cpu <= 1.5 * mcpu,
        "rss_bytes_per_idle_conn <= 4096": f["rss_bytes_per_idle_conn"] is not None
        and f["rss_bytes_per_idle_conn"] <= 4096,
        "half_load_p99_ms <= 10": f["half_load_p99_ms"] is not None and f["half_load_p99_ms"] <= 10,
        "signals_dropped == 0": f["signals_dropped"] == 0,
    }
    for name, ok in checks.items():
        log.info("must %s: %s", name, "met" if ok else "NOT met")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    figures = run(args)
    print_figures("bench relay", figures)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main(sys.argv[1:])

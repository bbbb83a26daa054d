"""`sealguard bench detect --signals N`: the detection worker's throughput and time-to-enforcement.

What it does (issue 4, "Benchmark"):
1. starts an embedded broker (own temp state, SQLite), trains a small model on a simulated
   scenario (detection.quick_model) and makes it champion, simulates N signals with the offline
   simulator and produces them to the signals topic;
2. consume_only_per_s: a plain consumer reads the N records and decodes each poll with
   `decode_batch`, as the worker does (the floor: Kafka client + contract decoding, no detection;
   before issue #4's throughput round it decoded record by record with `decode`);
3. signals_per_s: the detection worker (in this process: one worker process) consumes the same
   N-record backlog — decode, features, re-keying to the inbound topic (and consuming those
   copies), scheduled scoring in batches, rules, policy, decisions, checkpoints — timed from its
   first record to its N-th signal;
4. starts the relay (`python -m sealguard relay`, its own process) and a producer process that
   sends live signals at 50% of that maximum rate for `--live-seconds`: background traffic (more
   simulated signals, re-stamped with the wall clock as a live relay would stamp them) plus fresh
   spammer accounts that blast strangers. (Background kept at its simulated times would sit days
   behind the spam: the worker's event-time alignment then pauses whichever partition last
   delivered spam, and the measured time-to-enforcement is that artefact.) score_p99_ms: from a live signal's timestamp to its
   account being scored; enforce_p99_ms: from the signal that tipped a ban to the relay's
   `enforcement.applied` for it (read back from the signals topic by the worker).

Wall-clock rates on this shared 2-core machine depend on what else runs; the CPU time the worker
used is logged to stderr next to them.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.detect")

TS = re.compile(rb'"ts":\d+')


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(math.ceil(q / 100 * len(s))) - 1)]


def _signals(n: int, first_seed: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    """At least n encoded signals (key, value) in ts order from seeded simulations, and normal account ids."""
    from sealguard.contracts import encode, key_of
    from sealguard.settings import REPO_ROOT
    from simulator.offline import simulate
    from simulator.scenario import load_scenario

    sc = load_scenario(REPO_ROOT / "data" / "scenarios" / "train_small.yaml")
    events: list[Any] = []
    normal: list[str] = []
    seed = first_seed
    while len(events) < n:
        r = simulate(sc, seed)
        events += r.events
        normal += r.truth[r.truth.label == 0].account.tolist()[:200]
        seed += 1
    events.sort(key=lambda e: e.ts)
    return [(key_of(e), encode(e)) for e in events[:n]], normal


def _model(state_dir: Path) -> str:
    from detection.model import write_pointer
    from detection.quick_model import labelled_table, train_quick_model
    from sealguard.settings import REPO_ROOT
    from simulator.offline import simulate
    from simulator.scenario import load_scenario

    r = simulate(load_scenario(REPO_ROOT / "data" / "scenarios" / "train_small.yaml"), 1)
    table, y = labelled_table(r.events, r.truth)
    path = train_quick_model(table, y, state_dir / "models" / "lgbm-bench", version="lgbm-bench")
    write_pointer(state_dir, "champion", "lgbm-bench", path)
    return "lgbm-bench"


def _produce_all(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    from sealguard.stream import producer

    p = producer(bootstrap)
    for key, value in records:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(120):
        raise RuntimeError("could not deliver the benchmark's signals to the broker")


def _consume_only(bootstrap: str, topic: str, n: int) -> float:
    """Records per second for a plain consumer that decodes each poll as the worker does
    (`decode_batch`; timed from the first record)."""
    from sealguard.contracts.batch import decode_batch
    from sealguard.stream import consumer

    c = consumer(bootstrap, f"bench-raw-{os.getpid()}")
    c.subscribe([topic])
    got, t0 = 0, None
    deadline = time.monotonic() + 300
    try:
        while got < n and time.monotonic() < deadline:
            msgs = [m for m in c.consume(num_messages=5000, timeout=0.2) if m.error() is None]
            if msgs and t0 is None:
                t0 = time.perf_counter()
            decode_batch([m.value() for m in msgs])
            got += len(msgs)
    finally:
        c.close()
    if t0 is None or got < n:
        raise RuntimeError(f"consume-only read {got} of {n} records")
    return n / (time.perf_counter() - t0)


def _live_producer(bootstrap: str, topic: str, background_file: str, rate: float, seconds: float,
                   spammers: int, victims: list[str], out_file: str) -> None:
    """Child process: send background + fresh spam at `rate` signals/s for `seconds`."""
    import heapq
    import random

    from relay.signals import SignalBook
    from sealguard.contracts import ClientKind, MessageKind, encode, new_account_id, now_ms
    from sealguard.stream import producer

    with open(background_file, "rb") as fh:
        background: list[tuple[str, bytes]] = pickle.load(fh)
    rng = random.Random(5)
    book = SignalBook("bench")
    p = producer(bootstrap, **{"linger.ms": 2})
    accounts = [new_account_id() for _ in range(spammers)]
    heap = [(rng.uniform(0, seconds * 0.6), a) for a in accounts]  # (next send time, account)
    heapq.heapify(heap)
    registered: set[str] = set()
    spam_interval = 0.1  # each spammer sends 10 messages a second
    sent = spam = bg = 0
    t0 = time.perf_counter()
    tick = 0.005
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
        due = int(rate * elapsed) - sent
        for _ in range(max(0, due)):
            if heap[0][0] <= elapsed:
                _, a = heapq.heappop(heap)
                if a not in registered:
                    registered.add(a)
                    ev = book.registered(a, "n" + f"{rng.randrange(16**12):012x}", ClientKind.sdk)
                else:
                    ev = book.message_sent(a, rng.choice(victims), 200, MessageKind.text, False)
                heapq.heappush(heap, (elapsed + spam_interval, a))
                p.produce(topic, key=a, value=encode(ev))
                spam += 1
            else:
                key, value = background[bg % len(background)]
                bg += 1
                p.produce(topic, key=key, value=TS.sub(b'"ts":%d' % now_ms(), value, count=1))
            sent += 1
            if sent % 1000 == 0:
                p.poll(0)
        p.poll(0)
        time.sleep(tick)
    p.flush(30)
    with open(out_file, "w") as fh:
        fh.write(f"{sent} {spam} {bg} {time.perf_counter() - t0:.3f} {now_ms()}\n")
        fh.write(" ".join(accounts) + "\n")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="sealguard bench detect")
    ap.add_argument("--signals", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--live-seconds", type=float, default=10.0)
    ap.add_argument("--spammers", type=int, default=60)
    ap.add_argument("--profile", type=Path, default=None, help="cProfile the worker's backlog phase into this file")
    args = ap.parse_args(argv)

    from detection.worker import Worker, WorkerConfig
    from sealguard.broker import EmbeddedBroker
    from sealguard.cli.app import print_figures
    from sealguard.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-detect-"))
    settings = Settings(state_dir=tmp / "state", partitions=args.partitions, kafka=None)
    settings.ensure_state_dir()
    n = args.signals
    with EmbeddedBroker(settings, log_path=tmp / "broker.log") as broker:
        s = settings.model_copy(update={"kafka": broker.bootstrap})
        t = time.monotonic()
        version = _model(s.state_dir)
        log.info("model %s trained in %.1fs", version, time.monotonic() - t)
        t = time.monotonic()
        records, victims = _signals(n + 200_000, first_seed=100)
        backlog, background = records[:n], records[n:]
        log.info("simulated %d signals in %.1fs", len(records), time.monotonic() - t)
        t = time.monotonic()
        _produce_all(s.kafka, s.signals_topic, backlog)
        log.info("produced %d signals in %.1fs", n, time.monotonic() - t)

        consume_only = _consume_only(s.kafka, s.signals_topic, n)
        log.info("consume-only (decode included): %.0f records/s", consume_only)

        worker = Worker(s, WorkerConfig(group="bench-detect", metrics_port=0))
        worker.tune_gc()  # what `run()` does before its loop (this bench drives `step()` itself)
        prof = None
        if args.profile is not None:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = None
        cpu0 = 0.0
        deadline = time.monotonic() + 900
        while worker.n_signals < n and time.monotonic() < deadline:
            got = worker.step()
            if got and t0 is None:
                t0, cpu0 = time.perf_counter(), time.process_time()
        if worker.n_signals < n or t0 is None:
            raise RuntimeError(f"the worker consumed {worker.n_signals} of {n} signals")
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(args.profile))
        signals_per_s = n / wall
        log.info("worker: %d signals (+%d inbound copies) in %.1fs wall, %.1fs CPU: %.0f/s wall, %.0f/s per CPU-second;"
                 " %d bans, %d restricts, %d cases, %d scores stored", n, worker.n_inbound, wall, cpu, signals_per_s,
                 n / cpu, worker.sink.counts.get("ban", 0), worker.sink.counts.get("restrict", 0),
                 worker.sink.counts["cases"], worker.sink.counts["scores"])

        # Live phase: relay up, then half the measured maximum rate.
        env = {**os.environ, "SEALGUARD_KAFKA": s.kafka, "SEALGUARD_STATE_DIR": str(s.state_dir),
               "SEALGUARD_PARTITIONS": str(args.partitions)}
        relay = subprocess.Popen([sys.executable, "-m", "sealguard", "relay"], env=env, stdout=subprocess.PIPE,
                                 stderr=open(tmp / "relay.log", "wb"), text=True, start_new_session=True)
        try:
            ready = threading.Event()
            threading.Thread(target=lambda: (relay.stdout.readline(), ready.set()), daemon=True).start()  # type: ignore[union-attr]
            while not ready.is_set():
                worker.step()
                if relay.poll() is not None:
                    raise RuntimeError(f"the relay exited (see {tmp / 'relay.log'})")
            log.info("relay up; live phase at %.0f signals/s for %.0fs", signals_per_s / 2, args.live_seconds)
            for _ in range(20):  # let the relay's enforcement consumer settle on its partitions
                worker.step()
            worker.score_latencies_ms.clear()
            bg_file, out_file = tmp / "background.pkl", tmp / "live.txt"
            with open(bg_file, "wb") as fh:
                pickle.dump(background, fh)
            ctx = mp.get_context("spawn")
            proc = ctx.Process(target=_live_producer, args=(s.kafka, s.signals_topic, str(bg_file), signals_per_s / 2,
                                                            args.live_seconds, args.spammers, victims, str(out_file)))
            proc.start()
            steps: list[float] = []
            live_t0, live_cpu0, ckpt0 = time.perf_counter(), time.process_time(), worker.checkpoints
            while proc.is_alive():
                t = time.perf_counter()
                worker.step()
                steps.append(time.perf_counter() - t)
            proc.join()
            live_wall = time.perf_counter() - live_t0
            log.info("live: worker busy %.0f%% of the wall clock (CPU %.1fs in %.1fs); longest steps %s ms; "
                     "%d checkpoints", 100 * (time.process_time() - live_cpu0) / live_wall,
                     time.process_time() - live_cpu0, live_wall,
                     [round(x * 1000) for x in sorted(steps)[-5:]], worker.checkpoints - ckpt0)
            head, accounts_line = out_file.read_text().splitlines()[:2]
            spam_accounts = accounts_line.split()
            sent, spam, _bg, live_s, _ = head.split()
            log.info("live: sent %s signals (%s spam) in %ss", sent, spam, live_s)
            drain = time.monotonic() + 15
            while time.monotonic() < drain:
                worker.step()
                banned = [a for a in spam_accounts if a in worker.sink.tipped]
                if banned and all(a in worker.applied for a in banned) and len(banned) == len(spam_accounts):
                    break
            banned = [a for a in spam_accounts if a in worker.sink.tipped]
            enforce = [worker.applied[a] - worker.sink.tipped[a] for a in banned if a in worker.applied]
            scores = [x for x in worker.score_latencies_ms if 0 <= x < 60_000]
            decide = [worker.sink.decided_at[a] - worker.sink.tipped[a] for a in banned]
            relay_ms = [worker.applied[a] - worker.sink.decided_at[a] for a in banned if a in worker.applied]
            log.info("live: signal→decision committed p50=%.0fms p99=%.0fms; committed→applied by the relay "
                     "p50=%.0fms p99=%.0fms", _pct(decide, 50), _pct(decide, 99), _pct(relay_ms, 50),
                     _pct(relay_ms, 99))
            log.info("live: %d/%d spammers banned, %d applied by the relay; enforce p50=%.0fms p99=%.0fms",
                     len(banned), len(spam_accounts), len(enforce), _pct(enforce, 50), _pct(enforce, 99))
        finally:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(15)
            except subprocess.TimeoutExpired:
                relay.kill()
            worker.close()
    print_figures("bench detect", {
        "signals": n, "signals_per_s": round(signals_per_s), "consume_only_per_s": round(consume_only),
        "score_p99_ms": _pct(scores, 99), "enforce_p99_ms": _pct(enforce, 99) if enforce else None,
    })


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main(sys.argv[1:])

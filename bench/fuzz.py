"""`sealguard bench fuzz --frames N`: mutated and random frames against the relay's parser and a
live relay, with slow-loris and half-open connections, while a well-behaved pair keeps talking.

Two targets share the N frames:
- **the parser, in process** (N − live frames): each fuzz frame goes to a fresh `FrameReader`
  (authenticated and pre-login limits alternately) and every frame it yields to the payload
  decoders. Anything raised but the codec's `ProtocolError` is a crash; a frame taking longer
  than a second is a hang (a watchdog also ends the run if the loop stops advancing).
- **a live relay** (`--live-frames`; started as its own process with a broker, as in production):
  workers open connections from random 127.x.y.1 addresses — half of them logged in as real
  accounts, so the frames reach the handlers behind auth — write a batch of fuzz frames, then
  bring the stream back in step (we run the server's own reader over what we sent, so we know
  whether it must close us or is waiting for body bytes, which we then supply) and send a PING.
  The relay must answer the PING or close the connection within 5 s; neither is a hang. A crash
  is a traceback in the relay's log or the relay process dying.
  Meanwhile slow-loris connections dribble a byte a second and half-open ones send nothing or
  half-close after a partial frame: the relay must close each within its handshake timeout
  (`--handshake-timeout`, the relay's setting) plus slack, or it counts as a hang. Slow readers
  flood PINGs without reading the PONGs (the relay's RSS growth is logged).
- **the well-behaved pair** sends a message every 20 ms from A to B throughout;
  `other_clients_ok=1` when every one was delivered and acknowledged, neither client saw an
  error or lost its connection, and no message took longer than the hang threshold.

`decoder_reached` counts fuzz frames that got past the header check (length, version, known
type): they reached the payload decoders. Last stdout line:
`fuzz: frames=N decoder_reached=.. crashes=.. hangs=.. other_clients_ok=..`
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._mutate import Mutator
from bench._proc import raise_nofile, rss_bytes, source_address
from relay.protocol import (
    FrameReader,
    FrameType,
    PeerProtocolError,
    ProtocolError,
    decode_deliver,
    decode_message_ids,
    decode_payload,
    decode_send,
    encode,
)
from relay.protocol.frames import MAX_FRAME, MAX_FRAME_UNAUTHENTICATED
from sealguard.cli.app import print_figures

log = logging.getLogger("bench.fuzz")
HANG_S = 1.0  # one in-process frame slower than this is a hang
ANSWER_S = 5.0  # the live relay must answer our PING or close within this
PAIR_HANG_S = 1.0  # a well-behaved message slower than this: the server stalled (it takes ms here)
SYNC_RID = 0xF0F0F0F0


@dataclass
class Figures:
    frames: int = 0
    decoder_reached: int = 0
    crashes: int = 0
    hangs: int = 0
    other_clients_ok: bool = True
    notes: dict[str, Any] = field(default_factory=dict)
    crash_samples: list[str] = field(default_factory=list)


# -- the parser, in process ----------------------------------------------------------------------

def _decode(data: bytes, max_len: int) -> bool:
    """The server's parse of one chunk: reader, then payload decoders. True when it got past the
    header check. Raises only ProtocolError — anything else is a bug."""
    frames = FrameReader(max_len).feed(data)
    for ftype, _flags, _rid, payload in frames:
        try:
            decode_payload(ftype, payload)
        except ProtocolError:
            pass
        if ftype == FrameType.SEND:
            try:
                decode_send(payload)
            except ProtocolError:
                pass
        elif ftype == FrameType.DELIVER:
            try:
                decode_deliver(payload)
            except ProtocolError:
                pass
        elif ftype == FrameType.DELIVER_ACK:
            try:
                decode_message_ids(FrameType.DELIVER_ACK, payload)
            except ProtocolError:
                pass
    return bool(frames)


def fuzz_parser(n: int, seed: int, fig: Figures, crash_dir: Path) -> None:
    mut = Mutator(seed)
    progress = [0, time.monotonic()]
    done = threading.Event()
    current: list[bytes] = [b""]

    def watchdog() -> None:
        last = -1
        while not done.wait(2.0):
            if progress[0] == last and time.monotonic() - progress[1] > 10:
                path = crash_dir / "hang.bin"
                path.write_bytes(current[0])
                log.error("the parser is stuck on a frame (saved to %s)", path)
                fig.hangs += 1
                _print(fig)
                os._exit(1)
            last = progress[0]

    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.monotonic()
    for i in range(n):
        frame = mut.next()
        current[0] = frame
        max_len = MAX_FRAME if i & 1 else MAX_FRAME_UNAUTHENTICATED
        start = time.perf_counter()
        try:
            if _decode(frame, max_len):
                fig.decoder_reached += 1
        except ProtocolError:
            pass
        except Exception as exc:  # noqa: BLE001 - that is what we are looking for
            fig.crashes += 1
            if len(fig.crash_samples) < 20:
                path = crash_dir / f"crash-{fig.crashes}.bin"
                path.write_bytes(frame)
                fig.crash_samples.append(f"{type(exc).__name__}: {exc} (frame saved to {path}):\n"
                                         + "".join(traceback.format_exception(exc)[-3:]))
        if time.perf_counter() - start > HANG_S:
            fig.hangs += 1
        fig.frames += 1
        progress[0] = i
        progress[1] = time.monotonic()
        if i and i % 200_000 == 0:
            log.info("parser: %d frames, %d reached the decoders, %d crashes (%.0f frames/s)", i,
                     fig.decoder_reached, fig.crashes, i / (time.monotonic() - t0))
    done.set()
    fig.notes["parser_frames_per_s"] = round(n / max(1e-9, time.monotonic() - t0))


# -- the live relay --------------------------------------------------------------------------------

def reached_in_stream(frames: list[bytes], max_len: int) -> int:
    """How many of these frames, sent in a row on one connection, the server reads past the
    header check: it stops at the first broken header or malformed payload (it closes us)."""
    reader = FrameReader(max_len)
    reached = 0
    for frame in frames:
        try:
            got = reader.feed(frame)
        except PeerProtocolError:
            return reached
        for ftype, _flags, _rid, payload in got:
            reached += 1
            try:
                decode_payload(ftype, payload)
            except PeerProtocolError:
                return reached
    return reached


def predict(sent: bytes, max_len: int) -> tuple[str, int]:
    """What the server's reader makes of everything we sent on a connection: ('error', 0) when it
    must close us, ('pending', n) when it waits for n more bytes, ('clean', 0) when in step."""
    reader = FrameReader(max_len)
    try:
        frames = reader.feed(sent)
    except PeerProtocolError:
        return "error", 0
    del frames
    left = reader.buffered
    if left == 0:
        return "clean", 0
    tail = sent[-left:]
    if left < 4:
        return "pending", 4 - left  # completes the length field, after which we look again
    length = int.from_bytes(tail[:4], "big")
    return "pending", 4 + length - left


class FuzzClient:
    """A connection we fuzz: records whether the server answered our sync PING or closed."""

    def __init__(self, on_message: Any = None) -> None:
        from bench._wire import RelayClient

        class _Proto(RelayClient):
            def __init__(inner) -> None:  # `inner` is the protocol; `self` is the holder
                super().__init__(0, on_message or (lambda _ts: None), lambda: None)
                inner.synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                inner.fuzzing = False

            def data_received(inner, data: bytes) -> None:
                if not inner.fuzzing:
                    super().data_received(data)
                    return
                try:
                    frames = inner._reader.feed(data)
                except PeerProtocolError:
                    return
                for ftype, _flags, rid, _payload in frames:
                    if ftype == FrameType.PONG and rid == SYNC_RID and not inner.synced.done():
                        inner.synced.set_result(None)

        self.proto_class = _Proto


async def _open(loop: asyncio.AbstractEventLoop, host: str, port: int, src: str, proto_class: Any) -> Any:
    _, proto = await loop.create_connection(proto_class, host, port, local_addr=(src, 0))
    return proto


@dataclass
class Live:
    host: str
    port: int
    relay_pid: int
    handshake_timeout: float
    frames: int
    seed: int
    workers: int = 12
    slow_readers: int = 2
    fig: Figures = field(default_factory=Figures)
    left: int = 0
    closed_by_server: int = 0
    answered: int = 0
    abandoned: int = 0
    batches: int = 0

    async def run(self) -> None:
        from bench._wire import RelayClient

        loop = asyncio.get_running_loop()
        rng = random.Random(self.seed)
        self.left = self.frames

        # The well-behaved pair.
        pair_lat: list[int] = []
        slow: list[tuple[str, float]] = []  # (wall clock, ms) of slow pair messages, to match the relay's log
        acked = [0]

        def on_pair_message(ts: int) -> None:
            lat = time.monotonic_ns() - ts
            pair_lat.append(lat)
            if lat > 200e6:
                slow.append((time.strftime("%H:%M:%S"), round(lat / 1e6)))

        a_id, a_ident = await self._account(loop, source_address(60_001))
        b_id, b_ident = await self._account(loop, source_address(60_002))
        a = await _open(loop, self.host, self.port, source_address(60_001),
                        lambda: RelayClient(1, lambda _ts: None, lambda: acked.__setitem__(0, acked[0] + 1)))
        await a.login(a_ident, a_id)
        b = await _open(loop, self.host, self.port, source_address(60_002),
                        lambda: RelayClient(2, on_pair_message, lambda: None))
        await b.login(b_ident, b_id)
        stop = asyncio.Event()
        sent = [0]

        async def talk() -> None:
            while not stop.is_set():
                a.send(b.addr, time.monotonic_ns())
                sent[0] += 1
                await asyncio.sleep(0.02)

        talker = asyncio.create_task(talk())

        # Accounts for the workers' logged-in connections (one each: a login elsewhere would kick it).
        accounts = [await self._account(loop, source_address(61_000 + w)) for w in range(self.workers)]
        rss0 = rss_bytes(self.relay_pid)
        t0 = time.monotonic()
        side = [asyncio.create_task(self._slowloris(loop, 20)), asyncio.create_task(self._silent(loop, 20)),
                asyncio.create_task(self._half_close(loop, 20))]
        # Fuzz frames name the workers' accounts (never the pair's, which must stay unharmed).
        known = [acct for acct, _ in accounts]
        await asyncio.gather(*(self._worker(loop, w, random.Random(rng.random()), accounts[w], known)
                               for w in range(self.workers)))
        log.info("live: %d frames in %d batches over %.1fs: %d answered the sync PING, %d closed by the relay, "
                 "%d abandoned (a pending body over 64 KiB)", self.frames - self.left, self.batches,
                 time.monotonic() - t0, self.answered, self.closed_by_server, self.abandoned)
        await asyncio.gather(*side)
        self.fig.notes["relay_rss_growth_bytes"] = rss_bytes(self.relay_pid) - rss0
        before = len(pair_lat)
        if self.slow_readers:
            # Last and on its own, so what it does to the others is told apart.
            hangs_before = self.fig.hangs
            await self._slow_reader(loop, self.slow_readers)
            worst = max(pair_lat[before:], default=0) / 1e6
            if worst >= PAIR_HANG_S * 1000:
                self.fig.hangs += 1
                log.error("hang: the well-behaved pair waited %.0f ms for a message during the slow-reader flood",
                          worst)
            self.fig.notes["pair_worst_ms_during_slow_readers"] = round(worst, 1)
            self.fig.notes["hangs_from_slow_readers"] = self.fig.hangs - hangs_before
        self.fig.notes["pair_worst_ms_before_slow_readers"] = round(max(pair_lat[:before], default=0) / 1e6, 1)

        stop.set()
        await talker
        deadline = time.monotonic() + 5
        while (acked[0] < sent[0] or len(pair_lat) < sent[0]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        worst_ms = max(pair_lat, default=0) / 1e6
        ok = (acked[0] == sent[0] == len(pair_lat) and a.errors == 0 and b.errors == 0
              and not a.closed.done() and not b.closed.done() and worst_ms < PAIR_HANG_S * 1000)
        self.fig.other_clients_ok = ok
        if max(pair_lat[:before], default=0) / 1e6 >= PAIR_HANG_S * 1000:
            self.fig.hangs += 1
            log.error("hang: the well-behaved pair waited over %.0f s for a message during the fuzzing", PAIR_HANG_S)
        if slow:
            log.info("pair messages over 200 ms (time, ms): %s", sorted(slow, key=lambda x: -x[1])[:10])
        self.fig.notes.update(pair_sent=sent[0], pair_acked=acked[0], pair_received=len(pair_lat),
                              pair_worst_ms=round(worst_ms, 1), pair_errors=f"{a.last_error}|{b.last_error}")
        a.close()
        b.close()

    async def _account(self, loop: asyncio.AbstractEventLoop, src: str) -> tuple[str, Any]:
        import vodozemac

        from bench._wire import RelayClient

        ident = vodozemac.Account()
        c = await _open(loop, self.host, self.port, src, lambda: RelayClient(0, lambda _ts: None, lambda: None))
        try:
            account_id = await c.register(ident)
        finally:
            c.close()
        return account_id, ident

    async def _worker(self, loop: asyncio.AbstractEventLoop, w: int, rng: random.Random,
                      account: tuple[str, Any], known: list[str]) -> None:
        mut = Mutator(rng.randrange(2**31), corpus_size=500, accounts=known)
        holder = FuzzClient()
        while self.left > 0:
            authed = rng.random() < 0.5
            src = source_address(rng.randrange(2_000, 60_000))
            try:
                conn = await _open(loop, self.host, self.port, src, holder.proto_class)
                if authed:
                    await conn.login(account[1], account[0])
            except (OSError, RuntimeError, TimeoutError) as exc:
                log.warning("worker %d could not connect or log in: %s", w, exc)
                await asyncio.sleep(0.2)
                continue
            conn.fuzzing = True
            max_len = MAX_FRAME if authed else MAX_FRAME_UNAUTHENTICATED
            k = min(rng.randint(1, 12), self.left)
            self.left -= k
            self.batches += 1
            sent = bytearray()
            frames = [mut.next(deep=i < k - 1) for i in range(k)]
            self.fig.frames += k
            self.fig.decoder_reached += reached_in_stream(frames, max_len)
            for frame in frames:
                sent += frame
                conn._write(frame)
            state, need = predict(bytes(sent), max_len)
            while state == "pending" and need <= 65_536:
                pad = bytes(need)
                sent += pad
                conn._write(pad)
                state, need = predict(bytes(sent), max_len)
            if state == "pending":
                self.abandoned += 1
                conn.transport.abort()
                continue
            if state == "clean":
                conn._write(encode(FrameType.PING, SYNC_RID))
            waits = [conn.closed, conn.synced] if state == "clean" else [conn.closed]
            done, _ = await asyncio.wait(waits, timeout=ANSWER_S, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                self.fig.hangs += 1
                log.error("hang: the relay neither answered nor closed within %.0fs after %d frames (%s): %s",
                          ANSWER_S, k, "logged in" if authed else "pre-login", bytes(sent[:200]).hex())
            elif conn.closed in done:
                self.closed_by_server += 1
            else:
                self.answered += 1
            if conn.transport is not None:
                conn.transport.abort()

    async def _must_close(self, conn: Any, within: float, what: str) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(conn.closed), within)
        except TimeoutError:
            self.fig.hangs += 1
            log.error("hang: a %s connection was still open after %.0fs", what, within)
            if conn.transport is not None:
                conn.transport.abort()

    async def _slowloris(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        """Pre-login connections dribbling CHALLENGE_REQ frames a byte a second."""
        holder = FuzzClient()
        conns = [await _open(loop, self.host, self.port, source_address(62_000 + i), holder.proto_class)
                 for i in range(n)]
        frame = encode(FrameType.CHALLENGE_REQ, 1)

        async def dribble(c: Any) -> None:
            i = 0
            while not c.closed.done():
                c._write(frame[i % len(frame):i % len(frame) + 1])
                i += 1
                await asyncio.sleep(1.0)

        tasks = [asyncio.create_task(dribble(c)) for c in conns]
        await asyncio.gather(*(self._must_close(c, self.handshake_timeout + 3, "slow-loris") for c in conns))
        for t in tasks:
            t.cancel()
        self.fig.notes["slowloris"] = n

    async def _silent(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        """Connections that never send a byte (half-open from the server's point of view)."""
        holder = FuzzClient()
        conns = [await _open(loop, self.host, self.port, source_address(62_100 + i), holder.proto_class)
                 for i in range(n)]
        await asyncio.gather(*(self._must_close(c, self.handshake_timeout + 3, "silent") for c in conns))
        self.fig.notes["silent"] = n

    async def _half_close(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        """A partial frame, then shutdown(SHUT_WR): the relay must close at once."""
        holder = FuzzClient()
        conns = [await _open(loop, self.host, self.port, source_address(62_200 + i), holder.proto_class)
                 for i in range(n)]
        for c in conns:
            c._write(encode(FrameType.PING, 1)[:5])
            c.transport.write_eof()
        await asyncio.gather(*(self._must_close(c, 3.0, "half-closed") for c in conns))
        self.fig.notes["half_closed"] = n

    async def _slow_reader(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        """PING floods whose PONGs are never read: the relay must not buffer without bound."""
        holder = FuzzClient()
        conns = [await _open(loop, self.host, self.port, source_address(62_300 + i), holder.proto_class)
                 for i in range(n)]
        ping = encode(FrameType.PING, 7) * 1000
        rss0 = rss_bytes(self.relay_pid)
        for c in conns:
            c.transport.pause_reading()
        for _ in range(200):  # 200,000 PINGs each, 2.2 MB of PONGs each
            for c in conns:
                if not c.closed.done():
                    c._write(ping)
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.0)
        growth = rss_bytes(self.relay_pid) - rss0
        self.fig.notes["slow_reader_rss_growth_bytes"] = growth
        for c in conns:
            c.transport.resume_reading()
        await asyncio.gather(*(self._must_close(c, self.handshake_timeout + 3, "slow-reader") for c in conns))


def _relay_log_crashes(path: Path) -> tuple[int, str]:
    text = path.read_text(errors="replace") if path.exists() else ""
    count = text.count("Traceback (most recent call last)")
    first = ""
    if count:
        i = text.index("Traceback (most recent call last)")
        first = text[max(0, i - 300):i + 1500]
    return count, first


def run_live(args: argparse.Namespace, fig: Figures, state: Path, stack: ExitStack) -> None:
    from bench.relay import RelayProcess

    kafka = os.environ.get("SEALGUARD_KAFKA")
    if not kafka:
        from sealguard.broker import EmbeddedBroker
        from sealguard.settings import Settings

        kafka = stack.enter_context(EmbeddedBroker(Settings(state_dir=state))).bootstrap
    server = RelayProcess(state, kafka, command=args.relay_cmd.split() if args.relay_cmd else None)
    stack.callback(server.stop)
    server.wait_listening()
    log.info("relay pid %d listening on %s:%d", server.proc.pid, server.host, server.port)
    live = Live(server.host, server.port, server.proc.pid, args.handshake_timeout, args.live_frames, args.seed + 1,
                slow_readers=args.slow_readers, fig=fig)

    import uvloop

    uvloop.run(live.run())
    if server.proc.poll() is not None:
        fig.crashes += 1
        log.error("the relay died (exit code %s)", server.proc.returncode)
    server.stop()
    count, first = _relay_log_crashes(server.log_path)
    if count:
        fig.crashes += count
        log.error("%d tracebacks in the relay's log; the first:\n%s", count, first)


def _print(fig: Figures) -> None:
    print_figures("fuzz", {"frames": fig.frames, "decoder_reached": fig.decoder_reached, "crashes": fig.crashes,
                           "hangs": fig.hangs, "other_clients_ok": fig.other_clients_ok})


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sealguard bench fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="fuzz frames in all (parser + live)")
    ap.add_argument("--live-frames", type=int, default=None,
                    help="of those, how many go to the live relay (default: 5%%, at most 50,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--handshake-timeout", type=float, default=15.0,
                    help="the relay's handshake timeout: slow-loris and silent connections must be closed by then")
    ap.add_argument("--relay-cmd", default=None, help="command that starts the relay (default: sealguard relay)")
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="keep the relay's state and log here (default: a temporary directory, removed)")
    ap.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "sealguard-fuzz",
                    help="where frames that crashed or hung the parser are saved")
    ap.add_argument("--slow-readers", type=int, default=2,
                    help="connections flooding PINGs without reading the PONGs (run last, on their own)")
    ap.add_argument("--no-live", action="store_true", help="only the in-process parser")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error(f"--frames must be positive (got {args.frames})")
    if args.live_frames is None:
        args.live_frames = 0 if args.no_live else min(50_000, max(1, args.frames // 20))
    if args.live_frames > args.frames:
        ap.error(f"--live-frames {args.live_frames} exceeds --frames {args.frames}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    raise_nofile()
    fig = Figures()
    with ExitStack() as stack:
        if args.state_dir is not None:
            state = args.state_dir
            state.mkdir(parents=True, exist_ok=True)
        else:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sg-bench-fuzz-")))
        crash_dir = args.crash_dir
        crash_dir.mkdir(parents=True, exist_ok=True)
        if args.live_frames:
            run_live(args, fig, state, stack)
        fuzz_parser(args.frames - args.live_frames, args.seed, fig, crash_dir)
        for sample in fig.crash_samples[:5]:
            log.error("parser crash: %s", sample)
    log.info("fuzz details: %s", fig.notes)
    _print(fig)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main(sys.argv[1:])

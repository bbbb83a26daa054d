"""bench/_floor_native.c, the protocol's floor in C: it builds with the machine's gcc, relays a real
end-to-end encrypted message between two SDK clients, speaks byte for byte what the Python floor
(bench/_floor_relay.py) speaks, and `sealguard bench relay --floor-native` measures it.

Shape only: its figures are the benchmark's, never asserted on time here.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.relay import NATIVE_VARIANTS, compile_native_floor
from relay.client.client import RelayClient
from relay.client.identity import Identity
from relay.protocol import DeliveryStatus, FrameType, encode, encode_deliver_ack, encode_frame, encode_send
from relay.testing import next_address, run

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"relay: listening=(\S+):(\d+) .*node=(\S+)")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                reason="no C compiler (gcc or cc) on this machine to build bench/_floor_native.c")


def _io_uring_works() -> bool:
    """Whether this kernel lets this process set up an io_uring (it may be disabled or filtered)."""
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(425, 8, params)  # __NR_io_uring_setup on x86-64 and arm64
    if fd < 0:
        return False
    os.close(fd)
    return True


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    m = _LISTENING.search(proc.stdout.readline())
    assert m, "the floor did not print its listening line"
    if "--uring" in cmd and _io_uring_works():  # otherwise it falls back to --coalesce, by design
        assert m.group(3) == "floor-native-uring", m.group(0)
    return proc, int(m.group(2))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def native_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_native_floor(tmp_path_factory.mktemp("floor-native"))


@pytest.fixture(params=list(NATIVE_VARIANTS))
def native_port(native_exe: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    proc, port = _start([str(native_exe), *NATIVE_VARIANTS[request.param]])
    try:
        yield port
    finally:
        _stop(proc)


def test_relays_an_e2e_message_between_two_sdk_clients(native_port: int) -> None:
    async def main() -> None:
        alice = RelayClient("127.0.0.1", native_port, Identity.generate(), bind_address=next_address())
        bob = RelayClient("127.0.0.1", native_port, Identity.generate(), bind_address=next_address())
        for c in (alice, bob):
            await c.connect()
            await c.register()
            assert await c.login() == 0  # the floor has no login state: any login after any register
        assert alice.account_id != bob.account_id
        # The floor keeps no prekeys: bob's one-time key reaches alice out of band.
        acc = bob.identity.account
        acc.generate_one_time_keys(1)
        otk = next(iter(acc.one_time_keys.values())).to_base64()
        assert bob.account_id is not None and alice.account_id is not None
        alice.olm.open_outbound(bob.account_id, bob.identity.curve_key, otk)
        mid = await alice.send(bob.account_id, b"hello through C")
        # SEND_ACK DELIVERED only after bob's client acked the DELIVER (DESIGN.md's rule)
        assert alice.ack_status[mid] == DeliveryStatus.DELIVERED
        got = await asyncio.wait_for(bob.inbox.get(), 10)
        assert (got.sender, got.message_id, got.plaintext) == (alice.account_id, mid, b"hello through C")
        # to an account that is not online: QUEUED (the floor forgets it, as the Python floor does)
        await alice.send_raw("a" + "f" * 20, b"x")
        assert list(alice.ack_status.values())[-1] == DeliveryStatus.QUEUED
        await alice.ping()
        for c in (alice, bob):
            await c.close()

    run(main())


async def _exchange(port: int) -> list[bytes]:
    """Every frame both floors send back for one fixed conversation, in order, with the nonce
    and the DELIVER's timestamp zeroed."""
    r1, w1 = await asyncio.open_connection("127.0.0.1", port)
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)

    async def frame(r: asyncio.StreamReader) -> bytes:
        head = await asyncio.wait_for(r.readexactly(4), 10)
        return head + await r.readexactly(struct.unpack(">I", head)[0])

    out: list[bytes] = []
    w1.write(encode(FrameType.CHALLENGE_REQ, 7))
    f = bytearray(await frame(r1))
    f[15:47] = bytes(32)  # the nonce
    out.append(bytes(f))
    w1.write(encode(FrameType.REGISTER, 8, "sdk", "ik", "ck", "sig"))
    out.append(await frame(r1))
    a1, a2 = b"a" + b"1" * 20, b"a" + b"2" * 20
    w1.write(encode(FrameType.LOGIN, 9, a1.decode(), "sig"))
    w2.write(encode(FrameType.LOGIN, 10, a2.decode(), "sig"))
    out += [await frame(r1), await frame(r2)]
    mid = bytes(range(16))
    w1.write(encode_send(11, mid, a2, 1, b"opaque" * 20))
    deliver = bytearray(await frame(r2))
    deliver[50:58] = bytes(8)  # ts
    out.append(bytes(deliver))
    w2.write(encode_deliver_ack([mid]))
    out.append(await frame(r1))
    w1.write(encode_send(12, mid[::-1], b"a" + b"3" * 20, 0, b""))  # nobody: QUEUED
    out.append(await frame(r1))
    w2.write(encode(FrameType.PING, 13) + encode(FrameType.PING, 14))  # two frames in one write
    out += [await frame(r2), await frame(r2)]
    w2.write(b"\x00\x00\x00\x07\x02" + bytes(6))  # version 2: the floor closes this connection only
    out.append(await asyncio.wait_for(r2.read(), 10))
    w1.write(encode(FrameType.PING, 15))
    out.append(await frame(r1))
    for w in (w1, w2):
        w.close()
    return out


@pytest.mark.parametrize("variant", list(NATIVE_VARIANTS))
def test_speaks_byte_for_byte_what_the_python_floor_speaks(native_exe: Path, variant: str) -> None:
    native, nport = _start([str(native_exe), *NATIVE_VARIANTS[variant]])
    python, pport = _start([sys.executable, "-m", "bench._floor_relay"])
    try:
        got = run(_exchange(nport))
        want = run(_exchange(pport))
    finally:
        _stop(native)
        _stop(python)
    assert got == want
    assert got[-2] == b"" and got[4][5] == FrameType.DELIVER


@pytest.mark.parametrize("variant", list(NATIVE_VARIANTS))
def test_bad_frames_close_only_that_connection(native_exe: Path, variant: str) -> None:
    proc, port = _start([str(native_exe), *NATIVE_VARIANTS[variant]])

    async def main() -> None:
        good_r, good_w = await asyncio.open_connection("127.0.0.1", port)
        for bad in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x07\x01\x99" + bytes(5),
                    encode_frame(FrameType.LOGIN, 1, b"a" * 21 + b"\x01ss"),  # a byte left over
                    struct.pack(">IBBBI", 7 + 3, 1, FrameType.DELIVER_ACK, 0, 0) + b"\x00\x01\x00"):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(bad)
            assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()
        good_w.write(encode(FrameType.PING, 5))
        assert (await asyncio.wait_for(good_r.readexactly(11), 10))[5] == FrameType.PONG
        good_w.close()

    try:
        run(main())
    finally:
        _stop(proc)


@pytest.mark.parametrize("variant", ["coalesce", "uring"])
def test_the_benchmark_measures_it(tmp_path: Path, variant: str) -> None:
    out = tmp_path / "figures.json"
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "sealguard", "bench", "relay", "--users", "10", "--messages", "200",
                           "--half-messages", "50", "--inflight", "20", "--skip-relay", "--skip-mosquitto",
                           "--floor-native", variant, "--syscalls", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    native = json.loads(out.read_text())["floor_native"]
    assert list(native) == [variant]
    d = native[variant]
    assert d["connected"] == 10 and d["delivered"] == 200 and d["cpu_us_per_msg"] >= 0
    assert f"floor-native-{variant} CPU per message (closed loop):" in proc.stderr
    assert f"floor-native-{variant} (bench/_floor_native.c, same run): cpu_us_per_msg=" in proc.stderr
    if "syscalls not counted" not in proc.stderr:  # perf may be missing or not allowed to trace
        assert d["syscalls_per_msg"] > 0 and f"floor-native-{variant} syscalls per message" in proc.stderr
    assert "timed out" not in proc.stderr, proc.stderr[-2000:]

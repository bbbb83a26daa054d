"""`sealguard chat`: two people talk through a real relay by typing lines."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.client import Identity, RelayClient
from relay.client.chat import Chat
from relay.testing import eventually, harness, next_address, run


def test_two_people_chat_with_handles_groups_media_block_and_report(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            outs: dict[str, list[str]] = {"ann": [], "bob": []}
            chats = {}
            for name, out in outs.items():
                client = RelayClient(h.server.host, h.server.port, Identity.generate(), bind_address=next_address())
                h.clients.append(client)
                chats[name] = Chat(client, tmp / f"{name}.json", "pw", "http://127.0.0.1:1", out.append)
                await chats[name].start()
            ann, bob = chats["ann"], chats["bob"]
            pumps = [asyncio.create_task(c.pump()) for c in chats.values()]
            assert (tmp / "ann.json").exists()
            for line in ["/handle ann_1", "/to @bob_1"]:
                await ann.handle_line(line)
            await bob.handle_line("/handle bob_1")
            await ann.handle_line("/to @bob_1")
            await ann.handle_line("hello bob")
            await eventually(lambda: any("hello bob" in line for line in outs["bob"]))
            await bob.handle_line("/to @ann_1")
            await bob.handle_line("hi ann")
            await eventually(lambda: any("hi ann" in line for line in outs["ann"]))
            await ann.handle_line(f"/group create {bob.c.account_id}")
            await ann.handle_line("hello group")
            await eventually(lambda: any("hello group" in line and " in g" in line for line in outs["bob"]))
            (tmp / "pic.bin").write_bytes(b"not an image, sent as is")
            await ann.handle_line("/to @bob_1")
            await ann.handle_line(f"/media {tmp / 'pic.bin'} look")
            await eventually(lambda: any("<media" in line for line in outs["bob"]))
            n = len(bob.received)
            await bob.handle_line(f"/fetch {n} {tmp / 'got.bin'}")
            assert (tmp / "got.bin").read_bytes() == b"not an image, sent as is"
            await bob.handle_line("/report @ann_1 1 --reason harassment")
            await eventually(lambda: any("1 named, 1 verified" in line for line in outs["bob"]))
            await bob.handle_line("/block @ann_1")
            await ann.handle_line("still there?")
            await eventually(lambda: any("BLOCKED" in line for line in outs["ann"]))
            await bob.handle_line("/nonsense")
            assert "unknown command" in outs["bob"][-1]
            assert not await bob.handle_line("/quit")
            # The saved identity logs back in.
            again = Chat(RelayClient(h.server.host, h.server.port,
                                     Identity.from_pickle((tmp / "ann.json").read_text(), "pw")),
                         tmp / "ann.json", "pw", "", outs["ann"].append)
            h.clients.append(again.c)
            await again.start()
            assert again.c.account_id == ann.c.account_id
            for p in pumps:
                p.cancel()

    run(main())

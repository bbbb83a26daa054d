"""`sealguard chat`: an interactive terminal client a person can use to talk to another.

The identity lives in a file (encrypted with the passphrase); the first run registers. Type a
line to send it to the current conversation; commands start with `/` (`/help` lists them).
Olm sessions live for the process; a restarted chat opens new ones (prekeys are re-uploaded).
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.client.client import Banned, ClientError, Received, RelayClient, RequestRefused
from relay.client.identity import Identity
from sealguard.contracts import ClientKind, ReasonCode

HELP = """commands:
  /handle NAME            claim a handle others can find you by
  /find NAME              look up an account by handle
  /add WHO                add a contact (WHO = account id or @handle)
  /to WHO                 talk to WHO (lines you type go there)
  /group create WHO...    create a group with these members and talk to it
  /group add WHO | /group remove WHO   change the current group's members
  /media PATH [caption]   send an image or file (compressed, encrypted)
  /fetch N [PATH]         download the media of message N
  /read                   send read receipts for what you received from the current peer
  /block WHO              block an account
  /report WHO [N...] [--reason spam]   report an account, naming received messages by number
  /appeal                 appeal your ban
  /whoami                 your account id
  /quit                   leave"""


class Chat:
    def __init__(self, client: RelayClient, identity_path: Path, passphrase: str, api_url: str,
                 out: Callable[[str], None] = print) -> None:
        self.c = client
        self.identity_path = identity_path
        self.passphrase = passphrase
        self.api_url = api_url
        self.out = out
        self.peer: str | None = None
        self.group: str | None = None
        self.received: list[Received] = []

    # -- setup ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.c.connect()
        if self.c.account_id is None:
            account = await self.c.register(ClientKind.cli)
            self.identity_path.write_text(self.c.identity.to_pickle(self.passphrase or b"sealguard-chat"))
            self.out(f"registered as {account} (identity saved to {self.identity_path})")
        else:
            queued = await self.c.login()
            self.out(f"logged in as {self.c.account_id}; {queued} queued message(s)")
        await self.c.upload_prekeys(20)

    async def resolve(self, who: str) -> str:
        if who.startswith("@"):
            return await self.c.lookup_handle(who[1:])
        return who

    # -- incoming ---------------------------------------------------------------------------------
    async def pump(self) -> None:
        """Print what arrives: messages, notices, bans."""
        async def messages() -> None:
            while True:
                r = await self.c.inbox.get()
                self.received.append(r)
                n = len(self.received)
                where = f" in {r.group}" if r.group else ""
                if r.media is not None:
                    self.out(f"[{n}] {r.sender}{where}: <media {r.media.blob_id[:8]}…> {r.plaintext.decode()} "
                             f"(/fetch {n})")
                else:
                    self.out(f"[{n}] {r.sender}{where}: {r.plaintext.decode(errors='replace')}")

        async def notices() -> None:
            while True:
                n = await self.c.notices.get()
                self.out(f"* notice: {n.kind} ({n.reason_code or '-'}, decision {n.decision_id or '-'})")

        async def closed() -> None:
            await self.c.closed.wait()
            if self.c.banned:
                self.out(f"* banned by decision {self.c.banned[0]} ({self.c.banned[1]}); /appeal to appeal")
            else:
                self.out("* disconnected")

        await asyncio.gather(messages(), notices(), closed())

    # -- commands ---------------------------------------------------------------------------------
    async def handle_line(self, line: str) -> bool:
        """Run one input line; False to quit."""
        line = line.strip()
        if not line:
            return True
        try:
            if not line.startswith("/"):
                await self.say(line)
                return True
            args = shlex.split(line[1:]) or ["help"]
            cmd, rest = args[0], args[1:]
            if cmd in ("quit", "exit"):
                return False
            handler: Callable[[list[str]], Awaitable[None]] | None = getattr(self, f"cmd_{cmd}", None)
            if handler is None:
                self.out(f"! unknown command /{cmd}\n{HELP}")
                return True
            await handler(rest)
        except Banned as exc:
            self.out(f"! {exc}")
        except RequestRefused as exc:
            self.out(f"! refused: {exc.code.name}: {exc.detail}")
        except (ClientError, OSError, ValueError, IndexError) as exc:
            self.out(f"! {exc}")
        return True

    async def say(self, text: str) -> None:
        if self.group is not None:
            await self.c.send_group(self.group, text.encode())
        elif self.peer is not None:
            await self.c.send(self.peer, text.encode())
        else:
            self.out("! no conversation: /to WHO or /group create WHO...")

    async def cmd_help(self, _: list[str]) -> None:
        self.out(HELP)

    async def cmd_whoami(self, _: list[str]) -> None:
        self.out(f"{self.c.account_id}")

    async def cmd_handle(self, args: list[str]) -> None:
        await self.c.claim_handle(args[0])
        self.out(f"you are @{args[0]}")

    async def cmd_find(self, args: list[str]) -> None:
        self.out(f"@{args[0]} is {await self.c.lookup_handle(args[0])}")

    async def cmd_add(self, args: list[str]) -> None:
        who = await self.resolve(args[0])
        await self.c.add_contact(who)
        self.out(f"added {who}")

    async def cmd_to(self, args: list[str]) -> None:
        self.peer, self.group = await self.resolve(args[0]), None
        self.out(f"talking to {self.peer}")

    async def cmd_group(self, args: list[str]) -> None:
        op, whos = args[0], [await self.resolve(w) for w in args[1:]]
        if op == "create":
            self.group, self.peer = await self.c.create_group(whos), None
            self.out(f"group {self.group} created; talking to it")
        elif op in ("add", "remove") and self.group is not None:
            for w in whos:
                await (self.c.add_member if op == "add" else self.c.remove_member)(self.group, w)
            self.out(f"{op}: done")
        else:
            self.out("! /group create WHO... | /group add WHO | /group remove WHO (in a group)")

    async def cmd_media(self, args: list[str]) -> None:
        if self.peer is None:
            self.out("! /to WHO first (media goes 1:1)")
            return
        data = Path(args[0]).read_bytes()
        await self.c.send_media(self.peer, data, " ".join(args[1:]))
        self.out("media sent")

    async def cmd_fetch(self, args: list[str]) -> None:
        r = self.received[int(args[0]) - 1]
        if r.media is None:
            self.out("! that message has no media")
            return
        data = await self.c.fetch_media(r.media)
        path = Path(args[1]) if len(args) > 1 else Path(f"media-{r.media.blob_id[:8]}.bin")
        path.write_bytes(data)
        self.out(f"saved {len(data)} bytes to {path}")

    async def cmd_read(self, _: list[str]) -> None:
        mids = [r.message_id for r in self.received if r.sender == self.peer and r.group is None]
        if self.peer and mids:
            await self.c.send_read_receipt(self.peer, mids)
            self.out(f"read receipts sent for {len(mids)} message(s)")

    async def cmd_block(self, args: list[str]) -> None:
        who = await self.resolve(args[0])
        await self.c.block(who)
        self.out(f"blocked {who}")

    async def cmd_report(self, args: list[str]) -> None:
        reason = ReasonCode.spam
        if "--reason" in args:
            i = args.index("--reason")
            reason = ReasonCode(args[i + 1])
            args = args[:i] + args[i + 2:]
        who = await self.resolve(args[0])
        mids = [self.received[int(n) - 1].message_id for n in args[1:]]
        verified = await self.c.report(who, mids, reason)
        self.out(f"reported {who}: {len(mids)} named, {verified} verified")

    async def cmd_appeal(self, _: list[str]) -> None:
        if self.c.banned is None:
            self.out("! you are not banned")
            return
        from moderation.appeal_client import submit_appeal

        loop = asyncio.get_running_loop()
        appeal_id = await loop.run_in_executor(None, submit_appeal, self.api_url, self.c.identity, self.c.banned[0])
        self.out(f"appeal {appeal_id} filed for decision {self.c.banned[0]}")


async def run_chat(host: str, port: int, identity_path: Path, passphrase: str, api_url: str) -> None:
    key = passphrase or b"sealguard-chat"
    identity = Identity.from_pickle(identity_path.read_text(), key) if identity_path.exists() else Identity.generate()
    chat = Chat(RelayClient(host, port, identity), identity_path, passphrase, api_url)
    try:
        await chat.start()
    except Banned as exc:
        chat.c.banned = (exc.decision_id, exc.reason_code)
        print(f"* {exc}; /appeal to appeal")
    print("type /help for commands")
    pump = asyncio.create_task(chat.pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or not await chat.handle_line(line):
                break
    finally:
        pump.cancel()
        await chat.c.close()

"""`sealguard relay` (one relay node) and `sealguard chat` (an interactive terminal client)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from pathlib import Path

import typer

from sealguard.cli.app import app, settings, setup_logging


@app.command()
def relay(
    host: str | None = typer.Option(None, help="Listen address (default SEALGUARD_RELAY_HOST)."),
    port: int | None = typer.Option(None, help="Listen port (default SEALGUARD_RELAY_PORT; 0 = a free port)."),
    metrics_port: int = typer.Option(0, help="Port of the Prometheus /metrics endpoint (0 = a free port)."),
    limit: list[str] = typer.Option([], help="Override a rate limit: name=capacity:refill_per_s (repeatable)."),
    ack_timeout: float = typer.Option(5.0, help="Seconds an online recipient has to ack before the message is queued."),
    node_id: str | None = typer.Option(None, help="This node's id (default SEALGUARD_NODE_ID, else relay-1); "
                                       "unique per node of a cluster."),
    cluster: bool = typer.Option(False, "--cluster/--no-cluster", envvar="SEALGUARD_CLUSTER",
                                 help="Be one of several relay nodes sharing SEALGUARD_KAFKA and SEALGUARD_DB_URL "
                                 "(docs/cluster.md)."),
    routes_topic: str = typer.Option("sg.relay.routes.v1", envvar="SEALGUARD_ROUTES_TOPIC",
                                     help="Cluster: the topic of connects, disconnects and routing state."),
    inbox_prefix: str = typer.Option("sg.relay.node.", envvar="SEALGUARD_INBOX_PREFIX",
                                     help="Cluster: node N reads its inbox topic PREFIX + N + '.v1'."),
    node_ttl: float = typer.Option(5.0, envvar="SEALGUARD_NODE_TTL",
                                   help="Cluster: seconds without a heartbeat before a node counts as dead."),
    handover_timeout: float | None = typer.Option(None, help="Cluster: seconds to wait for another node's ack "
                                                  "before queueing the message here (default ack-timeout + 2)."),
) -> None:
    """Run one relay node: server, signal emitter, enforcement consumer and /metrics.

    Uses SEALGUARD_KAFKA, or starts an embedded broker when it is unset. Prints
    `relay: listening=HOST:PORT metrics=URL node=NODE` once ready; stops on SIGTERM / Ctrl-C.
    """
    import uvloop

    from relay.server.limits import parse_overrides
    from relay.service import RelayService, config_from_settings

    setup_logging()
    s = settings()
    if host is not None:
        s.relay_host = host
    if port is not None:
        s.relay_port = port
    try:
        limits = parse_overrides(limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--limit") from None
    if node_id is not None:
        s.node_id = node_id
    config = config_from_settings(s, limits=limits, ack_timeout_s=ack_timeout)
    cluster_config = None
    if cluster:
        from relay.cluster import ClusterConfig
        from relay.cluster.wire import WireError, check_node_id

        try:
            check_node_id(s.node_id)
        except WireError as exc:
            raise typer.BadParameter(str(exc), param_hint="--node-id") from None
        if node_ttl <= 0 or (handover_timeout is not None and handover_timeout <= ack_timeout):
            raise typer.BadParameter("--node-ttl must be positive and --handover-timeout longer than --ack-timeout")
        cluster_config = ClusterConfig(node=s.node_id, routes_topic=routes_topic, inbox_prefix=inbox_prefix,
                                       node_ttl_s=node_ttl,
                                       handover_timeout_s=handover_timeout or ack_timeout + 2.0)

    with contextlib.ExitStack() as stack:
        if not s.kafka:
            from sealguard.broker import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker(s, log_path=s.state_dir / "broker.log"))
            s.kafka = broker.bootstrap

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            service = RelayService(s, config=config, metrics_port=metrics_port, cluster=cluster_config)
            await service.start()
            # Every message allocates a few short-lived objects; the default gen0 threshold (700)
            # runs a collection every ~100 messages. Fewer, and nothing from start-up rescanned.
            gc.freeze()
            gc.set_threshold(20_000, 50, 50)
            try:
                h, p = service.address
                print(f"relay: listening={h}:{p} metrics={service.metrics_url} node={config.node}", flush=True)
                await stop.wait()
            finally:
                await service.stop()

        uvloop.run(main())


@app.command()
def chat(
    host: str = typer.Option("127.0.0.1", help="Relay host."),
    port: int = typer.Option(..., help="Relay port."),
    identity: Path = typer.Option(Path("chat-identity.json"), help="Where this client's identity is kept "
                                  "(created on first use; encrypted with --passphrase)."),
    passphrase: str = typer.Option("", envvar="SEALGUARD_CHAT_PASSPHRASE", help="Encrypts the identity file."),
    api_url: str = typer.Option("http://127.0.0.1:8000", help="Moderation API, for /appeal."),
) -> None:
    """An interactive terminal client: handles, contacts, 1:1, groups, media, block, report, appeal."""
    import uvloop

    from relay.client.chat import run_chat

    setup_logging()
    uvloop.run(run_chat(host, port, identity, passphrase, api_url))

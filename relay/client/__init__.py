"""The relay client SDK (asyncio): identity, Olm/Megolm end-to-end encryption, the wire protocol.

    from relay.client import Identity, RelayClient
"""

from relay.client.client import (
    Banned,
    ClientError,
    ConnectionLost,
    Notice,
    Received,
    RelayClient,
    RequestRefused,
)
from relay.client.crypto import CryptoError
from relay.client.identity import Identity
from relay.client.media import MediaRef

__all__ = ["Banned", "ClientError", "ConnectionLost", "CryptoError", "Identity", "MediaRef", "Notice", "Received",
           "RelayClient", "RequestRefused"]

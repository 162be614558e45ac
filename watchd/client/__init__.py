"""Client and AsyncClient: talk to a running watchd over its Unix socket.

The package keeps transport and codec apart: `core` is sans-IO (requests, framing, the router
that sorts replies from pushed messages, the checks), `sync` puts a blocking socket under it and
`aio` an asyncio stream; `errors` holds what they raise.
"""

from watchd.client.aio import AsyncClient, AsyncSubscription
from watchd.client.core import resolve_socket_path
from watchd.client.errors import DEFAULT_SOCKET, SOCKET_ENV, ClientError, ServerError
from watchd.client.frames import Message
from watchd.client.sync import Client, Subscription

__all__ = [
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "AsyncClient",
    "AsyncSubscription",
    "Client",
    "ClientError",
    "Message",
    "ServerError",
    "Subscription",
    "resolve_socket_path",
]

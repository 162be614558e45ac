"""Client and AsyncClient: talk to a running watchd over its Unix socket.

The package keeps transport and codec apart: `core` is sans-IO (requests, framing, the router
that sorts replies from pushed messages, the checks), `sync` puts a blocking socket under it and
`aio` an asyncio stream; `errors` holds what they raise. `follow` is the sans-IO part of the
followers (`Client.follow`, `AsyncClient.follow`): subscriptions that outlive their connection.
"""

from watchd.client.aio import AsyncClient, AsyncFollower, AsyncSubscription
from watchd.client.core import resolve_socket_path
from watchd.client.errors import DEFAULT_SOCKET, SOCKET_ENV, ClientError, ServerError
from watchd.client.follow import Backoff, Resumption
from watchd.client.frames import Message
from watchd.client.sync import Client, Follower, Subscription

__all__ = [
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "AsyncClient",
    "AsyncFollower",
    "AsyncSubscription",
    "Backoff",
    "Client",
    "ClientError",
    "Follower",
    "Message",
    "Resumption",
    "ServerError",
    "Subscription",
    "resolve_socket_path",
]

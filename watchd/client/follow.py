"""Following the daemon through restarts, without I/O: the cursor, the backoff and the rules.

A follower is a subscription that outlives its connection. Both transports (`sync.Follower`,
`aio.AsyncFollower`) drive a `FollowCore`: it says what to subscribe with (since and instance),
which incoming messages to hand out (none twice), when to synthesize an `overflow` notice for
the caller (the daemon could not resume: rescan), and how long to wait before connecting again
after a failure, or that the failure is not one to retry.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from watchd.client.core import SubscribeRequest, SubscriptionState, resolve_socket_path
from watchd.client.errors import ClientError, JSONDict, ServerError
from watchd.client.frames import Message
from watchd.protocol import encode

# Notices that carry the seq of the event before them (they take no seq of their own): a
# `since` replay from seq N sends again those held at N, so they are matched by content there.
SEQ_NOTICES = frozenset({"overflow", "resynced"})


# Called before a follower waits to connect again: the error, and the seconds it will wait.
RetryHook = Callable[[ClientError, float], object]


class Resumption(enum.StrEnum):
    """The `reason` of the overflow notice a follower synthesizes: why it could not resume."""

    DAEMON_RESTART = "daemon_restart"  # another instance greeted: its seqs are not ours
    SINCE_EXPIRED = "since_expired"  # the daemon no longer holds the events after our seq


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a follower waits before connecting again, failure after failure.

    The n-th consecutive failure (n >= 1) waits min(maximum, initial * factor ** (n - 1)),
    scaled by a random factor between 1 - jitter and 1, so that the clients of a restarted
    daemon do not all come back at the same instant. A success starts the count again.
    give_up_after: after that many seconds without a working subscription, the last error is
    raised instead (None: keep trying for ever).
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5
    give_up_after: float | None = None

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(
                "Backoff needs 0 < initial <= maximum, factor >= 1 and 0 <= jitter <= 1, got "
                f"initial={self.initial}, maximum={self.maximum}, factor={self.factor}, "
                f"jitter={self.jitter}"
            )

    def delay(self, failures: int, fraction: float) -> float:
        """The wait after `failures` consecutive failures; fraction is uniform in [0, 1)."""
        # The exponent is capped so that a very long outage never overflows a float.
        steps = min(max(failures - 1, 0), 64)
        base = min(self.maximum, self.initial * self.factor**steps)
        return base * (1 - self.jitter * fraction)


def retryable(error: ClientError) -> bool:
    """Whether a follower connects again after this error, rather than raising it.

    Retried: the daemon is not there, hung up, did not answer in time, or is full
    (too_many_clients, request_timeout). Raised: everything another attempt would meet again,
    such as a refused request (bad_request, unknown_watch, too_many_subscriptions), access
    denied, a path that is not a socket, or a peer that does not speak watchd's protocol.
    """
    return error.transient


@dataclass(frozen=True, slots=True)
class Resume:
    """What to subscribe with on a new connection."""

    since: int | None
    instance: str | None


class FollowCore:
    """The state a follower keeps across its connections; see the module's docstring."""

    def __init__(
        self,
        since: int | None,
        instance: str | None,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff
        self.instance = instance  # the daemon instance the seqs belong to
        self.last_seq = since  # the seq of the newest message handed out
        self.failures = 0  # consecutive failed attempts since the last success
        self.retry_at = 0.0  # on the clock: not before then may the next attempt start
        self._clock = clock
        self._down_since: float | None = None
        # Notices handed out at last_seq, each with its copies (two `resynced` alike answer two
        # overflows).
        self._at_last: Counter[tuple[object, ...]] = Counter()
        # Those of them handed out before the current connection: its replay may send each
        # copy again, once. (Two alike on one connection are two occasions, and both pass.)
        self._before: Counter[tuple[object, ...]] = Counter()
        self._lost: Resumption | None = None  # why the next subscription cannot resume
        self.pending: deque[Message] = deque()  # synthesized notices to hand out first

    # --- a connection's start ----------------------------------------------------------------

    def greeted(self, hello: JSONDict) -> Resume:
        """The hello of a new connection: resume where we were, or note that we cannot."""
        instance = hello.get("instance")
        seq = hello.get("seq")
        other = self.instance is not None and instance != self.instance
        behind = isinstance(seq, int) and self.last_seq is not None and seq < self.last_seq
        if self.last_seq is not None and (other or behind):
            # Another daemon, or one without the seqs we saw: ours mean nothing to it.
            self._lost = Resumption.DAEMON_RESTART
        if self._lost is not None:
            return Resume(None, None)
        return Resume(self.last_seq, self.instance if self.last_seq is not None else None)

    def since_expired(self) -> Resume:
        """The daemon answered since_expired: subscribe live, and tell the caller to rescan."""
        self._lost = Resumption.SINCE_EXPIRED
        return Resume(None, None)

    def subscribed(self, hello: JSONDict, subscription: str, seq: int) -> None:
        """The subscription is confirmed, with the daemon's last seq at that moment."""
        self.failures = 0
        self._down_since = None
        self.instance = str(hello.get("instance")) if "instance" in hello else self.instance
        if self._lost is None:
            self._before = self._at_last.copy()
            if self.last_seq is None:
                # Nothing handed out yet: what follows the subscription is ours, so a daemon
                # restart before the first message resumes from here, not live (which would
                # miss the restart's notice and what the daemon published meanwhile).
                self.last_seq = seq
            return
        # Once the live subscription is in place: a rescan the caller starts when the notice
        # arrives, plus the events after it, is complete. Everything up to seq may be missing.
        notice: JSONDict = {"type": "overflow", "subscription": subscription, "seq": seq,
                            "reason": self._lost.value, "watch": None, "resync": False}
        self._lost = None
        self.last_seq = seq
        self._at_last, self._before = Counter([_notice_key(notice)]), Counter()
        self.pending.append(Message(encode(notice), notice))

    # --- messages ------------------------------------------------------------------------------

    def admit(self, message: Message) -> bool:
        """Whether to hand this pushed message out: false for what was handed out already."""
        data = message.data
        seq = data.get("seq")
        if not isinstance(seq, int):
            return True  # dropped, watch_lost, watch_restored, watch_degraded: never replayed
        last = self.last_seq
        if data.get("type") in SEQ_NOTICES:
            key = _notice_key(data)
            if last is not None and seq < last:
                return False
            if seq == last and self._before[key] > 0:
                self._before[key] -= 1
                return False
            if seq != last:
                self._at_last, self._before = Counter(), Counter()
            self._at_last[key] += 1
        elif last is not None and seq <= last:
            return False
        else:
            self._at_last, self._before = Counter(), Counter()
        self.last_seq = seq
        return True

    # --- failures ------------------------------------------------------------------------------

    def failed(self, error: ClientError, fraction: float) -> float:
        """A connection or attempt failed: the delay before the next one, or raise error."""
        if not retryable(error):
            raise error
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
        limit = self.backoff.give_up_after
        if limit is not None and now - self._down_since >= limit:
            raise error
        self.failures += 1
        delay = self.backoff.delay(self.failures, fraction)
        self.retry_at = now + delay
        return delay

    def wait_left(self) -> float:
        """Seconds until the next attempt may start (0: now)."""
        return max(0.0, self.retry_at - self._clock())


def _notice_key(data: JSONDict) -> tuple[object, ...]:
    """What makes two notices at one seq the same occasion (the subscription id aside)."""
    return tuple(sorted((k, repr(v)) for k, v in data.items() if k != "subscription"))


@dataclass(frozen=True, slots=True)
class FollowOptions:
    """How a follower connects: the socket, the client timeout, the backoff, the retry hook."""

    socket_path: str
    timeout: float | None
    backoff: Backoff
    on_retry: RetryHook | None


def follow_options(
    socket_path: str | None, timeout: float | None, backoff: Backoff | None,
    on_retry: RetryHook | None,
) -> FollowOptions:
    """A follower's options from the keyword arguments of Client.follow; None: the defaults."""
    return FollowOptions(resolve_socket_path(socket_path), timeout, backoff or Backoff(), on_retry)


class FollowerState:
    """What a follower is apart from its transport, the same in both clients."""

    def __init__(self, request: SubscribeRequest, options: FollowOptions) -> None:
        self.socket_path = options.socket_path
        self.timeout = options.timeout
        self._request = request
        self._core = FollowCore(request.since, request.instance, options.backoff)
        self._on_retry = options.on_retry
        self._random = random.Random()

    @property
    def instance(self) -> str | None:
        """The daemon instance the seqs belong to (None before the first greeting)."""
        return self._core.instance

    @property
    def last_seq(self) -> int | None:
        """The seq of the newest message handed out: the point a resumption starts after."""
        return self._core.last_seq

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last subscription (0 while subscribed)."""
        return self._core.failures

    def _with(self, resume: Resume) -> SubscribeRequest:
        """The subscribe request for a new connection."""
        return dataclasses.replace(self._request, since=resume.since, instance=resume.instance)

    # A transport's attempt: connect; send _resuming(hello); if the daemon refuses it, send
    # _after_refusal(error, request) (or let it raise); then _subscribed(hello, subscription).

    def _resuming(self, hello: JSONDict) -> SubscribeRequest:
        """The first subscribe request on a connection that greeted with hello."""
        return self._with(self._core.greeted(hello))

    def _after_refusal(self, error: ServerError, sent: SubscribeRequest) -> SubscribeRequest:
        """The request to send after the daemon refused sent; raises error if there is none.

        Only a resumption the daemon can no longer serve (since_expired) is tried again, live.
        """
        if error.code != "since_expired" or sent.since is None:
            raise error
        return self._with(self._core.since_expired())

    def _subscribed(self, hello: JSONDict, subscription: SubscriptionState) -> None:
        """The attempt succeeded: the cursor goes on from this subscription."""
        self._core.subscribed(hello, subscription.subscription, subscription.seq)

    def _schedule(self, error: ClientError) -> None:
        """Set the wait before the next attempt (tell on_retry), or raise error."""
        delay = self._core.failed(error, self._random.random())
        if self._on_retry is not None:
            self._on_retry(error, delay)

"""Publish a few messages to an MQTT broker and know they arrived: one short connection,
QoS 1, every PUBACK awaited, in the calling thread (run it in a worker thread from asyncio).

Used by the maintenance notices (one message) and by a plant sharing its rollups with its
network (a batch). Errors of paho and ssl become `PublishError`, which says whether trying again
may help (the broker is down or slow) or cannot (the broker refused these credentials).
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from collector.config import MqttTLS

__all__ = [
    "REFUSED_FOR_GOOD",
    "BrokerLink",
    "PublishError",
    "describe",
    "publish_all",
    "tls_context",
]

# CONNACK reason codes that another try with the same settings cannot change (MQTT 5 numbering,
# which paho 2 uses for 3.1.1 brokers too): bad protocol, client id, credentials, auth method.
REFUSED_FOR_GOOD = frozenset({132, 133, 134, 135, 140})


class PublishError(Exception):
    """Messages were not (all) acknowledged, for `reason`; `retryable`: they may get through
    later with the same settings."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails: paho 2.2 drops such a socket
    without closing it (a ResourceWarning per failed attempt)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(tls: MqttTLS | None) -> ssl.SSLContext:
    """As the collector connects: the CA of `tls` or the system's, a client certificate if
    given, the broker's certificate required, its host name checked unless `insecure`.
    ValueError when the files cannot be used."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        if tls is not None and tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the TLS files: {exc}") from exc
    context.check_hostname = not (tls and tls.insecure)
    context.sslsocket_class = _ClosingSSLSocket
    return context


@dataclass(frozen=True)
class BrokerLink:
    """Where and as whom to publish. `credentials_hint` names the settings to check when the
    broker refuses the login (they differ between the plant's broker and the network's)."""

    url: str
    username: str | None = None
    password: str | None = None
    tls: MqttTLS | None = None
    client_id: str = ""  # empty: the broker names a clean session
    credentials_hint: str = ""
    # MQTT 5: the broker says in each PUBACK whether it took the message (a 3.1.1 broker
    # acknowledges a publish its ACL refused, and the message is gone without a word).
    mqtt5: bool = False

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.tls is not None


def publish_all(
    link: BrokerLink,
    messages: Sequence[tuple[str, bytes]],
    *,
    timeout: float,
    context: ssl.SSLContext | None = None,
) -> None:
    """Publish (topic, payload) pairs at QoS 1, not retained, and return once the broker
    acknowledged every one; PublishError otherwise. `timeout` bounds the whole call."""
    deadline = time.monotonic() + timeout
    if link.mqtt5:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=link.client_id, protocol=paho.MQTTv5
        )
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=link.client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
    client.connect_timeout = timeout
    # Many messages in flight at once: a batch after a long outage should not wait for each
    # PUBACK in turn (the broker keeps its own limit on what it takes unacknowledged).
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    if link.username is not None:
        client.username_pw_set(link.username, link.password)
    if link.uses_tls:
        # paho reads check_hostname from the context: the context checks the host name (paho's
        # own check uses ssl.match_hostname, gone from Python 3.12), or none does.
        client.tls_set_context(context or tls_context(link.tls))
    refusals: list[Any] = []
    refused_messages: dict[int, Any] = {}

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refusals.append(reason)

    def on_publish(_c: paho.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):  # MQTT 5: "Not authorized", "Quota exceeded"…
            refused_messages[mid] = reason

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        try:
            client.connect(link.host, link.port, keepalive=60)
        except (OSError, ValueError) as exc:  # ssl errors are OSErrors
            raise PublishError(
                f"cannot connect to {link.url}: {describe(exc)}", retryable=True
            ) from exc
        _pump(link, client, client.is_connected, deadline, refusals, "its acceptance", timeout)
        sent = []
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1, retain=False)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
                raise PublishError(
                    f"cannot publish to {topic!r}: {paho.error_string(info.rc)}", retryable=True
                )
            sent.append(info)

        def all_acknowledged() -> bool:
            return all(info.is_published() for info in sent)

        _pump(link, client, all_acknowledged, deadline, refusals, "its PUBACKs", timeout)
        if refused_messages:
            reason = next(iter(refused_messages.values()))
            topics = sorted(
                {messages[i][0] for i, info in enumerate(sent) if info.mid in refused_messages}
            )
            raise PublishError(
                f"{link.url} refused {len(refused_messages)} message(s) to {', '.join(topics)}: "
                f"{reason} (check the broker's ACL for this user)",
                retryable=False,
            )
        client.disconnect()  # written at once: no loop thread here
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()


def _pump(
    link: BrokerLink,
    client: paho.Client,
    done: Callable[[], bool],
    deadline: float,
    refusals: list[Any],
    awaited: str,
    timeout: float,
) -> None:
    """Run paho's socket work in this thread until `done()`, the deadline or a failure."""
    while not done():
        if refusals:
            reason = refusals[0]
            hint = (
                f" (check {link.credentials_hint})"
                if reason.value in (134, 135) and link.credentials_hint
                else ""
            )
            raise PublishError(
                f"{link.url} refused the connection: {reason}{hint}",
                retryable=reason.value not in REFUSED_FOR_GOOD,
            )
        sock = client.socket()
        remaining = deadline - time.monotonic()
        if sock is None:
            raise PublishError(f"{link.url} closed the connection before {awaited}", retryable=True)
        if remaining <= 0:
            raise PublishError(
                f"{link.url} gave no answer within {timeout:g} s (waiting for {awaited})",
                retryable=True,
            )
        # Bytes already decrypted wait inside the SSL object, where select cannot see them.
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        writers = [sock] if client.want_write() else []
        readable, writable, _ = select.select([sock], writers, [], 0 if pending else remaining)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if writable:
            rc = client.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and (readable or pending):
            rc = client.loop_read()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = client.loop_misc()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not refusals:
            raise PublishError(
                f"lost the connection to {link.url} before {awaited}: {paho.error_string(rc)}",
                retryable=True,
            )


def describe(exc: BaseException) -> str:
    """An exception as one line; some (timeouts, mostly) have no message of their own."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

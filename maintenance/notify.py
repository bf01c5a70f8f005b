"""Deliver notices to the crews' notification targets — an MQTT topic, a webhook, e-mail — and
decide, for each failure, when to try again or whether to give up.

A notifier sends one notice or raises `NotifyError`, which says whether trying again may help;
errors of paho, httpx and smtplib are translated into it here and nowhere else. `deliver` sends
what the outbox holds and reports each outcome through callbacks, so the store records it.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import logging
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.message import EmailMessage
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

import httpx

from collector.config import (
    Config,
    EmailNotification,
    MqttConfig,
    MqttNotification,
    WebhookNotification,
)
from collector.mqtt_publish import BrokerLink, PublishError, describe, publish_all, tls_context
from maintenance.model import Notice

__all__ = [
    "FIRST_RETRY_S",
    "MAX_ATTEMPTS",
    "MAX_RETRY_S",
    "SEND_TIMEOUT",
    "Delivery",
    "EmailNotifier",
    "MqttNotifier",
    "Notifier",
    "NotifyError",
    "WebhookNotifier",
    "build_notifiers",
    "deliver",
    "retry_delay_ms",
]

log = logging.getLogger(__name__)

SEND_TIMEOUT = 10.0  # seconds one send may take: connecting, and waiting for the answer
FIRST_RETRY_S = 30  # after the first failure; doubled after each further one ...
MAX_RETRY_S = 3600  # ... up to this
MAX_ATTEMPTS = 30  # failures before a notice is given up: with the delays above, about a day
CONCURRENCY = 4  # targets sent to at once
BODY_SAMPLE = 200  # characters of a refusing webhook's answer kept in the error


class NotifyError(Exception):
    """A notice was not delivered to `target`, for `reason`. `retryable`: the same notice may
    get through later (the target is down, busy, or timed out); otherwise it never will as
    things are configured. `retry_after`: seconds the target asked us to wait, if it did."""

    def __init__(
        self, target: str, reason: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class Notifier(Protocol):
    """Sends notices to one configured target."""

    name: str

    async def send(self, notice: Notice) -> None:
        """Deliver `notice` or raise NotifyError."""
        ...


def _payload_json(notice: Notice, target: str) -> bytes:
    try:
        text = json.dumps(dict(notice.payload), ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError) as exc:
        raise NotifyError(
            target, f"the payload of ticket {notice.ticket_id} is not JSON: {exc}", retryable=False
        ) from exc
    return text.encode("utf-8")


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# -- MQTT ---------------------------------------------------------------------------------------


class MqttNotifier:
    """Publishes each notice's payload as JSON (UTF-8) to the target's topic on the factory's
    broker (`mqtt:` of the config: URL, TLS, user name), QoS 1, not retained, and waits for the
    broker's PUBACK. One short connection per notice, in a worker thread: notices are few, and
    nothing is left running between them (`collector.mqtt_publish`).

    The password comes from `environ["AGUANTE_MQTT_PASSWORD"]` (else from `mqtt.password`), the
    user name from AGUANTE_MQTT_USERNAME (else `mqtt.username`), as for the collector.
    """

    def __init__(
        self,
        target: MqttNotification,
        mqtt: MqttConfig,
        environ: Mapping[str, str],
        *,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.name = f"mqtt {target.id}"
        if not target.topic or any(c in target.topic for c in "+#\0"):
            raise ValueError(
                f"{self.name}: topic {target.topic!r} cannot be published to; "
                "write a topic without + or #, e.g. aguante/tickets"
            )
        if timeout <= 0:
            raise ValueError(f"{self.name}: timeout must be above 0 s, not {timeout}")
        self.topic = target.topic
        self.url = mqtt.url
        self.timeout = timeout
        self._link = BrokerLink(
            mqtt.url,
            username=environ.get("AGUANTE_MQTT_USERNAME") or mqtt.username,
            password=environ.get("AGUANTE_MQTT_PASSWORD") or mqtt.password,
            tls=mqtt.tls,
            credentials_hint="AGUANTE_MQTT_USERNAME and AGUANTE_MQTT_PASSWORD",
        )
        self._tls = None
        if mqtt.use_tls:
            try:
                self._tls = tls_context(mqtt.tls)
            except ValueError as exc:
                raise ValueError(f"{self.name}: cannot use the files of mqtt.tls: {exc}") from exc

    async def send(self, notice: Notice) -> None:
        body = _payload_json(notice, self.name)
        await asyncio.to_thread(self._publish, body)

    def _publish(self, body: bytes) -> None:
        try:
            publish_all(self._link, [(self.topic, body)], timeout=self.timeout, context=self._tls)
        except PublishError as exc:
            raise NotifyError(self.name, exc.reason, retryable=exc.retryable) from exc


# -- webhook ------------------------------------------------------------------------------------


class WebhookNotifier:
    """POSTs each notice's payload as JSON (UTF-8). A 2xx answer is success; 408, 429 and 5xx
    answers and network failures may pass later; any other answer will not (a redirect too:
    point the webhook at its final URL). Errors name the host, never the whole URL, which
    often carries a token."""

    def __init__(
        self,
        target: WebhookNotification,
        *,
        timeout: float = SEND_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = f"webhook {target.id}"
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{self.name}: url must be http:// or https:// with a host, "
                f"e.g. https://hooks.example.org/aguante"
            )
        if timeout <= 0:
            raise ValueError(f"{self.name}: timeout must be above 0 s, not {timeout}")
        self.url = target.url
        self.host = parts.hostname
        self.timeout = timeout
        self._transport = transport  # a seam for tests that want no network

    async def send(self, notice: Notice) -> None:
        body = _payload_json(notice, self.name)
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "aguante"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as client:
                response = await client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise NotifyError(
                self.name,
                f"{self.host} gave no answer within {self.timeout:g} s ({type(exc).__name__})",
                retryable=True,
            ) from exc
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS
            raise NotifyError(
                self.name, f"cannot reach {self.host}: {describe(exc)}", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise NotifyError(self.name, describe(exc), retryable=False) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = f"{self.host} answered {status} {response.reason_phrase}".rstrip()
        sample = " ".join(response.text[:BODY_SAMPLE].split())
        if sample:
            reason += f": {sample}"
        if 300 <= status < 400:
            location = response.headers.get("location")
            moved = urlsplit(location).hostname if location else None
            reason += f" (a redirect{f' to {moved}' if moved else ''}: give the final URL)"
        retryable = status in (408, 429) or status >= 500
        retry_after = _retry_after(response) if status in (429, 503) else None
        raise NotifyError(self.name, reason, retryable=retryable, retry_after=retry_after)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number of seconds, or an HTTP date), if given and sane."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_S))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, min(when.timestamp() - time.time(), float(MAX_RETRY_S)))


# -- e-mail -------------------------------------------------------------------------------------


class EmailNotifier:
    """Sends each notice as a plain-text UTF-8 e-mail (its subject and text) to the target's
    recipients over SMTP, upgraded with STARTTLS when `starttls` (the server's certificate is
    checked against the system's CAs, or `tls_context`), logging in when a user name is given
    with the password of AGUANTE_SMTP_PASSWORD.

    A password is never sent unencrypted: a user name without STARTTLS is refused here, as is a
    user name without AGUANTE_SMTP_PASSWORD.
    """

    def __init__(
        self,
        target: EmailNotification,
        environ: Mapping[str, str],
        *,
        timeout: float = SEND_TIMEOUT,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = f"email {target.id}"
        if target.username is not None and not target.starttls:
            raise ValueError(
                f"{self.name}: a user name needs starttls: true; "
                "the password is not sent unencrypted"
            )
        password = environ.get("AGUANTE_SMTP_PASSWORD")
        if target.username is not None and not password:
            raise ValueError(
                f"{self.name}: user name {target.username!r} is given but "
                "AGUANTE_SMTP_PASSWORD is not set in the environment"
            )
        if timeout <= 0:
            raise ValueError(f"{self.name}: timeout must be above 0 s, not {timeout}")
        self.host, self.port = target.host, target.port
        self.sender = target.sender
        self.to = list(target.to)
        self.starttls = target.starttls
        self.timeout = timeout
        self._username = target.username
        self._password = password
        self._tls_context = tls_context

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    async def send(self, notice: Notice) -> None:
        await asyncio.to_thread(self._send, self._message(notice))

    def _message(self, notice: Notice) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = " ".join(notice.subject.split())  # a header is one line
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["Date"] = email.utils.formatdate(usegmt=True)
        domain = email.utils.parseaddr(self.sender)[1].rpartition("@")[2]
        # A domain of our own: make_msgid would otherwise ask the resolver for this host's name.
        message["Message-ID"] = email.utils.make_msgid(domain=domain or "aguante.invalid")
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
        # Quoted-printable: 7-bit safe through any relay, and still readable in the raw.
        message.set_content(notice.text, charset="utf-8", cte="quoted-printable")
        return message

    def _fail(self, reason: str, *, retryable: bool) -> NotifyError:
        return NotifyError(self.name, reason, retryable=retryable)

    def _send(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    context = self._tls_context or ssl.create_default_context()
                    smtp.starttls(context=context)
                if self._username is not None:
                    assert self._password is not None  # checked when made
                    smtp.login(self._username, self._password)
                refused = smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise self._fail(
                f"{self.server} refused the user name or password ({_smtp_answer(exc)}); "
                "check the user name and AGUANTE_SMTP_PASSWORD",
                retryable=False,
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise self._fail(
                f"{self.server} does not offer what is needed: {describe(exc)}", retryable=False
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            answers = "; ".join(
                f"{who}: {_smtp_answer(smtplib.SMTPResponseException(*answer))}"
                for who, answer in exc.recipients.items()
            )
            permanent = all(code >= 500 for code, _ in exc.recipients.values())
            raise self._fail(
                f"{self.server} refused every recipient: {answers}", retryable=not permanent
            ) from exc
        except smtplib.SMTPResponseException as exc:  # sender or data refused, or any answer
            raise self._fail(
                f"{self.server} answered {_smtp_answer(exc)}", retryable=exc.smtp_code < 500
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, DNS, TLS
            raise self._fail(
                f"cannot reach {self.server}: {describe(exc)}", retryable=True
            ) from exc
        if refused:
            # Sent to the others: trying again would send it to them twice. Said, not retried.
            answers = "; ".join(
                f"{who}: {_smtp_answer(smtplib.SMTPResponseException(*answer))}"
                for who, answer in refused.items()
            )
            raise self._fail(f"sent, but {self.server} refused {answers}", retryable=False)


def _smtp_answer(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{exc.smtp_code} {' '.join(str(text).split())}".strip()


# -- all targets, and delivery -----------------------------------------------------------------


def build_notifiers(config: Config, environ: Mapping[str, str]) -> dict[str, Notifier]:
    """A notifier per notification target of the config, by target id. Raises ValueError,
    naming the target, for a setting that could never work (a missing password, say)."""
    notifiers: dict[str, Notifier] = {}
    for target in config.maintenance.notifications:
        notifier: Notifier
        if isinstance(target, MqttNotification):
            notifier = MqttNotifier(target, config.mqtt, environ)
        elif isinstance(target, WebhookNotification):
            notifier = WebhookNotifier(target)
        else:
            notifier = EmailNotifier(target, environ)
        notifiers[target.id] = notifier
    return notifiers


def retry_delay_ms(failures: int) -> int:
    """How long to wait after a notice's `failures`-th failure: 30 s, 1 min, 2 min, 4 min …
    at most an hour."""
    if failures < 1:
        raise ValueError(f"failures counts from 1, not {failures}")
    return min(FIRST_RETRY_S << min(failures - 1, 32), MAX_RETRY_S) * 1000


class Delivery(NamedTuple):
    """What one `deliver` call did."""

    sent: int
    retrying: int
    given_up: int


async def deliver(
    notifiers: Mapping[str, Notifier],
    due: Sequence[tuple[int, Notice, int]],
    *,
    on_sent: Callable[[int], Awaitable[None] | None],
    on_failed: Callable[[int, str, int | None], Awaitable[None] | None],
    now_ms: int,
    concurrency: int = CONCURRENCY,
    max_attempts: int | None = MAX_ATTEMPTS,
) -> Delivery:
    """Send the due notices, each `(outbox id, notice, attempts)` where `attempts` counts its
    earlier failures, and report each outcome: `on_sent(outbox_id)`, or
    `on_failed(outbox_id, error_text, retry_at_ms)` with `retry_at_ms` None when it is given up
    (the target refused it for good, names no configured target, or has failed `max_attempts`
    times). Retry times count from `now_ms`, when the notices were taken as due. Callbacks may
    be plain or async functions; an exception from one ends the call (notices not yet reported
    stay due, and are sent again: delivery is at least once).

    Each target's notices go one after the other, in the order given; up to `concurrency`
    targets at once. After a failure that may pass, that target's remaining notices are not
    tried this time and fail with the same error, so a target that is down costs one timeout.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    counts = {"sent": 0, "retrying": 0, "given_up": 0}

    async def report(result: Awaitable[None] | None) -> None:
        if inspect.isawaitable(result):
            await result

    async def failed(outbox_id: int, attempts: int, error: str, retry: float | None) -> None:
        """`retry`: None to give up, else the least seconds to wait (0: the usual backoff)."""
        failures = attempts + 1
        retry_at: int | None = None
        if retry is not None and (max_attempts is None or failures < max_attempts):
            delay = max(retry_delay_ms(failures), round(retry * 1000))
            retry_at = now_ms + min(delay, MAX_RETRY_S * 1000)
        if retry_at is None:
            counts["given_up"] += 1
            log.warning("notice %d given up after %d attempts: %s", outbox_id, failures, error)
        else:
            counts["retrying"] += 1
            log.info("notice %d failed (attempt %d), retried later: %s", outbox_id, failures, error)
        await report(on_failed(outbox_id, error, retry_at))

    by_target: dict[str, list[tuple[int, Notice, int]]] = {}
    for outbox_id, notice, attempts in due:
        if notice.target in notifiers:
            by_target.setdefault(notice.target, []).append((outbox_id, notice, attempts))
        else:
            error = f"no notification target {notice.target!r} in the config"
            await failed(outbox_id, attempts, error, None)

    slots = asyncio.Semaphore(concurrency)

    async def send_all(notifier: Notifier, queue: list[tuple[int, Notice, int]]) -> None:
        async with slots:
            down: NotifyError | None = None
            for outbox_id, notice, attempts in queue:
                if down is not None:
                    error = f"not tried, the notice before it failed: {down}"
                    await failed(outbox_id, attempts, error, down.retry_after or 0.0)
                    continue
                try:
                    await notifier.send(notice)
                except NotifyError as exc:
                    if exc.retryable:
                        down = exc
                        await failed(outbox_id, attempts, str(exc), exc.retry_after or 0.0)
                    else:
                        await failed(outbox_id, attempts, str(exc), None)
                    continue
                except Exception as exc:  # a notifier's bug must not stop the others
                    log.exception(
                        "%s: unexpected error sending notice %d", notifier.name, outbox_id
                    )
                    error = f"{notifier.name}: unexpected error: {type(exc).__name__}: {exc}"
                    await failed(outbox_id, attempts, error, 0.0)
                    continue
                counts["sent"] += 1
                await report(on_sent(outbox_id))

    try:
        async with asyncio.TaskGroup() as group:
            for target, queue in by_target.items():
                group.create_task(send_all(notifiers[target], queue), name=f"notify {target}")
    except ExceptionGroup as errors:
        # A callback failed (the store, most likely): raise its error, not a group of one.
        raise errors.exceptions[0] from None
    return Delivery(**counts)

"""Notifiers against real local receivers — a Mosquitto subscriber, an HTTP server, an SMTP server
(aiosmtpd) — and `deliver`'s retry and give-up decisions with in-memory notifiers."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import http.server
import json
import logging
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import (
    EmailNotification,
    MqttConfig,
    MqttNotification,
    MqttTLS,
    WebhookNotification,
    parse_config,
)
from maintenance import notify
from maintenance.model import Notice
from maintenance.notify import (
    Delivery,
    EmailNotifier,
    MqttNotifier,
    NotifyError,
    WebhookNotifier,
    build_notifiers,
    deliver,
    retry_delay_ms,
)
from tests.services import Mosquitto, TlsFiles, free_port, make_tls_files
from tests.waiting import eventually

TOPIC = "planta/mantenimiento/tickets"
PAYLOAD: dict[str, object] = {
    "ticket": 17,
    "event": "opened",
    "machine": "compresor-1",
    "title": "Compresor 1: vibración 7,4 mm/s (límite 7,1)",
    "severity": "critical",
    "readings": [{"time_ms": 1_700_000_000_000, "signal": "vibration", "value": 7.4}],
}
SUBJECT = "Compresor 1: vibración 7,4 mm/s (límite 7,1)"
TEXT = (
    "La vibración del compresor subió durante 5 min.\nRevisá los rodamientos — señal «vibration».\n"
)


def notice(target: str = "tablero", ticket_id: int = 17) -> Notice:
    return Notice(target=target, ticket_id=ticket_id, subject=SUBJECT, text=TEXT, payload=PAYLOAD)


# -- MQTT -----------------------------------------------------------------------------------------

USERS = {"aguante": "clave-del-servicio", "tablero": "clave-del-tablero"}


@contextlib.contextmanager
def subscribed(
    broker: Mosquitto,
    *,
    tls: TlsFiles | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Iterator[list[paho.MQTTMessage]]:
    """A crew's phone: subscribed to TOPIC at QoS 1 before the block runs; the messages it gets."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="telefono-del-turno")
    if tls is not None:
        client.tls_set(ca_certs=str(tls.ca_file), cert_reqs=ssl.CERT_REQUIRED)
    if username is not None:
        client.username_pw_set(username, password)
    received: list[paho.MQTTMessage] = []
    ready = threading.Event()

    def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe(TOPIC, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_args: ready.set()
    client.on_message = lambda _c, _u, message: received.append(message)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert ready.wait(5), "the subscriber was not subscribed within 5 s"
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_notifier(mqtt: MqttConfig, environ: dict[str, str] | None = None) -> MqttNotifier:
    return MqttNotifier(
        MqttNotification(id="tablero", topic=TOPIC), mqtt, environ or {}, timeout=3.0
    )


async def test_mqtt_publishes_the_payload_as_utf8_json_at_qos_1(mosquitto: Mosquitto) -> None:
    notifier = mqtt_notifier(MqttConfig(url=mosquitto.url))
    with subscribed(mosquitto) as received:
        await notifier.send(notice())
        await eventually(lambda: received)
    (message,) = received
    assert message.topic == TOPIC
    assert json.loads(message.payload.decode("utf-8")) == PAYLOAD
    assert "vibración 7,4".encode() in message.payload  # not \u00f3 escapes
    assert (message.qos, message.retain) == (1, False)
    assert notifier.name == "mqtt tablero"


async def test_mqtt_password_comes_from_the_environment(
    start_broker: Callable[..., Mosquitto],
) -> None:
    broker = start_broker(users=USERS)
    mqtt = MqttConfig(url=broker.url, username="aguante")
    notifier = mqtt_notifier(mqtt, {"AGUANTE_MQTT_PASSWORD": USERS["aguante"]})
    with subscribed(broker, username="tablero", password=USERS["tablero"]) as received:
        await notifier.send(notice())
        await eventually(lambda: received)
    assert json.loads(received[0].payload) == PAYLOAD


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"AGUANTE_MQTT_PASSWORD": "no-es-la-clave"}, id="wrong-password"),
        pytest.param({}, id="no-password"),
    ],
)
async def test_mqtt_refused_credentials_are_not_retried(
    environ: dict[str, str], start_broker: Callable[..., Mosquitto]
) -> None:
    broker = start_broker(users=USERS)
    notifier = mqtt_notifier(MqttConfig(url=broker.url, username="aguante"), environ)
    with pytest.raises(NotifyError) as caught:
        await notifier.send(notice())
    assert str(caught.value) == (
        f"mqtt tablero: {broker.url} refused the connection: Not authorized "
        "(check AGUANTE_MQTT_USERNAME and AGUANTE_MQTT_PASSWORD)"
    )
    assert caught.value.retryable is False


async def test_mqtt_broker_down_is_retryable(mosquitto: Mosquitto) -> None:
    notifier = mqtt_notifier(MqttConfig(url=mosquitto.url))
    mosquitto.stop()
    with pytest.raises(NotifyError) as caught:
        await notifier.send(notice())
    assert caught.value.retryable is True
    assert str(caught.value).startswith(f"mqtt tablero: cannot connect to {mosquitto.url}: ")
    assert "Connection refused" in str(caught.value)


async def test_mqtt_over_tls_with_the_brokers_ca(
    start_broker: Callable[..., Mosquitto], tls_files: TlsFiles
) -> None:
    broker = start_broker(tls=tls_files)
    notifier = mqtt_notifier(
        MqttConfig(url=broker.url, tls=MqttTLS(ca_file=str(tls_files.ca_file)))
    )
    with subscribed(broker, tls=tls_files) as received:
        await notifier.send(notice())
        await eventually(lambda: received)
    assert json.loads(received[0].payload) == PAYLOAD


async def test_mqtt_over_tls_with_an_unknown_ca_is_retryable_and_leaks_no_socket(
    start_broker: Callable[..., Mosquitto], tls_files: TlsFiles, tmp_path: Path
) -> None:
    # paho 2.2 leaves a failed handshake's socket to the garbage collector (a ResourceWarning,
    # an error under -W error); the notifier's SSL sockets close themselves.
    other = make_tls_files(tmp_path / "other", name="someone else")
    broker = start_broker(tls=tls_files)
    notifier = mqtt_notifier(MqttConfig(url=broker.url, tls=MqttTLS(ca_file=str(other.ca_file))))
    with pytest.raises(NotifyError) as caught:
        await notifier.send(notice())
    assert caught.value.retryable is True
    assert "certificate verify failed" in str(caught.value)


def test_mqtt_topic_with_wildcards_is_refused_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        MqttNotifier(MqttNotification(id="tablero", topic="tickets/#"), MqttConfig(), {})
    assert str(caught.value) == (
        "mqtt tablero: topic 'tickets/#' cannot be published to; "
        "write a topic without + or #, e.g. aguante/tickets"
    )


def test_mqtt_unreadable_tls_files_are_refused_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "ca.crt"
    mqtt = MqttConfig(url="mqtts://127.0.0.1:8883", tls=MqttTLS(ca_file=str(missing)))
    with pytest.raises(ValueError, match=r"^mqtt tablero: cannot use the files of mqtt\.tls: "):
        mqtt_notifier(mqtt)


# -- webhook --------------------------------------------------------------------------------------


class Hook:
    """A local HTTP server that records each POST and answers with the next of `answers`
    (status, headers, body), or 204 when none are left."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: deque[tuple[int, dict[str, str], str]] = deque()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.requests.append((self.path, dict(self.headers.items()), body))
                status, headers, text = hook.answers.popleft() if hook.answers else (204, {}, "")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = (
            f"http://127.0.0.1:{self.server.server_address[1]}/aguante?token=secreto-del-hook"
        )
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="hook"
        )

    def answer(self, status: int, text: str = "", **headers: str) -> None:
        self.answers.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, text))


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join()


def webhook(url: str, timeout: float = 3.0) -> WebhookNotifier:
    return WebhookNotifier(WebhookNotification(id="celulares", url=url), timeout=timeout)


async def test_webhook_posts_the_payload_as_utf8_json(hook: Hook) -> None:
    await webhook(hook.url).send(notice())
    ((path, headers, body),) = hook.requests
    assert path == "/aguante?token=secreto-del-hook"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body.decode("utf-8")) == PAYLOAD
    assert "vibración".encode() in body


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (502, True), (503, True), (408, True), (429, True), (400, False), (404, False),
     (410, False), (301, False)],
)  # fmt: skip
async def test_webhook_answers_that_may_pass_are_retryable(
    hook: Hook, status: int, retryable: bool
) -> None:
    hook.answer(status, "nope", Location="https://elsewhere.example/hook")
    with pytest.raises(NotifyError) as caught:
        await webhook(hook.url).send(notice())
    assert caught.value.retryable is retryable
    assert str(caught.value).startswith(f"webhook celulares: 127.0.0.1 answered {status} ")
    assert "secreto-del-hook" not in str(caught.value)  # the URL's token is not repeated


async def test_webhook_error_text_says_what_the_server_said(hook: Hook) -> None:
    hook.answer(400, '{"error": "missing field \'ticket\'"}')
    hook.answer(500, "boom")
    hook.answer(302, "", Location="https://hooks.example.org/new")
    texts = []
    for _ in range(3):
        with pytest.raises(NotifyError) as caught:
            await webhook(hook.url).send(notice())
        texts.append(str(caught.value))
    assert texts == [
        "webhook celulares: 127.0.0.1 answered 400 Bad Request: "
        '{"error": "missing field \'ticket\'"}',
        "webhook celulares: 127.0.0.1 answered 500 Internal Server Error: boom",
        "webhook celulares: 127.0.0.1 answered 302 Found "
        "(a redirect to hooks.example.org: give the final URL)",
    ]


async def test_webhook_retry_after_is_kept(hook: Hook) -> None:
    hook.answer(429, "slow down", Retry_After="120")
    with pytest.raises(NotifyError) as caught:
        await webhook(hook.url).send(notice())
    assert (caught.value.retryable, caught.value.retry_after) == (True, 120.0)


async def test_webhook_nobody_listening_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}/aguante"
    with pytest.raises(NotifyError) as caught:
        await webhook(url).send(notice())
    assert caught.value.retryable is True
    assert str(caught.value).startswith("webhook celulares: cannot reach 127.0.0.1: ")


async def test_webhook_no_answer_in_time_is_retryable() -> None:
    # A socket that listens but never accepts: the request is sent, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/aguante"
        with pytest.raises(NotifyError) as caught:
            await webhook(url, timeout=0.3).send(notice())
    assert caught.value.retryable is True
    assert str(caught.value) == (
        "webhook celulares: 127.0.0.1 gave no answer within 0.3 s (ReadTimeout)"
    )


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError) as caught:
        webhook("ftp://hooks.example.org/aguante")
    assert str(caught.value) == (
        "webhook celulares: url must be http:// or https:// with a host, "
        "e.g. https://hooks.example.org/aguante"
    )


# -- e-mail ---------------------------------------------------------------------------------------

SMTP_USER, SMTP_PASSWORD = "mantenimiento", "clave-del-correo"
SENDER = "aguante@cooperativa.example"
CREW = ["jefe.turno@cooperativa.example", "mecanica@cooperativa.example"]


class Mailbox:
    """An aiosmtpd handler keeping what it accepts; it refuses the recipients in `refuse`."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.envelopes: list[Envelope] = []
        self.refuse = refuse

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        # As a mail reader gets them: the wire's CRLF line ends made local.
        raws = [bytes(e.original_content or b"").replace(b"\r\n", b"\n") for e in self.envelopes]
        return [email.message_from_bytes(raw, policy=email.policy.default) for raw in raws]


def check_password(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., tuple[Controller, Mailbox]]]:
    """aiosmtpd servers on free ports (options go to its SMTP class); stopped after the test."""
    controllers: list[Controller] = []

    def start(mailbox: Mailbox | None = None, **options: Any) -> tuple[Controller, Mailbox]:
        mailbox = mailbox or Mailbox()
        controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), **options)
        controller.start()
        controllers.append(controller)
        return controller, mailbox

    try:
        yield start
    finally:
        for controller in controllers:
            controller.stop()


def server_tls(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    return context


def mailer(
    port: int,
    *,
    starttls: bool = False,
    username: str | None = None,
    environ: dict[str, str] | None = None,
    ca: Path | None = None,
    to: list[str] = CREW,
) -> EmailNotifier:
    target = EmailNotification(
        id="correo",
        host="127.0.0.1",
        port=port,
        starttls=starttls,
        sender=SENDER,
        to=to,
        username=username,
    )
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    return EmailNotifier(target, environ or {}, timeout=3.0, tls_context=context)


def assert_is_the_notice(message: EmailMessage) -> None:
    assert message["Subject"] == SUBJECT
    assert message["From"] == SENDER
    assert message["To"] == ", ".join(CREW)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@cooperativa.example>")
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content() == TEXT


async def test_email_plain_smtp_delivers_the_notice(
    start_smtp: Callable[..., tuple[Controller, Mailbox]],
) -> None:
    controller, mailbox = start_smtp()
    await mailer(controller.port).send(notice())
    (envelope,) = mailbox.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, CREW)
    (message,) = mailbox.messages()
    assert_is_the_notice(message)


async def test_email_starttls_and_login(
    start_smtp: Callable[..., tuple[Controller, Mailbox]], tls_files: TlsFiles
) -> None:
    controller, mailbox = start_smtp(
        tls_context=server_tls(tls_files),
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=check_password,
    )
    notifier = mailer(
        controller.port,
        starttls=True,
        username=SMTP_USER,
        environ={"AGUANTE_SMTP_PASSWORD": SMTP_PASSWORD},
        ca=tls_files.ca_file,
    )
    await notifier.send(notice())
    (message,) = mailbox.messages()
    assert_is_the_notice(message)


async def test_email_wrong_password_is_not_retried(
    start_smtp: Callable[..., tuple[Controller, Mailbox]], tls_files: TlsFiles
) -> None:
    controller, mailbox = start_smtp(
        tls_context=server_tls(tls_files),
        require_starttls=True,
        auth_required=True,
        authenticator=check_password,
    )
    notifier = mailer(
        controller.port,
        starttls=True,
        username=SMTP_USER,
        environ={"AGUANTE_SMTP_PASSWORD": "no-es-la-clave"},
        ca=tls_files.ca_file,
    )
    with pytest.raises(NotifyError) as caught:
        await notifier.send(notice())
    assert caught.value.retryable is False
    assert str(caught.value) == (
        f"email correo: 127.0.0.1:{controller.port} refused the user name or password "
        "(535 5.7.8 Authentication credentials invalid); "
        "check the user name and AGUANTE_SMTP_PASSWORD"
    )
    assert mailbox.envelopes == []


async def test_email_server_down_is_retryable() -> None:
    port = free_port()
    with pytest.raises(NotifyError) as caught:
        await mailer(port).send(notice())
    assert caught.value.retryable is True
    assert str(caught.value).startswith(f"email correo: cannot reach 127.0.0.1:{port}: ")
    assert "Connection refused" in str(caught.value)


async def test_email_starttls_the_server_lacks_is_not_retried(
    start_smtp: Callable[..., tuple[Controller, Mailbox]],
) -> None:
    controller, mailbox = start_smtp()
    with pytest.raises(NotifyError) as caught:
        await mailer(controller.port, starttls=True).send(notice())
    assert caught.value.retryable is False
    assert str(caught.value) == (
        f"email correo: 127.0.0.1:{controller.port} does not offer what is needed: "
        "STARTTLS extension not supported by server."
    )
    assert mailbox.envelopes == []


async def test_email_untrusted_certificate_is_retryable(
    start_smtp: Callable[..., tuple[Controller, Mailbox]], tls_files: TlsFiles
) -> None:
    # The system's CAs do not know the test CA: as a server with an expired or replaced
    # certificate, which someone may fix.
    controller, mailbox = start_smtp(tls_context=server_tls(tls_files), require_starttls=True)
    with pytest.raises(NotifyError) as caught:
        await mailer(controller.port, starttls=True).send(notice())
    assert caught.value.retryable is True
    assert "certificate verify failed" in str(caught.value)
    assert mailbox.envelopes == []


async def test_email_a_refused_recipient_is_said_and_not_resent(
    start_smtp: Callable[..., tuple[Controller, Mailbox]],
) -> None:
    controller, mailbox = start_smtp(Mailbox(refuse=frozenset({CREW[1]})))
    with pytest.raises(NotifyError) as caught:
        await mailer(controller.port).send(notice())
    assert caught.value.retryable is False  # the others have it: a retry would repeat it
    assert str(caught.value) == (
        f"email correo: sent, but 127.0.0.1:{controller.port} refused "
        f"{CREW[1]}: 550 5.1.1 no such mailbox"
    )
    assert [e.rcpt_tos for e in mailbox.envelopes] == [[CREW[0]]]


async def test_email_every_recipient_refused_for_good_is_not_retried(
    start_smtp: Callable[..., tuple[Controller, Mailbox]],
) -> None:
    controller, _ = start_smtp(Mailbox(refuse=frozenset(CREW)))
    with pytest.raises(NotifyError) as caught:
        await mailer(controller.port).send(notice())
    assert caught.value.retryable is False
    assert str(caught.value).startswith(
        f"email correo: 127.0.0.1:{controller.port} refused every recipient: "
    )


@pytest.mark.parametrize(
    ("starttls", "environ", "expected"),
    [
        (
            False,
            {"AGUANTE_SMTP_PASSWORD": SMTP_PASSWORD},
            "email correo: a user name needs starttls: true; the password is not sent unencrypted",
        ),
        (
            True,
            {},
            "email correo: user name 'mantenimiento' is given but AGUANTE_SMTP_PASSWORD is not "
            "set in the environment",
        ),
    ],
)
def test_email_settings_that_cannot_work_are_refused_at_once(
    starttls: bool, environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ValueError) as caught:
        mailer(25, starttls=starttls, username=SMTP_USER, environ=environ)
    assert str(caught.value) == expected


# -- all targets of a config ----------------------------------------------------------------------

CONFIG = """
factory: coop
mqtt: {url: "mqtt://127.0.0.1:1883", username: aguante}
sectors: [{id: press}]
machines:
  - id: press-1
    sector: press
    modbus:
      host: 127.0.0.1
      port: 5020
      signals: [{name: running, table: coil, address: 0, type: bool}]
maintenance:
  crews:
    - {id: mechanics, notify: [tablero, celulares, correo]}
  notifications:
    - {type: mqtt, id: tablero, topic: planta/tickets}
    - {type: webhook, id: celulares, url: "https://hooks.example.org/aguante"}
    - type: email
      id: correo
      host: smtp.example.org
      sender: aguante@cooperativa.example
      to: [mecanica@cooperativa.example]
      username: mantenimiento
"""


def test_build_notifiers_makes_one_per_target() -> None:
    environ = {"AGUANTE_MQTT_PASSWORD": "m", "AGUANTE_SMTP_PASSWORD": "s"}
    notifiers = build_notifiers(parse_config(CONFIG, environ=environ), environ)
    assert {k: (type(v), v.name) for k, v in notifiers.items()} == {
        "tablero": (MqttNotifier, "mqtt tablero"),
        "celulares": (WebhookNotifier, "webhook celulares"),
        "correo": (EmailNotifier, "email correo"),
    }


def test_build_notifiers_refuses_a_missing_smtp_password() -> None:
    config = parse_config(CONFIG, environ={})
    with pytest.raises(ValueError, match=r"^email correo: user name 'mantenimiento' is given"):
        build_notifiers(config, {})


# -- deliver: retries and giving up ---------------------------------------------------------------

NOW = 1_750_000_000_000


class FakeNotifier:
    """Succeeds, or raises the next of `failures` (None: succeed that time)."""

    def __init__(self, name: str, failures: list[BaseException | None] | None = None) -> None:
        self.name = name
        self.failures = deque(failures or [])
        self.sent: list[Notice] = []
        self.tries = 0

    async def send(self, notice: Notice) -> None:
        self.tries += 1
        failure = self.failures.popleft() if self.failures else None
        if failure is not None:
            raise failure
        self.sent.append(notice)


class Outbox:
    """What the callbacks were told."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.failed: dict[int, tuple[str, int | None]] = {}

    def on_sent(self, outbox_id: int) -> None:
        self.sent.append(outbox_id)

    def on_failed(self, outbox_id: int, error: str, retry_at_ms: int | None) -> None:
        self.failed[outbox_id] = (error, retry_at_ms)


async def run(
    notifiers: dict[str, FakeNotifier], due: list[tuple[int, Notice, int]], **options: Any
) -> tuple[Outbox, Delivery]:
    outbox = Outbox()
    result = await deliver(
        notifiers,
        due,
        on_sent=outbox.on_sent,
        on_failed=outbox.on_failed,
        now_ms=NOW,
        **options,
    )
    return outbox, result


def down(target: str = "mqtt a") -> NotifyError:
    return NotifyError(target, "broker down", retryable=True)


def test_retry_delays_double_up_to_an_hour() -> None:
    assert [retry_delay_ms(n) // 1000 for n in range(1, 10)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600
    ]  # fmt: skip
    assert retry_delay_ms(10_000) == 3_600_000
    with pytest.raises(ValueError):
        retry_delay_ms(0)


async def test_deliver_reports_each_sent_notice() -> None:
    a, b = FakeNotifier("mqtt a"), FakeNotifier("webhook b")
    outbox, result = await run(
        {"a": a, "b": b}, [(1, notice("a"), 0), (2, notice("b"), 3), (3, notice("a"), 0)]
    )
    assert sorted(outbox.sent) == [1, 2, 3]
    assert outbox.failed == {}
    assert result == Delivery(sent=3, retrying=0, given_up=0)
    assert len(a.sent) == 2 and len(b.sent) == 1


@pytest.mark.parametrize(
    ("attempts", "delay_s"), [(0, 30), (1, 60), (2, 120), (5, 960), (7, 3600), (20, 3600)]
)
async def test_deliver_backs_off_by_attempts(attempts: int, delay_s: int) -> None:
    outbox, result = await run(
        {"a": FakeNotifier("mqtt a", [down()])}, [(9, notice("a"), attempts)]
    )
    assert outbox.failed == {9: ("mqtt a: broker down", NOW + delay_s * 1000)}
    assert result == Delivery(sent=0, retrying=1, given_up=0)


async def test_deliver_gives_up_what_can_never_pass_and_goes_on() -> None:
    refused = NotifyError("webhook a", "127.0.0.1 answered 400 Bad Request", retryable=False)
    a = FakeNotifier("webhook a", [refused])
    outbox, result = await run({"a": a}, [(1, notice("a"), 0), (2, notice("a"), 0)])
    assert outbox.failed == {1: ("webhook a: 127.0.0.1 answered 400 Bad Request", None)}
    assert outbox.sent == [2]
    assert result == Delivery(sent=1, retrying=0, given_up=1)


async def test_deliver_gives_up_after_max_attempts() -> None:
    a = FakeNotifier("mqtt a", [down(), down()])
    due = [(1, notice("a"), notify.MAX_ATTEMPTS - 2), (2, notice("a"), notify.MAX_ATTEMPTS - 1)]
    outbox, result = await run({"a": a}, due)
    assert outbox.failed[1][1] == NOW + 3_600_000
    assert outbox.failed[2][1] is None
    assert result == Delivery(sent=0, retrying=1, given_up=1)
    outbox, _ = await run({"a": FakeNotifier("mqtt a", [down()])}, [(3, notice("a"), 500)],
                          max_attempts=None)  # fmt: skip
    assert outbox.failed[3][1] == NOW + 3_600_000


async def test_deliver_a_down_target_costs_one_try_and_others_go_on() -> None:
    a, b = FakeNotifier("mqtt a", [down()]), FakeNotifier("webhook b")
    due = [(1, notice("a"), 0), (2, notice("b"), 0), (3, notice("a"), 2), (4, notice("a"), 5)]
    outbox, result = await run({"a": a, "b": b}, due)
    assert a.tries == 1
    assert outbox.sent == [2]
    behind = "not tried, the notice before it failed: mqtt a: broker down"
    assert outbox.failed == {
        1: ("mqtt a: broker down", NOW + 30_000),
        3: (behind, NOW + 120_000),
        4: (behind, NOW + 960_000),
    }
    assert result == Delivery(sent=1, retrying=3, given_up=0)


async def test_deliver_waits_as_long_as_the_target_asks() -> None:
    busy = NotifyError("webhook a", "429", retryable=True, retry_after=600.0)
    outbox, _ = await run({"a": FakeNotifier("webhook a", [busy])}, [(1, notice("a"), 0)])
    assert outbox.failed[1][1] == NOW + 600_000


async def test_deliver_gives_up_a_notice_for_a_target_no_longer_configured() -> None:
    outbox, result = await run({}, [(1, notice("gone"), 0)])
    assert outbox.failed == {1: ("no notification target 'gone' in the config", None)}
    assert result == Delivery(sent=0, retrying=0, given_up=1)


async def test_deliver_survives_a_notifiers_bug(caplog: pytest.LogCaptureFixture) -> None:
    a = FakeNotifier("mqtt a", [KeyError("topic")])
    with caplog.at_level(logging.ERROR, logger="maintenance.notify"):
        outbox, _ = await run({"a": a}, [(1, notice("a"), 0)])
    assert outbox.failed == {1: ("mqtt a: unexpected error: KeyError: 'topic'", NOW + 30_000)}
    assert "mqtt a: unexpected error sending notice 1" in caplog.messages


async def test_deliver_takes_async_callbacks() -> None:
    seen: list[object] = []

    async def on_sent(outbox_id: int) -> None:
        await asyncio.sleep(0)
        seen.append(outbox_id)

    async def on_failed(outbox_id: int, error: str, retry_at_ms: int | None) -> None:
        seen.append((outbox_id, error, retry_at_ms))

    notifiers = {"a": FakeNotifier("mqtt a"), "b": FakeNotifier("mqtt b", [down("mqtt b")])}
    await deliver(
        notifiers,
        [(1, notice("a"), 0), (2, notice("b"), 0)],
        on_sent=on_sent,
        on_failed=on_failed,
        now_ms=NOW,
    )
    assert sorted(seen, key=str) == [(2, "mqtt b: broker down", NOW + 30_000), 1]


async def test_deliver_raises_a_failing_callbacks_error_itself() -> None:
    def on_sent(outbox_id: int) -> None:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        await deliver(
            {"a": FakeNotifier("mqtt a")},
            [(1, notice("a"), 0)],
            on_sent=on_sent,
            on_failed=lambda *_: None,
            now_ms=NOW,
        )


class SlowNotifier:
    """Takes a while per send, and counts sends under way across all of its kind."""

    in_flight = 0
    peak = 0

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, notice: Notice) -> None:
        cls = type(self)
        cls.in_flight += 1
        cls.peak = max(cls.peak, cls.in_flight)
        try:
            await asyncio.sleep(0.05)
        finally:
            cls.in_flight -= 1


@pytest.mark.parametrize(("targets", "per_target", "concurrency", "peak"),
                         [(3, 1, 2, 2), (4, 1, 4, 4), (1, 3, 4, 1), (2, 3, 4, 2)])  # fmt: skip
async def test_deliver_sends_to_targets_at_once_but_bounded_and_each_in_order(
    targets: int, per_target: int, concurrency: int, peak: int
) -> None:
    class Counted(SlowNotifier):
        in_flight = 0
        peak = 0

    notifiers = {f"t{i}": Counted(f"mqtt t{i}") for i in range(targets)}
    due = [
        (i * per_target + j, notice(f"t{i}"), 0) for j in range(per_target) for i in range(targets)
    ]
    outbox = Outbox()
    result = await deliver(
        notifiers,
        due,
        on_sent=outbox.on_sent,
        on_failed=outbox.on_failed,
        now_ms=NOW,
        concurrency=concurrency,
    )
    assert result.sent == targets * per_target
    assert Counted.peak == peak
    for i in range(targets):  # each target's notices in the order given
        mine = [n for n in outbox.sent if n // per_target == i]
        assert mine == sorted(mine)


def test_all_names_what_the_module_defines() -> None:
    defined = {
        name
        for name, value in vars(notify).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == notify.__name__
    }
    assert defined - {"log"} <= set(notify.__all__)
    assert all(hasattr(notify, name) for name in notify.__all__)

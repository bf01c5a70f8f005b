"""The deployment files, checked without Docker (no engine runs here, DESIGN.md): docker-compose.yml
against the Compose Specification's JSON Schema and against the package (every command it runs
exists, every port, volume, dependency and variable is consistent), .env.example, the systemd
units, and the Mosquitto config run for real (Debian's mosquitto) with its password file and ACL."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.cli import build_parser
from tests.services import _Service, free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
MOSQUITTO_DIR = ROOT / "deploy" / "mosquitto"
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
PROVISIONING = ROOT / "dashboards" / "provisioning"
LANGS = ("en", "es", "pt-BR")
UNITS = ("aguante-collector.service", "aguante-maintenance.service", "aguante-share.service")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; `$$` is a literal $.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_UNBRACED = re.compile(r"\$[A-Za-z_]")


def _load_compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        version = tomllib.load(file)["project"]["version"]
    assert isinstance(version, str)
    return version


def _strings(node: Any) -> Iterator[str]:
    """Every string in the loaded file, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _variables(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every interpolation in one string."""
    return [(m[1], m[2], m[3] or "") for m in _VARIABLE.finditer(text.replace("$$", ""))]


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    """What compose makes of the file with `env` as its .env: defaults apply when a variable is
    unset (or empty, for `:-`); a `?` variable must be set."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match[1], match[2], match[3] or ""
        value = env.get(name)
        if operator in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if operator in (":-", "-"):
            return argument
        if operator in (":?", "?"):
            raise KeyError(f"{name}: {argument}")
        return ""

    if isinstance(node, str):
        parts = node.split("$$")
        return "$".join(_VARIABLE.sub(one, part) for part in parts)
    if isinstance(node, dict):
        return {key: _interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(item, env) for item in node]
    return node


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, equals, value = line.partition("=")
        assert equals and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"line {number}: {line!r}"
        assert name not in values, f".env.example sets {name} twice"
        values[name] = value
    return values


def _filled_env() -> dict[str, str]:
    """.env.example with every empty secret filled, as a user's .env would be."""
    return {name: value or f"test-{name.lower()}" for name, value in _env_example().items()}


def _compose_variables() -> dict[str, set[tuple[str | None, str]]]:
    found: dict[str, set[tuple[str | None, str]]] = {}
    for text in _strings(COMPOSE):
        for name, operator, argument in _variables(text):
            found.setdefault(name, set()).add((operator, argument))
    return found


def _our_image() -> str:
    return f"aguante:{_project_version()}"


def _ours(service: dict[str, Any]) -> bool:
    return service.get("image") == _our_image() or "build" in service


# -- the Compose Specification ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _schema_errors(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_valid_against_the_compose_specification(
    compose_validator: jsonschema.Draft7Validator,
) -> None:
    # As written (compose validates before interpolating too) and as interpolated from a .env
    # made from .env.example.
    assert _schema_errors(compose_validator, COMPOSE) == []
    assert _schema_errors(compose_validator, _interpolate(COMPOSE, _filled_env())) == []


def test_the_vendored_schema_catches_mistakes(
    compose_validator: jsonschema.Draft7Validator,
) -> None:
    broken = {
        "services": {
            "collector": {"image": "aguante:0", "restart": ["always"], "comand": ["collect"]},
            "grafana": {"image": "g", "depends_on": {"collector": {"condition": "when_ready"}}},
        },
        "volumez": {},
    }
    errors = "\n".join(_schema_errors(compose_validator, broken))
    for where in ("services/collector/restart", "comand", "when_ready", "volumez"):
        assert where in errors


# -- what the compose file runs ------------------------------------------------------------------


def test_our_image_is_pinned_to_the_project_version_and_runs_aguante() -> None:
    ours = [name for name, service in SERVICES.items() if _ours(service)]
    assert {"collector", "maintenance", "influxdb-init", "simulators"} <= set(ours)
    for name in ours:
        assert SERVICES[name].get("image") == _our_image(), name
        assert SERVICES[name].get("build") == ".", name
        assert "entrypoint" not in SERVICES[name], f"{name}: the Dockerfile's entrypoint is aguante"
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["aguante"\]$', dockerfile, re.MULTILINE)


def test_every_image_tag_is_pinned() -> None:
    for name, service in SERVICES.items():
        image = service.get("image")
        assert isinstance(image, str), f"{name} names no image"
        assert "$" not in image, f"{name}: {image}"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: {image}"
    assert SERVICES["mosquitto"]["image"].startswith("eclipse-mosquitto:2.0.")
    assert SERVICES["influxdb"]["image"] == "influxdb:1.8.10"


@pytest.mark.parametrize(
    "name", sorted(n for n, s in SERVICES.items() if _ours(s)), ids=lambda n: str(n)
)
def test_every_command_of_our_image_is_an_aguante_subcommand(name: str) -> None:
    command = SERVICES[name]["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), (
        f"{name}: give the command as a list (the image's entrypoint is `aguante`)"
    )
    command = [_interpolate(arg, {}) for arg in command]  # ${AGUANTE_LANG:-es} → es
    parser = build_parser()
    subcommands = next(
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert command[0] in subcommands, f"{name}: `aguante {command[0]}` does not exist"
    try:
        parser.parse_args(command)
    except SystemExit as exc:
        pytest.fail(f"{name}: `aguante {' '.join(command)}` does not parse (exit {exc.code})")


def test_the_factory_file_is_mounted_where_the_commands_read_it() -> None:
    for name, service in SERVICES.items():
        if not _ours(service):
            continue
        paths = [a for a in service["command"] if a.startswith("/")]
        targets = {_volume(v).target for v in service.get("volumes", [])}
        for path in paths:
            assert path in targets, f"{name} reads {path}, which no volume provides"


def test_influxdb_is_initialised_by_aguante_db_init_as_the_admin() -> None:
    init = SERVICES["influxdb-init"]
    assert init["command"] == ["db", "init", "/etc/aguante/factory.yaml"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {"influxdb": {"condition": "service_healthy"}}
    env, admin = init["environment"], SERVICES["influxdb"]["environment"]
    assert env["AGUANTE_INFLUXDB_USERNAME"] == admin["INFLUXDB_ADMIN_USER"]
    assert env["AGUANTE_INFLUXDB_PASSWORD"] == admin["INFLUXDB_ADMIN_PASSWORD"]
    assert admin["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    for user in ("AGUANTE_INFLUXDB_WRITER", "AGUANTE_GRAFANA_INFLUXDB"):
        assert f"{user}_USERNAME" in env and f"{user}_PASSWORD" in env
    for name in ("collector", "maintenance"):
        condition = SERVICES[name]["depends_on"]["influxdb-init"]["condition"]
        assert condition == "service_completed_successfully", name
        # They write as the user `db init` makes, never as the admin.
        service_env = SERVICES[name]["environment"]
        assert service_env["AGUANTE_INFLUXDB_USERNAME"] == env["AGUANTE_INFLUXDB_WRITER_USERNAME"]
        assert service_env["AGUANTE_INFLUXDB_PASSWORD"] == env["AGUANTE_INFLUXDB_WRITER_PASSWORD"]


def test_long_running_services_have_health_checks_and_restart() -> None:
    for name, service in SERVICES.items():
        if service.get("restart") == "no":  # one-shot
            continue
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_dependencies_exist_and_their_conditions_can_be_met() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions, please"
        for target, how in depends.items():
            assert target in SERVICES, f"{name} depends on {target}, which is no service"
            condition = how["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{target} has no health check"
            if condition == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", f"{target} never completes"
            # A demo-only service is not there without the profile.
            assert not SERVICES[target].get("profiles") or service.get("profiles"), name
    assert SERVICES["simulators"]["profiles"] == ["demo"]
    assert [n for n, s in SERVICES.items() if s.get("profiles")] == ["simulators"]


# -- volumes and ports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Volume:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "$"))


def _split_colons(text: str) -> list[str]:
    """`a:b:c` split on the colons outside `${...}` (whose `:-` and `:?` stay)."""
    parts, current, depth = [], "", 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _volume(spec: Any) -> _Volume:
    assert isinstance(spec, str), f"short syntax, please: {spec!r}"
    parts = _split_colons(spec)
    assert len(parts) in (2, 3), spec
    return _Volume(parts[0], parts[1], len(parts) == 3 and "ro" in parts[2].split(","))


def _binds() -> Iterator[tuple[str, _Volume]]:
    for name, service in SERVICES.items():
        for spec in service.get("volumes", []):
            volume = _volume(spec)
            if volume.is_bind:
                yield name, volume


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, service in SERVICES.items():
        for spec in service.get("volumes", []):
            volume = _volume(spec)
            if not volume.is_bind:
                assert volume.source in declared, f"{name}: volume {volume.source} not declared"
                used.add(volume.source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_bind_mounted_paths_exist_in_the_repository() -> None:
    env = _filled_env()
    assert any("AGUANTE_CONFIG" in v.source for _, v in _binds())
    for name, volume in _binds():
        # .env-driven paths are checked at their default and at .env.example's value.
        for source in {_interpolate(volume.source, {}), _interpolate(volume.source, env)}:
            _check_bind(name, source, volume)


def _check_bind(name: str, source: str, volume: _Volume) -> None:
    path = (ROOT / source).resolve()
    assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
    assert path.exists(), f"{name}: {source} does not exist"
    assert volume.read_only, f"{name}: mount {source} read-only"


@pytest.mark.parametrize("lang", LANGS)
def test_grafana_reads_the_dashboards_built_from_the_factory_file(lang: str) -> None:
    # The `dashboards` one-shot builds them in AGUANTE_LANG into a volume Grafana mounts where
    # its provisioning file looks; the build itself is run for every language.
    build = SERVICES["dashboards"]
    command = [_interpolate(a, {"AGUANTE_LANG": lang}) for a in build["command"]]
    assert command[:3] == ["dashboards", "build", "/etc/aguante/factory.yaml"]
    assert command[command.index("--lang") + 1] == lang
    out = command[command.index("--out") + 1]
    (written,) = [v for v in map(_volume, build["volumes"]) if v.target == out]
    (read,) = [
        v for v in map(_volume, SERVICES["grafana"]["volumes"]) if v.source == written.source
    ]
    assert not written.is_bind and read.read_only
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "aguante.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == read.target
    condition = SERVICES["grafana"]["depends_on"]["dashboards"]["condition"]
    assert condition == "service_completed_successfully"
    build_parser().parse_args(command)  # the language is one `aguante dashboards` knows


def _published(spec: Any) -> tuple[str, int, str]:
    """(host address, host port, protocol) of a short-syntax port."""
    assert isinstance(spec, str), f"short syntax, quoted, please: {spec!r}"
    ports, _, protocol = spec.partition("/")
    parts = ports.split(":")
    assert len(parts) in (2, 3), f"{spec}: publish a host port explicitly"
    address = parts[0] if len(parts) == 3 else "0.0.0.0"
    return address, int(parts[-2]), protocol or "tcp"


def test_no_two_services_publish_the_same_host_port() -> None:
    taken: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for name, service in SERVICES.items():
        for spec in service.get("ports", []):
            address, port, protocol = _published(spec)
            for other, other_address in taken.get((port, protocol), []):
                overlap = "0.0.0.0" in (address, other_address) or address == other_address
                assert not overlap, f"{name} and {other} both publish {port}/{protocol}"
            taken.setdefault((port, protocol), []).append((name, address))
    assert {port for port, _ in taken} == {1883, 8086, 3000, 8080}
    # InfluxDB's admin API stays on this box.
    assert _published(SERVICES["influxdb"]["ports"][0])[0] == "127.0.0.1"


# -- variables -----------------------------------------------------------------------------------


def test_every_variable_is_in_env_example_and_nothing_else_is() -> None:
    used = _compose_variables()
    documented = _env_example()
    assert set(used) - set(documented) == set(), "missing from .env.example"
    assert set(documented) - set(used) == set(), "in .env.example but unused"
    for text in _strings(COMPOSE):
        bare = _UNBRACED.findall(text.replace("$$", ""))
        assert not bare, f"write ${{VAR}}, not $VAR: {text!r}"


# Secrets only the demo needs: empty by default (the broker makes the demo's user only when its
# password is set, and the simulators refuse to start without it).
DEMO_SECRETS = {"AGUANTE_SIMULATOR_MQTT_PASSWORD"}


def test_secrets_come_only_from_the_env_file() -> None:
    secret = re.compile(r"PASSWORD|SECRET|TOKEN")
    documented = _env_example()
    for name, forms in _compose_variables().items():
        if secret.search(name):
            # Compose interpolates every service, profiles or not: a demo-only secret must not
            # stop a plant's `docker compose up`; `aguante simulate` asks for it instead.
            allowed = {":-"} if name in DEMO_SECRETS else {":?"}
            assert {op for op, _ in forms} == allowed, f"{name}: ${{{name}:?message}}, no default"
            assert documented[name] == "", f".env.example gives {name} a value"
            assert all(message.strip() for op, message in forms if op == ":?"), name
            assert all(not default for op, default in forms if op == ":-"), name
    # No literal secret in any environment block.
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key) and not key.endswith("USERNAME"):
                assert isinstance(value, str) and value.startswith("${"), f"{name}: {key}"
    with pytest.raises(KeyError, match="INFLUXDB_ADMIN_PASSWORD"):
        _interpolate(COMPOSE, {k: v for k, v in _filled_env().items() if "ADMIN_PASS" not in k})


def test_grafana_gets_every_variable_its_provisioning_reads() -> None:
    grafana = SERVICES["grafana"]
    environment = grafana["environment"]
    wanted: set[str] = set()
    for path in sorted(PROVISIONING.rglob("*.yaml")):
        wanted |= {name for name, _, _ in _variables(path.read_text(encoding="utf-8"))}
    assert {"AGUANTE_INFLUXDB_URL", "AGUANTE_GRAFANA_INFLUXDB_PASSWORD"} <= wanted
    assert wanted - set(environment) == set()
    assert "./dashboards/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert (
        environment["AGUANTE_GRAFANA_INFLUXDB_USERNAME"]
        == (SERVICES["influxdb-init"]["environment"]["AGUANTE_GRAFANA_INFLUXDB_USERNAME"])
    )


# -- Mosquitto: the config's paths, users and ACL ------------------------------------------------


def _directives(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            pairs.append((key, value.strip()))
    return pairs


def _acl_users() -> set[str]:
    return {value for key, value in _directives(MOSQUITTO_DIR / "aguante.acl") if key == "user"}


def test_mosquitto_in_compose_finds_every_file_its_config_names() -> None:
    service = SERVICES["mosquitto"]
    targets = [_volume(v).target for v in service["volumes"]]
    config = dict(_directives(MOSQUITTO_DIR / "mosquitto.conf"))
    assert config["allow_anonymous"] == "false" and config["persistence"] == "true"
    for key in ("password_file", "acl_file", "persistence_location"):
        assert any(config[key].startswith(t) for t in targets), f"{key} {config[key]}: not mounted"
    assert service["command"][:2] == ["sh", "/mosquitto/config/start.sh"]
    assert service["command"][-1] in targets


def test_compose_mqtt_users_are_in_the_acl_and_made_at_start() -> None:
    script = (MOSQUITTO_DIR / "start.sh").read_text(encoding="utf-8")
    for name in ("collector", "maintenance"):
        user = SERVICES[name]["environment"]["AGUANTE_MQTT_USERNAME"]
        assert user in _acl_users(), user
        password = SERVICES[name]["environment"]["AGUANTE_MQTT_PASSWORD"]
        [(variable, _, _)] = _variables(password)
        assert f'{user} "${variable}"' in script
        assert SERVICES["mosquitto"]["environment"][variable] == password


# -- the Mosquitto config, run for real ----------------------------------------------------------

BOARDS = {"saw-1": "saw-secret", "bender-1": "bender-secret", "paint-line": "paint-secret"}
SERVICE_PASSWORDS = {
    "AGUANTE_MQTT_PASSWORD": "collector-secret",
    "AGUANTE_MAINTENANCE_MQTT_PASSWORD": "maintenance-secret",
}


class _Broker(_Service):
    name = "mosquitto"

    def __init__(self, root: Path, source: Path) -> None:
        super().__init__(root, "mosquitto", "install Mosquitto (Debian: apt-get install mosquitto)")
        self.port = free_port()
        self.source = source

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        passwd, acl = self.root / "passwd", self.root / "aguante.acl"
        _make_password_file(passwd)
        shutil.copyfile(MOSQUITTO_DIR / "aguante.acl", acl)
        replace = {
            "listener": f"{self.port} 127.0.0.1",
            "password_file": str(passwd),
            "acl_file": str(acl),
            "persistence_location": f"{self.root}/",
            "log_dest": f"file {self.log_path}",
        }
        lines = [f"{key} {replace.get(key, value)}" for key, value in _directives(self.source)]
        assert {key for key, _ in _directives(self.source)} >= {
            "listener",
            "password_file",
            "acl_file",
            "allow_anonymous",
        }
        if "log_dest" not in dict(_directives(self.source)):
            lines.append(f"log_dest file {self.log_path}")
        if os.geteuid() == 0:
            lines.append("user root")  # or it drops to `mosquitto`, who cannot read root's tmp
        config = self.root / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._spawn(["-c", str(config)])
        self._wait_ready(self._accepts, timeout)

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


def _make_password_file(path: Path) -> None:
    # The boards as an installer adds them (plain lines hashed by `mosquitto_passwd -U`), then
    # aguante's own users as compose's start.sh adds them at every start.
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.fail("mosquitto_passwd is missing (Debian: apt-get install mosquitto)")
    path.write_text("".join(f"{u}:{p}\n" for u, p in BOARDS.items()), encoding="utf-8")
    path.chmod(0o600)
    subprocess.run([passwd, "-U", str(path)], check=True, capture_output=True)
    env = {**os.environ, **SERVICE_PASSWORDS, "MOSQUITTO_PASSWORD_FILE": str(path)}
    for _ in range(2):  # a second start finds the users there and keeps the boards
        subprocess.run(["sh", str(MOSQUITTO_DIR / "start.sh"), "true"], env=env, check=True)
    users = [line.split(":")[0] for line in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(users) == sorted([*BOARDS, "aguante-collector", "aguante-maintenance"])
    assert "secret" not in path.read_text(encoding="utf-8")


@dataclass
class _Client:
    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(predicate, timeout)


class _Clients:
    """paho-mqtt clients on the broker, each with its network thread, stopped at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._all: list[_Client] = []

    def connect(self, username: str | None, password: str | None = None) -> _Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        state = _Client(client)
        self._all.append(state)
        if username is not None:
            client.username_pw_set(username, password)

        def on_connect(
            c: mqtt.Client,
            userdata: Any,
            flags: mqtt.ConnectFlags,
            reason: ReasonCode,
            properties: Properties | None,
        ) -> None:
            state.reason = str(reason)
            state.connected.set()
            if reason.is_failure:
                c.disconnect()  # or paho's thread tries again and again

        def on_subscribe(
            c: mqtt.Client,
            userdata: Any,
            mid: int,
            reasons: list[ReasonCode],
            properties: Properties | None,
        ) -> None:
            state.subscribed.set()

        def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            with state.arrived:
                state.messages.append((message.topic, bytes(message.payload)))
                state.arrived.notify_all()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect("127.0.0.1", self.port, keepalive=30)
        client.loop_start()
        assert state.connected.wait(10), f"{username}: no CONNACK"
        return state

    def close(self) -> None:
        for state in self._all:
            state.client.disconnect()
            state.client.loop_stop()


@pytest.fixture(params=["mosquitto.conf", "aguante.conf"], ids=["compose", "bare-metal"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Broker]:
    server = _Broker(tmp_path / "mosquitto", MOSQUITTO_DIR / request.param)
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"cannot start Mosquitto with deploy/mosquitto/{request.param}: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clients(broker: _Broker) -> Iterator[_Clients]:
    made = _Clients(broker.port)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.integration
def test_mosquitto_refuses_anonymous_and_wrong_passwords(clients: _Clients) -> None:
    assert clients.connect(None).reason == "Not authorized"
    assert clients.connect("saw-1", "wrong").reason == "Not authorized"
    assert clients.connect("nobody", "saw-secret").reason == "Not authorized"
    assert clients.connect("saw-1", BOARDS["saw-1"]).reason == "Success"


@pytest.mark.integration
def test_a_board_publishes_only_its_own_topics_and_the_collector_gets_them(
    clients: _Clients,
) -> None:
    collector = clients.connect("aguante-collector", SERVICE_PASSWORDS["AGUANTE_MQTT_PASSWORD"])
    assert collector.reason == "Success"
    collector.client.subscribe([("sensores/#", 1), ("aguante/#", 1), ("spBv1.0/#", 1)])
    assert collector.subscribed.wait(10)
    board = clients.connect("saw-1", BOARDS["saw-1"])
    maintenance = clients.connect(
        "aguante-maintenance", SERVICE_PASSWORDS["AGUANTE_MAINTENANCE_MQTT_PASSWORD"]
    )
    paint = clients.connect("paint-line", BOARDS["paint-line"])
    # Mosquitto drops a PUBLISH its ACL refuses and still acknowledges it: the proof is what
    # reaches the collector. One connection keeps its order, so once the last allowed message has
    # arrived, a refused one sent before it would have arrived too.
    sent = [
        board.client.publish("sensores/bender-1/current", b"forged", qos=1),
        board.client.publish("aguante/tickets", b"forged", qos=1),
        board.client.publish("spBv1.0/metalworks/NDATA/paint-line", b"forged", qos=1),
        board.client.publish("sensores/saw-1/current", b"12.5", qos=1),
        paint.client.publish("sensores/saw-1/current", b"forged", qos=1),
        paint.client.publish("spBv1.0/metalworks/NDATA/paint-line", b"\x00", qos=1),
        maintenance.client.publish("sensores/saw-1/current", b"forged", qos=1),
        maintenance.client.publish("aguante/tickets", b'{"id": 1}', qos=1),
    ]
    for info in sent:
        info.wait_for_publish(10)
    wanted = [
        ("sensores/saw-1/current", b"12.5"),
        ("spBv1.0/metalworks/NDATA/paint-line", b"\x00"),
        ("aguante/tickets", b'{"id": 1}'),
    ]
    assert collector.wait_for(lambda: len(collector.messages) >= len(wanted))
    # One more round trip per sender: anything refused but delivered late shows up by then.
    for state, topic in (
        (board, "sensores/saw-1/x"),
        (paint, "spBv1.0/metalworks/NDATA/paint-line"),
    ):
        state.client.publish(topic, b"end", qos=1).wait_for_publish(10)
    assert collector.wait_for(lambda: len(collector.messages) >= len(wanted) + 2)
    got = [m for m in collector.messages if m[1] != b"end"]
    assert sorted(got) == sorted(wanted)


@pytest.mark.integration
def test_the_compose_health_check_logs_in_as_the_collector(tmp_path: Path) -> None:
    broker = _Broker(tmp_path / "mosquitto", MOSQUITTO_DIR / "mosquitto.conf")
    try:
        broker.start()
        _run_health_check(broker)
    finally:
        broker.stop()


def _run_health_check(broker: _Broker) -> None:
    kind, command = SERVICES["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and "-p 1883" in command
    command = command.replace("$$", "$").replace("-p 1883", f"-p {broker.port}")
    env = {**os.environ, **SERVICE_PASSWORDS}
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True).returncode == 0
    env["AGUANTE_MQTT_PASSWORD"] = "wrong"
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True).returncode != 0


# -- systemd -------------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, equals, value = line.partition("=")
        assert equals, f"{path.name}: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def _values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_runs_an_aguante_subcommand_hardened(name: str) -> None:
    unit = _unit(SYSTEMD_DIR / name)
    [exec_start] = _values(unit, "Service", "ExecStart")
    program, *argv = exec_start.split()
    assert program == "/opt/aguante/venv/bin/aguante"
    assert argv == [
        name.removeprefix("aguante-").removesuffix(".service").replace("collector", "collect"),
        "/etc/aguante/factory.yaml",
    ]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{name}: `aguante {' '.join(argv)}` does not parse (exit {exc.code})")
    expected = {
        "User": "aguante",
        "WorkingDirectory": "/var/lib/aguante",
        "Restart": "on-failure",
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/aguante",
    }
    for key, value in expected.items():
        assert _values(unit, "Service", key) == [value], key
    assert _values(unit, "Service", "EnvironmentFile")[0] == "/etc/aguante/aguante.env"
    for key in ("After", "Wants"):
        [after] = _values(unit, "Unit", key)
        assert set(after.split()) == {
            "network-online.target",
            "influxdb.service",
            "mosquitto.service",
        }
    assert _values(unit, "Install", "WantedBy") == ["multi-user.target"]


@pytest.fixture
def units_here(tmp_path: Path) -> list[Path]:
    """The units with ExecStart's program pointed at this environment's `aguante`: verify
    checks that the program exists, and /opt/aguante is the installed box's."""
    aguante = Path(sys.executable).parent / "aguante"
    assert aguante.exists(), "the package is not installed in this interpreter's environment"
    copies = []
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text(encoding="utf-8")
        copy = tmp_path / name
        copy.write_text(text.replace("/opt/aguante/venv/bin/aguante", str(aguante)))
        copies.append(copy)
    return copies


def test_systemd_analyze_verify(units_here: list[Path]) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")
    result = subprocess.run(
        [analyze, "verify", *map(str, units_here)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr

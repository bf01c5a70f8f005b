"""`aguante db init` against a real InfluxDB 1.x with authentication on: what it creates, that a
second run changes nothing, what the users it makes may do, and its errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from collector.cli import main
from collector.config import parse_config
from collector.dbinit import DbInitError, Step, init_database
from collector.sinks.influxdb import ROLLUP_SHARD_DURATION, create_rollup_policy_statement
from tests.services import InfluxDB, ServiceError, free_port

ADMIN = {
    "AGUANTE_INFLUXDB_USERNAME": InfluxDB.ADMIN_USER,
    "AGUANTE_INFLUXDB_PASSWORD": InfluxDB.ADMIN_PASSWORD,
}
USERS = {
    "AGUANTE_INFLUXDB_WRITER_USERNAME": "aguante_writer",
    "AGUANTE_INFLUXDB_WRITER_PASSWORD": "writer's pass",
    "AGUANTE_GRAFANA_INFLUXDB_USERNAME": "grafana",
    "AGUANTE_GRAFANA_INFLUXDB_PASSWORD": "grafana-pass",
}
ALL_VARIABLES = [*ADMIN, *USERS]


def factory_yaml(url: str, extra: str = "") -> str:
    return f"""
factory: coop
timezone: UTC
language: en
influxdb:
  url: {url}
  database: plant
{extra}
sectors: [{{id: press}}]
machines:
  - id: press-1
    sector: press
    modbus: {{host: 127.0.0.1, port: 9, signals: [{{name: v, table: holding, address: 0}}]}}
"""


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(factory_yaml(url, extra), encoding="utf-8")
    return path


@pytest.fixture
def server(start_influxdb: Callable[..., InfluxDB]) -> InfluxDB:
    return start_influxdb(auth=True)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own shell must not decide who db init connects or creates as.
    for name in [*ALL_VARIABLES, "AGUANTE_INFLUXDB_URL", "AGUANTE_INFLUXDB_DATABASE"]:
        monkeypatch.delenv(name, raising=False)


def texts(steps: list[Step]) -> list[str]:
    return [step.text("en") for step in steps]


def test_a_fresh_server_gets_database_policies_and_users(server: InfluxDB) -> None:
    environ = ADMIN | USERS
    config = parse_config(factory_yaml(server.url, "  retention_policy: readings"), environ=environ)
    steps = init_database(config, environ)
    assert texts(steps) == [
        "database plant: created",
        "retention policy aguante_rollups on plant: created, for the hourly and daily sums "
        "(kept forever, one shard a year)",
        "retention policy readings on plant: did not exist and influxdb.retention_policy names "
        "it, created with DURATION INF (keeps everything); shorten it with ALTER RETENTION "
        "POLICY if readings should expire",
        "user aguante_writer: created, may read and write plant (collector and maintenance)",
        "user grafana: created, may only read plant (Grafana)",
        "continuous queries: none needed, the collector writes the hourly and daily sums "
        "(utilization_1h, utilization_1d) itself, so they work on InfluxDB 2.x and 3.x too",
    ]
    assert [s.status for s in steps] == ["created"] * 5 + ["note"]

    assert {"name": "plant", "_name": "databases"} in server.query("SHOW DATABASES")
    policies = {row["name"]: row for row in server.query('SHOW RETENTION POLICIES ON "plant"')}
    assert set(policies) == {"autogen", "aguante_rollups", "readings"}
    rollups = policies["aguante_rollups"]
    assert (rollups["duration"], rollups["replicaN"], rollups["default"]) == ("0s", 1, False)
    assert rollups["shardGroupDuration"] == "8736h0m0s"  # 52w: one shard a year
    assert ROLLUP_SHARD_DURATION == "52w"
    assert (policies["readings"]["duration"], policies["readings"]["default"]) == ("0s", False)
    assert policies["autogen"]["default"] is True  # readings still go where they went

    users = {row["user"]: row["admin"] for row in server.query("SHOW USERS")}
    assert users == {"admin": True, "aguante_writer": False, "grafana": False}
    assert grants(server, "aguante_writer") == {"plant": "ALL PRIVILEGES"}
    assert grants(server, "grafana") == {"plant": "READ"}


def grants(server: InfluxDB, user: str) -> dict[str, str]:
    return {row["database"]: row["privilege"] for row in server.query(f'SHOW GRANTS FOR "{user}"')}


def test_a_second_run_finds_everything_there_and_changes_nothing(server: InfluxDB) -> None:
    environ = ADMIN | USERS
    config = parse_config(factory_yaml(server.url), environ=environ)
    init_database(config, environ)
    before = [
        server.query(q)
        for q in ("SHOW DATABASES", 'SHOW RETENTION POLICIES ON "plant"', "SHOW USERS")
    ]

    steps = init_database(config, environ)

    assert texts(steps)[:4] == [
        "database plant: already there",
        "retention policy aguante_rollups on plant (hourly and daily sums): already there",
        "user aguante_writer: already there; password set again, may read and write plant",
        "user grafana: already there; password set again, may only read plant",
    ]
    assert all(s.status != "created" for s in steps)
    after = [
        server.query(q)
        for q in ("SHOW DATABASES", 'SHOW RETENTION POLICIES ON "plant"', "SHOW USERS")
    ]
    assert after == before
    assert grants(server, "aguante_writer") == {"plant": "ALL PRIVILEGES"}
    assert grants(server, "grafana") == {"plant": "READ"}


def test_the_sinks_statement_is_the_one_that_made_the_policy(server: InfluxDB) -> None:
    # The sink creates the same policy at start: running its statement again is a no-op, which
    # InfluxDB 1.x allows only when the policy is exactly the same.
    environ = dict(ADMIN)
    init_database(parse_config(factory_yaml(server.url), environ=environ), environ)
    server.query(create_rollup_policy_statement("plant", "aguante_rollups"), method="POST")


def test_the_writer_writes_and_reads_and_grafana_only_reads(server: InfluxDB) -> None:
    environ = ADMIN | USERS
    init_database(parse_config(factory_yaml(server.url), environ=environ), environ)
    writer = ("aguante_writer", "writer's pass")
    grafana = ("grafana", "grafana-pass")
    line = b"utilization,factory=coop,sector=press,machine=press-1 running_s=60 1700000000000"
    params = {"db": "plant", "precision": "ms"}

    written = httpx.post(f"{server.url}/write", params=params, content=line, auth=writer)
    assert written.status_code == 204, written.text
    rolled = httpx.post(
        f"{server.url}/write",
        params=params | {"rp": "aguante_rollups"},
        content=line.replace(b"utilization,", b"utilization_1h,"),
        auth=writer,
    )
    assert rolled.status_code == 204, rolled.text

    for who in (writer, grafana):
        answer = httpx.post(
            f"{server.url}/query",
            params={"db": "plant"},
            data={"q": "SELECT running_s FROM utilization"},
            auth=who,
        ).json()
        assert answer["results"][0]["series"][0]["values"][0][1] == 60, (who, answer)

    refused = httpx.post(f"{server.url}/write", params=params, content=line, auth=grafana)
    assert refused.status_code == 403, refused.text


def test_a_grafana_user_that_could_write_is_left_only_reading(server: InfluxDB) -> None:
    server.query("CREATE USER grafana WITH PASSWORD 'old'", method="POST")
    server.query('CREATE DATABASE "plant"', method="POST")
    server.query('GRANT ALL ON "plant" TO grafana', method="POST")
    environ = ADMIN | USERS
    init_database(parse_config(factory_yaml(server.url), environ=environ), environ)
    assert grants(server, "grafana") == {"plant": "READ"}
    # And the password is the one in the environment now.
    answer = httpx.post(
        f"{server.url}/query", data={"q": "SHOW DATABASES"}, auth=("grafana", "grafana-pass")
    )
    assert answer.status_code == 200, answer.text


def test_no_user_variables_no_users_said_so(server: InfluxDB) -> None:
    environ = dict(ADMIN)
    steps = init_database(parse_config(factory_yaml(server.url), environ=environ), environ)
    assert texts(steps)[2:4] == [
        "collector's user: none, AGUANTE_INFLUXDB_WRITER_USERNAME and "
        "AGUANTE_INFLUXDB_WRITER_PASSWORD are not set",
        "Grafana's user: none, AGUANTE_GRAFANA_INFLUXDB_USERNAME and "
        "AGUANTE_GRAFANA_INFLUXDB_PASSWORD are not set",
    ]
    assert {row["user"] for row in server.query("SHOW USERS")} == {"admin"}


def test_a_user_without_its_password_is_refused_before_anything_is_sent() -> None:
    environ = {"AGUANTE_INFLUXDB_WRITER_USERNAME": "w"}
    config = parse_config(factory_yaml("http://127.0.0.1:9"), environ=environ)
    with pytest.raises(DbInitError) as caught:
        init_database(config, environ)
    assert str(caught.value) == (
        "AGUANTE_INFLUXDB_WRITER_USERNAME is set but AGUANTE_INFLUXDB_WRITER_PASSWORD is not: "
        "set both, or neither"
    )


def test_the_admin_is_never_made_a_writer(server: InfluxDB) -> None:
    environ = ADMIN | {
        "AGUANTE_INFLUXDB_WRITER_USERNAME": "admin",
        "AGUANTE_INFLUXDB_WRITER_PASSWORD": "other",
    }
    config = parse_config(factory_yaml(server.url), environ=environ)
    with pytest.raises(DbInitError, match="AGUANTE_INFLUXDB_WRITER_USERNAME names admin, an "):
        init_database(config, environ)
    # Its password is untouched.
    assert server.query("SHOW USERS")


def test_the_command_line_says_what_it_did_in_the_configs_language(
    server: InfluxDB,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in (ADMIN | USERS).items():
        monkeypatch.setenv(name, value)
    config = write_config(tmp_path, server.url)

    assert main(["db", "init", str(config), "--lang", "es"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "base de datos plant: creada"
    assert out[-1] == f"InfluxDB en {server.url}: listo (4 cosa(s) creada(s), 0 ya estaban)"

    assert main(["db", "init", str(config)]) == 0  # language: en in the file
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "database plant: already there"
    assert out[-1] == f"InfluxDB at {server.url}: ready (0 thing(s) created, 4 already there)"


def test_a_wrong_admin_password_names_the_variables(
    server: InfluxDB,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AGUANTE_INFLUXDB_USERNAME", "admin")
    monkeypatch.setenv("AGUANTE_INFLUXDB_PASSWORD", "wrong")
    assert main(["db", "init", str(write_config(tmp_path, server.url))]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"InfluxDB at {server.url} refused the credentials (authorization failed): set "
        "AGUANTE_INFLUXDB_USERNAME / AGUANTE_INFLUXDB_PASSWORD to an admin user's name and "
        "password"
    )
    with pytest.raises(ServiceError, match="database not found"):  # nothing was created
        server.query('SHOW RETENTION POLICIES ON "plant"')


def test_a_user_who_is_no_admin_is_told_db_init_needs_one(server: InfluxDB) -> None:
    server.query("CREATE USER reader WITH PASSWORD 'r'", method="POST")
    environ = {"AGUANTE_INFLUXDB_USERNAME": "reader", "AGUANTE_INFLUXDB_PASSWORD": "r"}
    config = parse_config(factory_yaml(server.url), environ=environ)
    with pytest.raises(DbInitError) as caught:
        init_database(config, environ)
    message = str(caught.value)
    assert message.startswith(
        f'InfluxDB at {server.url} did not let reader run CREATE DATABASE "plant" ('
    )
    assert message.endswith(
        "): db init needs an admin user in AGUANTE_INFLUXDB_USERNAME / AGUANTE_INFLUXDB_PASSWORD"
    )


def test_a_server_that_is_down_is_named_by_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["db", "init", str(write_config(tmp_path, url)), "--lang", "en"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cannot reach InfluxDB at {url} (ConnectError: ")
    assert err.endswith("): is it running, and is influxdb.url (or AGUANTE_INFLUXDB_URL) right?")


def test_influxdb_2_is_told_what_to_run_instead() -> None:
    # InfluxDB 2.x's v1 API, as it answers (influxdata/influxdb#22255): SHOW works, CREATE not.
    def influxdb2(request: httpx.Request) -> httpx.Response:
        statement = dict(httpx.QueryParams(request.content.decode()))["q"]
        headers = {"X-Influxdb-Version": "v2.7.11"}
        if statement.startswith("SHOW"):
            return httpx.Response(200, headers=headers, json={"results": [{"statement_id": 0}]})
        error = f"not implemented: {' '.join(statement.split()[:2])}"
        return httpx.Response(
            200, headers=headers, json={"results": [{"statement_id": 0, "error": error}]}
        )

    environ: dict[str, str] = {}
    config = parse_config(factory_yaml("http://influxdb2:8086"), environ=environ)
    with pytest.raises(DbInitError) as caught:
        init_database(config, environ, transport=httpx.MockTransport(influxdb2))
    message = caught.value.text("en")
    assert message.startswith(
        'InfluxDB at http://influxdb2:8086 (version v2.7.11) refused CREATE DATABASE "plant" '
        "(not implemented: CREATE DATABASE): InfluxDB 2.x and 3.x make databases and users "
        "their own way, not over the v1 API. On 2.x: `influx bucket create --name plant`, "
        "`influx v1 dbrp create --db plant "
    )
    assert "`influx v1 auth create " in message
    assert message.endswith("Then set influxdb.rollup_retention_policy: null in the factory file")

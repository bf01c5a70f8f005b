"""The install, retrofit and setup pages say only what aguante accepts.

Rules, kept simple so a person writing docs can follow them:

1. Every fenced block whose info string is exactly ``yaml`` in docs/retrofit.md,
   docs/install.md and docs/setup.md is an aguante factory file, or a fragment of one, and
   must validate with `collector.config.parse_config` (no environment) and raise no
   `aguante check` warnings.
2. A fragment is a block without a top-level ``factory:`` key. It gets a fixed header
   prepended as text: ``factory: ejemplo``, and, when the block has no ``sectors:`` of its own,
   the sectors in `FRAGMENT_SECTORS`. Nothing else is added: a fragment names its machines,
   their sources, states and counters itself.
3. A YAML block for something else (a board's firmware) says so in its info string, e.g.
   ```` ```yaml esphome ````; it is checked only for being well-formed YAML (ESPHome's own tags
   such as ``!secret`` and ``!lambda`` allowed). Its second word must be in `OTHER_YAML`.
   A network's file (```` ```yaml network ````) must validate as one.
4. Every ``aguante <command> [<action>]`` written in code (fenced blocks and `inline code`) is a
   real command of `collector.cli.build_parser()`, and every ``--option`` after it on the same
   line is one that command accepts. Shell comments are skipped, and so is ``aguante`` as a user
   or group name (``sudo -u aguante``, ``install -o aguante -g aguante``).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.cli import build_parser
from collector.config import ConfigError, config_warnings, parse_config
from network.config import parse_network

ROOT = Path(__file__).parent.parent
DOCS = [
    ROOT / "docs" / name
    for name in (
        "retrofit.md",
        "install.md",
        "setup.md",
        "setup.es.md",
        "setup.pt-BR.md",
        "network.md",
    )
]

FRAGMENT_FACTORY = "factory: ejemplo\n"
FRAGMENT_SECTORS = (
    "sectors:\n"
    "  - {id: turning, name: Tornería}\n"
    "  - {id: pressing, name: Prensas}\n"
    "  - {id: assembly, name: Armado}\n"
)
# Info-string second words of YAML blocks that are not aguante's.
OTHER_YAML = {"esphome", "network"}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_INLINE = re.compile(r"`([^`\n]+)`")
# `aguante` as a command: at a word start or after a path; not a user name after -u/-g/-G.
_COMMAND = re.compile(r"(?:^|(?<=[\s/`'\"(]))aguante(?=[ \t])")
_USER_FLAG = re.compile(r"(?:-[ugGo]|--user|--group|chown|useradd|adduser|usermod\b.*)\s+$")
_COMMENT = re.compile(r"(?:^|\s)#.*$")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(path.name, line, match.group(1).strip(), match.group(2)))
    return found


def _all_blocks() -> list[Block]:
    return [block for path in DOCS for block in _blocks(path)]


def _factory_blocks() -> list[Block]:
    return [b for b in _all_blocks() if b.info == "yaml"]


def _other_yaml_blocks() -> list[Block]:
    return [b for b in _all_blocks() if b.info.split()[:1] == ["yaml"] and b.info != "yaml"]


def as_factory_file(snippet: str) -> str:
    """The snippet as a whole factory file, by rule 2 of the module docstring."""
    data = yaml.safe_load(snippet)
    if not isinstance(data, dict):
        raise AssertionError("a factory snippet must be a mapping (factory, sectors, machines…)")
    if "factory" in data:
        return snippet
    header = FRAGMENT_FACTORY + ("" if "sectors" in data else FRAGMENT_SECTORS)
    return header + snippet


def test_the_docs_exist_and_hold_snippets() -> None:
    # Guards the tests below against passing on nothing (a renamed file, a changed fence).
    counts = {path.name: len(_blocks(path)) for path in DOCS}
    assert all(counts.values()), counts
    assert len(_factory_blocks()) >= 5
    assert any(b.info == "yaml esphome" for b in _all_blocks())


@pytest.mark.parametrize("block", _factory_blocks(), ids=lambda b: b.where)
def test_factory_snippet_validates(block: Block) -> None:
    text = as_factory_file(block.text)
    try:
        config = parse_config(text, source=block.where, environ={})
    except ConfigError as exc:
        pytest.fail(f"{block.where}: the snippet does not validate:\n{exc}\n---\n{text}")
    assert config_warnings(config) == [], block.where


class _AnyTagLoader(yaml.SafeLoader):
    """Reads ESPHome's `!secret wifi_password`, `!lambda ...` and friends as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    assert isinstance(node, yaml.MappingNode)
    return loader.construct_mapping(node)


_AnyTagLoader.add_multi_constructor("!", _any_tag)


@pytest.mark.parametrize("block", _other_yaml_blocks(), ids=lambda b: b.where)
def test_other_yaml_is_named_and_well_formed(block: Block) -> None:
    kind = block.info.split()[1]
    assert kind in OTHER_YAML, f"{block.where}: unknown YAML kind {kind!r} ({sorted(OTHER_YAML)})"
    data = yaml.load(block.text, Loader=_AnyTagLoader)  # a SafeLoader that accepts any tag
    assert isinstance(data, dict), block.where
    if kind == "esphome":
        assert "esphome" in data, f"{block.where}: an ESPHome file starts with `esphome:`"
    if kind == "network":  # a network's file (docs/network.md): the network side's own model
        try:
            parse_network(block.text, source=block.where, environ={})
        except ConfigError as exc:
            pytest.fail(f"{block.where}: the network file does not validate:\n{exc}")


def test_a_wrong_snippet_is_caught() -> None:
    # The wrapping must not hide mistakes: a fragment valid but for one thing still fails.
    fragment = (
        "machines:\n"
        "  - id: m\n"
        "    sector: {sector}\n"
        "    mqtt: [{{topic: t, signals: [{{name: x}}]}}]\n"
    )
    parse_config(as_factory_file(fragment.format(sector="turning")), environ={})
    with pytest.raises(ConfigError, match="sectors"):
        parse_config(as_factory_file(fragment.format(sector="nowhere")), environ={})
    running = "    state: {running: {signal: y, above: 1}}\n"
    with pytest.raises(ConfigError, match="not a signal"):
        parse_config(as_factory_file(fragment.format(sector="turning") + running), environ={})


# -- commands -------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _code_lines() -> Iterator[tuple[str, str]]:
    """(where, line) of every line of code in the docs: fenced blocks and inline spans."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        fenced_spans = []
        for match in _FENCE.finditer(text):
            fenced_spans.append(match.span())
            first = text.count("\n", 0, match.start()) + 2
            for offset, line in enumerate(match.group(2).splitlines()):
                yield f"{path.name}:{first + offset}", line
        for match in _INLINE.finditer(text):
            if any(start <= match.start() < end for start, end in fenced_spans):
                continue
            yield f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}", match.group(1)


def _words(rest: str) -> list[str]:
    """The command line after `aguante`, up to where the shell or a comment ends it."""
    rest = re.split(r"\s(?:#|\||&&|;|>|<)|'\s*$", rest)[0]
    try:
        return shlex.split(rest)
    except ValueError:  # an unbalanced quote of an enclosing `sh -c '...'`
        return rest.split()


def invocations() -> list[tuple[str, list[str]]]:
    """(where, words after `aguante`) of every aguante command the docs write."""
    found = []
    for where, code in _code_lines():
        line = _COMMENT.sub("", code)  # `# the aguante box` is not a command
        for match in _COMMAND.finditer(line):
            if _USER_FLAG.search(line[: match.start()]):
                continue  # `sudo -u aguante …`, `chown aguante …`: the user, not the command
            words = _words(line[match.end() :])
            if words[:1] == ["--log-level"]:
                words = words[2:]
            if words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
                found.append((where, words))
    return found


def test_docs_name_commands() -> None:
    commands = {words[0] for _, words in invocations()}
    assert {"check", "collect", "buffer", "kpi", "db"} <= commands, commands


@pytest.mark.parametrize(
    ("where", "words"), invocations(), ids=[f"{w}:{' '.join(x)}" for w, x in invocations()]
)
def test_command_exists_with_its_options(where: str, words: list[str]) -> None:
    parser = build_parser()
    path = ["aguante"]
    for word in words:
        if word.startswith("-"):
            break
        commands = _subparsers(parser)
        if not commands:
            break
        if word not in commands:
            pytest.fail(f"{where}: `{' '.join(path)} {word}` is not a command ({sorted(commands)})")
        parser = commands[word]
        path.append(word)
    if len(path) == 1:
        pytest.fail(f"{where}: `aguante {' '.join(words)}` names no command")
    known = set(parser._option_string_actions)
    for word in words:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            pytest.fail(f"{where}: `{' '.join(path)}` has no option {option} ({sorted(known)})")

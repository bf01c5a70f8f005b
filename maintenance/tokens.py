"""The people who may change tickets and stops: a small YAML file of token → name and crew,
kept apart from the factory file because tokens are secrets (docs/maintenance.md).

    "kq3…": {name: Ana, crew: mecanica}    # a crew member: changes her crew's tickets
    "p8z…": {name: Beto}                    # a worker: tags stops, reads tickets
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml

from collector.config import Config

__all__ = ["MIN_TOKEN_CHARS", "TokenFileError", "load_tokens", "new_token"]

MIN_TOKEN_CHARS = 16


class TokenFileError(Exception):
    """The tokens file cannot be used: the message names the file, the entry and the problem."""


def load_tokens(path: Path, config: Config) -> dict[str, tuple[str, str | None]]:
    """token → (name, crew id or None); a missing file is no tokens (reading only)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TokenFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TokenFileError(f"{path}: must map each token to {{name: ..., crew: ...}}")
    crews = {c.id for c in config.maintenance.crews}
    tokens: dict[str, tuple[str, str | None]] = {}
    for index, (token, who) in enumerate(data.items(), 1):
        where = f"{path}: entry {index}"
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
            raise TokenFileError(f"{where}: a token needs at least {MIN_TOKEN_CHARS} characters")
        if not isinstance(who, dict) or not isinstance(who.get("name"), str) or not who["name"]:
            raise TokenFileError(f"{where}: give the person's name: {{name: Ana, crew: ...}}")
        unknown = set(who) - {"name", "crew"}
        if unknown:
            raise TokenFileError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        crew = who.get("crew")
        if crew is not None and crew not in crews:
            known = ", ".join(sorted(crews)) or "none"
            raise TokenFileError(f"{where}: crew {crew!r} is not among the crews ({known})")
        tokens[token] = (who["name"], crew)
    return tokens


def new_token(path: Path, config: Config, name: str, crew: str | None) -> str:
    """Add a person with a fresh random token to the file (made readable by its owner only)."""
    tokens = load_tokens(path, config)
    if crew is not None and crew not in {c.id for c in config.maintenance.crews}:
        raise TokenFileError(f"crew {crew!r} is not among the crews of the config")
    token = secrets.token_urlsafe(24)
    entries = {t: {"name": n, **({"crew": c} if c else {})} for t, (n, c) in tokens.items()}
    entries[token] = {"name": name, **({"crew": crew} if crew else {})}
    text = yaml.safe_dump(entries, allow_unicode=True, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return token

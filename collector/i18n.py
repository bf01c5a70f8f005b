"""Every text a person reads — tables, tickets, reports, dashboard titles — in es, pt-BR or en.

The texts are gettext catalogues, one domain per part of the product (so each part owns its
files): `collector/locales/<domain>.pot` lists the messages, and
`collector/locales/<lang>/LC_MESSAGES/<domain>.po` (`es`, `pt_BR`, `en`) says each in a language.
A message's id is its key, "domain.name" (`kpi.availability`), and its text a `str.format`
template (flagged `python-brace-format`); each .po file carries the English text as a comment
for translators. Babel reads the .po files as they are (no compiled .mo to keep in step), any
gettext tool (Poedit, Weblate, msgfmt --check) edits and checks them, and a test fails when a
message lacks a translation or its placeholders differ between languages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from collector.config import LANGUAGES, Language

__all__ = [
    "LANGUAGES",
    "Language",
    "MissingText",
    "catalog",
    "domains",
    "gettext_locale",
    "language_from_environment",
    "translate",
]


class MissingText(KeyError):
    """A message key no catalog holds: a bug, caught by the catalog tests."""


def gettext_locale(language: Language) -> str:
    """The folder of a language's catalogues: gettext writes pt-BR as pt_BR."""
    return language.replace("-", "_")


def language_from_environment(environ: Mapping[str, str] | None = None) -> Language:
    """The language of a command that reads no config: the terminal's locale (LC_ALL,
    LC_MESSAGES, LANG: pt_BR.UTF-8 → pt-BR), Spanish when it names none of the three."""
    env = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name, "").lower()
        if not value or value in ("c", "posix") or value.startswith("c."):
            continue
        if value.startswith("pt"):
            return "pt-BR"
        if value.startswith("en"):
            return "en"
        if value.startswith("es"):
            return "es"
    return "es"


@cache
def catalog(domain: str) -> dict[str, dict[str, str]]:
    """The messages of one domain: key → language → text (empty texts left out)."""
    from babel.messages.pofile import read_po  # here: `aguante collect` never needs it

    root = resources.files("collector").joinpath("locales")
    messages: dict[str, dict[str, str]] = {}
    for language in LANGUAGES:
        path = root.joinpath(gettext_locale(language), "LC_MESSAGES", f"{domain}.po")
        with path.open("rb") as file:
            for message in read_po(file, locale=gettext_locale(language)):
                # A fuzzy entry is a guess gettext tools do not use: as good as missing.
                if (
                    message.id
                    and isinstance(message.id, str)
                    and message.string
                    and not message.fuzzy
                ):
                    messages.setdefault(message.id, {})[language] = str(message.string)
    return messages


def domains() -> list[str]:
    folder = resources.files("collector").joinpath("locales")
    return sorted(p.name.removesuffix(".pot") for p in folder.iterdir() if p.name.endswith(".pot"))


def translate(language: Language, key: str, /, **values: Any) -> str:
    """The text of `key` ("domain.name") in a language, with `values` put in its placeholders."""
    domain = key.partition(".")[0]
    try:
        texts = catalog(domain)[key]
    except (KeyError, FileNotFoundError):
        raise MissingText(key) from None
    text = texts.get(language) or texts.get("en")
    if text is None:
        raise MissingText(key)
    return text.format(**values) if values else text

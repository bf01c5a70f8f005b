"""Every text a person reads — tables, tickets, reports, dashboard titles — in es, pt-BR or en.

Catalogs are JSON files `collector/locales/<domain>.json`, one per part of the product (so each
part owns its file), mapping a message key to its text per language:
`{"kpi.availability": {"es": "Disponibilidad", "pt-BR": "Disponibilidade", "en": "Availability"}}`.
Texts are `str.format` templates; a test checks every key has all three languages and the same
placeholders in each.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from collector.config import LANGUAGES, Language

__all__ = ["LANGUAGES", "Language", "MissingText", "catalog", "domains", "translate"]


class MissingText(KeyError):
    """A message key no catalog holds: a bug, caught by the catalog tests."""


@cache
def catalog(domain: str) -> dict[str, dict[str, str]]:
    """The messages of one domain (the file `locales/<domain>.json`)."""
    text = resources.files("collector").joinpath("locales", f"{domain}.json").read_text("utf-8")
    messages: dict[str, dict[str, str]] = json.loads(text)
    return messages


def domains() -> list[str]:
    folder = resources.files("collector").joinpath("locales")
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def translate(language: Language, key: str, /, **values: Any) -> str:
    """The text of `key` ("domain.name") in a language, with `values` put in its placeholders."""
    domain = key.partition(".")[0]
    try:
        texts = catalog(domain)[key]
    except (KeyError, FileNotFoundError):
        raise MissingText(key) from None
    text = texts.get(language) or texts["en"]
    return text.format(**values) if values else text

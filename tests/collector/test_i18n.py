"""Every catalog says every message in es, pt-BR and en, with the same placeholders."""

from __future__ import annotations

import string

import pytest

from collector.i18n import LANGUAGES, MissingText, catalog, domains, translate


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("domain", domains())
def test_every_message_is_in_every_language(domain: str) -> None:
    messages = catalog(domain)
    assert messages, f"{domain}.json is empty"
    for key, texts in messages.items():
        assert key.startswith(f"{domain}."), f"{key} belongs in {key.partition('.')[0]}.json"
        assert set(texts) == set(LANGUAGES), f"{key}: {sorted(texts)}"
        assert all(t.strip() for t in texts.values()), f"{key}: an empty text"
        assert len({frozenset(_placeholders(t)) for t in texts.values()}) == 1, key


def test_translate_fills_placeholders_and_refuses_unknown_keys() -> None:
    assert translate("pt-BR", "common.state.unknown") == "Sem dados"
    assert translate("es", "common.state.running") == "En marcha"
    with pytest.raises(MissingText):
        translate("en", "common.no_such_text")
    with pytest.raises(MissingText):
        translate("en", "nodomain.text")

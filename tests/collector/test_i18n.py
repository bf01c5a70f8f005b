"""Every gettext catalogue says every message in es, pt-BR and en, with the same placeholders;
the template (.pot) and the three translations hold the same messages, and gettext's own tool
(msgfmt --check, where installed) accepts each file."""

from __future__ import annotations

import shutil
import string
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from collector.i18n import LANGUAGES, MissingText, catalog, domains, gettext_locale, translate

LOCALES = resources.files("collector").joinpath("locales")


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _messages(*parts: str) -> dict[str, str]:
    """msgid → msgstr of one .po or .pot file; a fuzzy translation (a guess gettext tools leave
    unused, and so does `translate`) reads as none."""
    with LOCALES.joinpath(*parts).open("rb") as file:
        return {
            str(m.id): "" if m.fuzzy else str(m.string or "")
            for m in read_po(file)
            if isinstance(m.id, str) and m.id
        }


@pytest.mark.parametrize("domain", domains())
def test_every_message_is_in_every_language(domain: str) -> None:
    template = _messages(f"{domain}.pot")
    assert template, f"{domain}.pot is empty"
    for key in template:
        assert key.startswith(f"{domain}."), f"{key} belongs in {key.partition('.')[0]}.pot"
    for language in LANGUAGES:
        texts = _messages(gettext_locale(language), "LC_MESSAGES", f"{domain}.po")
        assert set(texts) == set(template), f"{language}: {domain}.po and {domain}.pot differ"
        missing = [key for key, text in texts.items() if not text.strip()]
        assert not missing, f"{language}: no translation of {missing}"
    for key, texts in catalog(domain).items():
        assert set(texts) == set(LANGUAGES), f"{key}: {sorted(texts)}"
        assert len({frozenset(_placeholders(t)) for t in texts.values()}) == 1, key


def test_a_message_without_its_translation_is_found(tmp_path: Path) -> None:
    # The check above reads what gettext tools write: an untranslated message is msgstr "",
    # one msgmerge could only guess is marked fuzzy.
    po = tmp_path / "x.po"
    po.write_text(
        'msgid "kpi.availability"\nmsgstr ""\n\n#, fuzzy\nmsgid "kpi.quality"\nmsgstr "Calidad"\n',
        encoding="utf-8",
    )
    with po.open("rb") as file:
        messages = {m.id: m for m in read_po(file) if m.id}
    assert messages["kpi.availability"].string == ""
    assert messages["kpi.quality"].fuzzy


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="gettext's msgfmt is not installed")
@pytest.mark.parametrize("language", LANGUAGES)
def test_gettext_accepts_every_catalogue(language: str, tmp_path: Path) -> None:
    folder = Path(str(LOCALES.joinpath(gettext_locale(language), "LC_MESSAGES")))
    for po in sorted(folder.glob("*.po")):
        done = subprocess.run(
            ["msgfmt", "--check", "-o", str(tmp_path / f"{po.stem}.mo"), str(po)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_translate_fills_placeholders_and_refuses_unknown_keys() -> None:
    assert translate("pt-BR", "common.state.unknown") == "Sem dados"
    assert translate("es", "common.state.running") == "En marcha"
    assert translate("es", "report.title", factory="Coop") == "Coop: informe para la asamblea"
    with pytest.raises(MissingText):
        translate("en", "common.no_such_text")
    with pytest.raises(MissingText):
        translate("en", "nodomain.text")

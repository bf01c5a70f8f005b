"""The language of a request and numbers and dates written the way its readers write them:
es and pt-BR with 24-hour clocks, day/month/year and a decimal comma; en as in the US."""

from __future__ import annotations

import datetime as dt
from typing import Final
from zoneinfo import ZoneInfo

from collector.config import LANGUAGES, Language

__all__ = [
    "LANG_COOKIE",
    "format_datetime",
    "format_day",
    "format_number",
    "negotiate",
    "pick_language",
]

LANG_COOKIE: Final = "aguante_lang"


def pick_language(text: str | None) -> Language | None:
    """The language a tag names ("es-AR" → es, "pt" or "pt-PT" → pt-BR), or None."""
    if not text:
        return None
    tag = text.strip().lower().replace("_", "-")
    for language in LANGUAGES:
        if tag == language.lower():
            return language
    primary = tag.split("-", 1)[0]
    if primary == "pt":
        return "pt-BR"
    return next((lang for lang in LANGUAGES if lang == primary), None)


def _accepted(header: str) -> list[str]:
    """The tags of an Accept-Language header, best first (q=0 left out)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]


def negotiate(
    query: str | None, cookie: str | None, accept: str | None, default: Language
) -> Language:
    """`?lang=`, else the cookie, else the browser's Accept-Language, else the plant's."""
    for chosen in (query, cookie):
        language = pick_language(chosen)
        if language is not None:
            return language
    for tag in _accepted(accept or ""):
        language = pick_language(tag)
        if language is not None:
            return language
    return default


def format_number(value: float | int, language: Language, decimals: int = 1) -> str:
    """1234.5 → "1.234,5" (es, pt-BR) or "1,234.5" (en); whole numbers without decimals."""
    if isinstance(value, int) or float(value).is_integer():
        text = f"{round(value):,}"
    else:
        text = f"{value:,.{decimals}f}"
    if language == "en":
        return text
    return text.replace(",", "\0").replace(".", ",").replace("\0", ".")


def format_datetime(time_ms: int | None, language: Language, zone: ZoneInfo) -> str:
    """25/11/2026 18:20 (es, pt-BR) or 11/25/2026 6:20 PM (en), in the plant's zone."""
    if time_ms is None:
        return "—"
    when = dt.datetime.fromtimestamp(time_ms / 1000, zone)
    if language == "en":
        hour = when.hour % 12 or 12
        return f"{when:%m/%d/%Y} {hour}:{when:%M} {'AM' if when.hour < 12 else 'PM'}"
    return f"{when:%d/%m/%Y %H:%M}"


def format_day(day: dt.date, language: Language) -> str:
    """24/11/2026 (es, pt-BR) or 11/24/2026 (en)."""
    return f"{day:%m/%d/%Y}" if language == "en" else f"{day:%d/%m/%Y}"

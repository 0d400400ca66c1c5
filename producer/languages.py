"""The languages `translate` jobs accept: ISO 639-1 codes, or their English names, in any case."""

from __future__ import annotations

# Each with the Unicode script its text is written in, so a caller (and a test) can check an output.
LANGUAGES: dict[str, tuple[str, str]] = {
    "ar": ("Arabic", "Arabic"),
    "de": ("German", "Latin"),
    "el": ("Greek", "Greek"),
    "en": ("English", "Latin"),
    "es": ("Spanish", "Latin"),
    "fr": ("French", "Latin"),
    "hi": ("Hindi", "Devanagari"),
    "it": ("Italian", "Latin"),
    "ja": ("Japanese", "Japanese"),
    "ko": ("Korean", "Hangul"),
    "nl": ("Dutch", "Latin"),
    "pl": ("Polish", "Latin"),
    "pt": ("Portuguese", "Latin"),
    "ru": ("Russian", "Cyrillic"),
    "sv": ("Swedish", "Latin"),
    "tr": ("Turkish", "Latin"),
    "uk": ("Ukrainian", "Cyrillic"),
    "zh": ("Chinese", "Han"),
}
_BY_NAME = {name.casefold(): code for code, (name, _) in LANGUAGES.items()}


def language_code(value: str) -> str:
    """The ISO 639-1 code of `value` (a code or an English name), or ValueError listing what is supported."""
    key = value.strip().casefold()
    if key in LANGUAGES:
        return key
    if key in _BY_NAME:
        return _BY_NAME[key]
    supported = ", ".join(f"{code} ({name})" for code, (name, _) in LANGUAGES.items())
    raise ValueError(f"language {value[:40]!r} is not supported; use one of: {supported}")


def language_name(code: str) -> str:
    return LANGUAGES[code][0]


__all__ = ["LANGUAGES", "language_code", "language_name"]

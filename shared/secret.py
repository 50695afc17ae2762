"""Secrets: a value that does not print itself, and one way to keep secret values out of text.

The Labelbox API key and the webhook secret must never reach a payload, a log line, the run record or
an error message. `Secret` hides its value from repr and str; `redact` takes every secret value out of
a text that may reach a user or a log (an SDK's error message can quote the key); `holds_secret` lets
the run record refuse a write that would store one, as a last line of defence.
"""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[redacted]"


class Secret:
    """A secret value that cannot leak through repr, str or f-strings by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


def _values(secrets: Iterable[Secret | str]) -> list[str]:
    values = (s.reveal() if isinstance(s, Secret) else s for s in secrets)
    return [v for v in values if v]


def redact(text: str, secrets: Iterable[Secret | str]) -> str:
    for value in _values(secrets):
        text = text.replace(value, REDACTED)
    return text


def holds_secret(text: str, secrets: Iterable[Secret | str]) -> bool:
    return any(value in text for value in _values(secrets))

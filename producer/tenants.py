"""Tenants and the gateway's API keys: each key names its tenant and what it may do.

`TEXTQ_API_KEYS` holds comma-separated entries `key[:tenant[:scope+scope...]]`; a bare key (the
format before tenants) belongs to the `default` tenant with the default scopes. `TEXTQ_API_KEYS_FILE`
names a JSON list of `{"key": ..., "tenant": ..., "scopes": [...]}` for keys that contain ':' or for
many tenants. Error messages name an entry by its position, never by its key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from db.models import DEFAULT_TENANT, TENANT_MAX_CHARS

_TENANT_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{TENANT_MAX_CHARS - 1}}}")
TENANT_RULE = f"must be 1-{TENANT_MAX_CHARS} letters, digits, '.', '_' or '-', starting with a letter or digit"


class Scope(StrEnum):
    SUBMIT = "submit"
    READ = "read"  # get, wait and list
    CANCEL = "cancel"
    ADMIN = "admin"  # every scope, over every tenant's jobs


DEFAULT_SCOPES = frozenset({Scope.SUBMIT, Scope.READ, Scope.CANCEL})
_FILE_FIELDS = frozenset({"key", "tenant", "scopes"})


def check_tenant(name: str) -> str:
    """`name` if it is a valid tenant name; ValueError naming the rule otherwise."""
    if not _TENANT_NAME.fullmatch(name):
        raise ValueError(f"tenant {TENANT_RULE}")
    return name


@dataclass(frozen=True)
class ApiKey:
    key: str
    tenant: str = DEFAULT_TENANT
    scopes: frozenset[Scope] = DEFAULT_SCOPES

    def __repr__(self) -> str:  # never show the key itself
        return f"ApiKey(tenant={self.tenant!r}, scopes={sorted(self.scopes)})"

    @property
    def sees_all(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        return self.sees_all or scope in self.scopes


def load_api_keys(entries: list[str], keys_file: Path | None = None) -> list[ApiKey]:
    """Keys from `TEXTQ_API_KEYS` entries and the keys file; ValueError naming the bad entry and rule."""
    keys = [_key_of_entry(entry, f"TEXTQ_API_KEYS entry {i + 1}") for i, entry in enumerate(entries)]
    if keys_file is not None:
        keys += _keys_of_file(keys_file)
    seen: set[str] = set()
    for i, api_key in enumerate(keys):
        if api_key.key in seen:
            raise ValueError(f"API key #{i + 1} (counting TEXTQ_API_KEYS, then the keys file) is configured twice")
        seen.add(api_key.key)
    return keys


def _key_of_entry(entry: str, where: str) -> ApiKey:
    key, _, rest = entry.partition(":")
    tenant, _, scopes = rest.partition(":")
    if not rest:
        return _api_key(key, DEFAULT_TENANT, None, where)
    return _api_key(key, tenant, scopes.split("+") if scopes else None, where)


def _keys_of_file(path: Path) -> list[ApiKey]:
    where = f"TEXTQ_API_KEYS_FILE {path}"
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: is not valid JSON ({type(exc).__name__} at position {getattr(exc, 'pos', '?')})") from None
    if not isinstance(document, list):
        raise ValueError(f'{where}: must be a JSON list of {{"key": ..., "tenant": ..., "scopes": [...]}} objects')
    return [_key_of_object(item, f"{where}: [{i}]") for i, item in enumerate(document)]


def _key_of_object(item: Any, where: str) -> ApiKey:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: must be an object with key, tenant and scopes")
    unknown = sorted(set(item) - _FILE_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (expected key, tenant, scopes)")
    tenant, scopes = item.get("tenant", DEFAULT_TENANT), item.get("scopes")
    if not isinstance(tenant, str):
        raise ValueError(f"{where}.tenant: must be a string")
    if scopes is not None and not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
        raise ValueError(f"{where}.scopes: must be a list of strings")
    if not isinstance(item.get("key"), str):
        raise ValueError(f"{where}.key: is required and must be a string")
    return _api_key(item["key"], tenant, scopes, where)


def _api_key(key: str, tenant: str, scopes: list[str] | None, where: str) -> ApiKey:
    if not key.strip() or key != key.strip():
        raise ValueError(f"{where}: the key must be non-empty, without surrounding spaces")
    try:
        check_tenant(tenant)
    except ValueError as exc:
        hint = " (a key containing ':' must go in TEXTQ_API_KEYS_FILE)" if where.startswith("TEXTQ_API_KEYS ") else ""
        raise ValueError(f"{where}: {exc}{hint}") from None
    if scopes is None:
        return ApiKey(key, tenant)
    unknown = [s for s in scopes if s not in Scope.__members__.values()]
    if unknown or not scopes:
        raise ValueError(f"{where}: scopes must be a non-empty list of {', '.join(Scope)}; got {unknown[0]!r}"
                         if unknown else f"{where}: scopes must not be empty")
    return ApiKey(key, tenant, frozenset(Scope(s) for s in scopes))


__all__ = ["DEFAULT_SCOPES", "DEFAULT_TENANT", "TENANT_RULE", "ApiKey", "Scope", "check_tenant", "load_api_keys"]

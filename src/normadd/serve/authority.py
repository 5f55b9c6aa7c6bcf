"""Who may do what: API key scopes, hashed key secrets, and the one table of each route's scope.

A key has a name (the audit log's *who*), a secret kept only as an scrypt hash, and scopes:

========  ==========================================================
inspect   send images for inspection
preview   try a change on images without applying it
change    add, stage, remove normalities, set thresholds
approve   approve or reject another person's pending change
audit     read and verify the audit log
admin     everything
========  ==========================================================

:data:`ROUTE_SCOPES` maps every route of the app to the scope it needs (or :data:`PUBLIC`, or
:data:`ANY_KEY`); the app refuses to start with a route that is not in it, and a test walks the
OpenAPI routes against it. Nothing here imports FastAPI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from normadd.errors import NormaddError

logger = logging.getLogger(__name__)

SCOPES = ("inspect", "preview", "change", "approve", "audit", "admin")
PUBLIC = "public"  # no key needed
ANY_KEY = "any key"  # any valid key, whatever its scopes
# What a key configured without scopes may do: what every key could do before scopes existed.
UNSCOPED_DEFAULT = ("inspect", "preview", "change", "audit")

# (method, path) -> the scope a request needs. New routes get a line here (the app checks it).
ROUTE_SCOPES: dict[tuple[str, str], str] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    # Prometheus scrapes without a key; counts by route template, line and verdict (no user text).
    ("GET", "/metrics"): PUBLIC,
    # Swagger UI (fastapi-offline), served from the package: it holds no data, the routes it calls need keys.
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/v1/me"): ANY_KEY,
    ("GET", "/v1/lines"): ANY_KEY,
    ("POST", "/v1/lines/{line}/inspect"): "inspect",
    ("GET", "/v1/lines/{line}/normalities"): ANY_KEY,
    ("POST", "/v1/lines/{line}/normalities"): "change",  # also stages (issue 12)
    ("POST", "/v1/lines/{line}/normalities/preview"): "preview",
    ("POST", "/v1/lines/{line}/normalities/{name}/activate"): "change",
    ("POST", "/v1/lines/{line}/examples"): "change",  # a visual normality (issue 16)
    ("GET", "/v1/lines/{line}/threshold"): ANY_KEY,
    ("PUT", "/v1/lines/{line}/threshold"): "change",
    ("DELETE", "/v1/lines/{line}/threshold"): "change",
    ("DELETE", "/v1/lines/{line}/normalities/{name}"): "change",
    ("DELETE", "/v1/lines/{line}/normalities"): "change",
    ("GET", "/v1/lines/{line}/changes"): ANY_KEY,
    ("POST", "/v1/lines/{line}/changes/{change_id}/approve"): "approve",
    ("POST", "/v1/lines/{line}/changes/{change_id}/reject"): "approve",
    ("GET", "/v1/lines/{line}/audit"): "audit",
    ("GET", "/v1/audit/verify"): "audit",
}

# scrypt at n=2**14, r=8 (16 MiB, about 0.1-0.3 s here): a guessed secret costs as much as a real check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
HASH_PREFIX = "scrypt$"


def hash_secret(secret: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of a key secret, with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, n, r, p)
    return f"{HASH_PREFIX}{n}${r}${p}${_b64(salt)}${_b64(digest)}"


def secret_matches(secret: str, stored: str) -> bool:
    """True when ``secret`` hashes to ``stored`` (compared in constant time)."""
    n, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(secret, salt, n, r, p), digest)


def new_secret() -> str:
    """A random key secret (32 bytes, URL-safe text)."""
    return secrets.token_urlsafe(32)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        unpad = lambda text: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
        return int(n), int(r), int(p), unpad(salt), unpad(digest)
    except ValueError:
        raise NormaddError(
            "a secret_hash is not of the form scrypt$n$r$p$salt$hash: make one with `normadd key new NAME`"
        ) from None


@dataclass(frozen=True)
class ApiKey:
    """One API key as the service holds it: never its secret, only the secret's hash.

    Attributes:
        name: Who the key is (written to the audit log).
        scopes: What it may do (see :data:`SCOPES`).
        secret_hash: ``scrypt$…`` of its secret.
    """

    name: str
    scopes: frozenset[str]
    secret_hash: str

    def __repr__(self) -> str:
        return f"ApiKey({self.name!r}, scopes={sorted(self.scopes)})"

    def allows(self, scope: str) -> bool:
        """True when the key may do what ``scope`` guards (``admin`` may do everything)."""
        return scope in (PUBLIC, ANY_KEY) or scope in self.scopes or "admin" in self.scopes

    @classmethod
    def from_setting(cls, name: str, setting: Any) -> ApiKey:
        """A key from its config entry: a secret, or ``{secret | secret_hash, scopes}``.

        Raises:
            NormaddError: A short secret, an unknown scope or an unknown field (named).
        """
        if isinstance(setting, ApiKey):
            return setting
        if isinstance(setting, str):
            setting = {"secret_hash": setting} if setting.startswith(HASH_PREFIX) else {"secret": setting}
        if not isinstance(setting, Mapping):
            raise NormaddError(f"API key '{name}' must be a secret or a mapping with secret and scopes")
        unknown = sorted(set(setting) - {"secret", "secret_hash", "scopes"})
        if unknown:
            raise NormaddError(f"API key '{name}': unknown fields {unknown}; known: secret, secret_hash, scopes")
        scopes = parse_scopes(setting.get("scopes"), name)
        if setting.get("secret_hash"):
            stored = str(setting["secret_hash"])
            _parse_hash(stored)
        else:
            secret = setting.get("secret")
            if not isinstance(secret, str) or len(secret) < 8:
                raise NormaddError(f"API key '{name}' must be a string of at least 8 characters")
            stored = hash_secret(secret)
        return cls(name, scopes, stored)


def parse_scopes(scopes: Iterable[str] | str | None, key_name: str) -> frozenset[str]:
    """The scopes of a key (a list, or text separated by ``+`` or ``,``); unscoped keys get :data:`UNSCOPED_DEFAULT`.

    Raises:
        NormaddError: An unknown scope, naming the known ones.
    """
    if scopes is None:
        logger.warning(
            "API key '%s' has no scopes: it may %s, as before scopes existed; give it scopes to restrict it",
            key_name,
            ", ".join(UNSCOPED_DEFAULT),
        )
        return frozenset(UNSCOPED_DEFAULT)
    if isinstance(scopes, str):
        scopes = [s for s in scopes.replace(",", "+").split("+")]
    found = frozenset(str(s).strip() for s in scopes if str(s).strip())
    unknown = sorted(found - set(SCOPES))
    if unknown:
        raise NormaddError(f"API key '{key_name}': unknown scopes {unknown}; known: {', '.join(SCOPES)}")
    return found


class KeyRing:
    """The service's keys; finds the key a secret belongs to.

    scrypt makes each check slow on purpose, so a secret once matched is remembered by its
    SHA-256 (in memory only) and later requests with it cost a dictionary lookup.
    """

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = list(keys)
        self._known: dict[bytes, ApiKey] = {}

    def find(self, secret: str | None) -> ApiKey | None:
        """The key of ``secret``, or None when no key matches."""
        if not secret:
            return None
        fingerprint = hashlib.sha256(secret.encode()).digest()
        key = self._known.get(fingerprint)
        if key is not None:
            return key
        for candidate in self.keys:
            if secret_matches(secret, candidate.secret_hash):
                self._known[fingerprint] = candidate
                return candidate
        return None

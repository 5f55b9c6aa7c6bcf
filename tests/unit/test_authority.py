"""API keys: scopes from the config or the environment, secrets kept only as scrypt hashes."""

from __future__ import annotations

import logging

import pytest

from normadd.config import LineConfig
from normadd.errors import NormaddError
from normadd.serve.authority import ApiKey, KeyRing, hash_secret, parse_scopes, secret_matches
from normadd.serve.settings import ServiceConfig, api_keys_from_env


def test_a_secret_is_kept_as_a_salted_scrypt_hash_that_only_it_matches() -> None:
    first, second = hash_secret("s3cret-value", n=2**10), hash_secret("s3cret-value", n=2**10)
    assert first.startswith("scrypt$1024$8$1$") and first != second  # fresh salt each time
    assert secret_matches("s3cret-value", first) and not secret_matches("s3cret-valuE", first)
    with pytest.raises(NormaddError, match="normadd key new"):
        secret_matches("x", "scrypt$bad")


def test_the_environment_form_carries_scopes_and_keeps_the_old_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = hash_secret("hashed-secret", n=2**10)
    monkeypatch.setenv(
        "NORMADD_API_KEYS", f"station-1:inspect=station-secret, alice:inspect+change+audit=alice-secret,"
        f"old=old-secret-x,bare-secret-y,hashed:approve={stored}"
    )
    keys = {name: ApiKey.from_setting(name, setting) for name, setting in api_keys_from_env().items()}
    assert {name: sorted(key.scopes) for name, key in keys.items()} == {
        "station-1": ["inspect"],
        "alice": ["audit", "change", "inspect"],
        "old": ["audit", "change", "inspect", "preview"],  # no scopes: what every key could do before
        "key4": ["audit", "change", "inspect", "preview"],
        "hashed": ["approve"],
    }
    assert keys["hashed"].secret_hash == stored
    ring = KeyRing(keys.values())
    assert ring.find("alice-secret") is keys["alice"] and ring.find("alice-secret") is keys["alice"]
    assert ring.find("bare-secret-y") is keys["key4"] and ring.find("hashed-secret") is keys["hashed"]
    assert ring.find("nobody") is None and ring.find(None) is None


def test_bad_key_settings_are_one_line_each(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    line = LineConfig(class_name="bottle")
    for keys, words in [
        ({"a": {"secret": "long-enough", "scopes": ["inspect", "deploy"]}}, "unknown scopes ['deploy']"),
        ({"a": {"secret": "short"}}, "at least 8 characters"),
        ({"a": {"secret": "long-enough", "role": "x"}}, "unknown fields ['role']"),
        ({"a": 12345678}, "must be a secret or a mapping"),
    ]:
        with pytest.raises(NormaddError, match=words.replace("[", r"\[").replace("]", r"\]")):
            ServiceConfig(line="l", line_config=line, api_keys=keys)
    with caplog.at_level(logging.WARNING):
        config = ServiceConfig(line="l", line_config=line, api_keys={"legacy": "legacy-secret"})
    assert "API key 'legacy' has no scopes" in caplog.text and "legacy-secret" not in caplog.text
    assert "legacy-secret" not in repr(config)
    assert parse_scopes(["admin"], "root") == {"admin"} and ApiKey("r", frozenset({"admin"}), "").allows("approve")

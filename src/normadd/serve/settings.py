"""The service's settings: a line config plus a ``database`` (file or ``postgresql://`` URL) and a ``service`` section.

One YAML file describes the line the service runs and how it runs it::

    class_name: bottle
    backbone: ViT-L-14-336
    normalities: [broken]         # seeds a new line; afterwards the registry is the truth
    database: ./normadd.db
    service:
      line: bottle-line-3         # name in the registry (default: the class name)
      lines: [bottle-line-3, cap-line-1]  # serve only these (default: every line of the registry)
      api_keys:                   # or NORMADD_API_KEYS="station-1:inspect=…,alice:inspect+change=…"
        station-1: {secret_hash: "scrypt$…", scopes: [inspect]}
        alice: {secret: "…", scopes: [inspect, preview, change, audit]}

A config with no line keys (only ``database`` and ``service``) serves the lines the registry
already holds (every one, or ``service.lines``) and creates none::

    database: postgresql://plant@db:5432/normadd
    service:
      lines: [bottle-line-3, cap-line-1]
      retained_dir: /mnt/shared/normadd-retained   # retained part images, one folder for every replica

API keys map a name (written to the audit log as *who*) to a secret and scopes
(:mod:`normadd.serve.authority`). The service keeps only the secret's scrypt hash; ``normadd key
new`` prints a fresh secret and its hash, so the config need not hold the secret at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from normadd.config import LineConfig, read_yaml_mapping
from normadd.detectors.inference_sessions import resolve_line_runtime
from normadd.errors import NormaddError
from normadd.registry.database import is_postgres_url
from normadd.registry.store import DEFAULT_DATABASE
from normadd.serve.authority import ApiKey

API_KEYS_ENV = "NORMADD_API_KEYS"


@dataclass
class ServiceConfig:
    """How the service runs its product lines.

    Attributes:
        line: The configured line's name in the registry (created from ``line_config`` when missing;
            default: its class name). None, with no ``line_config``, means no configured line: the
            service serves the registry's lines as they are.
        line_config: Its settings; used to create the line when the registry lacks it. None (a
            config with no line keys): the service creates no line.
        database: The registry: an SQLite file (relative to the config file), or a ``postgresql://`` URL.
        api_keys: Key name -> :class:`ApiKey` (given as a secret, or ``{secret | secret_hash,
            scopes}``); requests must send one secret in ``X-API-Key``.
        max_upload_bytes: Largest request body of an inspection (all files together).
        max_images_per_request: Most files in one inspection request.
        max_image_pixels: Largest width x height of one image.
        batch_max_images: Most images in one forward pass.
        batch_wait_ms: How long the first request of a pass waits for others to join.
        device: ``auto``, ``cpu`` or ``cuda``.
        allow_broken_audit_chain: Start even when the audit log's hash chain is broken (the
            finding is audited); by default the service refuses to start.
        runtime: ``torch`` runs the line itself; ``onnx`` or ``openvino`` run ``export`` instead;
            ``auto`` is torch without an export, OpenVINO with one (see :func:`resolve_line_runtime`).
        export: Folder written by ``normadd export`` for this line (needed by the onnx/openvino runtimes).
        lines: The lines served (``--lines a,b``); None serves every line of the registry,
            including lines created while the service runs.
        share_encoders: Lines on the same CLIP encoder (backbone, weights, layers, image size,
            device, precision) share one copy of it and one image pass per micro-batch; False
            loads one encoder per line (more memory; kept for comparison).
        retained_dir: Folder of the retained part images (relative to the config file, like
            ``database``); None: ``<file>.retained`` beside an SQLite registry, ``<database>.retained``
            in the working folder for PostgreSQL. Replicas on several machines give one shared folder.
    """

    line: str | None = None
    line_config: LineConfig | None = None
    database: Path | str = DEFAULT_DATABASE
    api_keys: dict[str, Any] = field(default_factory=dict)
    max_upload_bytes: int = 20_000_000
    max_images_per_request: int = 16
    max_image_pixels: int = 40_000_000
    batch_max_images: int = 16
    batch_wait_ms: float = 5.0
    device: str = "auto"
    allow_broken_audit_chain: bool = False
    runtime: str = "auto"
    export: Path | None = None
    lines: list[str] | None = None
    share_encoders: bool = True
    retained_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_images_per_request", "max_image_pixels", "batch_max_images"):
            if int(getattr(self, name)) < 1:
                raise NormaddError(f"service.{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise NormaddError(f"service.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        # a postgresql:// URL stays a string (Path would fold its "//"); anything else is a file
        self.database = self.database if is_postgres_url(self.database) else Path(self.database)
        if self.line is None and self.line_config is not None:
            self.line = self.line_config.class_name
        self.lines = parse_lines(self.lines)
        self.export = Path(self.export) if self.export is not None else None
        self.retained_dir = Path(self.retained_dir) if self.retained_dir is not None else None
        if self.export is not None and self.line is None:
            raise NormaddError(
                "service.export needs the line it was exported from: give service.line: NAME "
                "(or the config's line keys, class_name: ...)"
            )
        self.runtime = resolve_line_runtime(self.runtime, self.export is not None)
        merged = {**self.api_keys, **api_keys_from_env()}
        self.api_keys = {name: ApiKey.from_setting(name, setting) for name, setting in merged.items()}

    @classmethod
    def from_yaml(cls, path: str | Path) -> ServiceConfig:
        """Read the line config (if any line keys are given) with its ``database`` and ``service`` keys.

        Raises:
            NormaddError: Missing file, bad YAML, unknown keys (one line each).
        """
        path = Path(path)
        data = read_yaml_mapping(path)
        database = data.pop("database", None)
        service: dict[str, Any] = data.pop("service", None) or {}
        if not isinstance(service, dict):
            raise NormaddError(f"{path}: 'service' must be a mapping (line, api_keys, limits)")
        line_config = None
        if data:  # line keys: the configured line (a config of only database/service has none)
            try:
                line_config = LineConfig.from_dict(data, str(path))
            except TypeError as error:
                raise NormaddError(f"config file {path}: {error}") from None
        known = {f.name for f in fields(cls)} - {"line_config", "database"}
        unknown = sorted(set(service) - known)
        if unknown:
            raise NormaddError(f"{path}: unknown service keys {unknown}; known: {sorted(known)}")
        if database is not None and not is_postgres_url(database):
            # a file is relative to the config file, so the service finds it from any folder
            database = Path(database) if Path(database).is_absolute() else path.parent / database
        if line_config is not None:
            service.setdefault("line", line_config.class_name)
        for key in ("export", "retained_dir"):  # relative to the config file, like database
            folder = service.get(key)
            if folder is not None and not isinstance(folder, str):
                raise NormaddError(f"{path}: service.{key} must be a folder path, got {folder!r}")
            if folder is not None and not Path(folder).is_absolute():
                service[key] = path.parent / folder
        return cls(line_config=line_config, database=database or DEFAULT_DATABASE, **service)


def parse_lines(lines: str | list[str] | None) -> list[str] | None:
    """``--lines a,b`` or ``service.lines: [a, b]`` as a list of names; None (every line) stays None.

    Raises:
        NormaddError: No name at all, or a name that is not text.
    """
    if lines is None:
        return None
    items = lines.split(",") if isinstance(lines, str) else lines
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise NormaddError(f"service.lines must be line names (a list, or a,b with --lines), got {lines!r}")
    names = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not names:
        raise NormaddError("--lines (service.lines) names no line: give line names, e.g. --lines bottle-1,cap-2")
    return names


def api_keys_from_env() -> dict[str, Any]:
    """Keys from ``$NORMADD_API_KEYS``: ``name:scope+scope=secret`` items separated by commas.

    ``name=secret`` (no scopes) and a bare ``secret`` (named ``key1``, ``key2``…) still work; the
    secret may be a ``scrypt$…`` hash.
    """
    keys: dict[str, Any] = {}
    for index, item in enumerate(filter(None, (s.strip() for s in os.environ.get(API_KEYS_ENV, "").split(",")))):
        name, sep, secret = item.partition("=")
        if not sep:
            name, secret = f"key{index + 1}", name
        name, has_scopes, scopes = name.strip().partition(":")
        keys[name] = {"secret": secret.strip(), "scopes": scopes if has_scopes else None}
        if secret.strip().startswith("scrypt$"):
            keys[name] = {"secret_hash": secret.strip(), "scopes": keys[name]["scopes"]}
    return keys

"""The FastAPI app: inspections, normalities and the audit log of product lines, plus the web page.

``create_app(settings)`` builds it; every ``/v1`` route needs an ``X-API-Key`` header whose key
has the route's scope (:data:`normadd.serve.authority.ROUTE_SCOPES`; a refusal is a 403 and is
audited). On a line with ``approval: required`` a change answers 202 with a pending change that
another person approves. The service refuses to start on a broken audit chain. ``/docs``
(Swagger UI) loads its scripts from the service itself, so it works with no internet, and
``/metrics`` answers in the Prometheus text format (:mod:`normadd.serve.metrics`). One process
serves every line of the registry, or the ``lines`` of the settings (another line is a 404); the
served lines are loaded at start-up (a line created later on first use). Lines on the same CLIP
encoder share one copy of it (an :class:`EncoderPool`) and one :class:`LinesBatcher`, so their
waiting images go through the encoder together; any other line gets its own
:class:`MicroBatcher`. Bad input is answered with a JSON error
(``{"error": code, "detail": message}``) and a 4xx code, and leaves the registry unchanged.

FastAPI reads the route signatures at run time, so this module does not postpone annotations.
"""

import asyncio
import base64
import functools
import hashlib
import io
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor

from normadd.backbone.pool import EncoderPool
from normadd.decisions.errors import DecisionError
from normadd.decisions.policy import image_size
from normadd.decisions.scale import score_scale, stale_reason
from normadd.errors import ExportedModelError, ImageLoadError, InvalidTextError, NormaddError, printable
from normadd.export.line_model import ExportedLineModel, ExportMismatchError, check_export
from normadd.export.manifest import LineManifest
from normadd.images import DEFAULT_RESIZE, load_image_bytes
from normadd.normality.addition import AdditionResult
from normadd.registry import approvals
from normadd.registry.approvals import ChangeNotFoundError, ChangeNotPendingError, PendingChange, SelfApprovalError
from normadd.registry.errors import (
    DuplicateNormalityError,
    LineExistsError,
    LineNotFoundError,
    NormalityNotFoundError,
    RegistryError,
)
from normadd.registry.line_model import LineModel, create_line, encode_together, line_config, line_record
from normadd.registry.preview import PreviewReport, preview
from normadd.registry.retention import RetainedFeatures, RetentionStore
from normadd.registry.schedule import parse_until
from normadd.registry.store import InspectionRecord, NormalityRecord, Registry, ThresholdRecord
from normadd.runtime import resolve_runtime
from normadd.serve import schemas
from normadd.serve.authority import PUBLIC, ROUTE_SCOPES, ApiKey, KeyRing
from normadd.serve.batching import LinesBatcher, MicroBatcher
from normadd.serve.metrics import RequestMetrics, ServiceMetrics
from normadd.serve.settings import ServiceConfig
from normadd.visualize import heat_overlay

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAP_SIZE = 256
MAX_NAME_CHARS = 200  # of an upload's file name, as kept in the audit log
UPLOAD_ROUTES = ("/inspect", "/examples")  # take files: the upload limit, not the JSON one
# Every /v1 error is an ErrorOut, 403 and 422 included (FastAPI would document its own validation body).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422)
}
PROPOSED: dict[int | str, dict[str, Any]] = {202: {"model": schemas.ChangeOut, "description": "Waits for approval."}}
STATUS_OF: list[tuple[type[Exception], int, str]] = [
    (ChangeNotFoundError, 404, "unknown_change"),
    (ChangeNotPendingError, 409, "change_not_pending"),
    (SelfApprovalError, 403, "own_change"),
    (LineNotFoundError, 404, "unknown_line"),
    (NormalityNotFoundError, 404, "unknown_normality"),
    (RegistryError, 409, "conflict"),
    (DuplicateNormalityError, 409, "duplicate_normality"),
    (LineExistsError, 409, "line_exists"),
    (ExportMismatchError, 409, "export_mismatch"),
    (ExportedModelError, 422, "bad_export"),
    (ImageLoadError, 422, "bad_image"),
    (InvalidTextError, 422, "bad_text"),
    (DecisionError, 422, "bad_decision_input"),
    (NormaddError, 422, "bad_request"),
    (ValueError, 422, "bad_value"),
]


class ApiError(HTTPException):
    """An HTTP error with a code word; raised anywhere in a request, answered as JSON."""

    def __init__(self, status_code: int, error: str, detail: str) -> None:
        super().__init__(status_code, detail)
        self.error = error


class BodyLimit:
    """ASGI middleware refusing request bodies over their limit (413) before they are parsed.

    Inspections may carry ``max_upload_bytes``; every other request (JSON) at most
    ``max_json_bytes``. Checks ``Content-Length`` first and counts streamed bytes too, so a
    chunked upload cannot get around it.
    """

    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_json_bytes: int = 64 * 1024) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 413 once its body is over the limit."""
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["path"].endswith(UPLOAD_ROUTES):
            limit = self.max_upload_bytes
            message = f"the upload is over {limit:,} bytes: send fewer or smaller images"
        else:
            limit = self.max_json_bytes
            message = f"the request body is over {limit:,} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(send, 413, {"error": "upload_too_large", "detail": message})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > limit:
                raise ApiError(413, "upload_too_large", message)  # FastAPI re-raises HTTPExceptions as they are
            return event

        await self.app(scope, counting_receive, send)


async def _send_json(send: Send, status: int, body: dict[str, str]) -> None:
    data = JSONResponse(body).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


@dataclass
class ServedLine:
    """A loaded line: its model, the batcher its inspections go through, and whether it keeps projected tokens.

    ``batcher`` is the line's own :class:`MicroBatcher`, or the :class:`LinesBatcher` it shares
    with the other lines on its encoder; either way its inspections go through
    ``batcher.submit(images, name)``.
    """

    model: LineModel | ExportedLineModel
    batcher: LinesBatcher
    keep_projected: bool = False


class Service:
    """What the app holds: settings, registry and the loaded lines."""

    def __init__(self, settings: ServiceConfig) -> None:
        if not settings.api_keys:
            raise NormaddError(
                "no API key configured: set NORMADD_API_KEYS='station-1=<secret>' or service.api_keys in the config"
            )
        self.settings = settings
        self.runtime = resolve_runtime(settings.device)
        self.registry = Registry(settings.database, retained_dir=settings.retained_dir)
        self.lines: dict[str, ServedLine] = {}
        self.encoders = EncoderPool() if settings.share_encoders else None
        self._shared: dict[int, LinesBatcher] = {}  # id of an encoder -> the batcher of the lines on it
        self.metrics = ServiceMetrics()
        self._loading = asyncio.Lock()
        self.keys = KeyRing(settings.api_keys.values())
        self.check_audit_chain()
        self.check_lines()

    def check_lines(self) -> None:
        """Refuse to start with a ``lines`` setting that names a line the registry does not have.

        A config with no line keys creates no line, so the registry must already hold a line to
        serve (and ``service.line``, when given, must be one of its lines).

        Raises:
            NormaddError: An unknown name (the known ones are named), or nothing to serve.
        """
        stored = [line.name for line in self.registry.lines()]
        creates = self.settings.line if self.settings.line_config is not None else None
        if self.settings.line_config is None:
            self._check_lineless_config(stored)
        if self.settings.lines is None:
            return
        unknown = [name for name in self.settings.lines if name not in stored and name != creates]
        if unknown:
            self.registry.close()
            names = ", ".join(f"'{printable(name)}'" for name in unknown)
            seeded = "" if creates is None or creates in stored else f" (and '{creates}', which the config creates)"
            raise NormaddError(
                f"--lines (service.lines) names {names}, not a line of {self.registry.location}: "
                f"known lines are {', '.join(stored) or 'none yet'}{seeded}"
            )

    def _check_lineless_config(self, stored: list[str]) -> None:
        """A config without line keys: the registry must hold a line, and ``service.line`` must be one.

        Raises:
            NormaddError: An empty registry, or a ``service.line`` it does not hold.
        """
        where = self.registry.location
        if not stored:
            self.registry.close()
            raise NormaddError(
                f"no line to serve: {where} holds no line and the config has no line keys; create one first "
                f"(normadd line create NAME --class-name CLASS --db {where}) or give the config's line keys "
                "(class_name: ...)"
            )
        configured = self.settings.line
        if configured is not None and configured not in stored:
            self.registry.close()
            raise NormaddError(
                f"service.line names '{printable(configured)}', not a line of {where}: known lines are "
                f"{', '.join(stored)} (a config without line keys creates no line)"
            )

    def served_names(self) -> list[str]:
        """The lines this service serves: the ``lines`` setting, else every line of the registry now."""
        if self.settings.lines is not None:
            return list(self.settings.lines)
        return [line.name for line in self.registry.lines()]

    def check_served(self, name: str) -> None:
        """Refuse a request to a line outside the ``lines`` setting (a 404 naming the served ones).

        Without the setting every registry line is served; an unknown one is the registry's 404.

        Raises:
            ApiError: 404 ``unknown_line``.
        """
        if self.settings.lines is not None and name not in self.settings.lines:
            raise ApiError(
                404,
                "unknown_line",
                f"line '{printable(name)}' is not served here; "
                f"served lines: {', '.join(printable(line) for line in self.settings.lines)}",
            )

    def check_audit_chain(self) -> None:
        """Refuse to start on a broken audit chain, unless ``allow_broken_audit_chain`` (then audit the finding).

        Raises:
            NormaddError: The chain is broken and the settings do not allow starting.
        """
        report = self.registry.verify_audit_chain()
        if report.finding is None:
            return
        where = self.registry.location
        if not self.settings.allow_broken_audit_chain:
            self.registry.close()
            raise NormaddError(
                f"the audit log of {where} is broken at {report.finding}; see `normadd audit verify --db {where}`. "
                "To start anyway (the finding is audited): service.allow_broken_audit_chain: true "
                "or normadd serve --allow-broken-audit-chain"
            )
        logger.error("starting with a broken audit log (%s): %s", where, report.finding)
        details = {"row_id": report.finding.row_id, "problem": report.finding.problem}
        self.registry.record("", "audit.chain_broken", "normadd serve", "allow_broken_audit_chain", details)

    def key(self, secret: str | None) -> ApiKey | None:
        """The key ``secret`` belongs to; None when none matches."""
        return self.keys.find(secret)

    def key_name(self, secret: str | None) -> str | None:
        """The name of the key ``secret`` belongs to; None when none matches."""
        key = self.key(secret)
        return key.name if key else None

    def ensure_configured_line(self) -> LineModel | None:
        """Create the configured line from its config when the registry does not have it yet.

        Returns:
            The line's model when creating it needed one (to encode configured normalities); None
            also for a config with no line keys (it creates no line).
        """
        if self.settings.line is None or self.settings.line_config is None:
            return None
        try:
            stored = self.registry.line(self.settings.line)
        except LineNotFoundError:
            try:
                return create_line(
                    self.registry,
                    self.settings.line,
                    self.settings.line_config,
                    "normadd serve",
                    "line config",
                    self.runtime,
                    self.encoders,
                )
            except LineExistsError:  # another replica on this registry created it just now: use theirs
                return None
        configured = line_record(self.settings.line, self.settings.line_config)
        configured.created_at = stored.created_at
        if configured != stored:
            logger.warning(
                "line '%s' in %s has other settings than the config: the registry's are used "
                "(create a new line to change them)",
                printable(stored.name),
                self.registry.location,
            )
        return None

    async def line(self, name: str) -> ServedLine:
        """The loaded line, loading it (once) on first use.

        Raises:
            LineNotFoundError: No such line in the registry.
        """
        if name in self.lines:
            return self.lines[name]
        self.check_served(name)
        async with self._loading:
            if name not in self.lines:
                self.serve(await asyncio.to_thread(self._load, name))
        return self.lines[name]

    def _load(self, name: str) -> LineModel | ExportedLineModel:
        """The configured line from its export when one is given; every other line on torch."""
        if name == self.settings.line and self.settings.export is not None:
            return ExportedLineModel.load(self.registry, name, self.settings.export, self.settings.runtime)
        return LineModel.load(self.registry, name, self.runtime, self.encoders)

    async def preload(self) -> None:
        """Load every served line now, so no first inspection waits for a model.

        Lines on one encoder load it once. The configured line must load (its error stops the
        start); another line that fails is logged and left to fail its own requests.
        """
        for name in self.served_names():
            try:
                await self.line(name)
            except NormaddError as error:
                if name == self.settings.line:
                    raise
                logger.error("line '%s' is not loaded: %s", printable(name), error)

    def check_export(self) -> None:
        """Refuse, before serving, an export that is not the configured line with its active normalities.

        The registry's line when it exists, else the config that will create it.

        Raises:
            ExportedModelError: The export cannot be read or another normadd version wrote it.
            ExportMismatchError: It differs from the line (the differences are named).
        """
        folder = self.settings.export
        if folder is None:
            return
        manifest = LineManifest.read(folder)
        manifest.check_version(str(folder / "manifest.json"))
        name = self.settings.line
        if name is None:  # ServiceConfig refuses an export without its line
            raise NormaddError("service.export needs the line it was exported from: give service.line: NAME")
        try:
            line = self.registry.line(name)
            active = [(n.name, n.text, n.strength) for n in self.registry.normalities(line.name)]
        except LineNotFoundError:
            if self.settings.line_config is None:
                raise
            line = line_record(name, self.settings.line_config)
            active = [(n.name or n.text, n.text, n.strength) for n in self.settings.line_config.normalities]
        check_export(manifest, folder, line, active)

    def serve(self, model: LineModel | ExportedLineModel) -> ServedLine:
        """Start serving a loaded line.

        A torch line whose detector reads the normality detector's CLIP pass joins the batcher
        of the lines on its encoder (one image pass for all of them); any other gets its own.
        """
        name = model.line.name
        retains = RetentionStore.for_line(self.registry, name).settings is not None
        batcher: LinesBatcher
        if self.encoders is not None and isinstance(model, LineModel) and model.addition.shares_clip_pass:
            key = id(model.encoder)
            if key not in self._shared:
                self._shared[key] = LinesBatcher(
                    self._explain_lines,
                    self.settings.batch_max_images,
                    self.settings.batch_wait_ms,
                    on_pass=self.metrics.record_pass,
                )
            batcher = self._shared[key]
        else:
            batcher = MicroBatcher(
                functools.partial(model.explain, registry=self.registry, keep_projected=retains),
                self.settings.batch_max_images,
                self.settings.batch_wait_ms,
                on_pass=functools.partial(self.metrics.record_pass, name),
            )
        self.lines[name] = ServedLine(model, batcher, retains)
        return self.lines[name]

    def _explain_lines(self, groups: list[tuple[str, Tensor]]) -> list[AdditionResult | Exception]:
        """One pass of the shared encoder for the waiting images of its lines, then each line's heads.

        A line whose own part fails (say a normality that no longer loads) fails only its requests.
        """
        served = [self.lines[name] for name, _ in groups]
        models = [line.model for line in served if isinstance(line.model, LineModel)]  # only torch lines share
        features = encode_together(models, [images for _, images in groups])
        results: list[AdditionResult | Exception] = []
        for model, line, (_, images), rows in zip(models, served, groups, features, strict=True):
            try:
                results.append(model.explain(images, self.registry, line.keep_projected, features=rows))
            except Exception as error:  # handed to this line's requests by the batcher
                logger.exception("the inspection of line '%s' failed", printable(model.line.name))
                results.append(error)
        return results

    def batchers(self) -> list[LinesBatcher]:
        """Each batcher once (lines on one encoder share theirs)."""
        return list({id(served.batcher): served.batcher for served in self.lines.values()}.values())

    async def close(self) -> None:
        """Stop the batchers and close the registry."""
        for batcher in self.batchers():
            await batcher.stop()
        self.registry.close()


def _png_base64(picture: Any) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _maps(
    result: AdditionResult, index: int, data: bytes, name: str, resize: str = DEFAULT_RESIZE
) -> schemas.MapsOut:
    image = load_image_bytes(data, MAP_SIZE, name, resize=resize)
    vmax = float(result.before[index].max()) or 1.0  # before and after on one scale, so they compare honestly
    return schemas.MapsOut(
        before=_png_base64(heat_overlay(image, result.before[index], vmax)),
        suppression=_png_base64(heat_overlay(image, 1.0 - result.keep[index], 1.0)),
        after=_png_base64(heat_overlay(image, result.after[index], vmax)),
    )


def _preview_out(report: PreviewReport) -> schemas.PreviewOut:
    items = [schemas.PreviewPartOut(**part.__dict__) for part in report.parts]
    for index, map_ in report.suppression.items():
        source = report.images[index]
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        image = load_image_bytes(data, MAP_SIZE, items[index].image, resize=report.resize)
        pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        items[index].thumbnail = _png_base64(Image.fromarray(pixels))
        items[index].suppression = _png_base64(heat_overlay(image, map_, 1.0))
    summary = report.summary()
    return schemas.PreviewOut(
        **{key: summary[key] for key in ("line", "name", "text", "strength", "staged", "parts", "ng_before")},
        **{key: summary[key] for key in ("ng_after", "threshold", "reason", "notes", "refused")},
        shares_before=report.shares_before,
        shares_after=report.shares_after,
        phrases=report.phrases,
        text_seconds=report.text_seconds,
        scoring_seconds=report.scoring_seconds,
        audit_id=report.audit_id,
        flips=[item for item, part in zip(items, report.parts, strict=True) if part.flipped],
        items=items,
    )


def _retain(
    registry: Registry,
    model: LineModel | ExportedLineModel,
    line: str,
    contents: list[bytes],
    names: list[str],
    result: AdditionResult,
) -> None:
    """Keep the inspected images (and what a new text needs from them) when the line retains any."""
    store = RetentionStore.for_line(registry, line)
    if store.settings is None:
        return
    features: list[RetainedFeatures | None] = [None] * len(contents)
    if result.projected is not None and result.grid_size is not None:
        features = [
            RetainedFeatures(result.before[i], [tokens[i] for tokens in result.projected], result.grid_size)
            for i in range(len(contents))
        ]
    store.retain(list(zip(contents, names, strict=True)), features, model.features_identity)


def _normality_out(record: NormalityRecord) -> schemas.NormalityOut:
    return schemas.NormalityOut(
        name=record.name,
        text=record.text,
        strength=record.strength,
        phrases=record.phrases,
        added_at=record.added_at,
        added_by=record.added_by,
        state=record.state,
        until=record.until,
        limits=record.limits,
        kind=record.kind,
        sources=[schemas.ExampleSourceOut(**source) for source in record.sources],
    )


def _upload_names(uploads: list[UploadFile], prefix: str) -> list[str]:
    """The names uploads are shown and audited by (their file names, shortened; never used as paths)."""
    return [(upload.filename or f"{prefix}{i + 1}")[:MAX_NAME_CHARS] for i, upload in enumerate(uploads)]


def create_app(settings: ServiceConfig | str | Path) -> FastAPI:
    """The service for ``settings`` (a :class:`ServiceConfig` or the path of its YAML file).

    Raises:
        NormaddError: Bad config, no API key, or a registry that cannot be opened.
    """
    if not isinstance(settings, ServiceConfig):
        settings = ServiceConfig.from_yaml(settings)
    service = Service(settings)
    try:
        service.check_export()
    except NormaddError:
        service.registry.close()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.lines is None or settings.line in settings.lines:
            created = await asyncio.to_thread(service.ensure_configured_line)
            if created is not None and settings.export is None:  # an export-served line loads its export below
                service.serve(created)
        await service.preload()  # every served line now, not on its first request
        yield
        await service.close()

    # Swagger UI from the package's own files (fastapi-offline), not a CDN: /docs works on an
    # air-gapped plant network. ReDoc is left out: its script fetches a logo from the internet.
    app = FastAPIOffline(
        redoc_url=None,
        title="normadd",
        summary="Add a normality to a deployed visual anomaly detector by text; audited per product line.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_upload_bytes=settings.max_upload_bytes)
    _add_error_handlers(app)
    app.add_middleware(RequestMetrics, metrics=service.metrics, routes=app.router.routes)  # outermost: counts 413s
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of the service's API keys.")

    def calling_key(request: Request, secret: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
        """The request's key, if it has the scope ROUTE_SCOPES gives the route (a refusal is audited).

        Then a route of a line this service does not serve is a 404 (after the key: no key, no answer about lines).
        """
        key = service.key(secret)
        if key is None:
            word = "missing" if not secret else "not valid"
            raise ApiError(401, "unauthorized", f"API key {word}: send one of the service's keys in X-API-Key")
        route = request.scope["route"]
        needed = ROUTE_SCOPES[(request.method, route.path)]  # every route has one: checked in create_app
        if not key.allows(needed):
            line = str(request.path_params.get("line", ""))
            details = {"method": request.method, "route": route.path, "needed": needed, "scopes": sorted(key.scopes)}
            service.registry.record(line, "access.denied", key.name, "", details)
            raise ApiError(
                403,
                "forbidden",
                f"key '{key.name}' lacks the '{needed}' scope that {request.method} {route.path} needs "
                f"(it has: {', '.join(sorted(key.scopes)) or 'none'})",
            )
        if "line" in request.path_params:
            service.check_served(str(request.path_params["line"]))
        return key

    def caller(key: Annotated[ApiKey, Depends(calling_key)]) -> str:
        return key.name

    Caller = Annotated[str, Depends(caller)]  # noqa: N806 (a type alias, named as one)

    async def run(function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)

    @app.get("/healthz", response_model=schemas.HealthOut, tags=["service"])
    async def healthz() -> schemas.HealthOut:
        """Liveness; needs no key."""
        stats = [batcher.stats for batcher in service.batchers()]
        return schemas.HealthOut(
            status="ok",
            lines_served=sorted(await run(service.served_names)),
            lines_loaded=sorted(service.lines),
            forward_passes=sum(s.passes for s in stats),
            images_inspected=sum(s.images for s in stats),
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {service.metrics.content_type: {"schema": {"type": "string"}}}}},
        tags=["service"],
    )
    async def metrics() -> Response:
        """Prometheus metrics: requests, latency, forward passes, batch sizes, verdicts; needs no key."""
        return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

    @app.get("/v1/lines", response_model=list[schemas.LineOut], responses=ERRORS, tags=["lines"])
    async def list_lines(who: Caller) -> list[schemas.LineOut]:
        """The product lines this service serves (every line of the registry, or its ``lines`` setting)."""
        served = service.settings.lines
        lines = [x for x in await run(service.registry.lines) if served is None or x.name in served]
        return [
            schemas.LineOut(
                name=x.name,
                class_name=x.class_name,
                detector=x.detector,
                backbone=x.backbone,
                created_at=x.created_at,
                approval=x.settings.get("approval", "none"),
            )
            for x in lines
        ]

    @app.get("/v1/me", response_model=schemas.MeOut, responses=ERRORS, tags=["service"])
    async def me(key: Annotated[ApiKey, Depends(calling_key)]) -> schemas.MeOut:
        """The calling key's name and scopes (the web page shows only what they allow)."""
        return schemas.MeOut(name=key.name, scopes=sorted(key.scopes))

    @app.post(
        "/v1/lines/{line}/inspect",
        response_model=schemas.InspectionOut,
        responses=ERRORS,
        tags=["inspection"],
    )
    async def inspect(
        line: str,
        who: Caller,
        images: Annotated[list[UploadFile], File(min_length=1, description="One or more image files (PNG, JPEG, …).")],
        maps: Annotated[bool, Query(description="Also return before/suppression/after overlays as PNG.")] = False,
    ) -> schemas.InspectionOut:
        """Scores before and after the line's active normalities; each image is logged in the audit."""
        served = await service.line(line)
        if len(images) > settings.max_images_per_request:
            raise ApiError(
                413,
                "too_many_images",
                f"{len(images)} images in one request: send at most {settings.max_images_per_request}",
            )
        contents = [await upload.read() for upload in images]
        names = _upload_names(images, "image")
        size = served.model.input_size
        resize = str(served.model.line.settings.get("resize", DEFAULT_RESIZE))  # the line's squash or letterbox

        def decode() -> Tensor:
            return torch.stack(
                [
                    load_image_bytes(data, size, name, settings.max_image_pixels, resize)
                    for data, name in zip(contents, names, strict=True)
                ]
            )

        batch = await run(decode)
        policy = await run(served.model.policy, service.registry)
        sizes = [image_size(data) for data in contents] if policy.has_limits else None
        if sizes is not None:
            policy.check_images(sizes, names)  # a region mask of another aspect ratio: 422, nothing logged
        result = await served.batcher.submit(batch, line)
        hashes = [hashlib.sha256(data).hexdigest() for data in contents]
        strengths = {n["name"]: n["strength"] for n in served.model.active()}
        active: list[dict[str, Any]] = [{"name": name, "strength": strengths.get(name)} for name in result.names]
        decided = await run(policy.apply, result, [strengths.get(name, 1.0) for name in result.names], sizes)
        result = decided.result
        records = [
            InspectionRecord(
                sha,
                float(result.before_scores[i]),
                float(result.after_scores[i]),
                active,
                names[i],
                decided.decisions[i].as_dict(),
            )
            for i, sha in enumerate(hashes)
        ]
        ids = await run(service.registry.record_inspections, line, records, who)
        # the verdict each part got (after the normalities): OK, NG or undecided (no usable threshold)
        service.metrics.record_verdicts(line, [decision.verdict_after for decision in decided.decisions])
        await run(_retain, service.registry, served.model, line, contents, names, result)
        overlays = (
            await run(
                lambda: [
                    _maps(result, i, data, name, resize)
                    for i, (data, name) in enumerate(zip(contents, names, strict=True))
                ]
            )
            if maps
            else [None] * len(contents)
        )
        return schemas.InspectionOut(
            line=line,
            model=served.model.description,
            random_weights=served.model.is_random,
            normalities=active,
            results=[
                schemas.ImageResultOut(
                    filename=record.filename,
                    sha256=record.image_sha256,
                    score_before=record.score_before,
                    score_after=record.score_after,
                    audit_id=audit_id,
                    maps=overlay,
                    **(record.decision or {}),
                )
                for record, audit_id, overlay in zip(records, ids, overlays, strict=True)
            ],
        )

    def threshold_out(line: str) -> schemas.ThresholdOut:
        stored = service.registry.threshold(line)
        if stored is None:
            return schemas.ThresholdOut(line=line, value=None, status="none")
        reason = stale_reason(stored.scale, score_scale(line_config(service.registry.line(line))))
        return schemas.ThresholdOut(
            line=line,
            value=stored.value,
            method=stored.method,
            set_at=stored.set_at,
            set_by=stored.set_by,
            why=stored.why,
            details=stored.details,
            status=f"stale: {reason}" if reason else "valid",
        )

    @app.get("/v1/lines/{line}/threshold", response_model=schemas.ThresholdOut, responses=ERRORS, tags=["decisions"])
    async def get_threshold(line: str, who: Caller) -> schemas.ThresholdOut:
        """The line's threshold and whether it fits the line's current detector."""
        return await run(threshold_out, line)

    @app.put(
        "/v1/lines/{line}/threshold",
        response_model=schemas.ThresholdOut,
        responses={**ERRORS, **PROPOSED},
        tags=["decisions"],
    )
    async def set_threshold(line: str, body: schemas.ThresholdIn, who: Caller) -> Any:
        """Set the line's threshold by hand, for its current detector (logged with who and why).

        On a line with ``approval: required`` the change is proposed instead (202).
        """

        def store() -> Any:
            scale = score_scale(line_config(service.registry.line(line)))
            record = ThresholdRecord(body.value, scale, "set")
            if approvals.approval_required(service.registry, line):
                payload, summary = approvals.threshold_payload(record), f"set threshold {body.value:g}"
                return _proposed(
                    approvals.propose(service.registry, line, "threshold.set", payload, summary, who, body.why)
                )
            service.registry.set_threshold(line, record, who, body.why)
            return threshold_out(line)

        return await run(store)

    @app.delete(
        "/v1/lines/{line}/threshold",
        response_model=schemas.ThresholdOut,
        responses={**ERRORS, **PROPOSED},
        tags=["decisions"],
    )
    async def clear_threshold(
        line: str,
        who: Caller,
        why: Annotated[str, Query(max_length=500, description="Reason, kept in the audit log.")] = "",
    ) -> Any:
        """Remove the line's threshold: its verdicts become undecided (logged with who and why).

        On a line with ``approval: required`` the change is proposed instead (202).
        """

        def clear() -> Any:
            if approvals.approval_required(service.registry, line):
                current = service.registry.threshold(line)
                summary = "clear threshold" + (f" (now {current.value:g})" if current is not None else " (none set)")
                return _proposed(approvals.propose(service.registry, line, "threshold.clear", {}, summary, who, why))
            service.registry.clear_threshold(line, who, why)
            return threshold_out(line)

        return await run(clear)

    @app.get(
        "/v1/lines/{line}/normalities", response_model=schemas.NormalitiesOut, responses=ERRORS, tags=["normalities"]
    )
    async def list_normalities(line: str, who: Caller) -> schemas.NormalitiesOut:
        """The line's normalities: active, staged and expired (see each one's state and until)."""
        records = await run(service.registry.normalities, line, ("active", "staged", "expired"))
        return schemas.NormalitiesOut(line=line, normalities=[_normality_out(r) for r in records])

    @app.post(
        "/v1/lines/{line}/normalities",
        status_code=201,
        response_model=schemas.NormalityOut,
        responses={**ERRORS, **PROPOSED},
        tags=["normalities"],
    )
    async def add_normality(line: str, body: schemas.NormalityIn, who: Caller) -> Any:
        """Make a defect type normal on the line (logged with who and why); 202 when it needs approval."""
        served = await service.line(line)
        until = parse_until(body.until, service.registry.clock()) if body.until is not None else None
        state = "staged" if body.staged else "active"
        limits = {"max_area": body.max_area, "max_length": body.max_length}  # region masks: set from the CLI
        if await run(approvals.approval_required, service.registry, line):
            await run(served.model.refresh, service.registry)  # checked against the registry, not a stale set
            prepare = functools.partial(served.model.prepare, state=state, until=until)
            record = await run(prepare, body.text, body.strength, body.name, limits)
            verb = "stage" if body.staged else "add"
            ending = f", until {record.until}" if record.until else ""
            phrases = ", ".join(record.phrases)
            summary = f"{verb} normality '{record.name}' (strength {record.strength:g}{ending}): {phrases}"
            payload = approvals.normality_payload(record)
            kind = "normality.add"
            change = await run(approvals.propose, service.registry, line, kind, payload, summary, who, body.why)
            return _proposed(change)
        add = functools.partial(served.model.add, state=state, until=until)
        record = await run(add, service.registry, body.text, body.strength, who, body.why, body.name, limits)
        return _normality_out(record)

    @app.post(
        "/v1/lines/{line}/normalities/preview",
        response_model=schemas.PreviewOut,
        responses=ERRORS,
        tags=["normalities"],
    )
    async def preview_normality(line: str, body: schemas.PreviewIn, who: Caller) -> schemas.PreviewOut:
        """Which of the last N retained parts the candidate would let through (stores nothing but one audit row)."""
        served = await service.line(line)
        if isinstance(served.model, ExportedLineModel):
            raise ExportMismatchError(
                f"line '{line}' is served from the export {served.model.exported.folder}, which keeps no image "
                "features to preview on: preview with a service that runs the line on torch (no --export)"
            )
        limits = {"max_area": body.max_area, "max_length": body.max_length}
        report = await run(
            functools.partial(
                preview,
                strength=body.strength,
                limits={k: v for k, v in limits.items() if v is not None} or None,
                recent=body.recent,
                why=body.why,
                keep_maps=body.maps,
            ),
            served.model,
            service.registry,
            body.text,
            who,
        )
        return await run(_preview_out, report)

    @app.post(
        "/v1/lines/{line}/normalities/{name}/activate",
        response_model=schemas.NormalityOut,
        responses={**ERRORS, **PROPOSED},
        tags=["normalities"],
    )
    async def activate_normality(line: str, name: str, who: Caller, body: schemas.ActivateIn | None = None) -> Any:
        """Make a staged normality apply from now on (logged with who and why); 202 when it needs approval."""
        served = await service.line(line)
        why = body.why if body else ""
        if await run(approvals.approval_required, service.registry, line):
            summary, payload, kind = f"activate normality '{name}'", {"name": name}, "normality.activate"
            change = await run(approvals.propose, service.registry, line, kind, payload, summary, who, why)
            return _proposed(change)
        record = await run(served.model.activate, service.registry, name, who, why)
        return _normality_out(record)

    @app.post(
        "/v1/lines/{line}/examples",
        status_code=201,
        response_model=schemas.NormalityOut,
        responses={**ERRORS, **PROPOSED},
        tags=["normalities"],
    )
    async def add_example(
        line: str,
        who: Caller,
        images: Annotated[list[UploadFile], File(min_length=1, description="Example images of the defect.")],
        masks: Annotated[
            list[UploadFile] | None,
            File(description="One mask per image, in order (non-zero = defect); none: the whole images."),
        ] = None,
        strength: Annotated[float, Form(ge=0.0, le=1.0, description="Suppression strength s in [0, 1].")] = 1.0,
        name: Annotated[
            str | None, Form(min_length=1, max_length=MAX_NAME_CHARS, description="Key (default: example:<image>).")
        ] = None,
        why: Annotated[str, Form(max_length=500, description="Reason, kept in the audit log.")] = "",
    ) -> Any:
        """Make a defect type normal on the line by showing example images (stored, audited with their hashes).

        On a line with ``approval: required`` the computed memory and the images' hashes are
        proposed instead (202); the approver approves exactly that.
        """
        served = await service.line(line)
        if len(images) > settings.max_images_per_request:
            raise ApiError(
                413,
                "too_many_images",
                f"{len(images)} example images in one request: send at most {settings.max_images_per_request}",
            )
        masks = masks or []
        if masks and len(masks) != len(images):
            raise NormaddError(
                f"{len(masks)} masks for {len(images)} images: send one mask per image, in order, or none"
            )
        image_names, mask_names = _upload_names(images, "image"), _upload_names(masks, "mask")
        image_data = [await upload.read() for upload in images]
        mask_data = [await upload.read() for upload in masks]

        def build() -> NormalityRecord | PendingChange:
            for data, shown in zip(image_data + mask_data, image_names + mask_names, strict=True):
                load_image_bytes(data, 8, shown, settings.max_image_pixels)  # every file decodes, named as sent
            with tempfile.TemporaryDirectory(prefix="normadd-examples-") as folder:
                image_paths = [Path(folder) / f"image-{i}" for i in range(len(image_data))]
                mask_paths = [Path(folder) / f"mask-{i}" for i in range(len(mask_data))]
                for path, data in zip(image_paths + mask_paths, image_data + mask_data, strict=True):
                    path.write_bytes(data)
                try:
                    if approvals.approval_required(service.registry, line):
                        served.model.refresh(service.registry)  # the duplicate check sees other replicas' changes
                        record = served.model.prepare_example(image_paths, mask_paths, strength, name, image_names)
                        summary = approvals.visual_summary(record)
                        payload = approvals.normality_payload(record)
                        kind = "normality.add"
                        return approvals.propose(service.registry, line, kind, payload, summary, who, why)
                    return served.model.add_example(
                        service.registry, image_paths, mask_paths, strength, who, why, name, image_names
                    )
                except NormaddError as error:  # name the files as the client sent them, not as stored here
                    message = str(error)
                    for path, shown in zip(image_paths + mask_paths, image_names + mask_names, strict=True):
                        message = message.replace(str(path), shown)
                    raise type(error)(message) from None

        built = await run(build)
        return _proposed(built) if isinstance(built, PendingChange) else _normality_out(built)

    @app.delete(
        "/v1/lines/{line}/normalities/{name}",
        response_model=schemas.NormalityOut,
        responses={**ERRORS, **PROPOSED},
        tags=["normalities"],
    )
    async def remove_normality(
        line: str,
        name: str,
        who: Caller,
        why: Annotated[str, Query(max_length=500, description="Reason, kept in the audit log.")] = "",
    ) -> Any:
        """Make a defect type anomalous again on the line (logged with who and why); 202 when it needs approval."""
        served = await service.line(line)
        if await run(approvals.approval_required, service.registry, line):
            summary = f"remove normality '{name}'"
            payload, kind = {"name": name}, "normality.remove"
            change = await run(approvals.propose, service.registry, line, kind, payload, summary, who, why)
            return _proposed(change)
        record = await run(served.model.remove, service.registry, name, who, why)
        return _normality_out(record)

    @app.delete(
        "/v1/lines/{line}/normalities",
        response_model=schemas.NormalityOut,
        responses={**ERRORS, **PROPOSED},
        tags=["normalities"],
    )
    async def remove_normality_by_query(
        line: str,
        name: Annotated[str, Query(min_length=1, description="The normality's name.")],
        who: Caller,
        why: Annotated[str, Query(max_length=500, description="Reason, kept in the audit log.")] = "",
    ) -> Any:
        """The same as ``DELETE /v1/lines/{line}/normalities/{name}``, with the name as a query parameter."""
        return await remove_normality(line, name, who, why)

    @app.get("/v1/lines/{line}/audit", response_model=schemas.AuditOut, responses=ERRORS, tags=["audit"])
    async def audit(
        line: str,
        who: Caller,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        action: Annotated[
            str | None,
            Query(
                description="line.create, normality.add/remove/activate/preview, threshold.set/clear, inspect, "
                "change.propose/approve/reject, access.denied"
            ),
        ] = None,
        before_id: Annotated[int | None, Query(description="Only rows older than this id (paging).")] = None,
    ) -> schemas.AuditOut:
        """The line's audit log, newest first."""
        await run(service.registry.line, line)
        entries = await run(service.registry.audit, line, limit, action, before_id)
        return schemas.AuditOut(line=line, entries=[schemas.AuditEntryOut(**e.__dict__) for e in entries])

    @app.get("/v1/audit/verify", response_model=schemas.ChainOut, responses=ERRORS, tags=["audit"])
    async def verify_audit(who: Caller) -> schemas.ChainOut:
        """Walk the whole audit log's hash chain and name the first row that no longer matches."""
        report = await run(service.registry.verify_audit_chain)
        finding = report.finding
        return schemas.ChainOut(
            ok=report.ok,
            rows=report.rows,
            head_id=report.head_id,
            head_hash=report.head_hash,
            first_bad_row=finding.row_id if finding else None,
            problem=finding.problem if finding else None,
        )

    @app.get("/v1/lines/{line}/changes", response_model=schemas.ChangesOut, responses=ERRORS, tags=["approval"])
    async def list_changes(
        line: str,
        who: Caller,
        status: Annotated[
            str | None, Query(pattern="^(pending|approved|rejected|expired)$", description="Default: pending.")
        ] = "pending",
    ) -> schemas.ChangesOut:
        """Changes waiting for a second person's approval (or, by status, decided ones)."""
        await run(service.registry.line, line)
        found = await run(approvals.changes, service.registry, line, status)
        return schemas.ChangesOut(line=line, changes=[_change_out(c) for c in found])

    @app.post(
        "/v1/lines/{line}/changes/{change_id}/approve",
        response_model=schemas.ChangeOut,
        responses=ERRORS,
        tags=["approval"],
    )
    async def approve_change(
        line: str, change_id: int, who: Caller, body: schemas.DecisionIn | None = None
    ) -> schemas.ChangeOut:
        """Apply another person's pending change (the proposer cannot approve their own)."""
        why = body.why if body else ""
        change = await run(approvals.approve, service.registry, change_id, who, why, line)
        return _change_out(change)

    @app.post(
        "/v1/lines/{line}/changes/{change_id}/reject",
        response_model=schemas.ChangeOut,
        responses=ERRORS,
        tags=["approval"],
    )
    async def reject_change(line: str, change_id: int, who: Caller, body: schemas.DecisionIn) -> schemas.ChangeOut:
        """Close a pending change without applying it; needs a reason."""
        change = await run(approvals.reject, service.registry, change_id, who, body.why, line)
        return _change_out(change)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _check_route_scopes(app, calling_key)
    return app


def _check_route_scopes(app: FastAPI, calling_key: Callable[..., Any]) -> None:
    """Every route has a scope decision in ROUTE_SCOPES, and every non-public one checks the key.

    Raises:
        RuntimeError: A route without a decision (add it to ROUTE_SCOPES), or one that skips the check.
    """
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue  # the docs, the OpenAPI document and the static files
        for method in sorted(route.methods or ()):
            needed = ROUTE_SCOPES.get((method, route.path))
            if needed is None:
                raise RuntimeError(f"{method} {route.path} has no scope: add it to ROUTE_SCOPES in serve/authority.py")
            if needed != PUBLIC and not _depends_on(route.dependant, calling_key):
                raise RuntimeError(f"{method} {route.path} needs '{needed}' but does not take the Caller dependency")


def _depends_on(dependant: Dependant, function: Callable[..., Any]) -> bool:
    return any(d.call is function or _depends_on(d, function) for d in dependant.dependencies)


def _proposed(change: PendingChange) -> JSONResponse:
    return JSONResponse(_change_out(change).model_dump(), status_code=202)


def _change_out(change: PendingChange) -> schemas.ChangeOut:
    shown = approvals.shown_payload(change.payload)
    return schemas.ChangeOut(**{**change.__dict__, "payload": shown})


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        words = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}
        code = getattr(error, "error", None) or words.get(error.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(error.detail)}, status_code=error.status_code)

    async def validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "request"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(problems)}, status_code=422)

    def known(status: int, code: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handler(request: Request, error: Exception) -> JSONResponse:
            return JSONResponse({"error": code, "detail": str(error)}, status_code=status)

        return handler

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, printable(request.url.path))
        detail = f"internal error ({type(error).__name__}): please report it"
        return JSONResponse({"error": "internal", "detail": detail}, status_code=500)

    app.add_exception_handler(HTTPException, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    for exception, status, code in STATUS_OF:
        app.add_exception_handler(exception, known(status, code))
    app.add_exception_handler(Exception, unexpected)

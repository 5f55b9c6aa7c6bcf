"""Run the image passes of ``inspect`` and ``evaluate`` as Ray Data ``map_batches`` over an actor pool.

Ray does the distribution: a dataset of forward batches (each row one batch of image paths, the
same batches the local path runs, so every actor pass sees what a local pass sees and the floats
agree) goes through ``map_batches`` on an :class:`ray.data.ActorPoolStrategy` pool. A command is one
such execution: an evaluation's rows are every class's passes, each row naming its line and pass.
Each actor builds a line on its first batch of it with the local path's factory
(:func:`normadd.factory.build_addition`) on one encoder pool (a backbone loads once per actor per
command) and runs the local path's per-batch functions (:func:`normadd.inspection.score_batch`,
:func:`normadd.evaluation.runner.record_outcomes`, :func:`~normadd.evaluation.runner.good_score_outcomes`).
Results stream back in input order (``preserve_order``) and this process writes them into the same
files as the local path. One actor per GPU (``num_gpus=1``) when the cluster has GPUs, else one
per CPU.

Where Ray runs: ``local`` (or no address and no ``RAY_ADDRESS``) starts a private runtime on this
machine, sized to it, and stops it afterwards; ``auto`` joins the cluster ``ray start`` runs here;
``host:6379`` joins a cluster's head. ``ray://`` (Ray Client) is refused in one line: Ray Data does
not run through it (a ``ray job submit`` of the command is the way in from outside). Image paths (and
any files the line reads: weights, projections, example images) must be readable at the same path
on every node (shared storage); the outputs are written here. ``ray`` is imported only when used:
without the extra, one line says ``pip install 'normadd[ray]'``.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from normadd.errors import NormaddError

if TYPE_CHECKING:
    from normadd.config import LineConfig
    from normadd.decisions.policy import DecisionPolicy
    from normadd.evaluation.runner import ImageOutcome, PassRequest
    from normadd.inspection import InspectionReport, LineSummary
    from normadd.normality.addition import NormalityAddition

RAY_EXTRA_HINT = "pip install 'normadd[ray]'"
LOCAL = "local"
PROBE_TIMEOUT_S = 5.0
# What actors see of this process's environment (offline switches, cache and weights locations, LLM
# endpoint): a line must build on the cluster as it would here.
FORWARDED_ENV_PREFIXES = ("NORMADD_", "HF_")
FORWARDED_ENV_NAMES = ("TRANSFORMERS_OFFLINE", "OPENAI_API_KEY", "CI")


class RayUnavailableError(NormaddError):
    """Ray is not installed, or the cluster cannot be reached."""


def import_ray() -> ModuleType:
    """The ``ray`` module, with Ray Data.

    Raises:
        RayUnavailableError: Ray (or Ray Data) is not installed: the line names the extra.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayUnavailableError(f"--ray needs Ray, which is not installed: {RAY_EXTRA_HINT}") from None
    return ray


def resolve_address(address: str | None) -> str:
    """The address to use: the one given, else ``RAY_ADDRESS`` when set, else ``local``."""
    if address is None or not address.strip():
        return os.environ.get("RAY_ADDRESS", "").strip() or LOCAL
    return address.strip()


def _unreachable(address: str, why: str) -> RayUnavailableError:
    return RayUnavailableError(
        f"no Ray cluster at '{address}' ({why}): start one with 'ray start --head' and pass its address "
        "(host:6379 or auto), or use --ray-address local for a private runtime on this machine"
    )


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` (or ``scheme://host:port``); None when it has no port."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _probe(ray: ModuleType, address: str) -> None:
    """Fail fast, in one line, when nothing listens at ``address`` (``ray.init`` would retry for minutes).

    Raises:
        RayUnavailableError: No cluster found or nothing listening.
    """
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            target = canonicalize_bootstrap_address_or_die("auto")
        except ImportError:  # Ray moved its helper: ray.init says it, later
            return
        except (ConnectionError, ValueError) as error:
            raise _unreachable(address, str(error).split(". ")[0]) from None
    endpoint = _host_port(target)
    if endpoint is None:
        raise _unreachable(address, "an address is host:port, auto or local")
    try:
        with socket.create_connection(endpoint, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        raise _unreachable(address, f"{endpoint[0]}:{endpoint[1]}: {error.strerror or error}") from None


def quiet_ray(ray: ModuleType) -> None:
    """No Ray Data progress bars, execution banners or log lines on the console (errors come back as one line)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True  # results stream back in input order
    names = [name for name in logging.root.manager.loggerDict if name == "ray" or name.startswith("ray.")]
    for name in {"ray", "ray.data", *names}:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@dataclass
class RaySession:
    """A connection to Ray for one command; stops the runtime it started when closed.

    Attributes:
        address: The address as resolved (``local``, ``auto`` or ``host:port``).
        started: True when this session started a private runtime (and stops it on close).
        cpus: CPUs the cluster reports.
        gpus: GPUs the cluster reports.
        reused: True when this process was already connected to Ray (that connection is used).
        env: Environment variables the actors get from this process (see ``FORWARDED_ENV_PREFIXES``).
    """

    address: str
    started: bool = False
    cpus: float = 0.0
    gpus: float = 0.0
    reused: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> RaySession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the private runtime this session started (a cluster it joined keeps running)."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    @property
    def where(self) -> str:
        """Where the image passes run, in words."""
        if self.started:
            return "a private Ray runtime on this machine"
        if self.reused:
            return "the Ray runtime this process is connected to"
        return f"the Ray cluster at {self.address}"

    @property
    def actors(self) -> int:
        """Largest actor pool: one actor per GPU, else one per CPU (at least one)."""
        return max(1, int(self.gpus if self.gpus >= 1 else self.cpus))

    @property
    def actor_resources(self) -> dict[str, Any]:
        """What each actor asks for: one GPU when the cluster has GPUs, else one CPU."""
        return {"num_gpus": 1} if self.gpus >= 1 else {"num_cpus": 1}


def connect(address: str | None = None, num_cpus: int | None = None) -> RaySession:
    """Start a private Ray runtime or join a cluster; in a process already connected to Ray, use that.

    Args:
        address: ``local`` (a private runtime sized to this machine), ``auto`` (the cluster
            ``ray start`` runs here) or ``host:port`` (a cluster's head); None: ``RAY_ADDRESS``
            when set, else ``local``.
        num_cpus: CPUs of a private runtime (default: the machine's).

    Raises:
        RayUnavailableError: Ray is not installed, a Ray Client (``ray://``) address, or nothing
            answers at the address (checked before anything is written).
    """
    ray = import_ray()
    resolved = resolve_address(address)
    if resolved.startswith("ray://"):
        raise RayUnavailableError(
            f"'{resolved}' is a Ray Client address, and Ray Data does not run through Ray Client: run the command "
            "on a cluster node with --ray-address auto, join the head from a machine on the cluster's network "
            "with --ray-address host:6379, or submit it as a Ray job (ray job submit -- normadd ... --ray)"
        )
    if resolved != LOCAL:
        _probe(ray, resolved)
    started = False
    reused = ray.is_initialized()
    if not reused:
        # ERROR: no banners (token authentication, deprecations) from Ray's Python side on the console.
        quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if resolved == LOCAL:
                ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=False, **quiet)
                started = True
            else:
                ray.init(address=resolved, **quiet)
        except ConnectionError as error:
            raise _unreachable(resolved, str(error).split(". ")[0]) from None
    quiet_ray(ray)
    resources = ray.cluster_resources()
    env = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(FORWARDED_ENV_PREFIXES) or name in FORWARDED_ENV_NAMES
    }
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    return RaySession(resolved, started, cpus, gpus, reused, env)


class LineActor:
    """The lines of one command per Ray actor: each built on its first batch, on one encoder pool.

    Every row is one forward batch of one line (``line``: an index into ``configs``) and pass kind.
    The actor holds an :class:`~normadd.backbone.pool.EncoderPool`, so lines on the same backbone
    (every class of an evaluation) share one encoder: a model loads once per actor for the whole
    command, whichever classes and passes its batches belong to. A
    :class:`~normadd.errors.NormaddError` (building a line, a batch the detector refuses) is not
    raised here but returned as the row's result, so this process says it in one line.

    Args:
        configs: The lines (the same :class:`~normadd.config.LineConfig` the local path builds).
        device: ``--device`` word, resolved on the actor's own machine (``auto``: its GPU if any).
        precision: ``--precision`` word.
        resize: How images become square.
        policy: Decisions of an inspection (verdicts), or None.
        cwd: The directory the command ran in: relative paths mean the same here when it exists.
    """

    def __init__(
        self,
        configs: Sequence[LineConfig],
        device: str,
        precision: str,
        resize: str,
        policy: DecisionPolicy | None = None,
        cwd: str | None = None,
    ) -> None:
        from normadd.backbone.pool import EncoderPool

        logging.getLogger().setLevel(logging.ERROR)  # open_clip's "randomly initialised" and the like
        if cwd is not None and os.path.isdir(cwd):
            os.chdir(cwd)
        self.configs = list(configs)
        self.device = device
        self.precision = precision
        self.resize = resize
        self.policy = policy
        self.encoders = EncoderPool()
        self.lines: dict[int, tuple[NormalityAddition, LineSummary, list[tuple[str, str]]] | NormaddError] = {}
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def _line(self, index: int) -> tuple[NormalityAddition, LineSummary, list[tuple[str, str]]]:
        """Line ``index``, built on its first use with the local factory; raises the NormaddError it raised then."""
        from normadd.factory import build_addition
        from normadd.inspection import LineSummary, line_notes
        from normadd.runtime import resolve_runtime

        if index not in self.lines:
            try:
                runtime = resolve_runtime(self.device, self.precision)
                model = build_addition(self.configs[index], runtime, encoders=self.encoders)
                self.lines[index] = (model, LineSummary.of(model), line_notes(model))
            except NormaddError as error:
                self.lines[index] = error
        line = self.lines[index]
        if isinstance(line, NormaddError):
            raise line
        return line

    def _run(self, kind: str, index: int, chunk: list[Path]) -> Any:
        from normadd.evaluation.runner import good_score_outcomes, record_outcomes
        from normadd.inspection import score_batch

        model, summary, notes = self._line(index)
        if kind == "inspect":
            check_images = getattr(model.detector, "check_images", None)
            if callable(check_images):  # saved maps: checked batch by batch here, all first locally
                check_images(chunk)
            scored, failures = score_batch(model, chunk, self.resize, self.policy)
            return (summary, notes, failures, scored)
        if kind == "records":
            return record_outcomes(model, chunk, self.resize)
        return good_score_outcomes(model, chunk, self.resize)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """Run each row's batch: ``("ok", result)`` or ``("error", NormaddError)`` pickled, with actor and loads."""
        payloads: list[bytes] = []
        for kind, index, paths in zip(batch["kind"], batch["line"], batch["paths"], strict=True):
            try:
                payloads.append(pickle.dumps(("ok", self._run(str(kind), int(index), [Path(str(p)) for p in paths]))))
            except NormaddError as error:
                payloads.append(_pickled_error(error))
        count = len(payloads)
        return {"payload": payloads, "actor": [self.name] * count, "loads": [self.encoders.loads] * count}


def _pickled_error(error: NormaddError) -> bytes:
    try:
        return pickle.dumps(("error", error))
    except Exception:  # an error that does not pickle: its message
        return pickle.dumps(("error", NormaddError(str(error))))


def _ray_failure(error: BaseException) -> NormaddError:
    """A failure of Ray itself (an actor died, a node was lost) in one line."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return NormaddError(
        f"the Ray run failed: {type(error).__name__}: {first[:300]} (rerun with --ray-address local, or without --ray)"
    )


@dataclass
class BatchResult:
    """What an actor gave for one forward batch.

    Attributes:
        job: Index of the job (``(kind, line, paths)``) the batch belongs to.
        paths: The batch's image paths.
        result: The per-batch function's result, or the NormaddError it raised.
        actor: The actor that ran it (``host:pid``).
        loads: Encoders that actor had loaded (model weights) when it finished the batch.
    """

    job: int
    paths: list[Path]
    result: Any
    actor: str
    loads: int


def run_jobs(
    session: RaySession,
    configs: Sequence[LineConfig],
    jobs: Sequence[tuple[str, int, Sequence[Path]]],
    batch_size: int,
    resize: str,
    device: str = "auto",
    precision: str = "auto",
    policy: DecisionPolicy | None = None,
) -> Generator[BatchResult, None, None]:
    """Every forward batch of every job, as one Ray Data execution on one actor pool, in input order.

    A job is ``(kind, line, paths)``: ``kind`` (``inspect``, ``records`` or ``good_scores``) names the
    local per-batch function, ``line`` indexes ``configs``. The jobs' batches are the rows of one
    dataset, so the pool (and each actor's models) lives for the whole command.

    Raises:
        NormaddError: Ray's own failure in one line (an actor's NormaddError is the batch's result).
    """
    ray = import_ray()
    rows = [
        (number, [Path(p) for p in paths[start : start + batch_size]])
        for number, (_kind, _line, paths) in enumerate(jobs)
        for start in range(0, len(paths), batch_size)
    ]
    if not rows:
        return
    dataset = ray.data.from_items(
        [{"kind": jobs[n][0], "line": jobs[n][1], "paths": [str(p) for p in chunk]} for n, chunk in rows]
    )
    with warnings.catch_warnings():
        # max_restarts=0: a failed actor fails the run in one line (Ray's default restarts it forever,
        # and its core then logs an E-level line about constructor arguments on the console). Ray 2.60
        # takes it only as a deprecated extra keyword (removal announced for 2.64: pyproject keeps <2.64).
        warnings.simplefilter("ignore", DeprecationWarning)
        mapped = dataset.map_batches(
            LineActor,
            fn_constructor_kwargs={
                "configs": list(configs),
                "device": device,
                "precision": precision,
                "resize": resize,
                "policy": policy,
                "cwd": os.getcwd(),
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(session.actors, len(rows))),
            runtime_env={"env_vars": dict(session.env)} if session.env else None,
            max_restarts=0,
            **session.actor_resources,
        )
    results = iter(mapped.iter_rows())
    try:
        for number, chunk in rows:
            try:
                row = next(results)
            except StopIteration:
                raise NormaddError(f"the Ray run returned fewer batches than the {len(rows)} sent") from None
            except Exception as error:  # Ray's own failures; an actor's NormaddError comes back as a result
                raise _ray_failure(error) from None
            _status, result = pickle.loads(row["payload"])
            yield BatchResult(number, chunk, result, str(row["actor"]), int(row["loads"]))
    finally:  # stop the streaming execution (its threads) before the runtime may be shut down
        close = getattr(results, "close", None)
        if callable(close):
            close()


def run_batches(
    session: RaySession,
    kind: str,
    config: LineConfig,
    paths: Sequence[Path],
    batch_size: int,
    resize: str,
    device: str = "auto",
    precision: str = "auto",
    policy: DecisionPolicy | None = None,
) -> Iterator[tuple[list[Path], Any]]:
    """Each forward batch of ``paths`` on one line with what its actor returned, in input order, as results arrive.

    Raises:
        NormaddError: An actor's NormaddError (one line), or the Ray failure in one line.
    """
    batches = run_jobs(session, [config], [(kind, 0, paths)], batch_size, resize, device, precision, policy)
    try:
        for batch in batches:
            if isinstance(batch.result, NormaddError):
                raise batch.result
            yield batch.paths, batch.result
    finally:  # stop the execution now, not when the generator is collected
        batches.close()


@dataclass
class RayInspection:
    """What an inspection on Ray produced.

    Attributes:
        report: The rows and failures, as the local path reports them.
        line: The line as the actors built it (what the files say about it).
        notes: ``(level, text)`` lines about the line (random weights, fallback projections).
    """

    report: InspectionReport
    line: LineSummary
    notes: list[tuple[str, str]]


def inspect_on_ray(
    session: RaySession,
    config: LineConfig,
    paths: Sequence[Path],
    out_dir: str | Path,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    resize: str = "squash",
    save_maps: str | None = None,
    policy: DecisionPolicy | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> RayInspection:
    """:func:`normadd.inspection.inspect_images` with the forward passes on Ray: the same files, rows and order.

    Nothing is written until the first batch is back (a line that fails to build on the
    cluster leaves no output folder behind).
    """
    from normadd.inspection import InspectionWriter, check_map_format

    check_map_format(save_maps)
    writer: InspectionWriter | None = None
    summary: LineSummary | None = None
    notes: list[tuple[str, str]] = []
    for chunk, (line, line_notes_, failures, scored) in run_batches(
        session, "inspect", config, paths, batch_size, resize, device, precision, policy
    ):
        if writer is None:
            summary, notes = line, line_notes_
            writer = InspectionWriter(paths, out_dir, line, save_maps, policy is not None)
        for failure in failures:
            writer.fail(failure)
        for item in scored:
            writer.add(item)
        if on_progress is not None:
            on_progress(len(chunk))
    if writer is None or summary is None:
        raise NormaddError("no image to inspect")
    return RayInspection(writer.finish(), summary, notes)


class RayImagePass:
    """An evaluation's image passes on Ray (:class:`normadd.evaluation.runner.ImagePass`): one job for the run.

    Every class's passes (test records, train/good scores) are the rows of one Ray Data execution
    on one actor pool, so each actor loads a backbone once for the whole evaluation.

    Args:
        session: The Ray connection.
        device: ``--device`` word for the actors.
        precision: ``--precision`` word for the actors.

    Attributes:
        loads: Encoders each actor (``host:pid``) had loaded by its last batch of the run.
    """

    def __init__(self, session: RaySession, device: str = "auto", precision: str = "auto") -> None:
        self.session = session
        self.device = device
        self.precision = precision
        self.loads: dict[str, int] = {}

    def run_all(
        self, requests: Sequence[PassRequest], batch_size: int, resize: str
    ) -> Iterator[tuple[int, list[ImageOutcome] | NormaddError]]:
        """``(request index, outcomes or error)`` per forward batch, streamed in order, computed by the actor pool."""
        configs: list[LineConfig] = []
        jobs: list[tuple[str, int, Sequence[Path]]] = []
        for request in requests:
            if request.config not in configs:
                configs.append(request.config)
            jobs.append((request.kind, configs.index(request.config), request.paths))
        batches = run_jobs(self.session, configs, jobs, batch_size, resize, self.device, self.precision)
        try:
            for batch in batches:
                self.loads[batch.actor] = max(batch.loads, self.loads.get(batch.actor, 0))
                yield batch.job, batch.result
        finally:  # stop the execution now, not when the generator is collected
            batches.close()

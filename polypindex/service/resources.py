"""What the service loads at start-up and keeps current while it runs.

The lifespan (:mod:`service.app`) calls :func:`load_resources` (the encoder, the
store, the vector index, the probes; never raises, each failure is a message in
``problems``) and :func:`start_job_runner`. While serving, the
:class:`~polypindex.service.upkeep.IndexUpkeep` thread keeps the loaded index equal to
the store (off the request path; the job runner hands it what it commits), and
``GET /healthz`` is :func:`health` (what is loaded, what is missing and how to build it)
and ``GET /readyz`` is :func:`readiness` (what :data:`READINESS_CHECKS` find missing).

The loaded objects live in one :class:`Resources`, on ``app.state.resources``
(:class:`ServiceState`); :mod:`service.deps` hands its fields to the routers, and the
service functions below the routers (:mod:`service.search`, :mod:`service.read`,
:mod:`service.decisions`, :mod:`service.backend`) do the work of a request with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from sqlalchemy import text
from starlette.datastructures import State

from polypindex.indexer.faults import public_message
from polypindex.indexer.generations import (
    catch_up,
    generation_dir,
    load_generation,
    rebuild_into,
)
from polypindex.indexer.grouping import reid_calibration
from polypindex.indexer.jobs import JobRunner
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.core.errors import PolypIndexError, ProbeNotInstalledError
from polypindex.model.runtime.install import install_problems
from polypindex.model.scoring.probe import TASKS, Probe, load_probe, probe_path
from polypindex.service.auth import AuthState
from polypindex.service.schemas import HealthResponse
from polypindex.service.settings import Settings
from polypindex.service.upkeep import IndexUpkeep, ServingSink, fingerprint

logger = logging.getLogger(__name__)

__all__ = [
    "READINESS_CHECKS",
    "SYNC_REBUILD_MAX",
    "Encoder",
    "Probes",
    "ReadinessCheck",
    "Resources",
    "ServiceState",
    "empty_index_problem",
    "health",
    "index_size",
    "load_probes",
    "load_resources",
    "readiness",
    "start_job_runner",
    "store_ok",
]

HOW_TO_BUILD_MODEL = (
    "build the demo model with `polypindex demo`, or point POLYPINDEX_MODEL_PATH "
    "(`polypindex serve --model`) at an exported encoder.onnx"
)
HOW_TO_BUILD_INDEX = "index procedures with `polypindex index` (or run `polypindex demo`)"


def how_to_train_probe(task: str, settings: Settings) -> str:
    return (
        f"train it with `polypindex probe train {task} --data DATA --model {settings.model_path}` "
        f"(it is read from {probe_path(settings.probes_folder, task)}), then restart the service"
    )


class Encoder(Protocol):
    """What the service needs of an encoder (``model.runtime.onnx.OnnxEncoder`` in production)."""

    version: str
    dim: int
    reid_threshold: float

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """RGB uint8 frames + ``(s, 4)`` boxes → float32 ``(D,)``, L2-normalised."""
        ...


SYNC_REBUILD_MAX = 200_000
"""A snapshot that cannot be used is rebuilt before serving up to this many stored
vectors (seconds); a larger one is rebuilt in the background while ``/healthz`` says so."""


@dataclass
class Resources:
    """What the lifespan loaded; ``None`` where loading failed, with the reason in ``problems``."""

    encoder: Encoder | None = None
    store: Store | None = None
    index: VectorIndex | None = None
    upkeep: IndexUpkeep | None = None
    jobs: JobRunner | None = None
    probes: dict[str, Probe] = field(default_factory=dict)
    probe_problems: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    jobs_problem: str = "indexing jobs are not running"

    def close(self) -> None:
        """Stop the job runner (no job is handed out from the first moment; it stops after
        the current job, and a job cut short is recovered at the next start), then the
        upkeep (a changed index is saved), then close the store; nothing is served after."""
        jobs, self.jobs = self.jobs, None
        if jobs is not None:
            jobs.stop()
        if self.upkeep is not None:
            self.upkeep.stop()
            self.upkeep = None
        if self.store is not None:
            self.store.close()
        self.store = self.index = None


class Probes:
    """The installed probes (task → probe) and, for each task without one, why."""

    def __init__(self, installed: dict[str, Probe], problems: dict[str, str]) -> None:
        self.installed = installed
        self.problems = problems

    def require(self, task: str) -> Probe:
        """The installed probe of ``task``; ProbeNotInstalledError (503) saying why otherwise."""
        probe = self.installed.get(task)
        if probe is None:
            raise ProbeNotInstalledError(self.problems.get(task, f"no {task} probe installed"))
        return probe


class ServiceState(State):
    """``app.state``: the app's own values (``settings``, ``auth``, ``embedding_slots``)
    and the one :class:`Resources` (``resources``).

    The names the loaded objects had on ``app.state`` before they were one object
    (``encoder``, ``store``, ``index``, ``index_upkeep``, ``jobs``) read and write that
    Resources' fields: an encoder set as ``app.state.encoder`` before start-up is the
    one the lifespan uses, and the metrics, the auth check and tests that read
    ``app.state.store`` see what is loaded now. Nothing is copied.
    """

    _FIELDS: ClassVar[dict[str, str]] = {
        "encoder": "encoder",
        "store": "store",
        "index": "index",
        "index_upkeep": "upkeep",
        "jobs": "jobs",
    }

    def __getattr__(self, key: str) -> Any:
        name = self._FIELDS.get(key)
        if name is None:
            return super().__getattr__(key)
        return getattr(self._state["resources"], name)

    def __setattr__(self, key: str, value: Any) -> None:
        name = self._FIELDS.get(key)
        if name is None:
            super().__setattr__(key, value)
        else:
            setattr(self._state["resources"], name, value)


def start_job_runner(res: Resources, settings: Settings) -> None:
    """Create, recover and start the indexing job runner in ``res.jobs``; never raises.

    It needs the encoder (one that can embed tracklets for indexing) and the store,
    and ``settings.run_jobs``; otherwise ``res.jobs`` stays ``None`` and
    ``res.jobs_problem`` says why (``POST /procedures`` and ``/jobs`` answer 503).
    Jobs a dead process left ``running`` go back to the queue first.
    """
    if not settings.run_jobs:
        res.jobs_problem = "indexing jobs are disabled in this service (POLYPINDEX_RUN_JOBS=false)"
        return
    if res.encoder is None or res.store is None:
        missing = "; ".join(res.problems[k] for k in ("model", "store") if k in res.problems)
        res.jobs_problem = f"indexing jobs need the encoder model and the database: {missing}"
        return
    if not hasattr(res.encoder, "embed_sequences"):
        res.jobs_problem = (
            f"the encoder {res.encoder.version!r} cannot embed tracklets for indexing "
            "(no embed_sequences); load an exported encoder.onnx"
        )
        return
    try:
        runner = JobRunner(
            res.store,
            settings.index_dir,
            res.encoder,  # type: ignore[arg-type]  # checked above: has embed_sequences
            settings.data_roots,
            probes=list(res.probes.values()),
            sink=ServingSink(res.upkeep) if res.upkeep is not None else None,
            home=settings.home,
        )
        recovered = runner.recover()
        if recovered:
            logger.info(
                "%d indexing job(s) left running by a dead process are queued again", recovered
            )
        runner.start()
    except Exception as exc:
        logger.exception("cannot start the indexing job runner")
        res.jobs_problem = f"indexing jobs not running: {type(exc).__name__}: {exc}"
        return
    res.jobs = runner


def load_resources(settings: Settings, encoder: Encoder | None = None) -> Resources:
    """Load the encoder, open the store and the index; never raises.

    Args:
        settings: where the artefacts are.
        encoder: an already built encoder to use instead of loading ``settings.model_path``.

    Returns:
        The loaded objects; each missing one has a message in ``problems``
        (keys ``"model"``, ``"store"``, ``"index"``) saying what is missing and how to build it.
    """
    res = Resources(encoder=encoder)
    # two ONNX Runtimes or two FAISS builds in one environment: say so (docs/gpu.md)
    for number, problem in enumerate(install_problems()):
        res.problems[f"install-{number}"] = problem
        logger.warning("%s", problem)
    if res.encoder is None:
        from polypindex.model.runtime.loader import layout_encoder

        try:
            res.encoder = layout_encoder(settings)  # runtime + precision: docs/runtimes.md
        except Exception as exc:  # the app must start anyway; healthz and 503s say why
            res.problems["model"] = f"encoder model not loaded: {exc}; {HOW_TO_BUILD_MODEL}"
            if isinstance(exc, PolypIndexError):
                logger.warning("%s", res.problems["model"])
            else:
                logger.exception("%s", res.problems["model"])
    try:
        res.store = Store(settings.database_url)
        res.store.count_tracklets()
    except Exception as exc:
        logger.exception("cannot open the database")
        if res.store is not None:
            res.store.close()
            res.store = None
        # the exception's text names the database's host, port and role: the log only
        res.problems["store"] = (
            f"database not available ({type(exc).__name__}; the server log says why); check "
            f"POLYPINDEX_DATABASE_URL, then {HOW_TO_BUILD_INDEX}"
        )
    if res.encoder is not None:
        res.probes, res.probe_problems = load_probes(settings, res.encoder.version)
    if res.encoder is None or res.store is None:
        res.problems["index"] = (
            "vector index not loaded: it needs the encoder model and the database"
        )
        return res
    try:
        res.upkeep = open_serving_index(settings, res.store, res.encoder.version, res.encoder.dim)
        res.index = res.upkeep.index
        res.upkeep.start()
    except Exception as exc:
        logger.exception("cannot open the vector index")
        res.problems["index"] = (
            f"vector index not loaded from {settings.index_dir}: {exc}; rebuild it: {HOW_TO_BUILD_INDEX}"
        )
    return res


def open_serving_index(settings: Settings, store: Store, version: str, dim: int) -> IndexUpkeep:
    """The generation of ``version``, caught up with the store, in its upkeep (not started).

    A whole snapshot is loaded and caught up; a missing or broken one is rebuilt from
    the store and written back before serving when the store holds at most
    :data:`SYNC_REBUILD_MAX` vectors, else in the background (``/healthz`` says so).
    """
    seen = fingerprint(store, version)
    folder = generation_dir(settings.index_dir, version)
    index, problem = load_generation(folder, version, dim)
    if index is not None:
        catch_up(index, store, folder)  # written to the snapshot
    elif problem is not None and store.count_tracklets(version) > SYNC_REBUILD_MAX:
        logger.warning("%s: the index is rebuilt from the store in the background", problem)
    else:
        index = rebuild_into(folder, store, version, dim, problem)
    return IndexUpkeep(
        store,
        settings.index_dir,
        version,
        dim,
        index,
        refresh_s=settings.index_refresh_seconds,
        seen=seen,
        reason=problem if index is None else None,
        max_behind=settings.index_max_behind,
    )


def load_probes(
    settings: Settings, encoder_version: str
) -> tuple[dict[str, Probe], dict[str, str]]:
    """The installed probes of this encoder, and for each task without one, why; never raises."""
    probes: dict[str, Probe] = {}
    problems: dict[str, str] = {}
    for task in TASKS:
        path = probe_path(settings.probes_folder, task)
        if not path.is_file():
            problems[task] = f"no {task} probe installed; {how_to_train_probe(task, settings)}"
            continue
        try:
            probes[task] = load_probe(path, encoder_version)
        except PolypIndexError as exc:
            problems[task] = f"{task} probe not loaded: {exc}; {how_to_train_probe(task, settings)}"
            logger.warning("%s", problems[task])
    return probes, problems


# -- health of what is loaded -----------------------------------------------------------


def index_size(index: VectorIndex) -> int:
    return len(index)


def store_ok(store: Store) -> bool:
    """Whether the database answers a query now."""
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        logger.exception("the database does not answer")
        return False
    return True


def empty_index_problem(index: VectorIndex, encoder: Encoder) -> str | None:
    if len(index) == 0:
        return f"the index holds no tracklets of encoder {encoder.version!r}; {HOW_TO_BUILD_INDEX}"
    return None


def health(res: Resources, settings: Settings, auth: AuthState | None) -> HealthResponse:
    """What ``GET /healthz`` answers: what is loaded and, when something is missing, why
    and how to build it (``reasons``, no server path, SQL or parameter in them). It reads
    the upkeep's state, never syncs the index, and asks the database one ``SELECT 1``."""
    encoder, store, index, upkeep = res.encoder, res.store, res.index, res.upkeep
    reasons = list(res.problems.values())
    index_state: str | None = None
    if upkeep is not None:
        index = upkeep.index
        index_state, index_problem = upkeep.status()
        if index_problem:
            reasons.append(index_problem)
    answers = store is not None and store_ok(store)
    if store is not None and not answers:
        reasons.append("the database does not answer; see the server log")
    if index is not None and encoder is not None and index_state in (None, "ready"):
        empty = empty_index_problem(index, encoder)
        if empty:
            reasons.append(empty)
    reasons = [public_message(r, settings.data_roots or ()) for r in reasons]
    return HealthResponse(
        status="degraded" if reasons else "ok",
        encoder_version=encoder.version if encoder is not None else None,
        embedding_dim=encoder.dim if encoder is not None else None,
        encoder_runtime=(
            encoder.describe() if encoder is not None and hasattr(encoder, "describe") else None
        ),
        index_size=index_size(index) if index is not None else None,
        index_state=index_state,
        store_ok=answers,
        reasons=reasons,
        probes={task: probe.version for task, probe in res.probes.items()},
        missing_probes=dict(res.probe_problems),
        auth=auth.mode if auth is not None else None,
        auth_reason=auth.reason if auth is not None else None,
        calibration=calibration_health(encoder) if encoder is not None else None,
    )


UNKNOWN_CONTEXT = (
    "a tracklet given as frames or an embedding has no procedure: its pairs are uncertain "
    "unless the embeddings are identical"
)


def calibration_health(encoder: object) -> dict[str, Any]:
    """The re-identification calibration as ``/healthz`` shows it: the model's
    ``Calibration.health()`` (per context: estimable, the answers it can give, their
    held-out precision / NPV) with ``calibrated`` and ``always_uncertain`` (context →
    why every answer there is ``uncertain``, when so)."""
    calibration = reid_calibration(encoder)
    if calibration is None:
        why = (
            "the model has no calibration (exported before calibration existed): every "
            "answer is uncertain unless the embeddings are identical"
        )
        return {"calibrated": False, "always_uncertain": {"all": why}}
    out = calibration.health()
    always = {
        name: "; ".join(c["reasons"]) or "no operating point reaches the target"
        for name, c in out["contexts"].items()
        if not c["answers"]
    }
    return {"calibrated": True, **out, "always_uncertain": {**always, "unknown": UNKNOWN_CONTEXT}}


# -- readiness: may an orchestrator send this process requests? -------------------------

ReadinessCheck = Callable[[Resources], str | None]
"""One condition of ``GET /readyz``: ``None`` when it holds, else what is missing (a
sentence for an operator; scrubbed of server paths by :func:`readiness`)."""


def _started(res: Resources) -> str | None:
    return res.problems.get("startup")


def _model_loaded(res: Resources) -> str | None:
    if res.encoder is None:
        return res.problems.get("model", "the encoder model is not loaded")
    return None


def _store_answers(res: Resources) -> str | None:
    if res.store is None:
        return res.problems.get("store", "the database is not loaded")
    if not store_ok(res.store):
        return "the database does not answer; see the server log"
    return None


def _index_serving(res: Resources) -> str | None:
    """The index is loaded and searchable (an empty one is: it fills as jobs index)."""
    if res.upkeep is not None:
        if res.upkeep.serving() is None:
            state, problem = res.upkeep.status()
            return problem or f"the vector index is {state}"
        return None
    if res.index is None:
        return res.problems.get("index", "the vector index is not loaded")
    return None


def _index_current(res: Resources) -> str | None:
    """The index is no more than ``index_max_behind`` store changes behind (one count)."""
    return res.upkeep.behind_problem() if res.upkeep is not None else None


READINESS_CHECKS: list[ReadinessCheck] = [
    _started,
    _model_loaded,
    _store_answers,
    _index_serving,
    _index_current,
]
"""What ``GET /readyz`` checks, in order; each is cheap (a ``SELECT 1``, or one count of
the change log). Append a :data:`ReadinessCheck` here to make readiness stricter:
``/readyz`` and the container health check follow."""


def readiness(res: Resources, settings: Settings) -> list[str]:
    """What keeps this process from serving: one message per failed readiness check, in
    :data:`READINESS_CHECKS` order (no server path in them); empty when ready."""
    missing = [problem for check in READINESS_CHECKS if (problem := check(res)) is not None]
    return [public_message(m, settings.data_roots or ()) for m in missing]

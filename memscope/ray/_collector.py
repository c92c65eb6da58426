"""The job's collector: one small Ray actor that every worker reports to, and its driver side.

Workers send messages and never wait for an answer (fire-and-forget ``.remote()`` calls), so
reporting never holds up the data path. Messages from one worker arrive in the order it sent
them, as Ray runs an actor's tasks from one caller in order.

Each worker process is one record, keyed by Ray's worker id: a restarted actor keeps its
actor id but runs in a new process, so it is a new record, the actor's next incarnation, and
the old one stays, marked as dead. A record also knows whether a batch was in flight when
the worker last spoke, so an actor that died in the middle of a batch is shown as such.

Rows are counted once per block, by block identity. Ray Data runs each block (bundle of
blocks) as one Ray task, and a task that Ray runs again, because the actor running it died,
keeps its task id. Each batch's start names the task it runs in (and the task's attempt), so
the collector knows, per worker, how many rows each attempt of each task processed. When
the same task ran more than once, only its last attempt (by attempt number, then by when it
began) counts; the rows of the earlier ones are moved from ``items`` to ``redone_rows`` in
the worker's row. Ray Data keeps the output of that last attempt only, so ``totals["items"]``
is the number of rows the dataset holds, whichever batch of a block an actor died in.

:class:`CollectorState` is the collector's state and :func:`job_report` turns its records
into a :class:`~memscope.ray.RayJobReport`; neither needs Ray. :class:`ReportCollector`
starts the actor on the driver and reads the report; :class:`RayReporter` is a worker's end.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from memscope._validation import check_positive_number
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError, ReportGatherError
from memscope.ray._import import require_ray
from memscope.ray._report import ActorBatchReport, ActorReport, RayJobReport

__all__: list[str] = []

logger = logging.getLogger("memscope")

Record = dict[str, Any]

# What a worker says, in the order it says it.
REGISTER = "register"  # its identity, as it starts (before the user's constructor runs)
READY = "ready"  # the user's constructor returned
CONSTRUCTION_FAILED = "construction_failed"  # the user's constructor raised
STARTED = "started"  # a batch began
FINISHED = "finished"  # a batch ended: the actor's figures so far, and any failure
CLOSED = "closed"  # Ray Data shut the actor down gracefully: its final figures
MESSAGE_KINDS = frozenset({REGISTER, READY, CONSTRUCTION_FAILED, STARTED, FINISHED, CLOSED})


class CollectorState:
    """What the collector knows: one record per worker process, in the order they started.

    The Ray actor is this class made remote; each method is one message from a worker.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._messages = 0

    def record(self, worker_id: str, kind: str, data: Any = None) -> None:
        """Take one message from the worker ``worker_id``."""
        self._messages += 1
        if kind not in MESSAGE_KINDS:
            logger.warning("memscope.ray collector: unknown message %r from %s", kind, worker_id)
            return
        entry = self._records.get(worker_id)
        if entry is None:
            # A worker whose registration was lost is still shown, with what it sent.
            entry = self._records[worker_id] = {
                "identity": {"worker_id": worker_id},
                "phase": "ready",
                "batch": None,
                "report": None,
                "last_failure": None,
                "construction_error": None,
                # The attempt of the task (block) the batch in flight runs in, and how many
                # rows each attempt of each task processed here, from the reports' items.
                "attempt": None,
                "attempts": {},
                "counted_items": 0,
            }
        if kind == REGISTER:
            entry["identity"] = {**data, "worker_id": worker_id}
            entry["phase"] = "constructing" if data.get("constructing") else "ready"
        elif kind == READY:
            entry["phase"] = "ready"
        elif kind == CONSTRUCTION_FAILED:
            entry["phase"] = "closed"
            entry["construction_error"] = data
        elif kind == STARTED:
            entry["phase"] = "busy"
            entry["batch"] = data["batch"]
            entry["attempt"] = self._attempt(entry, data.get("task"), data.get("attempt"))
        elif kind == FINISHED:
            entry["phase"] = "ready"
            if data["report"] is not None:
                self._count_rows(entry, data["report"])
                entry["report"] = data["report"]
            entry["batch"] = entry["attempt"] = None
            if data["failure"] is not None:
                entry["last_failure"] = data["failure"]
        elif kind == CLOSED:
            if isinstance(data, dict) and data.get("report") is not None:
                # Rows the final figures add belong to no block attempt: they always count.
                entry["counted_items"] = _items(data["report"])
                entry["report"] = data["report"]
            if entry["phase"] != "busy":
                entry["phase"] = "closed"

    def _attempt(self, entry: Record, task: object, attempt: object) -> str | None:
        """The key of the task attempt a batch runs in; its record is made on first sight."""
        if not isinstance(task, str) or not task:
            return None
        number = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None
        key = f"{task}/{number}"
        if key not in entry["attempts"]:
            entry["attempts"][key] = {
                "task": task,
                "attempt": number,
                "since": self._messages,
                "items": 0,
            }
        return key

    @staticmethod
    def _count_rows(entry: Record, report: Any) -> None:
        """Add the rows the batch that just finished processed to its task attempt."""
        items = _items(report)
        done = max(items - entry["counted_items"], 0)
        entry["counted_items"] = items
        if entry["attempt"] is not None:
            entry["attempts"][entry["attempt"]]["items"] += done

    def records(self) -> tuple[int, list[Record]]:
        """How many messages arrived so far, and the records in the order workers started."""
        return self._messages, list(self._records.values())


def _items(report: Any) -> int:
    items = getattr(report, "items", 0)
    return items if isinstance(items, int) else 0


def redone_rows(records: list[Record]) -> list[int]:
    """Per record, the rows it processed in task attempts that a later attempt superseded.

    A task (a Ray Data block) that ran more than once counts from its last attempt: the one
    with the highest attempt number, or, where Ray gave none, the one that began last.
    """
    attempts: dict[str, list[tuple[tuple[int, int], int, int]]] = {}
    for index, entry in enumerate(records):
        for attempt in entry.get("attempts", {}).values():
            number = -1 if attempt["attempt"] is None else attempt["attempt"]
            order = (number, attempt["since"])
            attempts.setdefault(attempt["task"], []).append((order, index, attempt["items"]))
    redone = [0 for _ in records]
    for runs in attempts.values():
        last = max(runs)
        for run in runs:
            if run is not last:
                redone[run[1]] += run[2]
    return redone


def _counted_once(report: Any, redone: int) -> Any:
    """The worker's figures with the rows of its superseded attempts moved to redone_rows."""
    if redone <= 0 or not isinstance(report, ActorBatchReport):
        return report
    moved = min(redone, report.items)
    return replace(report, items=report.items - moved, redone_rows=report.redone_rows + moved)


def job_report(records: list[Record]) -> RayJobReport:
    """The report of the job whose collector holds ``records`` (in the order they started)."""
    redone = redone_rows(records)
    incarnations: dict[str, list[Record]] = {}
    for entry in records:
        actor_id = entry["identity"].get("actor_id")
        if actor_id is not None:
            incarnations.setdefault(actor_id, []).append(entry)
    rows = []
    for rank, entry in enumerate(records):
        identity = entry["identity"]
        actor_id = identity.get("actor_id")
        siblings = incarnations.get(actor_id, [entry]) if actor_id is not None else [entry]
        incarnation = next(index for index, other in enumerate(siblings) if other is entry)
        successor = incarnation + 1 if incarnation + 1 < len(siblings) else None
        report = _counted_once(entry["report"], redone[rank])
        rows.append(
            ActorReport(
                rank=rank,
                host=str(identity.get("host", "")),
                report=report,
                error=_how_it_ended(entry, successor),
                actor_id=actor_id,
                incarnation=incarnation,
                worker_id=str(identity.get("worker_id", "")),
                node_id=str(identity.get("node_id", "")),
                node_ip=str(identity.get("node_ip", "")),
                pid=identity.get("pid"),
                gpu_ids=tuple(str(gpu) for gpu in identity.get("gpu_ids", ())),
                function=str(identity.get("function", "")),
                last_failure=entry["last_failure"],
                closed=entry["phase"] == "closed" and entry["construction_error"] is None,
            )
        )
    return RayJobReport(ranks=tuple(rows))


def _how_it_ended(entry: Record, successor: int | None) -> str | None:
    """The row's ``error``: how a worker that did not end well ended; ``None`` if it did."""
    if entry["construction_error"] is not None:
        return f"died while being constructed: {entry['construction_error']}"
    phase = entry["phase"]
    during = (
        f" during batch {entry['batch']}"
        if phase == "busy"
        else " while being constructed"
        if phase == "constructing"
        else ""
    )
    if successor is not None and phase != "closed":
        return f"died{during}; Ray restarted it as incarnation {successor}"
    if phase == "busy":
        return (
            f"lost during batch {entry['batch']}: nothing came after it started (the actor "
            "died or was killed, or is still running)"
        )
    if phase == "constructing":
        return "lost while being constructed: it never said it was ready"
    return None


# The driver's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CollectorAddress:
    """Where workers find the collector: its actor's name and Ray namespace."""

    name: str
    namespace: str


class ReportCollector:
    """The job's report collector: a named Ray actor, started now, that workers report to.

    Make one on the driver before the dataset runs, hand it to
    :func:`~memscope.ray.managed`, and call :meth:`report` once the dataset has been
    consumed (or at any time, for the figures so far). The actor needs no CPU, is owned by
    the driver (it goes when the driver's job ends; :meth:`close` ends it sooner), and is
    named so that workers find it, with a fresh name unless ``name`` is given.

    Args:
        name: the actor's name; ``None`` picks a unique one. Two collectors cannot share
            a name in one namespace.
        namespace: the Ray namespace of the actor; ``None``: the driver's.
    """

    def __init__(self, name: str | None = None, *, namespace: str | None = None) -> None:
        for label, value in (("name", name), ("namespace", namespace)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentTypeError(f"{label} must be a str or None, got {value!r}")
            if value is not None and not value.strip():
                raise InvalidArgumentError(f"{label} must not be empty, got {value!r}")
        ray = require_ray()
        actor_name = name if name is not None else f"memscope-collector-{uuid.uuid4().hex[:12]}"
        remote_state = ray.remote(num_cpus=0, max_restarts=0)(CollectorState)
        try:
            self._actor = remote_state.options(name=actor_name, namespace=namespace).remote()
        except ValueError as error:
            raise InvalidArgumentError(
                f"cannot start a report collector named {actor_name!r}: {error}"
            ) from None
        self.address = CollectorAddress(
            actor_name,
            namespace if namespace is not None else ray.get_runtime_context().namespace,
        )
        self._closed = False
        logger.info("memscope.ray: report collector %r started", actor_name)

    @property
    def name(self) -> str:
        """The collector actor's name."""
        return self.address.name

    def report(self, *, timeout: float = 30.0, quiet: float = 0.25) -> RayJobReport:
        """The job's report: one row per actor (per incarnation), and the totals.

        Workers report without waiting, so their last messages may still be on the way when
        the dataset's last rows reach the driver. This waits until no message has arrived
        for ``quiet`` seconds (at most ``timeout`` seconds in all) and then reads the
        collector once more.

        Raises:
            ReportGatherError: the collector did not answer in time, is gone, or was closed.
        """
        wait_limit = check_positive_number(timeout, "timeout")
        quiet_seconds = check_positive_number(quiet, "quiet")
        if self._closed:
            raise ReportGatherError(
                f"the report collector {self.name!r} is closed: read its report before closing it"
            )
        ray = require_ray()
        deadline = time.monotonic() + wait_limit
        last_count: int | None = None
        unchanged_since = time.monotonic()
        while True:
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                count, records = ray.get(self._actor.records.remote(), timeout=remaining)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as error:
                raise ReportGatherError(
                    f"the report collector {self.name!r} did not answer within {wait_limit:g} s "
                    f"({type(error).__name__}); its figures cannot be read"
                ) from error
            now = time.monotonic()
            if count != last_count:
                last_count, unchanged_since = count, now
            elif now - unchanged_since >= quiet_seconds:
                break
            if now >= deadline:
                logger.info(
                    "memscope.ray: messages still arriving after %.1f s; reporting what came",
                    wait_limit,
                )
                break
            time.sleep(min(quiet_seconds / 4, 0.05))
        return job_report(records)

    def close(self) -> None:
        """End the collector actor; its figures are gone with it (read :meth:`report` first)."""
        if self._closed:
            return
        self._closed = True
        require_ray().kill(self._actor)

    def __enter__(self) -> ReportCollector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReportCollector(name={self.address.name!r}, namespace={self.address.namespace!r})"


# The worker's side ------------------------------------------------------------------------


def worker_identity(function: str, device: str, *, constructing: bool) -> dict[str, Any]:
    """Who this worker is, as the collector shows it."""
    ray = require_ray()
    context = ray.get_runtime_context()
    actor_id = context.get_actor_id()
    return {
        "actor_id": actor_id,
        "worker_id": context.get_worker_id(),
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
        "device": device,
        "function": function,
        "constructing": constructing,
    }


def current_task() -> tuple[str | None, int | None]:
    """The id of the Ray task this call runs in, and which attempt of it; ``None`` for what
    Ray cannot tell.

    Ray Data processes a block in one task, and a task Ray runs again (its actor died) keeps
    its id, with the next attempt number: the pair is the block attempt a batch belongs to.
    """
    ray = require_ray()
    try:
        task = ray.get_runtime_context().get_task_id()
    except Exception:
        logger.debug("memscope.ray: could not read the Ray task id", exc_info=True)
        return None, None
    attempt: int | None = None
    try:
        # Ray has no public call for the attempt; without it, the latest attempt to begin wins.
        core_worker = ray._private.worker.global_worker.core_worker
        number = core_worker.get_current_task_attempt_number()
        attempt = number if isinstance(number, int) else None
    except Exception:
        logger.debug("memscope.ray: could not read the Ray task's attempt", exc_info=True)
    return (task if isinstance(task, str) and task else None), attempt


class RayReporter:
    """A worker's end of the collector: each message is one ``.remote()`` call, not waited on.

    The collector is looked up once, when the worker starts. A collector that cannot be
    found, or a message that cannot be sent, is logged (once) and the work goes on without
    reporting: figures must never stop the data.
    """

    def __init__(self, address: CollectorAddress, worker_id: str) -> None:
        ray = require_ray()
        self._worker_id = worker_id
        self._warned = False
        self._handle: Any = None
        try:
            self._handle = ray.get_actor(address.name, namespace=address.namespace)
        except ValueError:
            logger.warning(
                "memscope.ray: no report collector %r in namespace %r; this worker's figures "
                "are not reported (was the ReportCollector closed, or made in another job?)",
                address.name,
                address.namespace,
            )

    def send(self, kind: str, data: Any = None) -> None:
        """Send one message; never raises, never waits."""
        if self._handle is None:
            return
        try:
            self._handle.record.remote(self._worker_id, kind, data)
        except Exception:
            if not self._warned:
                self._warned = True
                logger.warning("memscope.ray: could not report to the collector", exc_info=True)

    def started(self, batch: int, rows: int) -> None:
        """The worker began a batch, in the Ray task (block) and attempt it runs in."""
        task, attempt = current_task()
        self.send(STARTED, {"batch": batch, "rows": rows, "task": task, "attempt": attempt})

    def finished(self, batch: int, report: ActorBatchReport | None, failure: str | None) -> None:
        """The worker ended a batch."""
        self.send(
            FINISHED,
            {
                "batch": batch,
                # The report itself: Ray pickles a frozen dataclass faster than to_dict().
                "report": report,
                "failure": failure,
            },
        )

    def closed(self, report: ActorBatchReport | None) -> None:
        """Ray Data shut the worker down gracefully; ``report`` is its final figures."""
        self.send(CLOSED, {"report": report})

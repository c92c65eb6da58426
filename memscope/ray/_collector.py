"""The job's collector: one small Ray actor that every worker reports to, and its driver side.

Workers send messages and never wait for an answer (fire-and-forget ``.remote()`` calls), so
reporting never holds up the data path. Messages from one worker arrive in the order it sent
them, as Ray runs an actor's tasks from one caller in order.

Each worker process is one record, keyed by Ray's worker id: a restarted actor keeps its
actor id but runs in a new process, so it is a new record, the actor's next incarnation, and
the old one stays, marked as dead. A record also knows whether a batch was in flight when
the worker last spoke, so an actor that died in the middle of a batch is shown as such.

Rows are counted once per block, by block identity. A block that was running on an actor
when it died is run again by Ray on the actor's next incarnation, first (Ray retries the
dead actor's tasks in order on its restart), and a block is cut into the same batches every
time. So each batch's start names the batch by its content (its length and a hash of its
first and last rows, :func:`~memscope.ray._rows.batch_fingerprint`), and the job report
finds, for each incarnation that died, the longest run of its last finished batches that a
later incarnation of the same actor began with: those rows were done again, and Ray Data
kept the later attempt's output, not the dead one's. They move from ``items`` to
``redone_rows`` in the dead incarnation's row, so ``totals["items"]`` counts each row the
dataset holds once. For a function run in Ray tasks (no actor), Ray retries a dead worker's
task on any worker: the run is looked for anywhere in the other workers' batches.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from memscope._context_manager import SyncAndAsyncContextManager
from memscope._validation import check_positive_number
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError, ReportGatherError
from memscope.ray._import import require_ray
from memscope.ray._report import ActorBatchReport, ActorReport, RayJobReport, identity_fields

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
                # The content names of the batch in flight and of each batch that finished,
                # with the rows it added to the reports' items.
                "current": None,
                "done": [],
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
            block = data.get("block")
            entry["current"] = block if isinstance(block, str) else None
        elif kind == FINISHED:
            entry["phase"] = "ready"
            if data["report"] is not None:
                self._count_rows(entry, data["report"])
                entry["report"] = data["report"]
            entry["batch"] = entry["current"] = None
            if data["failure"] is not None:
                entry["last_failure"] = data["failure"]
        elif kind == CLOSED:
            if isinstance(data, dict) and data.get("report") is not None:
                # Rows the final figures add belong to no block attempt: they always count.
                entry["counted_items"] = _items(data["report"])
                entry["report"] = data["report"]
            if entry["phase"] != "busy":
                entry["phase"] = "closed"

    @staticmethod
    def _count_rows(entry: Record, report: Any) -> None:
        """Record the batch that just finished, with the rows it added."""
        items = _items(report)
        added = max(items - entry["counted_items"], 0)
        entry["counted_items"] = items
        if entry["current"] is not None:
            entry["done"].append((entry["current"], added))

    def records(self) -> tuple[int, list[Record]]:
        """How many messages arrived so far, and the records in the order workers started."""
        return self._messages, list(self._records.values())


def _items(report: Any) -> int:
    items = getattr(report, "items", 0)
    return items if isinstance(items, int) else 0


_LONGEST_REDONE_RUN = 4096
"""The most batches of a dead incarnation's block looked for in the next ones."""


def _died(entry: Record, has_successor: bool) -> bool:
    if entry["construction_error"] is not None:
        return False
    return entry["phase"] == "busy" or (has_successor and entry["phase"] != "closed")


def _names(entry: Record) -> list[str]:
    return [name for name, _ in entry.get("done", ())]


def _longest_begun_with(names: list[str], candidates: list[list[str]]) -> int:
    """The most last ``names`` that one of ``candidates`` begins with."""
    longest = 0
    for candidate in candidates:
        for width in range(min(len(names), len(candidate), _LONGEST_REDONE_RUN), longest, -1):
            if candidate[:width] == names[-width:]:
                longest = width
                break
    return longest


def _longest_held(names: list[str], candidates: list[list[str]]) -> int:
    """The most last ``names`` that one of ``candidates`` holds as a run, anywhere."""
    # A run of the last w + 1 names holds the last w too: grow the run until none holds it.
    longest = 0
    for candidate in candidates:
        width = longest + 1
        while width <= min(len(names), _LONGEST_REDONE_RUN) and _holds(candidate, names[-width:]):
            longest, width = width, width + 1
    return longest


def _holds(names: list[str], run: list[str]) -> bool:
    width = len(run)
    return any(names[start : start + width] == run for start in range(len(names) - width + 1))


def redone_rows(records: list[Record]) -> list[int]:
    """Per record, the rows it processed in batches that a later attempt ran again.

    For a record that died: the longest run of its last finished batches that a later
    incarnation of its actor began with (a function's task worker: that another worker ran
    anywhere), summed over those batches' rows.
    """
    redone = [0 for _ in records]
    for index, entry in enumerate(records):
        actor_id = entry["identity"].get("actor_id")
        if actor_id is None:
            others = [other for other in records if other is not entry]
        else:
            others = [
                other
                for other in records[index + 1 :]
                if other["identity"].get("actor_id") == actor_id
            ]
        done = entry.get("done", [])
        if not done or not _died(entry, has_successor=bool(others) and actor_id is not None):
            continue
        names = _names(entry)
        candidates = [_names(other) for other in others]
        if actor_id is None:
            width = _longest_held(names, candidates)
        else:
            width = _longest_begun_with(names, candidates)
        if width:
            redone[index] = sum(added for _, added in done[-width:])
    return redone


def _counted_once(report: Any, redone: int) -> Any:
    """The worker's figures with the rows of its batches that were run again moved to
    redone_rows."""
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
                incarnation=incarnation,
                last_failure=entry["last_failure"],
                **identity_fields(identity),
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


class ReportCollector(SyncAndAsyncContextManager):
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

    def _leave(self, error: BaseException | None) -> None:
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

    def started(self, batch: int, rows: int, block: str | None = None) -> None:
        """The worker began a batch; ``block`` names its content
        (:func:`~memscope.ray._rows.batch_fingerprint`), or is ``None`` when unknown."""
        self.send(STARTED, {"batch": batch, "rows": rows, "block": block})

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

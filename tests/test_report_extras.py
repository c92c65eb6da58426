"""A watcher of yours adds its own figures to the batch's report, as ``report.extras``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from memscope import managed_batch
from memscope.exceptions import InvalidArgumentTypeError, MemscopeError
from memscope.reports import BatchReport
from memscope.watch import Watcher


class CountsCleanups(Watcher):
    """Counts the batch's cleanup steps and reports them under its own name."""

    def __init__(self, name: str = "cleanup_steps") -> None:
        self.name = name
        self.steps = 0

    def cleaned(self, batch: Any, step: Any) -> None:
        self.steps += 1

    def report_part(self, batch: Any, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"extras": {self.name: self.steps}}


class Gives(Watcher):
    """Contributes exactly ``part`` to the report."""

    def __init__(self, part: Mapping[str, Any]) -> None:
        self.part = part

    def report_part(self, batch: Any, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.part


def test_a_watchers_own_figures_land_in_report_extras() -> None:
    """What a watcher returns under "extras" is in report.extras, by its name, and in the
    report's text; a report without any has an empty mapping."""
    watcher = CountsCleanups()
    with managed_batch("cpu", every=2, watchers=[watcher]) as batch:
        for _ in batch.track(range(6)):
            pass
    assert watcher.steps == 4  # after items 2, 4 and 6, and the final one
    assert batch.report.extras == {"cleanup_steps": 4}
    assert "extras: cleanup_steps 4" in str(batch.report)
    assert "cleanup_steps 4" in batch.report.summary()
    with managed_batch("cpu") as plain:
        pass
    assert plain.report.extras == {}
    assert "extras" not in str(plain.report)


def test_extras_of_several_watchers_are_merged_and_shown_while_running() -> None:
    """Two watchers' extras sit side by side, also in report_so_far(); a watcher may also
    fill one of the report's own fields beside its extras."""
    first, second = CountsCleanups("first"), CountsCleanups("second")
    both = Gives({"extras": {"tag": ["a", 1, None]}, "every": 3})
    with managed_batch("cpu", every=3, watchers=[first, second, both]) as batch:
        for _ in batch.track(range(3)):
            pass
        assert batch.report_so_far().extras == {"first": 1, "second": 1, "tag": ["a", 1, None]}
    assert batch.report.extras == {"first": 2, "second": 2, "tag": ["a", 1, None]}


def test_a_name_two_watchers_give_is_an_error_naming_both() -> None:
    """Nothing is overwritten: the second watcher giving a name is refused, naming both."""
    first, second = CountsCleanups("steps"), CountsCleanups("steps")
    refused = pytest.raises(MemscopeError, match="both contribute the extra 'steps'")
    with refused as caught, managed_batch("cpu", watchers=[first, second]):
        pass
    assert repr(first) in str(caught.value)
    assert repr(second) in str(caught.value)


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"extras": {"when": object()}}, "the extra 'when' = <object object"),
        ({"extras": {"ratio": {1, 2}}}, "JSON cannot hold"),
        ({"extras": {3: "three"}}, "names an extra 3, not a str"),
        ({"extras": [("a", 1)]}, "not a mapping of names to values"),
    ],
)
def test_extras_that_no_file_could_hold_are_refused_naming_the_watcher(
    part: Mapping[str, Any], message: str
) -> None:
    """A value JSON cannot hold, a name that is not a str, or extras that are no mapping
    fail when the report is made, naming the watcher, not later in to_json()."""
    watcher = Gives(part)
    with (
        pytest.raises(MemscopeError, match=message) as caught,
        managed_batch("cpu", watchers=[watcher]),
    ):
        pass
    assert repr(watcher) in str(caught.value)


def test_a_misspelt_field_points_to_extras() -> None:
    """A key the report has no field for is still refused, and the message says where a
    watcher's own figures go."""
    misspelt = Gives({"colour": "blue"})
    with (
        pytest.raises(MemscopeError, match='go under "extras"'),
        managed_batch("cpu", watchers=[misspelt]),
    ):
        pass


def test_extras_survive_json_and_keep_the_report_hashable(tmp_path: Path) -> None:
    """to_json and from_json keep the extras (NaN too, as JSON writes it); a report stays
    hashable, equal reports hash alike, and extras take part in equality."""
    extras = {"score": 0.5, "nested": {"k": [1, 2]}, "missing": math.nan}
    with managed_batch("cpu", watchers=[Gives({"extras": extras})]) as batch:
        pass
    path = batch.report.to_json(tmp_path / "report.json")
    assert json.loads(path.read_text())["extras"]["nested"] == {"k": [1, 2]}
    back = BatchReport.from_json(path)
    assert back.extras["nested"] == {"k": [1, 2]}
    assert math.isnan(back.extras["missing"])
    assert hash(batch.report) == hash(batch.report)
    same = BatchReport.from_dict({**batch.report.to_dict(), "extras": {"score": 0.5}})
    assert same != batch.report  # the extras differ


def test_extras_that_are_not_an_object_in_a_file_are_refused() -> None:
    """from_dict refuses extras that are not a JSON object, naming them."""
    with managed_batch("cpu") as batch:
        pass
    with pytest.raises(InvalidArgumentTypeError, match="extras must be an object"):
        BatchReport.from_dict({**batch.report.to_dict(), "extras": [1, 2]})


def test_extras_are_the_values_when_the_report_was_made() -> None:
    """A report keeps its own copy: a watcher changing its list later changes no report."""
    seen: list[int] = []

    class Items(Watcher):
        def items_done(self, batch: Any, item: int, count: int) -> None:
            seen.append(item)

        def report_part(self, batch: Any, figures: Mapping[str, Any]) -> Mapping[str, Any]:
            return {"extras": {"items": seen}}

    with managed_batch("cpu", watchers=[Items()]) as batch:
        batch.step()
        so_far = batch.report_so_far()
        batch.step()
    assert so_far.extras == {"items": [1]}
    assert batch.report.extras == {"items": [1, 2]}


class Broken(Watcher):
    """Fails while making its part of the report."""

    def report_part(self, batch: Any, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        raise RuntimeError("watcher bug")


@pytest.mark.parametrize("broken", [Broken(), Gives({"extras": {"when": object()}})])
def test_a_failing_part_never_replaces_the_users_exception(
    broken: Watcher, memscope_log: pytest.LogCaptureFixture
) -> None:
    """A watcher whose part fails while the user's exception ends the batch adds nothing:
    the user's exception propagates (the failure logged and noted on it), and the report is
    made with every other watcher's part."""
    user_error = ValueError("bad image")
    batch = managed_batch("cpu", watchers=[broken, CountsCleanups()])
    with pytest.raises(ValueError, match="bad image") as raised, batch:
        raise user_error
    assert raised.value is user_error
    assert batch.report.ended_by == "ValueError"
    assert batch.report.extras == {"cleanup_steps": 1}
    assert any(repr(broken) in note for note in getattr(user_error, "__notes__", []))
    assert any(record.levelname == "WARNING" for record in memscope_log.records)


def test_a_failing_part_is_raised_after_the_report_is_made() -> None:
    """Without a user exception the part's failure is raised when the batch has ended, and
    the report is there, with the other watchers' parts."""
    counting = CountsCleanups()
    batch = managed_batch("cpu", watchers=[Broken(), counting])
    with pytest.raises(RuntimeError, match="watcher bug"), batch:
        batch.step()
    assert batch.report.items == 1
    assert batch.report.extras == {"cleanup_steps": 1}
    assert not batch.active


def test_a_failing_part_is_raised_by_report_so_far() -> None:
    """While the batch runs, report_so_far() raises a part's failure as it is."""
    batch = managed_batch("cpu", watchers=[Broken()]).open()
    with pytest.raises(RuntimeError, match="watcher bug"):
        batch.report_so_far()
    batch.step()
    with pytest.raises(RuntimeError, match="watcher bug"):
        batch.close()
    assert batch.report.items == 1


def test_a_failing_part_is_noted_on_an_interrupt_of_the_final_cleanup() -> None:
    """A KeyboardInterrupt in the final cleanup is what the batch raises; a part failing
    after it is not lost: it is noted on the interrupt, and the report is made."""

    class Interrupts(Watcher):
        def cleaned(self, batch: Any, step: Any) -> None:
            raise KeyboardInterrupt

    batch = managed_batch("cpu", watchers=[Interrupts(), Broken(), CountsCleanups()])
    with pytest.raises(KeyboardInterrupt) as raised, batch:
        pass
    assert any("watcher bug" in note for note in raised.value.__notes__)
    assert batch.report.ended_by == "KeyboardInterrupt"
    assert batch.report.extras == {"cleanup_steps": 0}

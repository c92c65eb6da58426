"""Naming a Ray batch by its content, so that a block Ray Data runs again is recognised."""

from __future__ import annotations

import numpy as np
import pytest

from memscope.ray._rows import BatchRows, batch_fingerprint


def numpy_batch(start: int, rows: int = 20) -> dict[str, np.ndarray]:
    """A batch of ``rows`` ids from ``start``, with an image-like and a text column."""
    ids = np.arange(start, start + rows)
    return {
        "id": ids,
        "pixels": np.stack([np.full((4, 4), value, dtype=np.float32) for value in ids]),
        "path": np.array([f"images/{value}.png" for value in ids], dtype=object),
    }


def test_the_same_rows_get_the_same_name() -> None:
    """Two copies of one batch (a block cut again into batches) share their name."""
    assert batch_fingerprint(numpy_batch(40)) == batch_fingerprint(numpy_batch(40))


@pytest.mark.parametrize("other", [numpy_batch(60), numpy_batch(40, rows=19)])
def test_other_rows_or_another_length_get_another_name(other: dict[str, np.ndarray]) -> None:
    """The next batch of a block, or a shorter one, is named differently."""
    assert batch_fingerprint(numpy_batch(40)) != batch_fingerprint(other)


def test_a_change_in_the_last_row_changes_the_name() -> None:
    """The last row is part of the name, not only the first."""
    changed = numpy_batch(40)
    changed["pixels"][-1, 0, 0] = -1.0
    assert batch_fingerprint(changed) != batch_fingerprint(numpy_batch(40))


def test_object_columns_are_named_by_value_not_by_address() -> None:
    """Text in object arrays names the batch by its characters, so it holds across processes."""
    first = {"path": np.array(["a.png", "b.png"], dtype=object)}
    second = {"path": np.array(["".join(["a", ".png"]), "b.png"], dtype=object)}
    assert batch_fingerprint(first) == batch_fingerprint(second)


def test_pandas_and_pyarrow_batches_are_named_too() -> None:
    """DataFrames and Tables get names that follow their content."""
    pandas = pytest.importorskip("pandas")
    pyarrow = pytest.importorskip("pyarrow")
    frame = pandas.DataFrame({"id": range(20)})
    assert batch_fingerprint(frame) == batch_fingerprint(frame.copy())
    assert batch_fingerprint(frame) != batch_fingerprint(frame.iloc[1:])
    table = pyarrow.table({"id": list(range(20))})
    assert batch_fingerprint(table) == batch_fingerprint(pyarrow.table({"id": list(range(20))}))
    assert batch_fingerprint(table) != batch_fingerprint(table.slice(1))


def test_an_empty_batch_is_named_by_its_length() -> None:
    """A batch without rows has a name too."""
    assert batch_fingerprint({"id": np.arange(0)}) == batch_fingerprint({"id": np.arange(0)})


def test_batch_rows_name_their_batch_by_its_content() -> None:
    """BatchRows' fingerprint is the batch's content fingerprint, worked out once."""
    rows = BatchRows(numpy_batch(0))
    assert rows.fingerprint == batch_fingerprint(numpy_batch(0))
    assert rows.fingerprint is rows.fingerprint

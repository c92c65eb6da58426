"""Ray Data batches seen as rows, so that ``process_in_chunks`` can slice them.

``map_batches`` hands a function one batch in one of three formats: a dict of columns (NumPy
arrays, with ``batch_format="numpy"``, the default), a pandas ``DataFrame`` or a pyarrow
``Table``. :class:`BatchRows` gives any of them a length and row slices in the same format,
and :func:`concatenate_batches` joins what the function returned for consecutive slices
back into one batch, in order. NumPy, pandas and pyarrow are imported only when a batch of
theirs is joined: Ray Data brings them.

:func:`batch_fingerprint` names a batch by its content, so that the job report can tell a
block Ray Data ran again from new work (see :mod:`memscope.ray._collector`).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__: list[str] = []

_FORMATS = "a dict of columns (batch_format='numpy'), a pandas DataFrame or a pyarrow Table"


def _library(batch: object) -> str:
    """The top-level package that defines the batch's type: ``pandas``, ``pyarrow``..."""
    return type(batch).__module__.partition(".")[0]


def row_count(batch: object) -> int:
    """How many rows ``batch`` holds; an error for a batch format memscope cannot slice."""
    if isinstance(batch, Mapping):
        lengths = {name: len(column) for name, column in batch.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidArgumentError(
                f"the batch's columns differ in length, so it cannot be split into rows: {lengths}"
            )
        return next(iter(lengths.values()), 0)
    library = _library(batch)
    if library == "pandas":
        return len(batch)  # type: ignore[arg-type]
    if library == "pyarrow" and hasattr(batch, "num_rows"):
        return int(batch.num_rows)
    raise InvalidArgumentTypeError(
        f"a map_batches batch must be {_FORMATS} to be split into chunks; got "
        f"{type(batch).__module__}.{type(batch).__qualname__}"
    )


def slice_rows(batch: Any, start: int, stop: int) -> Any:
    """Rows ``start`` to ``stop`` of ``batch``, in the batch's own format."""
    if isinstance(batch, Mapping):
        return {name: column[start:stop] for name, column in batch.items()}
    if _library(batch) == "pandas":
        return batch.iloc[start:stop]
    return batch.slice(start, stop - start)


_SAMPLED_VALUES = 256
"""How many values of a large NumPy row name it: its first, its last and a spread between."""


def _row_bytes(value: Any) -> bytes:
    """One cell's content as bytes: for a NumPy row of plain values, its shape and (for a
    large one, a spread of) its values; else its repr (which NumPy and pandas keep short)."""
    dtype = getattr(value, "dtype", None)
    ravel = getattr(value, "ravel", None)
    if dtype is not None and ravel is not None and getattr(dtype, "hasobject", True) is False:
        flat = ravel()
        if flat.size > 3 * _SAMPLED_VALUES:
            step = max(flat.size // _SAMPLED_VALUES, 1)
            parts = (flat[:_SAMPLED_VALUES], flat[::step], flat[-_SAMPLED_VALUES:])
            flat_bytes = b"".join(part.tobytes() for part in parts)
        else:
            flat_bytes = flat.tobytes()
        return f"{dtype.str}{getattr(value, 'shape', ())}".encode() + flat_bytes
    return repr(value).encode("utf-8", "backslashreplace")


def _cells(batch: Any, position: int) -> Any:
    """The cells of one row of a pandas or pyarrow batch, by column."""
    if _library(batch) == "pandas":
        return [(name, batch[name].iat[position]) for name in batch.columns]
    return [(name, batch.column(name)[position].as_py()) for name in batch.column_names]


def batch_fingerprint(batch: Any) -> str:
    """A short name for a batch's content: its row count, its columns, and its first and
    last rows, hashed. The same rows in the same format give the same name in any process.

    It costs a few rows' worth of work, whatever the batch's size (a large NumPy row is
    sampled); two batches whose lengths and first and last rows agree share a name.
    """
    digest = hashlib.blake2b(digest_size=8)
    length = row_count(batch)
    digest.update(str(length).encode())
    if length:
        if isinstance(batch, Mapping):
            cells = [
                (name, cell)
                for name, column in batch.items()
                for cell in (column[0], column[length - 1])
            ]
        else:
            cells = [*_cells(batch, 0), *_cells(batch, length - 1)]
        for name, cell in cells:
            digest.update(repr(name).encode("utf-8", "backslashreplace"))
            digest.update(_row_bytes(cell))
    return digest.hexdigest()


class BatchRows(Sequence[Any]):
    """A batch as a sequence of rows whose slices are batches of the same format.

    A slice of every row is the batch itself. Indexing with an int gives a one-row batch:
    ``process_in_chunks`` only ever slices.
    """

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self._length = row_count(batch)
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """:func:`batch_fingerprint` of the batch, worked out on first use."""
        if self._fingerprint is None:
            self._fingerprint = batch_fingerprint(self.batch)
        return self._fingerprint

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                raise InvalidArgumentError(f"batch rows are sliced with step 1, got {index!r}")
            if start == 0 and stop >= self._length:
                # The batch unsplit, as Ray Data handed it over: no copy, no new object.
                return self.batch
            return slice_rows(self.batch, start, max(start, stop))
        position = range(self._length)[index]
        return slice_rows(self.batch, position, position + 1)


def concatenate_batches(results: list[Any]) -> Any:
    """The results of consecutive slices joined into one batch, in order.

    One result (the batch was not split) is returned as it is, without a copy.
    """
    if len(results) == 1:
        return results[0]
    if not results:
        raise InvalidArgumentError("there are no chunk results to join")
    first = results[0]
    if isinstance(first, Mapping):
        return _concatenate_columns(results)
    library = _library(first)
    if library == "pandas":
        return importlib.import_module("pandas").concat(results)
    if library == "pyarrow":
        return importlib.import_module("pyarrow").concat_tables(results)
    raise InvalidArgumentTypeError(
        f"the function must return {_FORMATS} so that the results of a split batch can be "
        f"joined; it returned {type(first).__module__}.{type(first).__qualname__}"
    )


def _concatenate_columns(results: list[Any]) -> dict[str, Any]:
    names = list(results[0])
    for result in results[1:]:
        if not isinstance(result, Mapping) or list(result) != names:
            found = list(result) if isinstance(result, Mapping) else type(result).__name__
            raise InvalidArgumentError(
                "the function returned different columns for the chunks of one batch "
                f"({names} then {found}); they cannot be joined"
            )
    joined: dict[str, Any] = {}
    for name in names:
        columns = [result[name] for result in results]
        if all(isinstance(column, list) for column in columns):
            joined[name] = list(itertools.chain.from_iterable(columns))
        else:
            joined[name] = importlib.import_module("numpy").concatenate(columns)
    return joined

"""The user's table (data.path in params.yaml): read, checked, and split for training and test.
Text columns become categoricals with categories from the whole table, so both splits share
them; a classification target's codes 0..k-1 are its sorted labels. The splits are Parquet,
which keeps those types exactly. Every check runs on the table and again on each split read."""

from __future__ import annotations

import difflib
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hpo.config import DataParams
from hpo.errors import REBUILD, PipelineError, file_error

READERS = {".csv": pd.read_csv, ".gz": pd.read_csv,
           ".parquet": pd.read_parquet, ".pq": pd.read_parquet}  # fmt: skip
CLASSES_KEY = b"hpo.classes"  # Parquet metadata of a split: its classes, in code order


@dataclass(frozen=True)
class Split:
    """Features and target of one split, as models take them."""

    x: pd.DataFrame
    y: np.ndarray  # float targets, or class codes 0..k-1
    classes: list  # the class labels in code order; empty for regression

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def read_table(data: DataParams) -> pd.DataFrame:
    """The table at data.path, checked; its checksum verified when data.sha256 gives one, or
    a file beside it does (`<file>.sha256`, as `sha256sum` writes it)."""
    path, sidecar = Path(data.path), Path(f"{data.path}.sha256")
    if path.suffix not in READERS or (path.suffix == ".gz" and Path(path.stem).suffix != ".csv"):
        raise PipelineError(f"data.path: {path} is not a CSV (.csv, .csv.gz) or Parquet file")
    expected = data.sha256 and data.sha256.lower()
    if expected is None and sidecar.is_file():
        expected = (sidecar.read_text(errors="replace").split() or [""])[0].lower()
        if len(expected) != 64:
            raise PipelineError(f"{sidecar}: holds no sha256 digest of {path.name}")
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if expected is not None and digest != expected:
            raise PipelineError(
                f"{path}: checksum mismatch (sha256 {digest}, expected {expected}); "
                "the file is truncated or modified"
            )
        frame = READERS[path.suffix](path)
    except (OSError, ValueError, EOFError, zlib.error, pd.errors.ParserError) as exc:
        raise file_error(path, exc, "give data.path a CSV or Parquet file with a header") from None
    frame.columns = [str(column) for column in frame.columns]
    return _as_model_input(frame, data, path)


def _as_model_input(frame: pd.DataFrame, data: DataParams, path: Path) -> pd.DataFrame:
    """The features (text as categoricals, the rest as floats, as a served model's caller sends
    them) and the target (True/False kept as labels), after `check`, which refuses dates."""
    if data.target not in frame.columns:
        close = difflib.get_close_matches(data.target, list(frame.columns), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PipelineError(f"data.target: {path} has no column {data.target!r}{hint}")
    missing = [column for column in data.drop if column not in frame.columns]
    if missing:
        raise PipelineError(f"data.drop: {path} has no column {missing[0]!r}")
    frame = frame.drop(columns=data.drop)
    for column in frame.columns:
        values, target = frame[column], column == data.target
        inferred = pd.api.types.infer_dtype(values)
        kind = "f" if inferred in ("decimal", "empty") else values.dtype.kind
        if kind in "biuf" and not (target and kind in "biu"):  # labels 0, 1 or True stay labels
            frame[column] = values.astype(np.float64)
        elif kind in "OSUb" or isinstance(values.dtype, pd.CategoricalDtype):
            frame[column] = as_categorical(values, sorted(values.dropna().astype(str).unique()))
    check(frame, data, path)
    return frame


def as_categorical(values: pd.Series, categories: list[str]) -> pd.Categorical:
    """Text cells as `categories`, missing where a cell is: the table's and a served caller's."""
    return pd.Categorical(values.astype("str").where(values.notna()), categories)


def check(frame: pd.DataFrame, data: DataParams, path: Path) -> None:
    """One line for the first problem of a table or split: no rows, no features, a type the
    models cannot take, an infinite value, a missing target, a wrong number of classes."""
    features = [column for column in frame.columns if column != data.target]
    if frame.empty or not features:
        raise PipelineError(f"{path}: {'no rows' if frame.empty else 'no feature columns'}")
    for column in frame.columns:
        values = frame[column]
        numeric = pd.api.types.is_numeric_dtype(values)
        if not (numeric or isinstance(values.dtype, pd.CategoricalDtype)):
            raise PipelineError(
                f"{path}: column {column!r} is {values.dtype}; give numbers or text"
            )
        if column != data.target and set(column) & set('[]<",:{}\n\r'):
            raise PipelineError(
                f'{path}: column {column!r}: XGBoost or LightGBM refuse [ ] < " , : {{ }} and line '
                "breaks in a feature name; rename it"
            )
        if numeric and np.isinf(values).any():
            raise PipelineError(
                f"{path}: infinite values in column {column!r} (rows {_rows(np.isinf(values))})"
            )
    target = frame[data.target]
    if target.isna().any():
        raise PipelineError(
            f"{path}: the target {data.target!r} is missing in rows {_rows(target.isna())}; "
            "drop or fill those rows"
        )
    if data.task == "regression" and not pd.api.types.is_numeric_dtype(target):
        raise PipelineError(
            f"{path}: the target {data.target!r} is not numeric; data.task regression needs "
            "numbers (binary and multiclass take labels)"
        )
    classes = target.nunique()
    if classes < 2:
        raise PipelineError(
            f"{path}: the target {data.target!r} has one value; there is nothing to learn"
        )
    if (data.task, classes > 2) in {("binary", True), ("multiclass", False)}:
        raise PipelineError(
            f"{path}: the target {data.target!r} has {classes} classes; data.task {data.task} "
            f"takes {'2 (multiclass takes more)' if classes > 2 else '3 or more (binary takes 2)'}"
        )


def _rows(mask: pd.Series) -> str:
    """The first few rows where `mask` holds, numbered as data rows of the file (from 1)."""
    rows = np.flatnonzero(mask.to_numpy()) + 1
    return ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def split(
    frame: pd.DataFrame, data: DataParams, test_size: float, seed: int, cv_folds: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/test split, stratified for classification; the training split must hold
    two rows a fold, and each class as many rows as there are folds."""
    from sklearn.model_selection import train_test_split

    classified = data.task != "regression"
    if classified:  # the target as a categorical of its sorted labels: its codes are classes
        counts = frame[data.target].value_counts()
        if counts.min() < 2:
            raise PipelineError(
                f"{data.path}: class '{counts.idxmin()}' has 1 row; a stratified split needs 2 "
                "or more of each class (drop the class or add rows)"
            )
        labels = sorted(frame[data.target].unique())
        frame = frame.assign(**{data.target: pd.Categorical(frame[data.target], labels)})
    try:
        train, test = train_test_split(
            frame, test_size=test_size, random_state=seed,
            stratify=frame[data.target] if classified else None,
        )  # fmt: skip
    except ValueError as exc:
        reason = " ".join(str(exc).split())
        raise PipelineError(f"prepare.test_size {test_size}: {reason}") from None
    if len(train) < 2 * cv_folds:
        raise PipelineError(
            f"{data.path}: the training split has {len(train)} rows; tune.cv_folds = {cv_folds} "
            f"needs at least {2 * cv_folds} (2 a fold)"
        )
    if classified:
        counts = train[data.target].value_counts()
        if counts.min() < cv_folds:
            raise PipelineError(
                f"{data.path}: class '{counts.idxmin()}' has {counts.min()} training rows, "
                f"fewer than tune.cv_folds = {cv_folds}; lower the folds or drop the class"
            )
        missing = set(counts.index) - set(test[data.target])
        if missing:
            raise PipelineError(
                f"{data.path}: class '{min(missing)}' has no test rows; raise prepare.test_size"
            )
    return train.reset_index(drop=True), test.reset_index(drop=True)


def write_split(frame: pd.DataFrame, path: Path, target: str) -> None:
    """The split as Parquet; a classification target's classes in its metadata (Parquet keeps
    text categories, not numeric ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if isinstance(frame[target].dtype, pd.CategoricalDtype):
        classes = json.dumps(frame[target].cat.categories.tolist()).encode()
        table = table.replace_schema_metadata({**table.schema.metadata, CLASSES_KEY: classes})
    pq.write_table(table, path)


def read_split(path: Path, data: DataParams) -> Split:
    """A split the prepare stage wrote, checked again: one line if it is missing or damaged."""
    try:
        if path.is_dir():  # Parquet would read a folder as a dataset of its files
            raise IsADirectoryError(path)
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # ValueError: not Parquet, or cut short
        raise file_error(path, exc, REBUILD) from None
    frame = table.to_pandas()
    if data.target not in frame.columns:
        raise PipelineError(f"{path}: no column {data.target!r} (data.target); {REBUILD}")
    check(frame, data, path)
    target = frame[data.target]
    x = frame.drop(columns=data.target)
    if data.task == "regression":
        return Split(x, target.to_numpy(dtype=np.float64), [])
    classes = json.loads((table.schema.metadata or {}).get(CLASSES_KEY, b"null"))
    if not classes:
        raise PipelineError(f"{path}: the target {data.target!r} holds no classes; {REBUILD}")
    codes = pd.Categorical(target, classes).codes
    return Split(x, codes.astype(np.int64), classes)

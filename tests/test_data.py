"""The table params.yaml names: read, checked and split by the real prepare stage; the shipped
table is what data/california_housing.py derives; every bad table stops prepare with one
'error: ...' line that names the file or key, and writes nothing; a damaged prepared split is
one line naming the file, with the way to rebuild it."""

from __future__ import annotations

import decimal
import gzip
import hashlib
import importlib.util
import io
import math
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, deep_update, tiered
from sklearn.datasets import load_breast_cancer, load_wine

from hpo.config import DataParams, load_params
from hpo.data import Split, read_split, read_table, split, write_split
from hpo.errors import REBUILD, PipelineError
from hpo.tasks import Task

PARAMS = REPO / "params.yaml"
SHIPPED = REPO / "data" / "california_housing.csv.gz"
FEATURES = ["MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude",
            "Longitude"]  # fmt: skip
TARGET = "MedHouseVal"
TABLE = "data/table.csv"
TRAIN, TEST = "data/prepared/train.parquet", "data/prepared/test.parquet"


def _derivation() -> ModuleType:
    """data/california_housing.py, imported from its file (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "california_housing", REPO / "data" / "california_housing.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shipped_data() -> DataParams:
    """params.yaml's data section, its path made absolute (tests run anywhere)."""
    data = load_params(PARAMS).data
    return data.model_copy(update={"path": str(REPO / data.path)})


@pytest.fixture(scope="module")
def shipped() -> pd.DataFrame:
    return read_table(_shipped_data())


def _csv(header: str, rows: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in [header, *rows]).encode()


def _numbers(n: int) -> list[str]:
    """`n` rows of x,z,y: two numeric features and a numeric target."""
    return [f"{i},{i % 3},{i * 0.5}" for i in range(n)]


def _labelled(counts: dict[str, int]) -> list[str]:
    """Rows of x,z,y with `counts[label]` rows of each label, label after label."""
    labels = [label for label, n in counts.items() for _ in range(n)]
    return [f"{i},{i % 3},{label}" for i, label in enumerate(labels)]


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _project(
    directory: Path, name: str, content: bytes | None, overrides: dict[str, Any] | None = None
) -> Path:
    """A project folder as prepare needs it: params.yaml whose data section names the table
    `name` (target y, regression, tune.cv_folds 2 unless overridden), dvc.yaml and the table."""
    if content is not None:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(content)
    shutil.copy(REPO / "dvc.yaml", directory / "dvc.yaml")
    params = yaml.safe_load(PARAMS.read_text())
    params["data"] = {"path": name, "target": "y", "task": "regression", "drop": []}
    deep_update(params, {"tune": {"cv_folds": 2}})
    deep_update(params, overrides or {})
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return directory


def _data(project: Path) -> DataParams:
    return load_params(project / "params.yaml").data


# --- the shipped table ------------------------------------------------------------------------


def _declared_digest() -> str:
    """The shipped table's sha256 as the project declares it: data.sha256 in params.yaml, or
    the `<file>.sha256` file beside the table (sha256sum's format)."""
    declared = load_params(PARAMS).data.sha256
    sidecar = Path(f"{SHIPPED}.sha256")
    if declared is None and sidecar.is_file():
        declared = sidecar.read_text().split()[0]
    assert declared is not None, "the shipped table has no checksum to verify"
    return declared


def test_the_shipped_table_is_what_the_derivation_script_writes() -> None:
    assert gzip.decompress(SHIPPED.read_bytes()) == _derivation().derived_csv()
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == _declared_digest()


def test_the_derivation_matches_scikit_learns_check_values(shipped: pd.DataFrame) -> None:
    assert list(shipped.columns) == [*FEATURES, TARGET]
    assert len(shipped) == 20640
    assert not shipped.isna().any().any()
    assert round(shipped[TARGET].mean(), 6) == 2.068558
    assert round(shipped["MedInc"].mean(), 6) == 3.870671
    assert shipped[TARGET].max() == pytest.approx(5.00001)


def test_the_shipped_table_is_prepared_by_the_stage(tmp_path: Path, run_stage) -> None:
    """Control for the bad-table cases: the shipped params and table in the same layout."""
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "data").mkdir()
    for shipped_file in SHIPPED.parent.glob(f"{SHIPPED.name}*"):  # with its checksum file
        (tmp_path / "data" / shipped_file.name).symlink_to(shipped_file)

    result = run_stage("prepare", tmp_path)

    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == "prepared 16512 training and 4128 test rows"
    data = load_params(tmp_path / "params.yaml").data
    train, test = read_split(tmp_path / TRAIN, data), read_split(tmp_path / TEST, data)
    assert (train.x.shape, test.x.shape) == ((16512, 8), (4128, 8))
    assert list(train.x.columns) == FEATURES
    assert train.classes == test.classes == []
    assert train.y.dtype == np.float64


# --- the split --------------------------------------------------------------------------------


def _with_row_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(row_id=range(len(frame)))


def test_split_sizes(shipped: pd.DataFrame) -> None:
    train, test = split(shipped, _shipped_data(), test_size=0.2, seed=42, cv_folds=5)

    assert (len(train), len(test)) == (16512, 4128)
    assert list(train.columns) == list(test.columns) == [*FEATURES, TARGET]


def test_split_is_deterministic_per_seed(shipped: pd.DataFrame) -> None:
    frame, data = _with_row_ids(shipped), _shipped_data()
    train_a, test_a = split(frame, data, test_size=0.2, seed=42, cv_folds=5)
    train_b, test_b = split(frame, data, test_size=0.2, seed=42, cv_folds=5)
    _, test_other = split(frame, data, test_size=0.2, seed=43, cv_folds=5)

    pd.testing.assert_frame_equal(train_a, train_b)
    pd.testing.assert_frame_equal(test_a, test_b)
    assert set(test_a["row_id"]) != set(test_other["row_id"])


def test_split_rows_do_not_overlap(shipped: pd.DataFrame) -> None:
    frame = _with_row_ids(shipped)
    train, test = split(frame, _shipped_data(), test_size=0.2, seed=42, cv_folds=5)

    train_ids, test_ids = set(train["row_id"]), set(test["row_id"])
    assert not train_ids & test_ids
    assert train_ids | test_ids == set(range(len(frame)))


@pytest.mark.parametrize(
    ("frame", "task"),
    [
        pytest.param(load_breast_cancer(as_frame=True).frame, "binary", id="breast-cancer"),
        pytest.param(load_wine(as_frame=True).frame, "multiclass", id="wine"),
    ],
)
def test_a_classification_split_keeps_the_class_proportions(
    frame: pd.DataFrame, task: Task
) -> None:
    data = DataParams(path="table.csv", target="target", task=task)
    train, test = split(frame, data, test_size=0.2, seed=42, cv_folds=5)

    table = frame["target"].value_counts()
    assert len(test) == math.ceil(0.2 * len(frame))  # scikit-learn rounds the test size up
    for label, count in table.items():
        assert abs((test["target"] == label).sum() - count * len(test) / len(frame)) < 1
        assert (train["target"] == label).sum() + (test["target"] == label).sum() == count
    categories = sorted(table.index)
    assert list(train["target"].cat.categories) == list(test["target"].cat.categories) == categories


# --- what prepare makes of a table ------------------------------------------------------------

# Empty and NA cells are missing; "violet", in one row, is in one split only.
COLOURS = [*["red", "green", "", "blue", "NA", "green", "red", "blue"] * 4, "violet"]


def test_text_columns_become_categoricals_shared_by_both_splits(tmp_path: Path, run_stage) -> None:
    rows = [f"{i},{colour},{i * 0.5}" for i, colour in enumerate(COLOURS)]
    project = _project(tmp_path, TABLE, _csv("id,colour,y", rows))

    result = run_stage("prepare", project)

    assert result.exit_code == 0, result.stderr
    splits = [read_split(project / name, _data(project)) for name in (TRAIN, TEST)]
    for part in splits:
        colours = part.x["colour"]
        assert list(colours.cat.categories) == ["blue", "green", "red", "violet"]
        ids = part.x["id"].astype(int)
        expected = [COLOURS[i] if COLOURS[i] not in ("", "NA") else None for i in ids]
        assert [None if pd.isna(c) else c for c in colours] == expected
    assert sum(int(part.x["colour"].isna().sum()) for part in splits) == 8
    assert sum(len(part.x) for part in splits) == len(COLOURS)


LABELS = ["pear", "apple", "fig"] * 10  # not in sorted order of first appearance


def test_a_classification_target_is_a_categorical_of_its_sorted_labels(
    tmp_path: Path, run_stage
) -> None:
    rows = [f"{i},{i % 4},{label}" for i, label in enumerate(LABELS)]
    project = _project(tmp_path, TABLE, _csv("id,z,y", rows), {"data": {"task": "multiclass"}})

    result = run_stage("prepare", project)

    assert result.exit_code == 0, result.stderr
    stored = pd.read_parquet(project / TRAIN)["y"]
    assert isinstance(stored.dtype, pd.CategoricalDtype)
    assert list(stored.cat.categories) == ["apple", "fig", "pear"]
    for name in (TRAIN, TEST):
        part: Split = read_split(project / name, _data(project))
        assert part.classes == ["apple", "fig", "pear"]
        assert part.y.dtype == np.int64
        ids = part.x["id"].astype(int)
        assert [part.classes[code] for code in part.y] == [LABELS[i] for i in ids]


def test_a_parquet_table_is_prepared(tmp_path: Path, run_stage) -> None:
    wine = load_wine(as_frame=True)
    frame = wine.frame.assign(target=wine.target_names[wine.target])  # class_0, ...
    overrides = {"data": {"target": "target", "task": "multiclass"}, "tune": {"cv_folds": 5}}
    project = _project(tmp_path, "data/wine.parquet", _parquet(frame), overrides)

    result = run_stage("prepare", project)

    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == "prepared 142 training and 36 test rows"
    train = read_split(project / TRAIN, _data(project))
    assert train.classes == ["class_0", "class_1", "class_2"]
    assert list(train.x.columns) == list(wine.feature_names)
    assert np.bincount(train.y).tolist() == [47, 57, 38]


def test_numeric_class_labels_are_the_classes_of_both_splits(tmp_path: Path, run_stage) -> None:
    """Labels 0 and 1, as most binary tables have them (here scikit-learn's breast cancer)."""
    cancer = load_breast_cancer(as_frame=True).frame.assign(id=lambda f: range(len(f)))
    overrides = {"data": {"target": "target", "task": "binary"}}
    project = _project(tmp_path, TABLE, cancer.to_csv(index=False).encode(), overrides)

    result = run_stage("prepare", project)

    assert result.exit_code == 0, result.stderr
    for name in (TRAIN, TEST):
        part = read_split(project / name, _data(project))
        assert part.classes == [0, 1]
        assert part.y.tolist() == cancer["target"].iloc[part.x["id"].astype(int)].tolist()


def test_every_number_type_is_a_float_feature_and_a_boolean_target_keeps_its_labels(
    tmp_path: Path, run_stage
) -> None:
    """As a database export has them: Parquet decimals, booleans, unsigned and nullable integers
    and a column of nothing but nulls. Floats are what a served model's caller sends (MLflow
    infers no schema for uint64, and an int64 one refuses a missing value)."""
    rows = range(40)
    frame = pd.DataFrame({
        "id": rows, "price": [decimal.Decimal(f"{i}.25") for i in rows],
        "member": [i % 3 == 0 for i in rows], "big": [2**63 + i for i in rows],
        "visits": pd.array([None if i % 4 == 0 else i for i in rows], dtype="Int64"),
        "notes": [None] * 40, "y": [i % 2 == 0 for i in rows],
    })  # fmt: skip
    types = {"id": pa.int64(), "price": pa.decimal128(6, 2), "member": pa.bool_(),
             "big": pa.uint64(), "visits": pa.int64(), "notes": pa.null(),
             "y": pa.bool_()}  # fmt: skip
    table = pa.Table.from_pandas(frame, schema=pa.schema(types.items()), preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    project = _project(tmp_path, "data/t.parquet", buffer.getvalue(), BINARY)

    result = run_stage("prepare", project)

    assert result.exit_code == 0, result.stderr
    part = read_split(project / TRAIN, _data(project))
    assert part.classes == ["False", "True"]
    assert set(part.x.dtypes) == {np.dtype(np.float64)}
    ids = part.x["id"].astype(int)
    assert part.x["price"].tolist() == [i + 0.25 for i in ids]
    assert part.x["notes"].isna().all()
    assert part.x["visits"].isna().tolist() == [i % 4 == 0 for i in ids]
    assert [part.classes[code] for code in part.y] == [str(i % 2 == 0) for i in ids]


# --- bad tables: one line each, nothing written -----------------------------------------------

NUMBERS = _csv("x,z,y", _numbers(20))
OTHER_DIGEST = hashlib.sha256(b"another table").hexdigest()
REGRESSION_PARQUET = _parquet(pd.DataFrame({"x": range(20), "y": np.arange(20.0)}))
# A real gzip stream of a CSV, cut off: gzip reports the end it did not reach.
LONG_CSV_GZ = gzip.compress(_csv("x,z,y", _numbers(5000)), mtime=0)


def _corrupted(content: bytes) -> bytes:
    """The gzip stream with bytes in its middle flipped: its deflate data no longer decodes."""
    middle = bytearray(content)
    for i in range(len(middle) // 2, len(middle) // 2 + 64):
        middle[i] ^= 0x55
    return bytes(middle)


BINARY, MULTICLASS = {"data": {"task": "binary"}}, {"data": {"task": "multiclass"}}
# (file name, content or None for no file, params overrides, the line's start, its substrings)
CASES = [
    pytest.param(
        TABLE, _csv("x,z,prices", _numbers(20)), {"data": {"target": "price"}},
        "error: data.target: ", ("data/table.csv has no column 'price' (did you mean 'prices'?)",),
        id="target-missing",
    ),
    pytest.param(
        TABLE, _csv("x,z,colour", _numbers(20)), {"data": {"target": "price"}},
        "error: data.target: ", ("data/table.csv has no column 'price'",),
        id="target-missing-no-hint",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", _labelled({"a": 10, "b": 10})), {},
        "error: data/table.csv: ", ("the target 'y' is not numeric; data.task regression",),
        id="text-regression-target",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", _labelled({"a": 20})), BINARY,
        "error: data/table.csv: ", ("the target 'y' has one value",),
        id="one-class",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", _labelled({"a": 10, "b": 10, "c": 10})), BINARY,
        "error: data/table.csv: ", ("the target 'y' has 3 classes; data.task binary takes 2",),
        id="binary-three-classes",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", _labelled({"a": 10, "b": 10})), MULTICLASS,
        "error: data/table.csv: ",
        ("the target 'y' has 2 classes; data.task multiclass takes 3 or more",),
        id="multiclass-two-classes",
    ),
    pytest.param(
        "data/table.parquet",
        _parquet(pd.DataFrame({"when": pd.date_range("2024-01-01", periods=20), "y": range(20)})),
        {}, "error: data/table.parquet: ", ("column 'when' is datetime64", "give numbers or text"),
        id="date-column",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", _labelled({"a": 30, "b": 30, "c": 5})),
        {**MULTICLASS, "tune": {"cv_folds": 5}},
        "error: data/table.csv: ",
        ("class 'c' has 4 training rows, fewer than tune.cv_folds = 5",),
        id="class-below-folds",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", _numbers(12)), {"tune": {"cv_folds": 5}},
        "error: data/table.csv: ",
        ("the training split has 9 rows; tune.cv_folds = 5 needs at least 10",),
        id="too-few-rows-for-folds",
    ),
    pytest.param(
        TABLE, b"x,z,y\n", {}, "error: data/table.csv: ", ("no rows",), id="header-only",
    ),
    pytest.param(
        TABLE, b"y\n1.0\n2.0\n", {}, "error: data/table.csv: ", ("no feature columns",),
        id="no-features",
    ),
    pytest.param(
        "data/table.txt", NUMBERS, {},
        "error: data.path: ", ("data/table.txt is not a CSV (.csv, .csv.gz) or Parquet file",),
        id="wrong-suffix",
    ),
    pytest.param(
        "data/table.json.gz", gzip.compress(NUMBERS), {},
        "error: data.path: ", ("data/table.json.gz is not a CSV",),
        id="gz-not-csv",
    ),
    pytest.param(
        TABLE, REGRESSION_PARQUET, {},
        "error: data/table.csv: ", ("give data.path a CSV or Parquet file with a header",),
        id="binary-file-named-csv",
    ),
    pytest.param(
        TABLE, gzip.compress(NUMBERS), {},
        "error: data/table.csv: ", ("give data.path a CSV or Parquet file with a header",),
        id="gzip-named-csv",
    ),
    pytest.param(
        "data/table.parquet", NUMBERS, {},
        "error: data/table.parquet: ", ("not a parquet file", "give data.path a CSV or Parquet"),
        id="csv-named-parquet",
    ),
    pytest.param(
        "data/table.csv.gz", LONG_CSV_GZ[: len(LONG_CSV_GZ) // 2], {},
        "error: data/table.csv.gz: ", ("give data.path a CSV or Parquet file with a header",),
        id="truncated-gzip",
    ),
    pytest.param(
        "data/table.csv.gz", _corrupted(LONG_CSV_GZ), {},
        "error: data/table.csv.gz: ", ("give data.path a CSV or Parquet file with a header",),
        id="corrupted-gzip",
    ),
    pytest.param(
        "data/absent.csv", None, {},
        "error: data/absent.csv: ", ("not found; give data.path a CSV or Parquet file",),
        id="no-file",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", [*_numbers(5), "5,1,2.5,7", *_numbers(5)]), {},
        "error: data/table.csv: ", ("Expected 3 fields in line 7, saw 4",),
        id="ragged-row",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", ["0,0,0.0", "1,1,0.5", "inf,2,1.0", *_numbers(20)[3:]]), {},
        "error: data/table.csv: ", ("infinite values in column 'x' (rows 3)",),
        id="infinite-feature",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", ["0,0,-inf", *_numbers(20)[1:]]), {},
        "error: data/table.csv: ", ("infinite values in column 'y' (rows 1)",),
        id="infinite-target",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", ["0,0,0.0", "1,1,", "2,2,1.0", "3,0,", *_numbers(20)[4:]]), {},
        "error: data/table.csv: ", ("the target 'y' is missing in rows 2, 4; drop or fill",),
        id="missing-target",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", [f"{i},{i},{'' if i % 2 else i}" for i in range(20)]), {},
        "error: data/table.csv: ", ("missing in rows 2, 4, 6, 8, 10 and 5 more;",),
        id="many-missing-targets",
    ),
    pytest.param(
        TABLE, _csv("x,z,y", [f"{i},{i},7.0" for i in range(20)]), {},
        "error: data/table.csv: ", ("the target 'y' has one value; there is nothing to learn",),
        id="constant-target",
    ),
    pytest.param(
        TABLE, _csv('x,"z\nw",y', _numbers(20)), {},
        "error: data/table.csv: ", ("column 'z\\nw'", "line breaks"),
        id="line-break-in-feature-name",
    ),
    pytest.param(
        TABLE, _csv("x[m],z,y", _numbers(20)), {},
        "error: data/table.csv: ", ("column 'x[m]': XGBoost or LightGBM refuse [ ] <", "rename it"),
        id="bracket-in-feature-name",
    ),
    pytest.param(
        TABLE, NUMBERS, {"data": {"sha256": OTHER_DIGEST}},
        "error: data/table.csv: checksum mismatch ",
        (hashlib.sha256(NUMBERS).hexdigest(), OTHER_DIGEST),
        id="checksum-mismatch",
    ),
    pytest.param(
        TABLE, NUMBERS, {"data": {"drop": ["w"]}},
        "error: data.drop: ", ("data/table.csv has no column 'w'",),
        id="drop-absent-column",
    ),
    # A class of a single row cannot be stratified, whatever the test size.
    pytest.param(
        TABLE, _csv("x,z,y", _labelled({"a": 20, "b": 20, "c": 1})), MULTICLASS,
        "error: data/table.csv: ", ("'c'",),
        id="single-row-class",
    ),
    # Enough training rows of class b for the folds, none in the test split: evaluate would
    # refuse that split after the whole search.
    pytest.param(
        TABLE, _csv("x,z,y", _labelled({"a": 100, "b": 5})),
        {**BINARY, "prepare": {"test_size": 0.05}, "tune": {"cv_folds": 5}},
        "error: data/table.csv: ", ("'b'", "test"),
        id="class-absent-from-test",
    ),
]  # fmt: skip
CASES = tiered(
    CASES,
    {"target-missing", "binary-three-classes", "multiclass-two-classes", "class-below-folds",
     "bracket-in-feature-name", "wrong-suffix", "truncated-gzip", "infinite-feature",
     "checksum-mismatch"},
)  # fmt: skip


@pytest.mark.parametrize(("name", "content", "overrides", "start", "problems"), CASES)
def test_a_bad_table_stops_prepare_with_one_line(
    tmp_path: Path,
    run_stage,
    name: str,
    content: bytes | None,
    overrides: dict[str, Any],
    start: str,
    problems: tuple[str, ...],
) -> None:
    project = _project(tmp_path, name, content, overrides)

    line = run_stage("prepare", project).one_error()

    assert line.startswith(start), line
    for problem in problems:
        assert problem in line
    assert not (project / "data" / "prepared").exists()


# The checksum file beside the table, as `sha256sum table.csv > table.csv.sha256` writes it.
SIDECAR_CASES = [
    pytest.param(
        f"{OTHER_DIGEST}  table.csv\n".encode(),
        "error: data/table.csv: checksum mismatch ",
        (hashlib.sha256(NUMBERS).hexdigest(), OTHER_DIGEST),
        id="mismatch",
    ),
    pytest.param(b"", "error: data/table.csv.sha256: ", (), id="empty"),
]
SIDECAR_CASES = tiered(SIDECAR_CASES, {"mismatch"})


@pytest.mark.parametrize(("sidecar", "start", "problems"), SIDECAR_CASES)
def test_a_checksum_file_beside_the_table_is_verified(
    tmp_path: Path, run_stage, sidecar: bytes, start: str, problems: tuple[str, ...]
) -> None:
    project = _project(tmp_path, TABLE, NUMBERS)
    (project / f"{TABLE}.sha256").write_bytes(sidecar)

    line = run_stage("prepare", project).one_error()

    assert line.startswith(start), line
    for problem in problems:
        assert problem in line
    assert not (project / "data" / "prepared").exists()


@pytest.mark.parametrize("where", ["sidecar", "params-upper-case"])
def test_a_matching_checksum_lets_the_table_through(tmp_path: Path, run_stage, where: str) -> None:
    digest = hashlib.sha256(NUMBERS).hexdigest()
    if where == "sidecar":
        project = _project(tmp_path, TABLE, NUMBERS)
        (project / f"{TABLE}.sha256").write_text(f"{digest}  table.csv\n")
    else:  # as Windows' Get-FileHash writes it
        project = _project(tmp_path, TABLE, NUMBERS, {"data": {"sha256": digest.upper()}})

    result = run_stage("prepare", project)

    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == "prepared 16 training and 4 test rows"


# --- a damaged prepared split -----------------------------------------------------------------

REGRESSION = DataParams(path=TABLE, target="y", task="regression")


@pytest.fixture
def written_split(tmp_path: Path) -> Path:
    """A training split as prepare writes it."""
    frame = pd.DataFrame({"x": range(40), "z": np.arange(40) % 3, "y": np.arange(40) * 0.5})
    train, _ = split(frame, REGRESSION, test_size=0.2, seed=42, cv_folds=2)
    path = tmp_path / TRAIN
    write_split(train, path, "y")
    assert read_split(path, REGRESSION).x.shape == (32, 2)  # intact, it reads
    return path


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _replace_by_csv(path: Path) -> None:
    path.write_bytes(b"x,z,y\n1,2,3\n")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_truncate, id="truncated"),
        pytest.param(Path.unlink, id="missing"),
        pytest.param(_empty, id="empty"),
        pytest.param(_replace_by_csv, id="not-parquet"),
    ],
)
def test_a_damaged_split_is_one_line_naming_the_file(written_split: Path, damage: Any) -> None:
    damage(written_split)

    with pytest.raises(PipelineError) as error:
        read_split(written_split, REGRESSION)

    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{written_split}: "), message
    assert message.endswith(f"; {REBUILD}")
    assert "`dvc repro` rebuilds it" in message


def test_a_split_without_the_target_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A split written for another data.target."""
    path = tmp_path / TRAIN
    write_split(pd.DataFrame({"x": range(30), "y": np.arange(30) * 0.5}), path, "y")
    data = DataParams(path=TABLE, target="price", task="regression")

    with pytest.raises(PipelineError) as error:
        read_split(path, data)

    assert str(error.value) == f"{path}: no column 'price' (data.target); {REBUILD}"

"""Raw data: verified, converted as scikit-learn does, split; damaged files stop prepare."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, tiered

from hpo.errors import PipelineError
from hpo.trial.data import FEATURES, RAW_SHA256, TARGET, derive_features, read_raw, split

RAW_DATA = REPO / "data" / "raw" / "cal_housing.data.gz"
RAW_RELATIVE = "data/raw/cal_housing.data.gz"


@pytest.fixture(scope="module")
def raw_content() -> bytes:
    return gzip.decompress(RAW_DATA.read_bytes())


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    return derive_features(read_raw(RAW_DATA))


def _with_row_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(row_id=range(len(frame)))


def test_derive_features_matches_the_readme_check_values(features: pd.DataFrame) -> None:
    assert list(features.columns) == [*FEATURES, TARGET]
    assert len(features) == 20640
    assert not features.isna().any().any()
    assert round(features[TARGET].mean(), 6) == 2.068558
    assert round(features["MedInc"].mean(), 6) == 3.870671
    assert features[TARGET].max() == pytest.approx(5.00001)


def test_split_sizes(features: pd.DataFrame) -> None:
    train, test = split(features, test_size=0.2, seed=42)

    assert (len(train), len(test)) == (16512, 4128)
    assert list(train.columns) == list(test.columns) == [*FEATURES, TARGET]


def test_split_is_deterministic_per_seed(features: pd.DataFrame) -> None:
    frame = _with_row_ids(features)
    train_a, test_a = split(frame, test_size=0.2, seed=42)
    train_b, test_b = split(frame, test_size=0.2, seed=42)
    _, test_other = split(frame, test_size=0.2, seed=43)

    pd.testing.assert_frame_equal(train_a, train_b)
    pd.testing.assert_frame_equal(test_a, test_b)
    assert set(test_a["row_id"]) != set(test_other["row_id"])


def test_split_rows_do_not_overlap(features: pd.DataFrame) -> None:
    frame = _with_row_ids(features)
    train, test = split(frame, test_size=0.2, seed=42)

    train_ids, test_ids = set(train["row_id"]), set(test["row_id"])
    assert not train_ids & test_ids
    assert train_ids | test_ids == set(range(len(frame)))


# --- damaged raw files, through the real prepare stage --------------------------------------


def _missing(raw: bytes, target: Path) -> None:
    """No file at all (the data/raw directory exists, empty)."""


def _one_digit_changed(raw: bytes, target: Path) -> None:
    """A valid gzip of content that differs from the real file in one digit."""
    match = re.search(rb"\d", raw)
    assert match is not None
    position = match.start()
    digit = raw[position : position + 1]
    changed = raw[:position] + (b"1" if digit != b"1" else b"2") + raw[position + 1 :]
    target.write_bytes(gzip.compress(changed))


def _truncated(raw: bytes, target: Path) -> None:
    compressed = RAW_DATA.read_bytes()
    target.write_bytes(compressed[: len(compressed) // 2])


def _plain_text(raw: bytes, target: Path) -> None:
    target.write_bytes(raw)


Damage = Callable[[bytes, Path], None]


@pytest.mark.parametrize(
    ("damage", "problem"),
    tiered(
        [
            pytest.param(_missing, "raw data file not found", id="missing"),
            pytest.param(_one_digit_changed, "checksum mismatch", id="wrong-checksum"),
            pytest.param(_truncated, "not a readable gzip file", id="truncated-gzip"),
            pytest.param(_plain_text, "not a readable gzip file", id="not-gzip"),
        ],
        {"wrong-checksum"},
    ),
)
def test_damaged_raw_file_stops_prepare(
    tmp_path: Path, run_stage, raw_content: bytes, damage: Damage, problem: str
) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    damage(raw_content, tmp_path / RAW_RELATIVE)

    line = run_stage("prepare", tmp_path).one_error()

    assert line.startswith(f"error: {RAW_RELATIVE}: "), line
    assert problem in line
    assert not (tmp_path / "data" / "prepared").exists()


def test_checksum_message_names_both_digests(tmp_path: Path, raw_content: bytes) -> None:
    path = tmp_path / "cal_housing.data.gz"
    _one_digit_changed(raw_content, path)
    actual = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()

    with pytest.raises(PipelineError, match="checksum mismatch") as error:
        read_raw(path)

    assert actual in str(error.value)
    assert RAW_SHA256 in str(error.value)


def test_intact_copy_passes_the_same_harness(tmp_path: Path, run_stage) -> None:
    """Control for the damaged-file cases: the undamaged file in the same layout is prepared."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    shutil.copy(RAW_DATA, tmp_path / RAW_RELATIVE)

    result = run_stage("prepare", tmp_path)

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "prepared 16512 training and 4128 test rows"
    assert len(pd.read_csv(tmp_path / "data" / "prepared" / "test.csv")) == 4128


# --- the parser behind the checksum ----------------------------------------------------------

NINE = b"1,2,3,4,5,6,7,8,9\n"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(NINE + b"1,2,3,4,5,6,7,8,x\n", "not 9 numeric columns", id="non-numeric"),
        pytest.param(b"a,b,c,d,e,f,g,h,i\n" + NINE, "not 9 numeric columns", id="header-row"),
        pytest.param(b"1,2,3,4,5,6,7,8\n" * 2, r"not 9 numeric columns \(found 8\)", id="8-cols"),
        pytest.param(
            b"1,2,3,4,5,6,7,8,9,10\n" * 2, r"not 9 numeric columns \(found 10\)", id="10-cols"
        ),
        pytest.param(NINE + b"1,2,3,4,5,6,7,8,9,10\n", "not 9 numeric columns", id="ragged"),
        pytest.param(b"", "not 9 numeric columns", id="empty"),
        pytest.param(NINE + b"1,2,3,,5,6,7,8,9\n", "missing values in rows 2", id="blank-field"),
    ],
)
def test_bad_content_with_a_matching_checksum_is_rejected(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "bad.data.gz"
    path.write_bytes(gzip.compress(content))

    with pytest.raises(PipelineError, match=problem) as error:
        read_raw(path, expected_sha256=hashlib.sha256(content).hexdigest())

    assert str(error.value).startswith(f"{path}: ")


def test_good_content_with_a_matching_checksum_parses(tmp_path: Path) -> None:
    content = NINE + b"-122.5,37.5,41,880,129,322,126,8.3252,452600\n"
    path = tmp_path / "small.data.gz"
    path.write_bytes(gzip.compress(content))

    frame = read_raw(path, expected_sha256=hashlib.sha256(content).hexdigest())

    assert frame.shape == (2, 9)
    assert frame.iloc[1].tolist() == [-122.5, 37.5, 41, 880, 129, 322, 126, 8.3252, 452600]
    assert frame.columns[0] == "longitude"
    assert frame.columns[-1] == "medianHouseValue"

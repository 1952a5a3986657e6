"""The raw California Housing file: verified, turned into scikit-learn's features, split."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from hpo.errors import REBUILD, PipelineError, file_error

RAW_DATA = Path("data/raw/cal_housing.data.gz")
# sha256 of the decompressed bytes (the gzip header carries a timestamp), see data/README.md
RAW_SHA256 = "d3d8a1a722ae78f91134862727d27a70b1415e7d512a89140406248687f4b902"
RAW_COLUMNS = [
    "longitude",
    "latitude",
    "housingMedianAge",
    "totalRooms",
    "totalBedrooms",
    "population",
    "households",
    "medianIncome",
    "medianHouseValue",
]
FEATURES = [
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
]
TARGET = "MedHouseVal"


def read_raw(path: Path = RAW_DATA, expected_sha256: str = RAW_SHA256) -> pd.DataFrame:
    """Decompress, verify the content checksum and parse the 9 numeric raw columns."""
    try:
        content = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise PipelineError(f"{path}: raw data file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise PipelineError(f"{path}: not a readable gzip file ({exc})") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected_sha256:
        raise PipelineError(
            f"{path}: checksum mismatch (sha256 {digest}, expected {expected_sha256}); "
            "the file is truncated or modified"
        )
    return _parse(content, path)


def _parse(content: bytes, path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.BytesIO(content), header=None, dtype=float)
    except (ValueError, pd.errors.ParserError) as exc:
        raise PipelineError(
            f"{path}: not 9 numeric columns ({' '.join(str(exc).split())})"
        ) from None
    if frame.shape[1] != len(RAW_COLUMNS):
        raise PipelineError(f"{path}: not 9 numeric columns (found {frame.shape[1]})")
    frame.columns = RAW_COLUMNS
    if frame.isna().any().any():
        raise PipelineError(
            f"{path}: missing values in rows {_first_rows(frame.isna().any(axis=1))}"
        )
    return frame


def _first_rows(mask: pd.Series) -> str:
    return ", ".join(str(i + 1) for i in np.flatnonzero(mask.to_numpy())[:5])


def derive_features(raw: pd.DataFrame) -> pd.DataFrame:
    """The 8 features and the target exactly as scikit-learn's fetch_california_housing."""
    households = raw["households"]
    return pd.DataFrame(
        {
            "MedInc": raw["medianIncome"],
            "HouseAge": raw["housingMedianAge"],
            "AveRooms": raw["totalRooms"] / households,
            "AveBedrms": raw["totalBedrooms"] / households,
            "Population": raw["population"],
            "AveOccup": raw["population"] / households,
            "Latitude": raw["latitude"],
            "Longitude": raw["longitude"],
            TARGET: raw["medianHouseValue"] / 100_000.0,
        }
    )


def split(frame: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/test split; the test rows are only touched once, by evaluate."""
    train, test = train_test_split(frame, test_size=test_size, random_state=seed)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def write_split(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def read_split(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    """Features and target of a prepared split, as written by the prepare stage."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:  # ValueError: pandas' empty and parser errors
        raise file_error(path, exc, REBUILD) from None
    missing = [c for c in [*FEATURES, TARGET] if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path}: missing columns {', '.join(missing)}; {REBUILD}")
    columns = frame[[*FEATURES, TARGET]]
    numeric = all(pd.api.types.is_numeric_dtype(dtype) for dtype in columns.dtypes)
    if not numeric or columns.isna().any(axis=None):
        raise PipelineError(f"{path}: non-numeric or missing values (damaged?); {REBUILD}")
    return frame[FEATURES], frame[TARGET]

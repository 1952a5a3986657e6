"""Derive california_housing.csv.gz, the pipeline's default table, from the raw StatLib file.

    python data/california_housing.py

The raw file has 9 unnamed columns; scikit-learn's `fetch_california_housing` turns them into
8 features and a target in 100,000 USD. This does the same and writes them with a header, so
that the pipeline reads this dataset like any other table. The output is byte-for-byte the
same on every run (tests/test_data.py checks the shipped copy against it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
RAW = HERE / "cal_housing.data.gz"
# sha256 of the raw file's decompressed bytes (the gzip header carries a timestamp)
RAW_SHA256 = "d3d8a1a722ae78f91134862727d27a70b1415e7d512a89140406248687f4b902"
RAW_COLUMNS = [
    "longitude", "latitude", "housingMedianAge", "totalRooms", "totalBedrooms",
    "population", "households", "medianIncome", "medianHouseValue",
]  # fmt: skip
DERIVED = HERE / "california_housing.csv.gz"


def derive(raw: pd.DataFrame) -> pd.DataFrame:
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
            "MedHouseVal": raw["medianHouseValue"] / 100_000.0,
        }
    )


def derived_csv() -> bytes:
    """The derived table as CSV text; float values written at full precision (round-trip)."""
    content = gzip.decompress(RAW.read_bytes())
    digest = hashlib.sha256(content).hexdigest()
    if digest != RAW_SHA256:
        raise SystemExit(f"{RAW}: checksum mismatch (sha256 {digest}, expected {RAW_SHA256})")
    raw = pd.read_csv(io.BytesIO(content), header=None, names=RAW_COLUMNS, dtype=float)
    return derive(raw).to_csv(index=False, lineterminator="\n").encode()


if __name__ == "__main__":
    # mtime=0: no timestamp in the gzip header, so the same table gives the same bytes.
    DERIVED.write_bytes(gzip.compress(derived_csv(), compresslevel=9, mtime=0))
    # The checksum the prepare stage verifies, in sha256sum's format.
    digest = hashlib.sha256(DERIVED.read_bytes()).hexdigest()
    Path(f"{DERIVED}.sha256").write_text(f"{digest}  {DERIVED.name}\n")
    print(f"{DERIVED}: sha256 {digest}")

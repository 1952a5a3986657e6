"""Print params.yaml with the tests' tiny settings (tests/conftest.py), for the Docker check."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_PARAMS, deep_update

params = deep_update(yaml.safe_load(Path(sys.argv[1]).read_text()), TINY_PARAMS)
print(yaml.safe_dump(params, sort_keys=False))

"""Print params.yaml with the tests' tiny settings (tests/conftest.py), for the Docker check.

tiny_params.py PARAMS [KEY=VALUE ...]: each KEY=VALUE sets one dotted key on top, as
`dvc exp run -S` does (the value read as YAML), e.g. model.family=lightgbm.
"""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_PARAMS, deep_update

params = deep_update(yaml.safe_load(Path(sys.argv[1]).read_text()), TINY_PARAMS)
for assignment in sys.argv[2:]:
    key, equals, value = assignment.partition("=")
    if not equals:
        sys.exit(f"tiny_params.py: expected KEY=VALUE, got {assignment!r}")
    *parents, leaf = key.split(".")
    section = params
    for name in parents:
        section = section[name]  # an existing section only: a typo fails here
    if leaf not in section:
        sys.exit(f"tiny_params.py: params.yaml has no key {key}")
    section[leaf] = yaml.safe_load(value)
print(yaml.safe_dump(params, sort_keys=False))

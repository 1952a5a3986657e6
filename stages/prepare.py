"""Stage prepare: the table params.yaml names, checked, then a seeded train/test split."""

import logging

from hpo import paths
from hpo.config import load_params
from hpo.data import read_table, split, write_split
from hpo.stage import run_stage


def main() -> None:
    params = load_params()
    table = read_table(params.data)
    prepare = params.prepare
    train, test = split(
        table, params.data, prepare.test_size, prepare.split_seed, params.tune.cv_folds
    )
    write_split(train, paths.TRAIN, params.data.target)
    write_split(test, paths.TEST, params.data.target)
    logging.getLogger("hpo.prepare").info(
        f"prepared {len(train)} training and {len(test)} test rows"
    )


if __name__ == "__main__":
    run_stage(main)

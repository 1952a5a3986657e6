"""Stage prepare: verified raw data -> scikit-learn's 8 features -> seeded train/test split."""

from hpo import paths
from hpo.config import load_params
from hpo.errors import run_stage
from hpo.trial.data import derive_features, read_raw, split, write_split


def main() -> None:
    params = load_params().prepare
    frame = derive_features(read_raw())
    train, test = split(frame, params.test_size, params.split_seed)
    write_split(train, paths.TRAIN_CSV)
    write_split(test, paths.TEST_CSV)
    print(f"prepared {len(train)} training and {len(test)} test rows")


if __name__ == "__main__":
    run_stage(main)

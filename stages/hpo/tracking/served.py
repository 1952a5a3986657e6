"""The refit model as `mlflow models serve` answers: a `prediction` (regression), or a `label`
and a `probability_<class>` per class. MLflow logs this file as the model's code (no pickle); its
`model_config` makes a caller's text columns the categoricals the model was trained on (a text
it never saw is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

from hpo.data import as_categorical
from hpo.models import load_family
from hpo.tasks import class_probabilities, predicted_labels


def model_config(family: str, task: str, classes: list[Any], x: pd.DataFrame) -> dict[str, Any]:
    categories = {
        column: [str(c) for c in x[column].cat.categories]
        for column in x.columns
        if isinstance(x[column].dtype, pd.CategoricalDtype)
    }
    plain = [c.item() if isinstance(c, np.generic) else c for c in classes]
    return {"family": family, "task": task, "classes": plain, "categories": categories,
            "columns": list(x.columns)}  # fmt: skip


def as_input(config: dict[str, Any], x: pd.DataFrame) -> pd.DataFrame:
    """Features as a caller sends them: categoricals as text (None where missing)."""
    x = x.copy()
    for column in config["categories"]:
        x[column] = x[column].astype(object).where(x[column].notna(), None)
    return x


def served_frame(config: dict[str, Any], predicted: np.ndarray) -> pd.DataFrame:
    """Predictions as served: values, or a label and one probability per class."""
    if config["task"] == "regression":
        return pd.DataFrame({"prediction": np.asarray(predicted, dtype=np.float64)})
    classes = config["classes"]
    probabilities = class_probabilities(predicted)
    frame = pd.DataFrame(
        {f"probability_{c}": probabilities[:, i].astype(np.float64) for i, c in enumerate(classes)}
    )
    frame.insert(0, "label", np.asarray(classes, dtype=object)[predicted_labels(predicted)])
    return frame


class ServedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.config = context.model_config
        self.family = load_family(self.config["family"])
        self.model = self.family.load(Path(context.artifacts["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        # A column the signature marks optional may be left out: it is missing in every row.
        x = model_input.reindex(columns=self.config.get("columns"))  # None: an older model
        for column, categories in self.config["categories"].items():
            x[column] = as_categorical(x[column], categories)
        return served_frame(self.config, self.family.predict(self.model, x))


mlflow.models.set_model(ServedModel())

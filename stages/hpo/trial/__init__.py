"""What a trial is: the dataset, the model and its cross-validation, the search space, and
one trial's evaluation as a pure function of its task."""

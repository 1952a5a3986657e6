"""What a trial is: the task and outcome that travel, its evaluation, and the search space."""

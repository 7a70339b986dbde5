"""Execution of trials: storage, workers, executors, job state and the CLI."""

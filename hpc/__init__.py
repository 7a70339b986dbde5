"""Where and when trials run: storage, workers, executors, job state and the CLI."""

"""What to try and how to judge it: config, search space, trials, phases and reports.

This package never imports `hpc`, Slurm or submitit.
"""

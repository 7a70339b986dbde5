"""Choice and judgement of trials: config, search space, trials, phases and reports.

This package never imports `hpc`, Slurm or submitit.
"""

"""Exceptions raised on purpose by hpc-tune."""

from __future__ import annotations


class HpcTuneError(Exception):
    """Root of every error hpc-tune raises on purpose.

    The message names the value at fault, where it came from and how to fix it; entry points
    print it without a traceback.
    """


class ConfigError(HpcTuneError):
    """An invalid value in the user's config file or command line."""


class PreflightError(ConfigError):
    """A config that loads but fails when its pipeline or optimizer is built."""


class TrialError(HpcTuneError):
    """A trial that failed: training raised, returned no metric or returned NaN."""

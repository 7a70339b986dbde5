"""Add thousands of finished trials to an Optuna study in a few SQL statements.

Creating 20,000 trials through Optuna's API takes minutes; the benchmarks and tests of the
database side (status, report, finalize) only need the rows. The trials get the study's
parameter distributions, values in [0, 1), start and end times, and a mix of states: 80 %
complete, 10 % pruned, 10 % failed, as a long sweep has.
"""

from __future__ import annotations

import optuna
import sqlalchemy
from sqlalchemy import text

_INSERT_TRIALS = text(
    """
    INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete)
    SELECT :first + g, :study_id,
           CAST(CASE WHEN g % 10 = 3 THEN 'PRUNED' WHEN g % 10 = 7 THEN 'FAIL'
                     ELSE 'COMPLETE' END AS trialstate),
           now() - make_interval(secs => 60 * (:count - g)),
           now() - make_interval(secs => 60 * (:count - g) - 30 - (g % 17))
    FROM generate_series(0, :count - 1) AS g
    """
)
_INSERT_VALUES = text(
    """
    INSERT INTO trial_values (trial_id, objective, value, value_type)
    SELECT t.trial_id, 0, (t.number * 7919 % 10007) / 10007.0 * 0.9,
           CAST('FINITE' AS trialvaluetype)
    FROM trials t
    WHERE t.study_id = :study_id AND t.number >= :first AND t.state = 'COMPLETE'
    """
)
_INSERT_PARAMS = text(
    """
    INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
    SELECT t.trial_id, :name,
           CASE WHEN :grid THEN :low + :step * ((t.number * 31 + :salt) % :points)
                ELSE :low + (:high - :low) * ((t.number * 31 + :salt) % 1000) / 1000.0 END,
           :distribution
    FROM trials t
    WHERE t.study_id = :study_id AND t.number >= :first
    """
)
_INSERT_ATTRS = text(
    """
    INSERT INTO trial_user_attributes (trial_id, key, value_json)
    SELECT t.trial_id, :key, CAST(30 + t.number % 17 AS text)
    FROM trials t
    WHERE t.study_id = :study_id AND t.number >= :first
    """
)


def add_finished_trials(
    engine: sqlalchemy.Engine,
    study_name: str,
    count: int,
    distributions: dict[str, optuna.distributions.BaseDistribution],
) -> int:
    """Append `count` finished trials to the study; return the number of the first one.

    Numeric distributions only (float and int); int parameters stay on their grid.
    """
    with engine.begin() as connection:
        study_id = connection.execute(
            text("SELECT study_id FROM studies WHERE study_name = :name"), {"name": study_name}
        ).scalar_one()
        first = connection.execute(
            text("SELECT coalesce(max(number) + 1, 0) FROM trials WHERE study_id = :id"),
            {"id": study_id},
        ).scalar_one()
        keys = {"study_id": study_id, "first": first}
        connection.execute(_INSERT_TRIALS, {**keys, "count": count})
        connection.execute(_INSERT_VALUES, keys)
        for salt, (name, distribution) in enumerate(sorted(distributions.items())):
            connection.execute(
                _INSERT_PARAMS,
                {
                    **keys,
                    **_range(distribution),
                    "name": name,
                    "salt": salt * 101,
                    "distribution": optuna.distributions.distribution_to_json(distribution),
                },
            )
        connection.execute(_INSERT_ATTRS, {**keys, "key": "duration_s"})
    return int(first)


def _range(distribution: optuna.distributions.BaseDistribution) -> dict[str, object]:
    """Parameters of `_INSERT_PARAMS`: a grid of whole steps for int distributions."""
    if isinstance(distribution, optuna.distributions.IntDistribution):
        points = (distribution.high - distribution.low) // distribution.step + 1
        return {
            "grid": True,
            "low": float(distribution.low),
            "high": float(distribution.high),
            "step": float(distribution.step),
            "points": points,
        }
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return {
            "grid": False,
            "low": float(distribution.low),
            "high": float(distribution.high),
            "step": 1.0,
            "points": 1,
        }
    raise ValueError(f"Only float and int distributions are supported, got {distribution!r}")


# Tables whose rows belong to one trial, emptied before the trials themselves.
_TRIAL_TABLES = (
    "trial_params",
    "trial_values",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_intermediate_values",
    "trial_heartbeats",
)


def delete_trials(engine: sqlalchemy.Engine, study_name: str) -> None:
    """Delete every trial of the study in one statement per table; leave the study itself.

    `optuna.delete_study` deletes through the ORM, row by row: it took 80 s on a study of
    20,000 trials. Call it after this function to delete the then empty study.
    """
    with engine.begin() as connection:
        study_id = connection.execute(
            text("SELECT study_id FROM studies WHERE study_name = :name"), {"name": study_name}
        ).scalar_one_or_none()
        if study_id is None:
            return
        for table in _TRIAL_TABLES:
            connection.execute(
                text(
                    f"DELETE FROM {table} WHERE trial_id IN "
                    "(SELECT trial_id FROM trials WHERE study_id = :id)"
                ),
                {"id": study_id},
            )
        connection.execute(text("DELETE FROM trials WHERE study_id = :id"), {"id": study_id})

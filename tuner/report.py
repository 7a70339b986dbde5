"""The report of one phase of a sweep: summary, best config and plots.

`write_report` writes into one folder:

- `result_summary.txt`, and `results_summary.txt`, a relative symbolic link to it (the name
  EDS-NLP's code writes). Its `Best trial:`, `Value:`, `Params:` and `Importances:` lines
  follow EDS-NLP's `results_summary.txt`, with JSON values, and the two sections come last,
  so EDS-NLP's own parser of that file reads every tuned and frozen value.
- `config.yml`, the user's config with the best values written in (`write_best_config`).
- Five Optuna plots and a bar chart of the parameter importances (the values of the summary),
  as HTML files that load one shared `plotly.min.js` from the same folder by relative path, so
  that they open offline.

Large studies are capped so that the report stays fast and each HTML file stays under 1 MB.
Sizes below were measured with Optuna 5.1 and plotly 7.1. Importances use the best
`IMPORTANCE_MAX_TRIALS` complete trials (see `compute_importances`). The contour plot uses
the best `CONTOUR_MAX_TRIALS` complete trials, because Optuna draws each pair of parameters
as a matrix with one row and one column per distinct value (plus 2), and continuous
parameters have one distinct value per trial. With 3 such parameters the file took 840 KB
for 100 trials and 19 MB for 500. The parallel coordinate plot uses the best
`PARALLEL_MAX_TRIALS` complete trials and the timeline the latest `TIMELINE_MAX_TRIALS`
trials: 474 KB and 534 KB with the 11 hyperparameters of the QUAERO example config. The
optimization history draws its best-value line with the trials where it changes, and past
`HISTORY_MAX_TRIALS` complete trials one marker in k: 206 KB for 20,000 trials (16,000
complete), where Optuna's own plot took 892 KB.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.best_config import write_best_config, write_text_atomically
from tuner.errors import HpcTuneError
from tuner.private_dirs import FolderAccess, group_access, make_private_dir, set_file_access
from tuner.retry_policy import DUPLICATE_ATTR, RETRIED_ATTR
from tuner.space import Hyperparameter, user_values
from tuner.text import plural

logger = logging.getLogger(__name__)

SUMMARY_NAME = "result_summary.txt"
SUMMARY_LINK_NAME = "results_summary.txt"
BEST_CONFIG_NAME = "config.yml"
PLOTLY_BUNDLE_NAME = "plotly.min.js"

IMPORTANCE_SEEDS = 10
IMPORTANCE_MAX_TRIALS = 200
CONTOUR_MAX_TRIALS = 100
CONTOUR_MAX_PARAMS = 3
PARALLEL_MAX_TRIALS = 500
TIMELINE_MAX_TRIALS = 500
HISTORY_MAX_TRIALS = 10_000

REPORTED_STATES = (
    TrialState.COMPLETE,
    TrialState.PRUNED,
    TrialState.FAIL,
    TrialState.RUNNING,
    TrialState.WAITING,
)
# Folders where EDS-NLP's training saves a trial's model, in the order they are looked for.
MODEL_FOLDERS = ("model-last", "model")
VERSIONED_PACKAGES = ("hpc-tune", "edsnlp", "optuna", "torch", "confit")


@dataclass(frozen=True)
class ReportContext:
    """Sweep facts that the report states besides the study's own trials.

    Attributes:
        sweep_name: The sweep's name.
        metric: The metric paths as the user wrote them, e.g. `("ner.micro.f",)`; the trial
            value is their mean.
        seed: The sweep seed.
        n_trials_target: The number of trials requested for this phase, or None when only a
            GPU-hour or time budget limits it.
        phase: 1 or 2 in a two-phase sweep, None in a one-phase sweep.
        frozen_values: In phase 2, the phase-1 best value of each hyperparameter that this
            phase does not tune, by name.
        gpus_per_trial: GPUs each trial holds; trial GPU-hours are trial time times this.
        allocated_gpu_hours: GPU-hours the workers held, from their start to their end
            (idle time included), or None when unknown.
        workers: One line on the workers that ran the phase, or None.
        data: Config key of each local training data path to its checksum line.
        train_command: The shell command that trains the best config from scratch, or None;
            the best trial's seed is added to it as `--<seed_path> <seed>`.
        seed_path: The config path of the training seed.
        share_with_group: `hpc.share_with_group`: the group that may read the report (folders
            2750, files 0640), or None to keep it private to the user (0700 and 0600).
    """

    sweep_name: str
    metric: tuple[str, ...]
    seed: int
    n_trials_target: int | None
    phase: int | None = None
    frozen_values: Mapping[str, Any] = field(default_factory=dict)
    gpus_per_trial: int = 1
    allocated_gpu_hours: float | None = None
    workers: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    train_command: str | None = None
    seed_path: str = "train.seed"
    share_with_group: str | None = None


def compute_importances(
    study: optuna.Study, n_seeds: int = IMPORTANCE_SEEDS, max_trials: int = IMPORTANCE_MAX_TRIALS
) -> dict[str, float]:
    """Compute fANOVA parameter importances, averaged over `n_seeds` seeds.

    Only the best `max_trials` COMPLETE trials are used, because fANOVA fits a random forest on
    one CPU core per seed and its cost grows faster than the trial count. With 11 parameters
    it took about 1.5 s of CPU per seed for 200 trials and 6 s for 500 (Optuna 5.1, 2-core x86
    machine), so 10 seeds on the best 200 take about 15 s. Seeds on which fANOVA fails are
    skipped with a log line.

    Returns:
        Importance by parameter name, summing to 1, sorted from most to least important. The
        result is empty, with a log line, when fewer than 2 trials completed, when their values
        are all equal, or when fANOVA fails on every seed.
    """
    trials = _best_complete_trials(study)[:max_trials]
    if len(trials) < 2:
        logger.info(
            "No parameter importances for study %s: %s, fANOVA needs 2.",
            study.study_name,
            plural(len(trials), "complete trial"),
        )
        return {}
    if len({trial.value for trial in trials}) < 2:
        logger.info(
            "No parameter importances for study %s: all %d complete trials have the value %s.",
            study.study_name,
            len(trials),
            trials[0].value,
        )
        return {}

    subset = _study_of(study, trials)
    totals: dict[str, float] = {}
    n_done = 0
    for seed in range(n_seeds):
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        try:
            importances = optuna.importance.get_param_importances(subset, evaluator=evaluator)
        except (RuntimeError, ValueError) as error:
            logger.warning(
                "fANOVA failed with seed %d on study %s: %s", seed, study.study_name, error
            )
            continue
        for name, importance in importances.items():
            totals[name] = totals.get(name, 0.0) + float(importance)
        n_done += 1
    if n_done == 0:
        return {}
    means = {name: total / n_done for name, total in totals.items()}
    return dict(sorted(means.items(), key=lambda item: item[1], reverse=True))


def write_report(
    study: optuna.Study,
    output_dir: Path,
    config_path: Path,
    hyperparameters: Sequence[Hyperparameter],
    context: ReportContext,
    importances: Mapping[str, float] | None = None,
) -> Path:
    """Write the summary, the best config and the plots of `study` into `output_dir`.

    Args:
        study: The phase's study; only its own trials are reported.
        output_dir: Created where missing, with the access of `context.share_with_group`;
            existing report files are replaced.
        config_path: The user's original YAML config.
        hyperparameters: Every hyperparameter of the sweep, tuned in this phase or frozen.
        context: Sweep facts that the study does not store.
        importances: The result of `compute_importances(study)` when the caller already has
            it; computed here when None.

    Returns:
        `output_dir`.

    Raises:
        HpcTuneError: If no trial of `study` is COMPLETE, or a frozen value names no
            hyperparameter.
        ConfigError: If the best config cannot be written (see `write_best_config`).
    """
    started_s = time.monotonic()
    output_dir = Path(output_dir)
    # Samples thrown away as duplicates never trained: they are left out of the summary.
    # NOTE: the timeline plot still draws them as short failed trials.
    trials = [t for t in study.get_trials(deepcopy=False) if DUPLICATE_ATTR not in t.user_attrs]
    counts = {state: sum(trial.state == state for trial in trials) for state in REPORTED_STATES}
    if counts[TrialState.COMPLETE] == 0:
        state_counts = ", ".join(f"{state.name} {count}" for state, count in counts.items())
        message = (
            f"No trial of study {study.study_name!r} is COMPLETE ({state_counts}), so there is "
            "no best config and no plot. Read trial.log in the failed trials' folders under the "
            "checkpoint directory and fix the cause. Failed trials count towards n_trials: "
            "raise it (--n-trials) to run more trials in this sweep, or start a new sweep."
        )
        # A summary that explains why, rather than an empty folder.
        access = group_access(context.share_with_group)
        make_private_dir(output_dir, access)
        write_text_atomically(
            output_dir / SUMMARY_NAME,
            f"Study Summary\n==================\nSweep: {context.sweep_name}\n\n{message}\n",
        )
        _link_summary(output_dir)
        _set_report_access(output_dir, access)
        raise HpcTuneError(f"Cannot write the full report: {message}")
    unknown = sorted(set(context.frozen_values) - {hp.name for hp in hyperparameters})
    if unknown:
        raise HpcTuneError(
            f"Frozen values {unknown} of sweep {context.sweep_name!r} match no hyperparameter: "
            "pass every hyperparameter of the sweep, tuned and frozen."
        )

    study = _snapshot(study, trials)
    best = study.best_trial
    tuned = user_values(best.params, hyperparameters)
    if importances is None:
        importances = compute_importances(study)
    access = group_access(context.share_with_group)
    make_private_dir(output_dir, access)

    summary = _summary_text(study, trials, best, tuned, hyperparameters, context, importances)
    write_text_atomically(output_dir / SUMMARY_NAME, summary)
    _link_summary(output_dir)
    write_best_config(
        config_path,
        output_dir / BEST_CONFIG_NAME,
        hyperparameters,
        {**context.frozen_values, **tuned},
    )
    tuned_names = [hp.name for hp in hyperparameters if hp.name in best.params]
    _write_plots(study, output_dir, tuned_names or list(best.params), importances)
    _set_report_access(output_dir, access)

    logger.info(
        "Wrote the report of study %s (%d trials, best trial %d) to %s in %.1f s",
        study.study_name,
        len(trials),
        best.number,
        output_dir,
        time.monotonic() - started_s,
    )
    return output_dir


def _best_complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(trials, key=lambda trial: cast(float, trial.value), reverse=maximize)


class _SharedTrialsStorage(optuna.storages.InMemoryStorage):
    """An in-memory storage whose reads return its trials themselves, not deep copies.

    Optuna's plots read `study.trials`, which deep-copies every trial on each call: 20,000
    trials took seconds per plot. The report only reads its copies of the trials.
    """

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return super().get_all_trials(study_id, deepcopy=False, states=states)


def _study_of(study: optuna.Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """Return an in-memory study of the same name holding copies of `trials`, renumbered from 0."""
    storage = _SharedTrialsStorage()
    storage.create_new_study(study.directions, study.study_name)
    subset = optuna.Study(study.study_name, storage, sampler=optuna.samplers.RandomSampler(seed=0))
    subset.add_trials(trials)
    return subset


def _snapshot(study: optuna.Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """Return an in-memory copy of `study` made of `trials`, or of all its trials if numbers
    would change (the plots then show the samples left out of `trials`).

    Reading the storage once keeps the report consistent while workers still record trials,
    and saves a database query per plot.
    """
    ordered = sorted(trials, key=lambda trial: trial.number)
    if [trial.number for trial in ordered] != list(range(len(ordered))):
        ordered = study.get_trials(deepcopy=False)
    return _study_of(study, ordered)


def _set_report_access(output_dir: Path, access: FolderAccess) -> None:
    """Give the report's files the mode and group of `access` (0600, or 0640 and the group)."""
    for path in output_dir.iterdir():
        ours = path.name in (SUMMARY_NAME, BEST_CONFIG_NAME, PLOTLY_BUNDLE_NAME)
        if (ours or path.suffix == ".html") and path.is_file():
            set_file_access(path, access)


def _link_summary(output_dir: Path) -> None:
    link = output_dir / SUMMARY_LINK_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(SUMMARY_NAME)


def _summary_text(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    best: FrozenTrial,
    tuned: Mapping[str, Any],
    hyperparameters: Sequence[Hyperparameter],
    context: ReportContext,
    importances: Mapping[str, float],
) -> str:
    order = {hp.name: index for index, hp in enumerate(hyperparameters)}
    tuned_names = sorted(tuned, key=lambda name: order.get(name, len(order)))
    frozen = {name: value for name, value in context.frozen_values.items() if name not in tuned}
    phase = f"{context.phase}" if context.phase is not None else "none (one-phase sweep)"
    metric = ", ".join(context.metric)
    if len(context.metric) > 1:
        metric = f"mean of {metric}"

    lines = [
        "Study Summary",
        "==================",
        f"Sweep: {context.sweep_name}",
        f"Phase: {phase}",
        f"Best trial: {best.number}",
        "",
        f"Value: {json.dumps(best.value)}",
        f"Metric: {metric} ({study.direction.name.lower()})",
        *_best_trial_lines(best),
        "",
        *_trial_lines(trials, context),
        "",
        *_run_lines(context, best),
        f"Sweep seed: {context.seed}",
        f"Versions: {_package_versions()}",
        _importance_line(study, importances),
    ]
    if frozen:
        lines.append(
            f"Frozen at their phase-1 best values, listed last under Params: {', '.join(frozen)}"
        )
    lines += ["", "Params:"]
    lines += [f"  {name}: {_json(tuned[name])}" for name in tuned_names]
    lines += [f"  {name}: {_json(value)}" for name, value in frozen.items()]
    lines += ["", "Importances:"]
    lines += [f"  {name}: {_json(value)}" for name, value in importances.items()]
    return "\n".join(lines) + "\n"


def _best_trial_lines(best: FrozenTrial) -> list[str]:
    lines = []
    if "seed" in best.user_attrs:
        lines.append(f"Best trial's training seed: {best.user_attrs['seed']}")
    duration_s = _duration_s(best)
    if duration_s is not None:
        lines.append(f"Best trial's duration: {_format_duration(duration_s)}")
    if "trial_dir" in best.user_attrs:
        lines.append(f"Best trial's output: {best.user_attrs['trial_dir']}")
    return lines


def _trial_lines(trials: Sequence[FrozenTrial], context: ReportContext) -> list[str]:
    numbers = [trial.number for trial in trials]
    starts = [trial.datetime_start for trial in trials if trial.datetime_start is not None]
    ends = [trial.datetime_complete for trial in trials if trial.datetime_complete is not None]
    lines = [f"Trials covered: {len(trials)}, numbers {min(numbers)} to {max(numbers)}"]
    if starts:
        first, last = min(starts), max(starts + ends)
        span_s = (last - first).total_seconds()
        lines.append(
            f"Time span: {_format_time(first)} to {_format_time(last)} ({_format_duration(span_s)})"
        )

    lines.append("Trials by state:")
    retried = [trial for trial in trials if RETRIED_ATTR in trial.user_attrs]
    for state in REPORTED_STATES:
        count = sum(
            trial.state == state and RETRIED_ATTR not in trial.user_attrs for trial in trials
        )
        lines.append(f"  {state.name}: {count}")
    if retried:
        lines.append(
            f"  retried: {len(retried)} (failed or stopped, then run again with the same "
            "parameters and seed; each parameter set counts once)"
        )
    others = [trial for trial in trials if trial.state not in REPORTED_STATES]
    if others:
        lines.append(f"  other states: {len(others)}")

    if context.n_trials_target is not None:
        lines.append(f"Trials requested: {context.n_trials_target}")
    else:
        lines.append("Trials requested: no fixed number (GPU-hour or time budget)")
    durations_s = [
        d
        for d in (_duration_s(trial) for trial in trials if trial.state.is_finished())
        if d is not None
    ]
    if durations_s:
        lines.append(
            f"Trial time: {_format_duration(sum(durations_s))}, summed over "
            f"{len(durations_s)} finished trials; median {_format_duration(median(durations_s))}, "
            f"max {_format_duration(max(durations_s))}"
        )
    trial_gpu_hours = sum(durations_s) * context.gpus_per_trial / 3600
    allocated = (
        "unknown"
        if context.allocated_gpu_hours is None
        else f"{context.allocated_gpu_hours:.3f} held by the workers from start to end"
    )
    lines.append(
        f"GPU-hours: {trial_gpu_hours:.3f} in finished trials ({context.gpus_per_trial} per "
        f"trial), {allocated}"
    )
    return lines


def _run_lines(context: ReportContext, best: FrozenTrial) -> list[str]:
    """Workers, data checksums, the best model's folder and the command that retrains it."""
    lines = []
    if context.workers:
        lines.append(f"Workers: {context.workers}")
    if context.data:
        lines.append("Training data:")
        lines += [f"  {key}: {described}" for key, described in context.data.items()]
    trial_dir = best.user_attrs.get("trial_dir")
    if trial_dir:
        saved = [
            Path(trial_dir) / name for name in MODEL_FOLDERS if (Path(trial_dir) / name).is_dir()
        ]
        where = str(saved[0]) if saved else f"not kept (no model folder in {trial_dir})"
        lines.append(f"Best trial's saved model: {where}")
    if context.train_command:
        command = context.train_command
        if "seed" in best.user_attrs:
            command += f" --{context.seed_path} {best.user_attrs['seed']}"
        lines.append(f"Train the best config from scratch: {command}")
    return lines + [""] if lines else lines


def _importance_line(study: optuna.Study, importances: Mapping[str, float]) -> str:
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not importances:
        return (
            "Importance: none, because fewer than 2 trials completed, their values are all "
            "equal, or fANOVA failed (see the log)"
        )
    n_used = min(n_complete, IMPORTANCE_MAX_TRIALS)
    return f"Importance: fANOVA on the best {n_used} of {n_complete} complete trials"


def _duration_s(trial: FrozenTrial) -> float | None:
    """Return the trial's recorded `duration_s`, else its start-to-end time, else None."""
    recorded = trial.user_attrs.get("duration_s")
    if isinstance(recorded, (int, float)) and math.isfinite(recorded):
        return float(recorded)
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def _format_time(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="seconds")


def _format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _package_versions() -> str:
    versions = []
    for package in VERSIONED_PACKAGES:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        versions.append(f"{package} {version}")
    return ", ".join(versions)


class _SkippedPlot(Exception):
    """A plot that the study cannot support, for example a contour plot of one trial."""


def _thin_history(figure: Any, max_markers: int) -> Any:
    """Cap the markers of Optuna's optimization history plot near `max_markers`; return it.

    The best-value line keeps only both ends of each run of equal values, so it draws the same
    line with few points. Past `max_markers` complete trials, the markers show one trial in k
    and every trial that set a new best, and the title states it. A study whose best value
    changes at most trials keeps most of its markers.
    """
    new_best: set[int] = set()
    for trace in figure.data:
        if trace.mode != "lines" or trace.y is None:
            continue
        numbers, values = list(trace.x), list(trace.y)
        last = len(values) - 1
        keep = [
            index
            for index in range(len(values))
            if index in (0, last)
            or values[index] != values[index - 1]
            or values[index] != values[index + 1]
        ]
        new_best |= {numbers[i] for i in range(1, len(values)) if values[i] != values[i - 1]}
        trace.x, trace.y = [numbers[i] for i in keep], [values[i] for i in keep]

    for trace in figure.data:
        if trace.mode != "markers" or trace.x is None or len(trace.x) <= max_markers:
            continue
        step = math.ceil(len(trace.x) / max_markers)
        points = [
            (number, value)
            for index, (number, value) in enumerate(zip(trace.x, trace.y, strict=True))
            if index % step == 0 or number in new_best
        ]
        figure.update_layout(
            title=f"Optimization History Plot ({len(points)} of {len(trace.x)} complete trials: "
            f"one in {step} and each new best)"
        )
        trace.x, trace.y = [number for number, _ in points], [value for _, value in points]
    return figure


def _write_plots(
    study: optuna.Study, output_dir: Path, names: Sequence[str], importances: Mapping[str, float]
) -> None:
    import optuna.visualization as visualization
    import plotly.io
    import plotly.offline

    best = _best_complete_trials(study)
    n_trials = len(study.get_trials(deepcopy=False))

    def contour() -> Any:
        ranked = [name for name in importances if name in names] or list(names)
        params = ranked[:CONTOUR_MAX_PARAMS]
        top = best[:CONTOUR_MAX_TRIALS]
        if len(top) < 2 or len(params) < 2:
            raise _SkippedPlot(
                f"needs 2 complete trials and 2 parameters, has {len(top)} and {len(params)}"
            )
        return visualization.plot_contour(_study_of(study, top), params=params)

    def parallel_coordinate() -> Any:
        subset = study
        if len(best) > PARALLEL_MAX_TRIALS:
            subset = _study_of(study, best[:PARALLEL_MAX_TRIALS])
        return visualization.plot_parallel_coordinate(subset, params=list(names))

    def timeline() -> Any:
        n_recent = TIMELINE_MAX_TRIALS if n_trials > TIMELINE_MAX_TRIALS else None
        return visualization.plot_timeline(study, n_recent_trials=n_recent)

    def param_importances() -> Any:
        if not importances:
            raise _SkippedPlot("no importances: fewer than 2 complete trials or equal values")
        import plotly.graph_objects as go

        ranked = sorted(importances.items(), key=lambda item: item[1])
        figure = go.Figure(
            go.Bar(
                x=[value for _, value in ranked],
                y=[name for name, _ in ranked],
                orientation="h",
                text=[f"{value:.2f}" for _, value in ranked],
                textposition="outside",
            )
        )
        n_used = min(len(best), IMPORTANCE_MAX_TRIALS)
        figure.update_layout(
            title=f"Hyperparameter importances (fANOVA, best {n_used} complete trials)",
            xaxis_title="importance (sums to 1)",
            yaxis_title="hyperparameter",
        )
        return figure

    plots: dict[str, Callable[[], Any]] = {
        "optimization_history.html": lambda: _thin_history(
            visualization.plot_optimization_history(study), HISTORY_MAX_TRIALS
        ),
        "edf.html": lambda: visualization.plot_edf(study),
        "contour.html": contour,
        "parallel_coordinate.html": parallel_coordinate,
        "timeline.html": timeline,
        "param_importances.html": param_importances,
    }

    bundle = output_dir / PLOTLY_BUNDLE_NAME
    bundle_text = plotly.offline.get_plotlyjs()
    if not bundle.exists() or bundle.read_text(encoding="utf-8") != bundle_text:
        write_text_atomically(bundle, bundle_text)

    for file_name, make_figure in plots.items():
        try:
            figure = make_figure()
            # "directory" makes the page load plotly.min.js from its own folder.
            html = plotly.io.to_html(figure, include_plotlyjs="directory", full_html=True)
        except _SkippedPlot as reason:
            logger.info("Skipped %s: %s", file_name, reason)
            (output_dir / file_name).unlink(missing_ok=True)  # from an earlier report
            continue
        except Exception as error:  # a plot is optional: one failing must not stop the report
            logger.warning("Skipped %s: %s: %s", file_name, type(error).__name__, error)
            (output_dir / file_name).unlink(missing_ok=True)
            continue
        write_text_atomically(output_dir / file_name, html)

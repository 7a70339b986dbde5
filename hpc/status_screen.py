"""The text screen of `python -m hpc status`, rendered from `collect_status`'s data."""

from __future__ import annotations

from typing import Any

from hpc.hints import plural


def render_status(data: dict[str, Any]) -> str:
    """Render `collect_status`'s data as one screen of text."""
    sweep, phase, trials = data["sweep"], data["phase"], data["trials"]
    lines = [
        f"Sweep:    {sweep['name']}, {sweep['state']}"
        + (f" (cancelled at {sweep['cancelled_at']})" if sweep["cancelled_at"] else ""),
        f"Phase:    {phase['current']} of {phase['phases']}"
        + (f" ({phase['plan']})" if phase["plan"] else ""),
        f"Study:    {sweep['study']} in {sweep['storage']}",
        "Trials:   "
        + ", ".join(
            f"{key} {trials[key]}"
            for key in ("complete", "pruned", "failed", "running", "waiting", "retried")
        ),
    ]
    best = data["best"]
    if best is None:
        lines.append("Best:     no complete trial yet")
    else:
        lines.append(
            f"Best:     {', '.join(best['metric'])} = {best['value']:.6g} "
            f"(trial {best['trial']}, phase {best['phase']})"
        )
        lines.extend(f"          {key}: {_value(value)}" for key, value in best["params"].items())
    lines.append(f"Budget:   {_budget_text(data['budget'])}")
    lines.extend(_jobs_text(data["jobs"], data["jobs_note"], sweep["executor"]))
    lines.extend(_stale_text(data["stale"]))
    if data["next"]:
        lines.append(f"Next:     {data['next']}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    """Six significant digits for floats (full precision is in --json and the report)."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _budget_text(budget: dict[str, Any]) -> str:
    if budget["unit"] is None:
        return "no n_trials or gpu_hours: workers run until stopped"
    if budget["unit"] == "trials":
        text = f"{budget['used']} of {budget['total']} trials finished, {budget['left']} left"
    else:
        text = (
            f"{budget['used']:.3f} of {budget['total']:g} GPU-hours spent, "
            f"{budget['left']:.3f} left"
        )
    if budget["spent"] is not None:
        return text if not budget["left"] else f"{text}; no new trial starts: {budget['spent']}"
    if budget["eta_s"] is not None:
        text += (
            f"; about {_duration(budget['eta_s'])} to go with "
            f"{plural(budget['workers'], 'worker')} (mean trial "
            f"{_duration(budget['mean_trial_s'])})"
        )
    elif not budget["workers"]:
        text += "; no worker runs now"
    return text


def _jobs_text(jobs: list[dict[str, Any]], note: str | None, executor: str) -> list[str]:
    """Group the jobs by job, role, state and reason, so that a large array fits one line."""
    if not jobs:
        lines = ["Jobs:     no local worker runs" if executor != "slurm" else "Jobs:     none"]
        return lines + ([f"          ({note})"] if note else [])
    groups: dict[tuple[str, str, str, str | None], list[dict[str, Any]]] = {}
    for job in jobs:
        key = (job["id"].partition("_")[0], job["role"], job["state"], job["reason"])
        groups.setdefault(key, []).append(job)
    lines = []
    hints = []
    for (base, role, state, reason), members in groups.items():
        tasks = [job["id"].partition("_")[2] for job in members]
        tasks = [task for task in tasks if task]
        what = f"{base} {_task_ranges(tasks)}" if tasks else base
        why = f" ({reason})" if reason else ""
        lines.append(f"{what} [{role}]: {state}{why}")
        first = members[0]
        if first["hint"]:
            # One command for the whole group: Slurm applies an array's id to all its tasks.
            target = first["id"] if len(members) == 1 else base
            hints.append(first["hint"].replace(first["id"], target))
    rendered = ["Jobs:     " + lines[0]] + [f"          {line}" for line in lines[1:]]
    rendered.extend(f"Action:   {hint}" for hint in dict.fromkeys(hints))
    if note:
        rendered.append(f"          ({note})")
    return rendered


def _task_ranges(tasks: list[str]) -> str:
    """`tasks 0-3,7` for task ids; Slurm's own expressions (`[4-7%2]`) are kept as they are."""
    numbers = sorted(int(task) for task in tasks if task.isdigit())
    parts = [task for task in tasks if not task.isdigit()]
    start = previous = None
    for number in numbers + [None]:
        if number is not None and previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = number
    label = "task" if len(tasks) == 1 and tasks[0].isdigit() else "tasks"
    return f"{label} {','.join(parts)}"


def _stale_text(stale: dict[str, Any]) -> list[str]:
    lines = []
    if stale["reaped"]:
        lines.append(
            f"Reaped:   {plural(stale['reaped'], 'stale trial')} of ended jobs or processes, "
            "queued to run again"
        )
    for trial in stale["silent"]:
        where = f"job {trial['job']} still runs" if trial["job"] else "its worker still runs"
        lines.append(
            f"Stale:    trial {trial['trial']} has sent no heartbeat for "
            f"{_duration(trial['silent_s'])}; kept because {where} (it may have lost the "
            "database for a while)"
        )
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"

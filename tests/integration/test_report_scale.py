"""The report on a study grown by bulk insert: its SQL statements at 200 and 2,000 trials, and
the caps that keep its plots small."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sweep_helpers import statements_at_200_and_2000

import tuner.report
from hpc.coordinator import write_final_report

pytestmark = pytest.mark.integration

# Optuna loads a study's trials with one SELECT of the trials, then one SELECT per table of
# trial rows (params, values, attributes, intermediate values) for each batch of 500 trials
# (SQLAlchemy's selectinload). Those batches are the only statements allowed to grow.
BATCH_LOAD = re.compile(r"FROM (trial_\w+) WHERE \1\.trial_id IN \(")
HTML_LIMIT_BYTES = 1_000_000


def test_report_statements_do_not_grow_with_trials(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # A cap below 1,600 complete trials, so the 2,000-trial report thins its history plot.
    monkeypatch.setattr(tuner.report, "HISTORY_MAX_TRIALS", 1000)
    (small, _), (large, report_dir) = statements_at_200_and_2000(
        tmp_path, database_url, write_final_report
    )

    small_batches = [statement for statement in small if BATCH_LOAD.search(statement)]
    large_batches = [statement for statement in large if BATCH_LOAD.search(statement)]
    # One load of the trials: 1 batch of 500 at 200 trials, 4 at 2,000, for each table.
    assert small_batches, small
    assert len(large_batches) == 4 * len(small_batches), large_batches
    others_small = len(small) - len(small_batches)
    others_large = len(large) - len(large_batches)
    assert others_small == others_large, (small, large)
    assert others_large <= 30, large

    summary = (report_dir / tuner.report.SUMMARY_NAME).read_text()
    # 1,600 of the 2,000 trials are complete: the sweep's own and 80 % of the inserted ones.
    assert "Importance: fANOVA on the best 200 of 1600 complete trials" in summary
    history = (report_dir / "optimization_history.html").read_text()
    assert "of 1600 complete trials: one in 2 and each new best" in history
    sizes = {path.name: path.stat().st_size for path in report_dir.glob("*.html")}
    assert len(sizes) == 6, sizes
    assert max(sizes.values()) < HTML_LIMIT_BYTES, sizes
    print(
        f"report issued {len(large)} SQL statements at 2,000 trials, {len(large_batches)} of "
        f"them batches of Optuna's trial load; largest HTML file {max(sizes.values())} bytes"
    )

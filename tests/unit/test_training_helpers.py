"""Pure helpers of the EDS-NLP trial: metric lookup and batch-size parsing."""

from __future__ import annotations

import math

import pytest

from tuner.errors import TrialError
from tuner.preflight_static import parse_batch_size, suggest_batch_size
from tuner.training import format_path, metric_value

# Shape of eds.ner_token's output inside GenericScorer (edsnlp 0.22.0), trimmed.
VALIDATION = {
    "speed": {"wps": 1834.2, "dps": 210.5},
    "ner": {
        "micro": {"f": 0.5, "p": 0.4, "r": 0.6667, "tp": 2, "support": 3, "positives": 5},
        "DISO": {"f": 0.25, "p": 0.2, "r": 0.3333, "tp": 1, "support": 3, "positives": 5},
    },
    "qualifier": {"per_class": [{"f": 0.1}, {"f": 0.3}], "name": "negation", "flag": True},
}


def test_metric_value_reads_path():
    assert metric_value(VALIDATION, [("ner", "micro", "f")]) == 0.5


def test_metric_value_averages_paths():
    value = metric_value(VALIDATION, [("ner", "micro", "f"), ("ner", "DISO", "f")])
    assert value == pytest.approx(0.375)


def test_metric_value_accepts_integers_and_list_indices():
    assert metric_value(VALIDATION, [("ner", "micro", "tp")]) == 2.0
    assert metric_value(VALIDATION, [("qualifier", "per_class", 1, "f")]) == 0.3


def test_metric_value_returns_nan_unchanged():
    # The caller decides what a NaN metric means (train_trial fails the trial).
    assert math.isnan(
        metric_value({"ner": {"micro": {"f": float("nan")}}}, [("ner", "micro", "f")])
    )


def test_metric_missing_last_key_lists_siblings():
    with pytest.raises(TrialError) as caught:
        metric_value(VALIDATION, [("ner", "micro", "fscore")])
    message = str(caught.value)
    assert "'ner.micro.fscore'" in message
    assert "ner.micro has no key 'fscore'" in message
    assert "keys there: f, p, r, tp, support, positives" in message
    assert "such as 'ner.micro.f'" in message


def test_metric_missing_scorer_key_names_top_level():
    with pytest.raises(TrialError) as caught:
        metric_value(VALIDATION, [("ner_pipe", "micro", "f")])
    message = str(caught.value)
    assert "the top level has no key 'ner_pipe'" in message
    assert "keys there: speed, ner, qualifier" in message
    assert "key of the scorer: section" in message


def test_metric_missing_label():
    with pytest.raises(TrialError) as caught:
        metric_value(VALIDATION, [("ner", "CHEM", "f")])
    assert "keys there: micro, DISO" in str(caught.value)


def test_metric_one_bad_path_of_several_fails():
    with pytest.raises(TrialError, match="'ner.DISO.x'"):
        metric_value(VALIDATION, [("ner", "micro", "f"), ("ner", "DISO", "x")])


@pytest.mark.parametrize(
    "path, shown",
    [
        (("ner", "micro"), "{'f': 0.5"),
        (("qualifier", "name"), "'negation'"),
        (("qualifier", "flag"), "True"),
    ],
)
def test_metric_not_a_number(path, shown):
    with pytest.raises(TrialError) as caught:
        metric_value(VALIDATION, [path])
    message = str(caught.value)
    assert "not a number" in message
    assert shown in message


def test_metric_index_out_of_range():
    with pytest.raises(TrialError, match="no key 5"):
        metric_value(VALIDATION, [("qualifier", "per_class", 5, "f")])


def test_metric_value_needs_a_path():
    with pytest.raises(TrialError, match="tuning.metric"):
        metric_value(VALIDATION, [])


def test_metric_empty_output():
    with pytest.raises(TrialError, match=r"keys there: none"):
        metric_value({}, [("ner", "micro", "f")])


def test_format_path_quotes_dotted_parts():
    assert format_path(("optimizer", "groups", ".*", "lr")) == "optimizer.groups.'.*'.lr"
    assert format_path(("a", 0, "b")) == "a.0.b"
    assert format_path(()) == ""


@pytest.mark.parametrize(
    "value, parsed",
    [
        (32, (32, "docs")),
        ("32", (32, "docs")),
        ("4096 tokens", (4096, "tokens")),
        ("512 words", (512, "words")),
        ("  16   docs ", (16, "docs")),
        ("tokens", (None, "tokens")),
    ],
)
def test_parse_batch_size_accepted(value, parsed):
    assert parse_batch_size(value) == parsed


@pytest.mark.parametrize(
    "value",
    ["32 * 128 tokens", "32*128 tokens", "4096 tok ens", "4.5 docs", "", "tokens 32", "1e3 tokens"],
)
def test_parse_batch_size_rejected(value):
    with pytest.raises(ValueError, match="Invalid batch size"):
        parse_batch_size(value)


@pytest.mark.parametrize(
    "value, suggestion",
    [
        ("32 * 128 tokens", "4096 tokens"),
        ("32*128 tokens", "4096 tokens"),
        ("(16 + 16) * 128 words", "4096 words"),
        ("8192 // 2 tokens", "4096 tokens"),
        ("2 * 16", "32"),
        ("4096 tok ens", None),
        ("4.5 docs", None),
        ("32 / 0 docs", None),
        ("0 * 4 docs", None),
        ("__import__('os') tokens", None),
        ("2 ** 12 tokens", None),
    ],
)
def test_suggest_batch_size(value, suggestion):
    assert suggest_batch_size(value) == suggestion

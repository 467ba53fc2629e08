"""The benchmarks' percentile helper, checked against hand-computed values and the standard library."""

from __future__ import annotations

import statistics

import pytest

from bench.stats import percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    # Rank 0.95 * 9 = 8.55 falls between 9.0 and 10.0.
    samples = [float(value) for value in range(1, 11)]
    assert percentile(samples, 0.95) == pytest.approx(9.55)
    assert percentile(samples, 0.5) == pytest.approx(5.5)


def test_percentile_ignores_input_order() -> None:
    assert percentile([30.0, 10.0, 20.0], 0.5) == 20.0


def test_percentile_ends_are_min_and_max() -> None:
    samples = [4.0, 1.0, 9.0, 7.0]
    assert percentile(samples, 0.0) == 1.0
    assert percentile(samples, 1.0) == 9.0


def test_percentile_of_one_sample() -> None:
    assert percentile([0.25], 0.95) == 0.25


def test_percentile_matches_statistics_quantiles() -> None:
    samples = [0.011, 0.004, 0.029, 0.013, 0.007, 0.052, 0.009, 0.018, 0.006, 0.021, 0.015]
    expected = statistics.quantiles(samples, n=20, method="inclusive")
    assert percentile(samples, 0.95) == pytest.approx(expected[18])
    assert percentile(samples, 0.05) == pytest.approx(expected[0])


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_percentile_rejects_invalid_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="invalid fraction"):
        percentile([1.0, 2.0], fraction)


def test_percentile_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_summarize_returns_every_figure() -> None:
    summary = summarize([5.0, 1.0, 3.0])
    assert summary == {"min": 1.0, "median": 3.0, "p95": pytest.approx(4.8), "max": 5.0}

"""Tests of demux.weighting: the A-weighting and hearing-threshold curves at tabulated
points, and the normalised per-coefficient weights built from them."""

from __future__ import annotations

import pytest
import torch

from demux.errors import ParameterError
from demux.weighting import a_weighting_db, hearing_threshold_db, perceptual_weights


@pytest.mark.parametrize(
    ("freq_hz", "expected_db"),
    # IEC 61672-1 Table 2 (A-weighting at nominal frequencies), to its 0.1 dB
    [(10.0, -70.4), (100.0, -19.1), (1000.0, 0.0), (4000.0, 1.0), (10000.0, -2.5)],
)
def test_a_weighting_matches_the_iec_table(freq_hz, expected_db):
    assert float(a_weighting_db(torch.tensor([freq_hz]))) == pytest.approx(expected_db, abs=0.1)


def test_a_weighting_is_even_in_frequency_and_minus_infinity_at_dc():
    f = torch.tensor([-300.0, 300.0, 0.0])
    gain = a_weighting_db(f)
    assert float(gain[0]) == float(gain[1])  # two-sided spectra: a negative bin weighs as its mirror
    assert float(gain[2]) == float("-inf")


def test_hearing_threshold_at_known_points():
    # Terhardt's formula: 3.37 dB SPL at 1 kHz, its minimum of about -5.0 dB near 3.3 kHz
    f = torch.tensor([1000.0, 3300.0])
    torch.testing.assert_close(hearing_threshold_db(f), torch.tensor([3.37, -4.98]), atol=0.01, rtol=0)
    grid = torch.linspace(500.0, 8000.0, 751)
    assert 3200.0 < float(grid[hearing_threshold_db(grid).argmin()]) < 3500.0


@pytest.mark.parametrize("weighting", ["a-weighting", "ath"])
def test_weights_have_mean_one_and_the_curve_s_ratios(weighting):
    f = torch.linspace(0.0, 8000.0, 513, dtype=torch.float64)
    w = perceptual_weights(f, weighting)
    assert w.shape == f.shape and w.dtype == torch.float64
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-12)
    assert float(w[0]) == 0.0 and bool((w >= 0).all())
    curve = a_weighting_db(f) if weighting == "a-weighting" else -hearing_threshold_db(f)
    ratio_db = 10 * torch.log10(w[64] / w[256])  # 1 kHz against 4 kHz
    torch.testing.assert_close(ratio_db, curve[64] - curve[256], atol=1e-9, rtol=0)


def test_a_weighting_100_hz_is_19_db_below_1_khz_after_normalising():
    w = perceptual_weights(torch.tensor([100.0, 1000.0, 3000.0]), "a-weighting")
    assert float(10 * torch.log10(w[0] / w[1])) == pytest.approx(-19.1, abs=0.1)


def test_none_means_no_weights_and_bad_values_raise():
    assert perceptual_weights(torch.ones(4), "none") is None
    with pytest.raises(ParameterError, match=r"weighting='c-weighting' is not one of"):
        perceptual_weights(torch.ones(4), "c-weighting")
    with pytest.raises(ParameterError, match=r"every coefficient has weight 0"):
        perceptual_weights(torch.zeros(4), "a-weighting")

"""eval.reference: the distances between a predictive and its NUTS reference against
their closed forms, and the checks on a reference folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import integrate, stats

from bslrun.artifacts import RunFolder, write_json, write_npz
from bslrun.errors import DataError
from bslrun.inference import reference

LEVELS = np.asarray(reference.levels())


def test_levels_are_the_midpoints_of_k_equal_slices():
    assert len(LEVELS) == reference.NUM_LEVELS == 100
    np.testing.assert_allclose(LEVELS[[0, 49, 99]], [0.005, 0.495, 0.995])


@pytest.mark.parametrize(("m1", "s1", "m2", "s2"), [(0.0, 1.0, 0.5, 2.0), (3.0, 0.2, -1.0, 0.25)])
def test_w2_of_two_normals_matches_the_closed_form(m1, s1, m2, s2):
    """W2(N(m1, s1^2), N(m2, s2^2))^2 = (m1 - m2)^2 + (s1 - s2)^2 (e.g. Givens & Shortt
    1984). The midpoint rule leaves out the tails beyond the outer levels: the scale term
    is weighted by c_K = mean_k Phi^-1(u_k)^2 = 0.987, not 1, and nothing else changes."""
    q1 = stats.norm.ppf(LEVELS, m1, s1)
    q2 = stats.norm.ppf(LEVELS, m2, s2)
    exact = np.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)
    c_k = np.mean(stats.norm.ppf(LEVELS) ** 2)
    estimate = reference.wasserstein2(q1, q2)
    np.testing.assert_allclose(estimate, np.sqrt((m1 - m2) ** 2 + c_k * (s1 - s2) ** 2), rtol=1e-9)
    np.testing.assert_allclose(estimate, exact, rtol=0.01)
    assert reference.wasserstein2(q1, q1) == 0.0


def test_w2_estimate_agrees_with_the_quantile_integral_for_skewed_distributions():
    """W2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du, by quadrature, for two Gamma laws."""
    p, q = stats.gamma(2.0, scale=1.0), stats.gamma(5.0, scale=0.6)
    exact, _ = integrate.quad(lambda u: (p.ppf(u) - q.ppf(u)) ** 2, 0, 1, limit=200)
    estimate = reference.wasserstein2(p.ppf(LEVELS), q.ppf(LEVELS))
    np.testing.assert_allclose(estimate, np.sqrt(exact), rtol=0.02)


def test_gaussian_kl_matches_numerical_integration():
    """KL(N(m_ref, s_ref^2) || N(m, s^2)) = int p_ref log(p_ref / p), by quadrature."""
    m_ref, s_ref, m, s = 0.3, 0.7, -0.2, 1.3
    p, q = stats.norm(m_ref, s_ref), stats.norm(m, s)
    exact, _ = integrate.quad(lambda y: p.pdf(y) * (p.logpdf(y) - q.logpdf(y)), -20, 20)
    np.testing.assert_allclose(reference.gaussian_kl(m_ref, s_ref, m, s), exact, rtol=1e-7)
    assert reference.gaussian_kl(m, s, m, s) == pytest.approx(0.0, abs=1e-12)
    # The reference first: an overconfident approximation (s << s_ref) costs more than an
    # underconfident one of the same ratio.
    assert reference.gaussian_kl(0, 1, 0, 0.5) > reference.gaussian_kl(0, 1, 0, 2.0)


def test_regression_distances_average_over_points():
    m_ref, s_ref = np.array([0.0, 1.0]), np.array([1.0, 2.0])
    m, s = np.array([1.0, 1.0]), np.array([1.0, 1.0])
    ref = {"quantiles": stats.norm.ppf(LEVELS[None, :], m_ref[:, None], s_ref[:, None]),
           "mean": m_ref, "std": s_ref}  # fmt: skip
    own = {"quantiles": stats.norm.ppf(LEVELS[None, :], m[:, None], s[:, None]),
           "mean": m, "std": s}  # fmt: skip
    found = reference.regression_distances(own, ref)
    c_k = np.mean(stats.norm.ppf(LEVELS) ** 2)
    assert found["w2"] == pytest.approx((1.0 + np.sqrt(c_k)) / 2)
    kl = [0.5, np.log(0.5) + 4 / 2 - 0.5]  # (1 + 1) / 2 - 1/2 ; log(1/2) + 4/2 - 1/2
    assert found["kl_gauss"] == pytest.approx(np.mean(kl))


def test_agreement_and_total_variation_on_hand_made_probabilities():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]])
    own = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.0, 1.0, 0.0]])
    assert reference.agreement(own, ref) == pytest.approx(2 / 4)
    # Per row 1/2 sum |p - p_ref|: 0.1, 0.4, 0, 1.
    assert reference.total_variation(own, ref) == pytest.approx((0.1 + 0.4 + 0.0 + 1.0) / 4)
    same = reference.classification_distances({"probs": ref}, {"probs": ref})
    assert same == {"agreement": 1.0, "total_variation": 0.0}


# ------------------------------------------------------------------ reading a folder


def nuts_folder(root, y, method="nuts", write_reference=True):
    folder = RunFolder(root)
    write_json(folder.config, {"inference": {"method": method}})
    if write_reference:
        summary = {"quantiles": np.zeros((len(y), 100)), "mean": y, "std": np.ones_like(y)}
        write_npz(folder.reference, reference.reference_arrays("regression", summary, y))
    return str(root)


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_a_reference_of_the_same_points_is_read(tmp_path):
    y = np.linspace(3.0, 8.0, 12, dtype=np.float32)
    arrays = reference.read(nuts_folder(tmp_path, y), y.copy(), "regression")
    np.testing.assert_array_equal(arrays["y"], y)
    assert arrays["quantiles"].shape == (12, 100) and len(arrays["levels"]) == 100


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda root, y: str(root / "missing"), "no such folder"),
        (lambda root, y: nuts_folder(root, y, method="svi"), "is not a NUTS run"),
        (lambda root, y: nuts_folder(root, y, write_reference=False), "has no reference.npz"),
        (lambda root, y: nuts_folder(root, y + 0.5), "sampled on other test points"),
        (lambda root, y: nuts_folder(root, y[:-1]), "sampled on other test points"),
    ],
)
def test_a_wrong_reference_folder_is_refused_in_one_line(tmp_path, make, words):
    y = np.linspace(3.0, 8.0, 12, dtype=np.float32)
    with pytest.raises(DataError) as error:
        reference.read(make(tmp_path, y), y, "regression")
    assert words in one_line(error) and "eval.reference=" in one_line(error)


def test_a_regression_reference_is_refused_for_a_classifier(tmp_path):
    y = np.arange(6, dtype=np.float32)
    with pytest.raises(DataError) as error:
        reference.read(nuts_folder(tmp_path, y), y.astype(np.int32), "classification")
    assert "holds no probs" in one_line(error)
    json.loads((tmp_path / "config.json").read_text())  # left as it was

"""Fréchet distance, KVD, grouped scores and the restricted unpickler, on synthetic features."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from lfdm_cli.errors import UserError
from lfdm_cli.metrics.fvd import (
    check_groups,
    frechet_distance,
    frechet_distance_from_stats,
    fvd_scores,
    grouped_fvd,
    kernel_distance,
    small_sample_warning,
    trace_sqrt_product,
)
from lfdm_cli.metrics.safe_unpickle import flatten_arrays, load_numpy_pickle, loads_numpy_pickle


def feats(n, d=400, shift=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * scale + shift).astype(np.float32)


def eig_reference_fvd(f1, f2):
    """FVD with Tr sqrt(S1 S2) from the eigenvalues of the (non-symmetric) product, float64.

    S1 S2 has at most rank(S1) non-zero eigenvalues; the others are zero in exact arithmetic and
    only rounding noise here, so they are left out rather than square-rooted.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    rank = min(np.linalg.matrix_rank(s1), np.linalg.matrix_rank(s2))
    ev = np.sort(np.linalg.eigvals(s1 @ s2).real)[::-1][:rank]
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


# ------------------------------------------------------------------------------ Fréchet distance

@pytest.mark.parametrize("n,d", [(5, 400), (50, 400), (150, 100)])
def test_fvd_of_a_set_with_itself_is_zero(n, d):
    x = feats(n, d=d, scale=5.0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_near_singular_covariances_give_finite_real_result():
    # N = 5 videos in 400 dimensions: rank-4 covariances, S1 S2 singular.
    x, y = feats(5, scale=4.0, seed=1), feats(5, shift=0.3, scale=4.0, seed=2)
    value = frechet_distance(x, y)
    assert isinstance(value, float) and np.isfinite(value)
    assert value == pytest.approx(eig_reference_fvd(x, y), rel=1e-8)
    # Rank even lower than N - 1 (repeated videos) and dimensions without any variance.
    x2 = np.concatenate([x[:2], x[:2], x[:1]])
    x2[:, :100] = 7.0
    value2 = frechet_distance(x2, y)
    assert np.isfinite(value2)
    assert value2 == pytest.approx(eig_reference_fvd(x2, y), rel=1e-8)


def test_small_and_large_set_routes_agree_with_covariance_route():
    # More videos than dimensions (the last pair) takes the D x D route.
    for n1, n2, d in [(8, 8, 400), (30, 12, 400), (120, 150, 100)]:
        x, y = feats(n1, d=d, seed=3), feats(n2, d=d, shift=0.1, scale=1.5, seed=4)
        via_stats = frechet_distance_from_stats(x.mean(0), np.cov(x.astype(np.float64), rowvar=False),
                                                y.mean(0), np.cov(y.astype(np.float64), rowvar=False))
        assert frechet_distance(x, y) == pytest.approx(via_stats, rel=1e-8)


def test_trace_sqrt_product_of_singular_matrices_is_real():
    v = feats(3, d=50, seed=5).astype(np.float64)
    s = v.T @ v  # rank 3 in 50-d
    assert trace_sqrt_product(s, s) == pytest.approx(np.trace(s), rel=1e-9)


def test_fvd_known_value_for_gaussians_with_diagonal_covariance():
    # Diagonal covariances: FVD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance_from_stats(mu1, a, mu2, b) == pytest.approx(expected, rel=1e-12)


def test_fvd_needs_two_videos_per_set():
    with pytest.raises(UserError, match="at least 2 videos"):
        frechet_distance(feats(1), feats(5))


def test_fewer_videos_than_dimensions_warns():
    assert "fewer than the feature dimension" in small_sample_warning(16, 400)
    assert small_sample_warning(400, 500) is None
    result = fvd_scores(feats(10), feats(10, shift=1.0, seed=1))
    assert result["fvd"] > 0 and any("fewer than the feature dimension" in w for w in result["warnings"])


# ------------------------------------------------------------------------------ KVD

def test_kvd_unbiased_estimator_matches_direct_sums():
    x, y = feats(4, d=3, seed=6).astype(np.float64), feats(5, d=3, shift=0.5, seed=7).astype(np.float64)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(4) for j in range(5)) / (4 * 5)
    assert kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kvd_near_zero_for_same_distribution_and_positive_for_different():
    x, y = feats(300, seed=8), feats(300, seed=9)
    far = kernel_distance(x, feats(300, shift=0.5, seed=10))
    assert far > 0
    assert abs(kernel_distance(x, y)) < 0.05 * far
    # A set against itself: the unbiased estimator is -(2/m)(mean k(x,x) - mean k(x,x')), which
    # is small next to a real difference and shrinks as 1/m.
    assert abs(kernel_distance(x, x)) < 0.05 * far


def test_kvd_subsets_are_seeded():
    x, y = feats(60, d=20, seed=11), feats(70, d=20, shift=0.3, seed=12)
    a = kernel_distance(x, y, max_subset_size=30, num_subsets=10, seed=3)
    assert a == kernel_distance(x, y, max_subset_size=30, num_subsets=10, seed=3)
    assert a == pytest.approx(kernel_distance(x, y), rel=0.5)


# ------------------------------------------------------------------------------ cFVD / sFVD

def test_grouped_fvd_forms_groups_from_keys_and_aggregates():
    real = np.concatenate([feats(6, seed=20), feats(6, shift=2.0, seed=21), feats(3, seed=22)])
    real_keys = ["happy"] * 6 + ["sad"] * 6 + ["only_real"] * 3
    fake = np.concatenate([real[:6], feats(5, shift=3.0, seed=23), feats(1, seed=24), feats(2, seed=25)])
    fake_keys = ["happy"] * 6 + ["sad"] * 5 + ["lonely"] + ["only_fake"] * 2
    # Order within a set must not matter: groups come from the keys, not positions.
    order = np.random.default_rng(0).permutation(len(fake))
    fake, fake_keys = fake[order], [fake_keys[i] for i in order]

    g = grouped_fvd(real, real_keys, fake, fake_keys)
    assert set(g["groups"]) == {"happy", "sad"}
    assert g["groups"]["happy"]["fvd"] == pytest.approx(0.0, abs=1e-6)
    sad_fake = fake[[i for i, k in enumerate(fake_keys) if k == "sad"]]
    assert g["groups"]["sad"]["fvd"] == pytest.approx(frechet_distance(real[6:12], sad_fake), rel=1e-12)
    assert g["groups"]["sad"]["n_real"] == 6 and g["groups"]["sad"]["n_fake"] == 5
    values = [g["groups"]["happy"]["fvd"], g["groups"]["sad"]["fvd"]]
    assert g["mean"] == pytest.approx(np.mean(values)) and g["std"] == pytest.approx(np.std(values))
    assert g["n_groups"] == 2
    assert set(g["skipped"]) == {"only_real", "only_fake", "lonely"}

    result = fvd_scores(real, fake, by="class", real_groups=real_keys, fake_groups=fake_keys)
    assert result["cfvd"]["mean"] == pytest.approx(g["mean"])
    assert any("left out" in w for w in result["warnings"])


def test_grouped_fvd_skips_groups_with_one_video():
    real, fake = feats(4, seed=30), feats(3, seed=31)
    g = grouped_fvd(real, ["a", "a", "b", "b"], fake, ["a", "a", "b"])
    assert set(g["groups"]) == {"a"} and "too few" in g["skipped"]["b"]


def test_no_matching_groups_is_a_clear_error():
    with pytest.raises(UserError, match="no subject has at least 2 videos in both sets") as exc:
        check_groups(["s1", "s1"], ["img_a.png", "img_a.png"], "subject")
    assert "s1" in str(exc.value) and "img_a.png" in str(exc.value)


# ------------------------------------------------------------------------------ restricted unpickler

class _CallsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": {"w": np.ones(3)}, "x": _CallsSystem(marker)}))
    with pytest.raises(UserError) as exc:
        load_numpy_pickle(path)
    assert "system" in str(exc.value) and str(path) in str(exc.value)
    assert not marker.exists()


def test_unpickler_refuses_other_globals():
    with pytest.raises(UserError, match="eval"):
        loads_numpy_pickle(pickle.dumps(_CallsEval()))
    with pytest.raises(UserError, match="refusing"):
        loads_numpy_pickle(pickle.dumps(np.float32(1.5)))  # numpy scalars need another global
    with pytest.raises(UserError, match="object"):
        loads_numpy_pickle(pickle.dumps({"a": np.array([{"k": 1}], dtype=object)}))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_accepts_dicts_of_arrays(protocol):
    tree = {"params": {"conv/kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
                       "bias": np.zeros(4, np.float64)},
            "stats": {"mean": np.ones((1, 1, 2), np.float32)}, "extra": [np.arange(3)]}
    out = loads_numpy_pickle(pickle.dumps(tree, protocol=protocol))
    np.testing.assert_array_equal(out["params"]["conv/kernel"], tree["params"]["conv/kernel"])
    assert out["params"]["bias"].dtype == np.float64
    flat = flatten_arrays({"params": out["params"], "stats": out["stats"]})
    assert sorted(flat) == ["params/bias", "params/conv/kernel", "stats/mean"]

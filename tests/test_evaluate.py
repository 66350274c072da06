"""Tests of evaluate.py: both ranking-metric functions against hand-worked cases, the fast one
against the definition (`rank_metrics`, the official MATLAB code step by step) on random problems,
the distances, XQDA/KISSME algebra, the precision a checkpoint is scored in, the checks of flags
before any work, the module's imports, and the CLI end to end (marked slow). The tools around the
evaluation are tested in tests/test_tools.py."""
import ast
import os
import re
import sys
import types

import numpy as np
import pytest
import torch
import common
from conftest import pool_model, pooled
import data
import evaluate
from common import UserError


# -----------------------------------------------------------------------------
# rank_metrics (the definition) and fast_rank_metrics (the same numbers without sorting)

# every hand-worked case below runs against both
BOTH = pytest.mark.parametrize("rank_metrics", [evaluate.rank_metrics, evaluate.fast_rank_metrics],
                               ids=["rank_metrics", "fast_rank_metrics"])
# the two toy rankings below too, rank_metrics' runs checking exercise 3 (tests/exercises.py)
TOY = pytest.mark.parametrize("rank_metrics", [
    pytest.param(evaluate.rank_metrics, marks=pytest.mark.exercise(3)), evaluate.fast_rank_metrics],
    ids=["rank_metrics", "fast_rank_metrics"])


def random_problem(rng, Q, G, kind):
    """A small random problem with junk (-1), distractors (0), same-camera matches, queries whose
    only matches are in their own camera (no match), and many ties when kind != 'float32'."""
    ids, cams = int(rng.integers(1, 6)), int(rng.integers(2, 4))
    # pid ids+1: a query pid that is never in the gallery
    q_pids, g_pids = rng.integers(1, ids + 2, Q), rng.integers(-1, ids + 1, G)
    q_cams, g_cams = rng.integers(0, cams, Q), rng.integers(0, cams, G)
    if kind == "float32":
        dist = rng.random((Q, G)).astype(np.float32)
    elif kind == "ties64":  # a few distinct values, negative ones too
        dist = rng.integers(-3, int(rng.integers(-2, 6)), (Q, G)).astype(np.float64) * 0.25
    else:  # "int": integer distances, converted to float64 inside
        dist = rng.integers(0, 4, (Q, G))
    return dist, q_pids, g_pids, q_cams, g_cams


def assert_same(out, ref):
    assert out["num_queries"] == ref["num_queries"] and out["num_skipped"] == ref["num_skipped"]
    np.testing.assert_allclose(out["cmc"], ref["cmc"], rtol=0, atol=1e-12)
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
    assert out["mAP_official"] == pytest.approx(ref["mAP_official"], abs=1e-12)


# Gallery of the hand-worked toy (index: pid, camera):
#   g0: 1, c0   g1: 1, c1   g2: -1 (junk), c1   g3: 2, c0   g4: 0 (distractor), c1
#   g5: 1, c2   g6: 2, c1   g7: 3, c0
TOY_G_PIDS, TOY_G_CAMS = np.array([1, 1, -1, 2, 0, 1, 2, 3]), np.array([0, 1, 1, 0, 1, 2, 1, 0])
TOY_Q_PIDS, TOY_Q_CAMS = np.array([1, 2, 9]), np.array([0, 1, 0])
TOY_DIST = np.array([
    # g0    g1    g2    g3    g4    g5    g6    g7
    [0.1, 0.5, 0.2, 0.3, 0.5, 0.9, 0.4, 0.6],    # q0: pid 1, camera 0
    [0.7, 0.3, 0.05, 0.3, 0.6, 0.9, 0.1, 0.35],  # q1: pid 2, camera 1
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],    # q2: pid 9, in no gallery image
])


@TOY
def test_toy_ranking_worked_by_hand(rank_metrics):
    # q0 (pid 1, cam 0). Sorted by (distance, index): g0 .1, g2 .2, g3 .3, g6 .4, g1 .5, g4 .5,
    #   g7 .6, g5 .9.
    #   g0 is pid 1 in camera 0 (same id, same camera) -> removed; g2 is junk -> removed.
    #   g1 and g4 tie at 0.5: the lower index, g1, goes first.
    #   valid ranking: g3, g6, g1, g4, g7, g5; true matches g1 and g5 at positions r = 2 and 5.
    #   precisions: 1/3 and 2/6 -> AP = (1/3 + 1/3) / 2 = 1/3
    #   official: hit 1: (old 0/2 + 1/3) / 2 = 1/6; hit 2: (old 1/5 + 2/6) / 2 = 4/15
    #             AP = (1/2)(1/6 + 4/15) = 13/60
    # q1 (pid 2, cam 1). Sorted: g2 .05, g6 .1, g1 .3, g3 .3, g7 .35, g4 .6, g0 .7, g5 .9.
    #   g2 junk and g6 (pid 2, camera 1) removed, though both are the closest; g1 ties with the
    #   match g3 at 0.3 and has the lower index, so g3 is second: r = 1.
    #   AP = 1/2; official: (old 0/1 + 1/2) / 2 = 1/4
    # q2 (pid 9) has no true match: skipped, and the averages are over q0 and q1.
    #   CMC: rank-1 0/2, rank-2 1/2 (q1), rank-3 on 2/2 (q0 at r = 2)
    #   mAP = (1/3 + 1/2) / 2 = 5/12; mAP (official) = (13/60 + 1/4) / 2 = 7/30
    out = rank_metrics(TOY_DIST, TOY_Q_PIDS, TOY_G_PIDS, TOY_Q_CAMS, TOY_G_CAMS, max_rank=5)
    np.testing.assert_allclose(out["cmc"], [0, 0.5, 1, 1, 1])
    assert out["mAP"] == pytest.approx(5 / 12)
    assert out["mAP_official"] == pytest.approx(7 / 30)
    assert (out["num_queries"], out["num_skipped"]) == (2, 1)


@TOY
def test_toy_ties_are_broken_by_gallery_index(rank_metrics):
    # Swap the columns g1 and g4 of q0 (both at 0.5): now the distractor has the lower index and
    # goes first, the match g1 (now at index 4) drops to r = 3: AP = (1/4 + 2/6) / 2 = 7/24 for q0.
    perm = [0, 4, 2, 3, 1, 5, 6, 7]
    out = rank_metrics(TOY_DIST[:1, perm], TOY_Q_PIDS[:1], TOY_G_PIDS[perm], TOY_Q_CAMS[:1],
                       TOY_G_CAMS[perm], max_rank=5)
    assert out["mAP"] == pytest.approx(7 / 24)
    np.testing.assert_allclose(out["cmc"], [0, 0, 0, 1, 1])


@TOY
def test_toy_first_match_at_the_top(rank_metrics):
    # One query (pid 1, camera 0); gallery g0: pid 1, c1, distance .1; g1: pid 2, c1, .2;
    # g2: pid 1, c2, .3. Valid ranking g0, g1, g2; true matches at positions 0 and 2, n = 2.
    #   AP = (1/1 + 2/3) / 2 = 5/6
    #   official: position 0: recall 1/2, precision 1, old values 0 and 1.0:
    #               (1/2 - 0) * (1 + 1) / 2 = 1/2
    #             position 1: recall stays, nothing added
    #             position 2: recall 1, precision 2/3, old precision 1/2 (position 1's):
    #               (1 - 1/2) * (1/2 + 2/3) / 2 = 7/24
    #   AP (official) = 1/2 + 7/24 = 19/24; CMC [1, 1, 1]
    out = rank_metrics(np.array([[0.1, 0.2, 0.3]]), np.array([1]), np.array([1, 2, 1]),
                       np.array([0]), np.array([1, 1, 2]), max_rank=3)
    assert out["mAP"] == pytest.approx(5 / 6)
    assert out["mAP_official"] == pytest.approx(19 / 24)
    np.testing.assert_allclose(out["cmc"], [1, 1, 1])


@pytest.mark.parametrize("buckets,chunk", [(4096, 1 << 22), (2, 40), (3, 1), (17, 7)])
@pytest.mark.parametrize("kind", ["float32", "ties64", "int"])
def test_fast_rank_metrics_equals_rank_metrics(monkeypatch, buckets, chunk, kind):
    # Few buckets force the exact same-bucket comparison for most items; small chunks cut the
    # queries at many places (chunk=1: one query per chunk).
    monkeypatch.setattr(evaluate, "_BUCKETS", buckets)
    monkeypatch.setattr(evaluate, "_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(buckets * 1000 + chunk + len(kind))
    checked = 0
    for _ in range(25):
        problem = random_problem(rng, int(rng.integers(1, 15)), int(rng.integers(1, 80)), kind)
        try:
            ref = evaluate.rank_metrics(*problem, max_rank=10)
        except UserError as e:  # no query has a true match: the same error from both
            assert "none of the" in str(e)
            with pytest.raises(UserError, match="none of the"):
                evaluate.fast_rank_metrics(*problem, max_rank=10)
            continue
        assert_same(evaluate.fast_rank_metrics(*problem, max_rank=10), ref)
        checked += 1
    assert checked >= 15  # most problems have at least one query with a match


def test_numpy_and_torch_inputs_agree_on_every_device():
    rng = np.random.default_rng(0)
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(rng, 30, 200, "ties64")
    ref = evaluate.rank_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    assert ref["num_skipped"] > 0  # the problem has queries without a match
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        args = [torch.as_tensor(x, device=device) for x in (dist, q_pids, g_pids, q_cams, g_cams)]
        assert_same(evaluate.rank_metrics(*args), ref)
        assert_same(evaluate.fast_rank_metrics(*args), ref)
        # exact in fp32: the distances are multiples of 0.25
        assert_same(evaluate.fast_rank_metrics(args[0].float(), *args[1:]), ref)
    assert_same(evaluate.fast_rank_metrics(dist, q_pids, g_pids, q_cams, g_cams), ref)


@BOTH
def test_bad_input_is_one_clear_error(rank_metrics):
    args = (TOY_Q_PIDS, TOY_G_PIDS, TOY_Q_CAMS, TOY_G_CAMS)
    with pytest.raises(UserError, match="NaN"):
        rank_metrics(np.where(TOY_DIST == 0.6, np.nan, TOY_DIST), *args)
    with pytest.raises(UserError, match="infinite"):
        rank_metrics(np.where(TOY_DIST == 0.6, np.inf, TOY_DIST), *args)
    with pytest.raises(UserError, match="7 gallery pids"):
        rank_metrics(TOY_DIST, TOY_Q_PIDS, TOY_G_PIDS[:7], TOY_Q_CAMS, TOY_G_CAMS)
    with pytest.raises(UserError, match=r"distance matrix, got shape \(8,\)"):
        rank_metrics(TOY_DIST[0], *args)
    with pytest.raises(UserError, match="none of the 1 queries"):
        rank_metrics(TOY_DIST[2:], TOY_Q_PIDS[2:], TOY_G_PIDS, TOY_Q_CAMS[2:], TOY_G_CAMS)


def test_check_true_matches_refuses_exactly_what_rank_metrics_refuses():
    # on small random problems (junk, distractors, matches in the query's own camera only),
    # check_true_matches raises exactly when rank_metrics does, with the same message
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(200):
        dist, q_pids, g_pids, q_cams, g_cams = random_problem(rng, int(rng.integers(1, 4)),
                                                              int(rng.integers(1, 10)), "float32")
        ds = types.SimpleNamespace(root="ROOT",
                                   query=types.SimpleNamespace(pids=q_pids, cams=q_cams),
                                   gallery=types.SimpleNamespace(pids=g_pids, cams=g_cams))
        try:
            evaluate.rank_metrics(dist, q_pids, g_pids, q_cams, g_cams)
        except UserError as e:
            with pytest.raises(UserError) as check:
                evaluate.check_true_matches(ds)
            assert str(check.value) == f"ROOT: {e}"  # the same message, after the folder
            refused += 1
            continue
        evaluate.check_true_matches(ds)
    assert 20 < refused < 180  # both outcomes are tested


def test_check_training_pairs_counts_what_pair_covariances_needs():
    # ids [0, 0, 1, 1] in cameras [0, 1, 0, 0]. Ordered pairs in two cameras: N^2 - sum_c N_c^2
    # = 16 - (3^2 + 1^2) = 6; of one id: sum_y N_y^2 - sum_yc N_yc^2 = (4 + 4) - (1 + 1 + 4) = 2
    # (image 0 with 1, both ways); of two ids: 6 - 2 = 4. Both > 0: accepted, as pair_covariances
    # accepts them. Id 0 in one camera: 0 same-id pairs, refused by both
    def split(pids, cams):
        train = types.SimpleNamespace(pids=np.array(pids), cams=np.array(cams))
        return types.SimpleNamespace(root="ROOT", train=train)
    x = torch.randn(4, 3, dtype=torch.float64)
    evaluate.check_training_pairs(split([0, 0, 1, 1], [0, 1, 0, 0]), ["xqda"])
    evaluate.pair_covariances(x, [0, 0, 1, 1], [0, 1, 0, 0])
    one_camera = split([0, 0, 1, 1], [0, 0, 1, 1])
    with pytest.raises(UserError, match="ROOT: XQDA and KISSME need training images of one "
                       "identity in two cameras .* the training split has 0 and 8 such pairs"):
        evaluate.check_training_pairs(one_camera, ["euclidean", "kissme"])
    with pytest.raises(UserError, match="this training set has 0 and 8 such pairs"):
        evaluate.pair_covariances(x, [0, 0, 1, 1], [0, 0, 1, 1])
    evaluate.check_training_pairs(one_camera, ["euclidean"])  # no metric that needs pairs


# -----------------------------------------------------------------------------
# Distances and features


def test_pairwise_distances_by_hand():
    # q = (3, 4) -> (0.6, 0.8); g = (1, 0) and (0, 2) -> (1, 0) and (0, 1)
    # euclidean: sqrt(0.4^2 + 0.8^2) = sqrt(0.8), sqrt(0.6^2 + 0.2^2) = sqrt(0.4)
    # cosine: 1 - 0.6 = 0.4, 1 - 0.8 = 0.2
    q, g = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(evaluate.pairwise_distances(q, g),
                               torch.tensor([[0.8 ** 0.5, 0.4 ** 0.5]]))
    torch.testing.assert_close(evaluate.pairwise_distances(q, g, "cosine"),
                               torch.tensor([[0.4, 0.2]]))
    # the same direction: exactly 0 after the clamp, never NaN from a negative rounding error
    x = torch.randn(5, 64)
    same = evaluate.pairwise_distances(x, 3 * x).diagonal()
    assert not same.isnan().any() and same.min() >= 0 and same.max() < 1e-3
    with pytest.raises(UserError, match="unknown distance"):
        evaluate.pairwise_distances(q, g, "manhattan")


class FirstRow(torch.nn.Module):
    """A stand-in model: the feature is channel 0, row 0 of the normalised image, [B, W]."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)  # to see that extract_features switches to eval()

    def forward(self, x):
        return self.drop(x[:, 0, 0, :])


def test_extract_features_batches_normalise_and_flip():
    # row 0 of channel 0 holds the pixels 0 and 255; normalised: (0 - 0.485) / 0.229 = -2.1179 and
    # (1 - 0.485) / 0.229 = 2.2489. flip averages the row with its mirror: both
    # (-2.1179 + 2.2489) / 2.
    x = torch.zeros(5, 3, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 1] = 255
    model = FirstRow()
    f = evaluate.extract_features(model, x.split(2), "cpu")  # batches of 2, 2, 1
    assert not model.training
    lo, hi = (0 - 0.485) / 0.229, (1 - 0.485) / 0.229
    torch.testing.assert_close(f, torch.tensor([[lo, hi]] * 5))
    f_flip = evaluate.extract_features(model, x.split(3), "cpu", flip=True)
    torch.testing.assert_close(f_flip, torch.full((5, 2), (lo + hi) / 2))
    with pytest.raises(UserError, match="no images"):
        evaluate.extract_features(model, [], "cpu")


# -----------------------------------------------------------------------------
# XQDA and KISSME


def test_pair_covariances_equal_the_explicit_pair_sums():
    # brute force over every ordered pair of images in two different cameras
    g = torch.Generator().manual_seed(0)
    # an offset of 5, removed by the centring
    x = torch.randn(23, 4, generator=g, dtype=torch.float64) + 5
    pids, cams = torch.randint(0, 5, (23,), generator=g), torch.randint(0, 3, (23,), generator=g)
    S, D = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    nS = nD = 0
    for i in range(23):
        for j in range(23):
            if cams[i] != cams[j]:
                outer = torch.outer(x[i] - x[j], x[i] - x[j])
                if pids[i] == pids[j]:
                    S, nS = S + outer, nS + 1
                else:
                    D, nD = D + outer, nD + 1
    Sigma_S, Sigma_D = evaluate.pair_covariances(x, pids, cams)
    torch.testing.assert_close(Sigma_S, S / nS)
    torch.testing.assert_close(Sigma_D, D / nD)
    with pytest.raises(UserError, match="two cameras"):
        evaluate.pair_covariances(x, pids, torch.zeros(23, dtype=torch.long))


def anisotropic_toy(n_ids, first_pid, seed):
    """Identities whose signal is strong in 8 quiet dimensions and weak in 8 noisy ones (noise
    std 2.0 vs 0.3), 2 cameras x 2 images each, plus a constant 17th feature so that the L2
    normalisation only rescales. Euclidean distance is dominated by the noisy dimensions."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_ids, 16, generator=g) * torch.tensor([0.3] * 8 + [1.0] * 8)
    pids = torch.arange(n_ids).repeat_interleave(4)
    cams = torch.tensor([0, 0, 1, 1]).repeat(n_ids)
    x = means[pids] + torch.randn(4 * n_ids, 16, generator=g) * torch.tensor([2.0] * 8 + [0.3] * 8)
    return torch.cat([x, torch.full((4 * n_ids, 1), 8.0)], 1), pids + first_pid, cams


@pytest.fixture(scope="module")
def toy():
    train = anisotropic_toy(100, 0, seed=0)
    x, pids, cams = anisotropic_toy(50, 1000, seed=1)
    query = slice(0, None, 4)  # the first image of each id, camera 0; the other three are gallery
    gallery = torch.arange(len(x)) % 4 != 0
    return train, (x[query], pids[query], cams[query]), (x[gallery], pids[gallery], cams[gallery])


def test_xqda_algebra(toy):
    (tx, tp, tc), _, _ = toy
    xqda = evaluate.XQDA().fit(tx, tp, tc)
    x = torch.nn.functional.normalize(tx.double(), dim=1)
    Sigma_I, Sigma_E = evaluate.pair_covariances(x, tp, tc)
    Sigma_I = Sigma_I + 0.001 * torch.eye(17, dtype=torch.float64)
    e, W = xqda.eigenvalues, xqda.W
    r = W.shape[1]
    # kept: exactly the directions with generalised eigenvalue > 1, largest first
    assert r == int((e > 1).sum()) and 1 <= r < 17
    assert (e[:r] > 1).all() and (e[r:] <= 1).all() and (e[:-1] >= e[1:]).all()
    # each column solves Sigma_E w = e Sigma_I w, with Sigma_I regularised by lambda = 0.001
    torch.testing.assert_close(Sigma_E @ W, Sigma_I @ W * e[:r])
    # W^T Sigma_I W = I and W^T Sigma_E W = diag(e), so M = I - diag(1 / e): positive definite
    torch.testing.assert_close(xqda.M, torch.diag(1 - 1 / e[:r]), atol=1e-8, rtol=1e-8)
    # qda_dims caps the subspace
    assert evaluate.XQDA(qda_dims=2).fit(tx, tp, tc).W.shape[1] == 2


@pytest.mark.exercise(15)
def test_kissme_algebra(toy):
    (tx, tp, tc), _, _ = toy
    kissme = evaluate.KISSME(pca_dims=10).fit(tx, tp, tc)
    assert kissme.P.shape == (17, 10)
    # an orthonormal PCA basis
    torch.testing.assert_close(kissme.P.T @ kissme.P, torch.eye(10, dtype=torch.float64))
    assert torch.linalg.eigvalsh(kissme.M).min() > 0  # PSD after the repair
    # psd_repair by hand: diag(2, -1) has a negative eigenvalue -> -1 <= 1e-10 becomes 1e-6;
    # diag(2, 1e-12) is already PSD -> unchanged (validateCovMatrix only acts on a failed cholcov)
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(evaluate.psd_repair(torch.diag(torch.tensor([2.0, -1.0], **f64))),
                               torch.diag(torch.tensor([2.0, 1e-6], **f64)))
    psd = torch.diag(torch.tensor([2.0, 1e-12], **f64))
    assert torch.equal(evaluate.psd_repair(psd), psd)
    # M = Sigma_S^-1 - Sigma_D^-1 in the PCA space, symmetrised, then repaired
    z = (torch.nn.functional.normalize(tx.double(), dim=1) - kissme.mean) @ kissme.P
    Sigma_S, Sigma_D = evaluate.pair_covariances(z, tp, tc)
    M = torch.linalg.inv(Sigma_S) - torch.linalg.inv(Sigma_D)
    torch.testing.assert_close(kissme.M, evaluate.psd_repair((M + M.T) / 2))


@pytest.mark.exercise(15)
def test_kissme_pca_keeps_the_largest_directions(toy):
    # Step 1's P: the eigenvectors of the training covariance (of the L2-normalised features)
    # with the 10 largest eigenvalues, so the variance P keeps, trace(P^T C P), is the sum of
    # those 10 eigenvalues (eigh lists them smallest first)
    (tx, tp, tc), _, _ = toy
    kissme = evaluate.KISSME(pca_dims=10).fit(tx, tp, tc)
    x = torch.nn.functional.normalize(tx.double(), dim=1)
    C = torch.cov(x.T)
    largest = torch.linalg.eigvalsh(C)[-10:].sum()
    assert torch.trace(kissme.P.T @ C @ kissme.P).item() == pytest.approx(largest.item())


def test_span_shortcut_is_exact(monkeypatch):
    # 30 images in 50 dimensions: XQDA and KISSME learn in the 30-d span of the images (XQDA.m's
    # QR shortcut); the distances must equal those learnt in all 50 dimensions
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 50, generator=g, dtype=torch.float64)
    pids, cams = torch.arange(30) % 6, torch.arange(30) // 6 % 3
    xq, xg = torch.randn(4, 50, generator=g), torch.randn(9, 50, generator=g)
    reduced = [evaluate.XQDA().fit(x, pids, cams).distance(xq, xg),
               evaluate.KISSME(pca_dims=20).fit(x, pids, cams).distance(xq, xg)]
    monkeypatch.setattr(evaluate, "_reduce_to_span", lambda x: (x, None))
    full = [evaluate.XQDA().fit(x, pids, cams).distance(xq, xg),
            evaluate.KISSME(pca_dims=20).fit(x, pids, cams).distance(xq, xg)]
    torch.testing.assert_close(reduced[0], full[0])
    torch.testing.assert_close(reduced[1], full[1])


@pytest.mark.exercise(15)
def test_xqda_and_kissme_beat_euclidean_on_anisotropic_noise(toy):
    train, (qx, qp, qc), (gx, gp, gc) = toy
    rank1 = {}
    for name, dist in [("euclidean", evaluate.pairwise_distances(qx, gx)),
                       ("xqda", evaluate.XQDA().fit(*train).distance(qx, gx)),
                       ("kissme", evaluate.KISSME().fit(*train).distance(qx, gx))]:
        rank1[name] = evaluate.rank_metrics(dist, qp, gp, qc, gc)["cmc"][0]
    # measured with these seeds: euclidean 0.10, xqda 0.92, kissme 0.92 (of 50 queries)
    assert rank1["xqda"] > rank1["euclidean"] + 0.5
    assert rank1["kissme"] > rank1["euclidean"] + 0.5


# -----------------------------------------------------------------------------
# Command line


@pytest.mark.slow
def test_cli_end_to_end(synthetic_root, tiny_checkpoint, capsys):
    results = evaluate.main(["--checkpoint", tiny_checkpoint, "--root", synthetic_root,
                             "--dataset", "synthetic", "--metric", "euclidean", "xqda", "kissme",
                             "--flip", "--device", "cpu", "--batch-size", "16"])
    printed = capsys.readouterr().out
    table = printed[printed.index("metric"):].splitlines()
    assert table[0].split() == ["metric", "rank-1", "rank-5", "rank-10", "mAP", "mAP", "(official)"]
    assert [line.split()[0] for line in table[1:4]] == ["euclidean", "xqda", "kissme"]
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    # every synthetic query has a match
    assert "queries evaluated" in table[4] and str(len(ds.query)) in table[4]
    for name, r in results.items():
        values = [float(v) for v in table[1 + list(results).index(name)].split()[1:]]
        assert values == pytest.approx([100 * r["cmc"][0], 100 * r["cmc"][4], 100 * r["cmc"][9],
                                        100 * r["mAP"], 100 * r["mAP_official"]], abs=0.006)
        assert 0 < r["mAP"] <= 1 and r["num_queries"] == len(ds.query)


def record_decoding(monkeypatch):
    """A list that data.load_images appends (desc, height, width) to at each call."""
    decoded, load_images = [], data.load_images
    monkeypatch.setattr(data, "load_images", lambda paths, h, w, desc="":
                        decoded.append((desc, h, w)) or load_images(paths, h, w, desc))
    return decoded


@pytest.mark.slow
def test_cli_plain_backbone_extracts_train_features_only_when_needed(synthetic_root, monkeypatch,
                                                                     capsys):
    # --weights none: a randomly initialised ResNet-50 at --height x --width; with Euclidean
    # distance alone, the training split is never decoded
    decoded = record_decoding(monkeypatch)
    flags = ["--weights", "none", "--height", "64", "--width", "32", "--root", synthetic_root,
             "--dataset", "synthetic", "--device", "cpu"]
    results = evaluate.main(flags)
    assert list(results) == ["euclidean"]
    assert decoded == [("query", 64, 32), ("gallery", 64, 32)]
    assert "euclidean" in capsys.readouterr().out
    # the random weights come from --seed (default 0): a second run scores the same network
    again = evaluate.main(flags)
    assert again["euclidean"]["mAP"] == results["euclidean"]["mAP"]
    np.testing.assert_array_equal(again["euclidean"]["cmc"], results["euclidean"]["cmc"])


@pytest.mark.parametrize("device_type,precision,expected", [
    ("cpu", "auto", "fp32"), ("cuda", "auto", "bf16"),  # auto: what common.autocast did there
    ("cpu", "bf16", "bf16"), ("cuda", "fp32", "fp32")])  # an explicit --precision stays
def test_trained_precision(tmp_path, device_type, precision, expected):
    path = str(tmp_path / "run.pt")
    common.save_checkpoint(path, {"paper": "aea", "config": {"precision": precision},
                                  "device_type": device_type, "model": {}})
    assert evaluate.trained_precision(common.load_checkpoint(path)) == expected


def test_checkpoint_is_scored_in_its_training_precision(synthetic_root, tmp_path, monkeypatch,
                                                        capsys):
    # a run trained on CUDA with --precision auto (= bf16) is scored in bf16, here on the CPU;
    # the paper module is a stand-in whose model is a 4 x 2 average pool (24-d features)
    path = str(tmp_path / "run.pt")
    common.save_checkpoint(path, {"paper": "aea", "config": {"precision": "auto"},
                                  "device_type": "cuda", "model": {}})
    pool = pool_model()
    stand_in = types.SimpleNamespace(model_from_checkpoint=lambda ckpt, path: (pool, (64, 32)))
    monkeypatch.setitem(sys.modules, "aea", stand_in)
    used = []
    extract_features = evaluate.extract_features
    monkeypatch.setattr(evaluate, "extract_features", lambda *args, precision, **kw: used.append(
                        precision) or extract_features(*args, precision=precision, **kw))
    evaluate.main(["--checkpoint", path, "--root", synthetic_root, "--dataset", "synthetic",
                   "--device", "cpu"])
    assert used == ["bf16", "bf16"]  # query and gallery
    assert "euclidean" in capsys.readouterr().out
    # a plain ResNet-50 keeps "auto"
    args = evaluate.parse_args(["--weights", "none", "--root", synthetic_root])
    monkeypatch.setattr(common, "Backbone", lambda weights, last_stride: pool)
    assert evaluate.load_model(args) == (pool, (256, 128), "auto")


def test_cli_errors_exit_2(synthetic_root, tmp_path, monkeypatch, capsys):
    bad, aea = str(tmp_path / "bad.pt"), str(tmp_path / "aea.pt")
    common.save_checkpoint(bad, {"paper": "nonsense", "config": {}, "model": {}})
    common.save_checkpoint(aea, {"paper": "aea", "config": {}, "model": {}})
    # a paper checkpoint whose module cannot be imported gets a clear error (None in sys.modules
    # makes `import aea` fail as if aea.py were missing)
    monkeypatch.setitem(sys.modules, "aea", None)
    cases = [(["--checkpoint", bad], "unknown checkpoint kind"),
             (["--checkpoint", str(tmp_path / "missing.pt")], "does not exist"),
             (["--checkpoint", aea], "aea.py is not in this project")]
    for flags, message in cases:
        with pytest.raises(SystemExit) as e:
            evaluate.main(flags + ["--root", synthetic_root, "--dataset", "synthetic",
                                   "--device", "cpu"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_evaluate_model_decodes_each_split_once(synthetic_root, monkeypatch):
    # a training run evaluates every few epochs with one `images` dict: the second call must not
    # decode again, and must score the same network identically; XQDA adds the training split.
    # The network: a 4 x 2 average pool (24-d features), as any model goes through the same path
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    model, decoded = pool_model(), record_decoding(monkeypatch)
    images, cpu = {}, torch.device("cpu")
    first = evaluate.evaluate_model(model, ds, (64, 32), cpu, ["euclidean"], images=images)
    second = evaluate.evaluate_model(model, ds, (64, 32), cpu, ["xqda", "euclidean"], images=images)
    assert [desc for desc, _, _ in decoded] == ["query", "gallery", "train"]
    assert list(second) == ["xqda", "euclidean"]
    assert second["euclidean"]["mAP"] == first["euclidean"]["mAP"]
    assert images["train"].shape == (len(ds.train), 3, 64, 32)
    assert images["train"].dtype == torch.uint8


# -----------------------------------------------------------------------------
# Bad flags: one UserError naming the cause, before any work


@pytest.mark.parametrize("flag,value,interval", [
    ("--seed", "-1", "[0, 4294967295]"), ("--seed", str(2**32), "[0, 4294967295]"),
    ("--xqda-lambda", "nan", "(0, inf)"), ("--xqda-lambda", "inf", "(0, inf)"),
    ("--xqda-lambda", "-1", "(0, inf)"),
    # 0: Sigma_I + 0 I can be singular, and Cholesky has no factor of it
    ("--xqda-lambda", "0", "(0, inf)"),
    ("--kissme-dims", "0", "[1, inf)"), ("--xqda-dims", "-1", "[0, inf)"),
    ("--height", "0", "[32, 1024]"), ("--width", "8", "[16, 1024]"),
    # an input no GPU holds, and an integer beyond int64 (argparse takes any int)
    ("--height", "100000", "[32, 1024]"), ("--width", "1025", "[16, 1024]"),
    ("--batch-size", "0", "[1, 4096]"), ("--batch-size", str(10**20), "[1, 4096]")])
def test_numbers_out_of_range_name_the_flag(flag, value, interval):
    with pytest.raises(UserError) as e:
        evaluate.parse_args(["--weights", "none", "--root", "data", flag, value])
    assert str(e.value).startswith(f"{flag} must lie in {interval}, got ")


def expect_exit_2(capsys, *flags):
    """evaluate.main on the synthetic data with `flags`: exit status 2 and one `error:` line;
    returns (that line, stdout)."""
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--weights", "none", "--dataset", "synthetic", "--height", "64",
                       "--width", "32", "--device", "cpu", *flags])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("error: "), out


@pytest.mark.slow
def test_cli_refuses_before_decoding(synthetic_root, monkeypatch, capsys):
    decoded = record_decoding(monkeypatch)
    # every gallery image in the queries' camera: no query has a true match
    load_dataset = data.load_dataset

    def one_camera(*args, **kwargs):
        ds = load_dataset(*args, **kwargs)
        ds.query.cams[:], ds.gallery.cams[:] = 1, 1
        return ds
    monkeypatch.setattr(data, "load_dataset", one_camera)
    line, _ = expect_exit_2(capsys, "--root", synthetic_root)
    assert re.fullmatch(re.escape(synthetic_root) + r": none of the \d+ queries has a true "
                        r"match in the gallery \(same pid, "
                        r"other camera\)", line)
    assert decoded == []


# -----------------------------------------------------------------------------
# --rerank, and what evaluate_model is built from


def test_rerank_adds_a_row_per_metric(synthetic_root, pool_weights, capsys):
    # --rerank: each metric, then the same metric's distances re-ranked (evaluate.re_ranking of
    # its query-gallery, query-query and gallery-gallery distances), scored the same way
    results = evaluate.main([*pool_weights, "--root", synthetic_root, "--dataset", "synthetic",
                             "--metric", "euclidean", "cosine", "--rerank"])
    assert list(results) == ["euclidean", "euclidean + re-ranking", "cosine",
                             "cosine + re-ranking"]
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    qf, gf = pooled(ds.query.paths), pooled(ds.gallery.paths)
    d = evaluate.pairwise_distances
    expected = evaluate.fast_rank_metrics(
        evaluate.re_ranking(d(qf, gf), d(qf, qf), d(gf, gf)), ds.query.pids, ds.gallery.pids,
        ds.query.cams, ds.gallery.cams)
    assert results["euclidean + re-ranking"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert "euclidean + re-ranking" in capsys.readouterr().out



def test_evaluate_model_is_its_building_blocks(synthetic_root):
    # the paper modules' two call forms, and --rerank's rows; each equals the steps done here:
    # the split features, each metric's distance function, the ranking metrics of its matrix
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    model, cpu, images = pool_model(), torch.device("cpu"), {}
    plain = evaluate.evaluate_model(model, ds, (64, 32), cpu, images=images, precision="fp32")
    assert list(plain) == ["euclidean"]
    results = evaluate.evaluate_model(model, ds, (64, 32), cpu, ["xqda", "cosine"],
                                      images=images, precision="fp32", rerank=True)
    assert list(results) == ["xqda", "xqda + re-ranking", "cosine", "cosine + re-ranking"]
    assert evaluate.needed_splits(["cosine"]) == ("query", "gallery")
    assert evaluate.needed_splits(["cosine", "kissme"]) == ("query", "gallery", "train")
    feats = evaluate.split_features(model, ds, (64, 32), cpu, ("query", "gallery", "train"),
                                    images)
    torch.testing.assert_close(feats["query"], pooled(ds.query.paths))
    xqda = evaluate.XQDA().fit(feats["train"], ds.train.pids, ds.train.cams)
    distance = evaluate.metric_distance("xqda", feats, ds)
    torch.testing.assert_close(distance(feats["query"], feats["gallery"]),
                               xqda.distance(feats["query"], feats["gallery"]))
    rows = evaluate.ranked_distances("xqda", distance, feats, rerank=True)
    expected = evaluate.fast_rank_metrics(rows["xqda + re-ranking"], ds.query.pids,
                                          ds.gallery.pids, ds.query.cams, ds.gallery.cams)
    assert results["xqda + re-ranking"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    cosine = evaluate.metric_distance("cosine", feats, ds)
    torch.testing.assert_close(cosine(feats["query"], feats["gallery"]),
                               evaluate.pairwise_distances(feats["query"], feats["gallery"],
                                                           "cosine"))


def test_evaluate_imports_only_common_and_data():
    # imports flow one way: common <- data <- evaluate <- aea, aaanet <- tools. evaluate.py
    # imports no paper module and no tool at its top; its one upward edge is load_model's
    # importlib.import_module of the checkpoint's paper module, at run time
    with open(evaluate.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    project = {os.path.splitext(f)[0] for f in os.listdir(os.path.dirname(evaluate.__file__))
               if f.endswith(".py")}
    assert imported & project == {"common", "data"}
    dynamic = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", None) == "import_module"]
    assert len(dynamic) == 1

"""Tests of evaluate.py: both ranking-metric functions against hand-worked cases, the fast one
against the definition (`rank_metrics`, the official MATLAB code step by step) on random problems,
the distances, XQDA/KISSME algebra, the precision a checkpoint is scored in, the checks of flags
and output paths before any work, and the CLI end to end (marked slow)."""
import errno
import os
import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import common
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


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "backbone.pt")
    torch.manual_seed(0)
    model = common.Backbone(weights="none")
    common.save_checkpoint(path, {"paper": "backbone", "model": model.state_dict(),
                                  "config": {"height": 64, "width": 32, "last_stride": 2}})
    return path


@pytest.mark.slow
def test_cli_end_to_end(synthetic_root, tiny_checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "figs"
    results = evaluate.main(["--checkpoint", tiny_checkpoint, "--root", synthetic_root,
                             "--dataset", "synthetic", "--metric", "euclidean", "xqda", "kissme",
                             "--flip", "--device", "cpu", "--batch-size", "16",
                             "--show-ranks", "3", "--out", str(out_dir)])
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
    # one PNG per metric: 3 query rows of 1 + 10 tiles (128 x 64 images with a 3-px frame)
    for name in results:
        with Image.open(out_dir / f"ranks_{name}.png") as im:
            assert im.size == (12 + 11 * (64 + 6 + 2), 3 * (128 + 6 + 4))


def record_decoding(monkeypatch):
    """A list that data.load_images appends (desc, height, width) to at each call."""
    decoded, load_images = [], data.load_images
    monkeypatch.setattr(data, "load_images", lambda paths, h, w, desc="":
                        decoded.append((desc, h, w)) or load_images(paths, h, w, desc))
    return decoded


def pool_model():
    """A stand-in network: a 4 x 2 average pool, 24-d features from any image size."""
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((4, 2)), torch.nn.Flatten())


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


def test_rank_figure_frames(synthetic_root):
    # query 0's first true match is put at distance -1 and a junk item at -2: the junk is left out
    # (removed by the protocol), so the first result is the match, framed green; item 2 is red
    # unless it is a match too.
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    dist = torch.rand(len(ds.query), len(ds.gallery))
    same = ds.gallery.pids == ds.query.pids[0]
    match = np.flatnonzero(same & (ds.gallery.cams != ds.query.cams[0]))[0]
    dist[0, match], dist[0, np.flatnonzero(ds.gallery.pids == -1)[0]] = -1.0, -2.0
    im = evaluate.rank_figure(dist, ds, num=1)
    second = np.argsort(dist[0].numpy(), kind="stable")[2]  # after the junk and the match
    tile = 64 + 6 + 2
    assert im.getpixel((1, 1)) == (128, 128, 128)                  # query frame
    assert im.getpixel((12 + tile + 1, 1)) == (0, 170, 0)          # rank 1: the match
    assert im.getpixel((12 + 2 * tile + 1, 1)) == ((0, 170, 0) if same[second] else (220, 0, 0))


def test_cli_errors_exit_2(synthetic_root, tmp_path, monkeypatch, capsys):
    bad, aea = str(tmp_path / "bad.pt"), str(tmp_path / "aea.pt")
    common.save_checkpoint(bad, {"paper": "nonsense", "config": {}, "model": {}})
    common.save_checkpoint(aea, {"paper": "aea", "config": {}, "model": {}})
    # a paper checkpoint whose module cannot be imported gets a clear error (None in sys.modules
    # makes `import aea` fail as if aea.py were missing)
    monkeypatch.setitem(sys.modules, "aea", None)
    cases = [(["--checkpoint", bad], "unknown checkpoint kind"),
             (["--checkpoint", str(tmp_path / "missing.pt")], "does not exist"),
             (["--checkpoint", bad, "--show-ranks", "2"], "--show-ranks needs --out"),
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


def test_heat_overlay_colours_and_grid(tmp_path):
    # a grey image and a map that is low on the left column and high on the right one: after
    # min-max scaling m = 0 (left) and 1 (right), so the heat is pure blue (0, 0, 255) on the left
    # and pure red (255, 0, 0) on the right; alpha 0.5 blends with grey 100:
    # left (50, 50, 177.5 -> 178), right (177.5 -> 178, 50, 50)
    images = torch.full((1, 3, 4, 2), 100, dtype=torch.uint8)
    maps = torch.tensor([[[0.0, 5.0]]])  # [1, 1, 2]: resized to 4 x 2, every row the same
    out = evaluate.heat_overlay(images, maps)
    assert out.shape == (1, 3, 4, 2) and out.dtype == torch.uint8
    assert out[0, :, 0, 0].tolist() == [50, 50, 178] and out[0, :, 0, 1].tolist() == [178, 50, 50]
    path = tmp_path / "grid.png"
    evaluate.save_image_grid(str(path), [[images[0], out[0]], [out[0]]])
    with Image.open(path) as im:
        assert im.size == (2 * (2 + 2), 2 * (4 + 2))
        assert im.getpixel((4 + 1, 0)) == (178, 50, 50)   # row 0, second tile, its right column


# -----------------------------------------------------------------------------
# Bad flags and output paths: one UserError naming the cause, before any work


@pytest.mark.parametrize("flag,value,interval", [
    ("--seed", "-1", "[0, 4294967295]"), ("--seed", str(2**32), "[0, 4294967295]"),
    ("--xqda-lambda", "nan", "[0, inf)"), ("--xqda-lambda", "inf", "[0, inf)"),
    ("--xqda-lambda", "-1", "[0, inf)"), ("--show-ranks", "-1", "[0, inf)"),
    ("--kissme-dims", "0", "[1, inf)"), ("--xqda-dims", "-1", "[0, inf)"),
    ("--height", "0", "[32, inf)"), ("--width", "8", "[16, inf)"),
    ("--batch-size", "0", "[1, inf)")])
def test_numbers_out_of_range_name_the_flag(flag, value, interval):
    with pytest.raises(UserError) as e:
        evaluate.parse_args(["--weights", "none", "--root", "data", flag, value])
    assert str(e.value).startswith(f"{flag} must lie in {interval}, got ")


def test_figure_out_is_checked_before_the_checkpoint_is_read(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cases = [(tmp_path, "is a folder; expected the image file to write"),
             (tmp_path / "fig", "an extension PIL writes in colour (.png, .jpg, .bmp, ...), "
                                "got none"),
             (tmp_path / "fig.xyz", "got '.xyz'"),
             # formats PIL knows but cannot write in colour (1-bit XBM), or cannot write at all
             (tmp_path / "fig.xbm", "got '.xbm'"), (tmp_path / "fig.h5", "got '.h5'"),
             (tmp_path / "a_file" / "fig.png", "cannot write into its folder"),
             # a good --out: the missing checkpoint is next
             (tmp_path / "figs" / "fig.png", "missing.pt does not exist")]
    for out, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            evaluate.figure_inputs(["--checkpoint", str(tmp_path / "missing.pt"), "--out",
                                    str(out)], "aea.py figure", "", "aea", "attention.png")


def full_disk(monkeypatch):
    """Make PIL's save write half a file, then fail as on a full disk."""
    def save(image, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", save)


def test_save_image_writes_the_whole_file_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    evaluate.save_image(Image.new("RGB", (4, 2), "red"), str(path))
    with Image.open(path) as im:
        assert im.size == (4, 2)
    # a failed write leaves the previous file as it was, and no partial file beside it
    before = path.read_bytes()
    full_disk(monkeypatch)
    with pytest.raises(UserError, match=re.escape(f"cannot write {path} (No space left")):
        evaluate.save_image(Image.new("RGB", (4, 2)), str(path))
    assert os.listdir(tmp_path) == ["a.png"] and path.read_bytes() == before


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
def test_cli_refuses_before_decoding(synthetic_root, tmp_path, monkeypatch, capsys):
    decoded = record_decoding(monkeypatch)
    (tmp_path / "a_file").write_text("x")
    line, _ = expect_exit_2(capsys, "--root", synthetic_root, "--show-ranks", "2",
                            "--out", str(tmp_path / "a_file"))
    assert line == (f"--out {tmp_path / 'a_file'}: cannot write there (a file, not a folder); "
                    "give a folder you can write to")
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


@pytest.mark.slow
def test_cli_prints_the_table_before_a_figure_fails(synthetic_root, tmp_path, monkeypatch,
                                                    capsys):
    # the network: a 4 x 2 average pool; the disk fills up while the first PNG is written
    pool = pool_model()
    monkeypatch.setattr(common, "Backbone", lambda weights, last_stride: pool)
    full_disk(monkeypatch)
    figs = tmp_path / "figs"
    line, out = expect_exit_2(capsys, "--root", synthetic_root, "--show-ranks", "2",
                              "--out", str(figs))
    assert "queries evaluated" in out
    assert line == f"cannot write {figs / 'ranks_euclidean.png'} (No space left on device)"
    assert os.listdir(figs) == []


# -----------------------------------------------------------------------------
# Your own images: extract, search, --queries; the record of runs: plot


@pytest.fixture
def pool_weights(monkeypatch):
    """--weights none builds a 4 x 2 average pool (24-d features, any input size): the commands
    run end to end in a second. Returns the flags that choose it."""
    pool = pool_model()
    monkeypatch.setattr(common, "Backbone", lambda weights, last_stride: pool)
    return ["--weights", "none", "--height", "64", "--width", "32", "--device", "cpu"]


def pooled(paths):
    """The stand-in's features of image files, computed here step by step: decode at 64 x 32,
    normalise, average each 16 x 16 block of each channel."""
    x = data.normalize(data.load_images(paths, 64, 32, quiet=True))
    return torch.nn.functional.adaptive_avg_pool2d(x, (4, 2)).flatten(1)


def test_extract_then_search_a_folder_and_its_features(synthetic_root, tmp_path, pool_weights,
                                                      capsys):
    gallery = os.path.join(synthetic_root, "bounding_box_test")
    feats = str(tmp_path / "gallery.npz")
    evaluate.main(["extract", *pool_weights, "--images", gallery, "--out", feats])
    with np.load(feats) as f:
        names, features = f["paths"].tolist(), f["features"]
    assert names == sorted(os.listdir(gallery)) and features.dtype == np.float32
    np.testing.assert_allclose(features, pooled([os.path.join(gallery, n) for n in names]),
                               atol=1e-6)
    assert f"wrote {feats}: {len(names)} features of 24 dimensions" in capsys.readouterr().out
    # search: the query's 5 nearest, by the evaluation's Euclidean distance (between
    # L2-normalised features) to the features computed here
    query = os.path.join(synthetic_root, "query", sorted(os.listdir(
        os.path.join(synthetic_root, "query")))[0])
    unit = torch.nn.functional.normalize
    expected = torch.cdist(unit(pooled([query]), dim=1), unit(torch.from_numpy(features), dim=1))[0]
    order = torch.sort(expected, stable=True).indices[:5].tolist()
    png = str(tmp_path / "ranks.png")
    for source in (gallery, feats):  # a folder, or what extract wrote: the same answer
        found = evaluate.main(["search", *pool_weights, "--query", query, "--gallery", source,
                               "--top", "5", "--out", png])
        assert [os.path.basename(p) for p, _ in found] == [names[g] for g in order]
        assert [d for _, d in found] == pytest.approx(expected[order].tolist(), abs=1e-4)
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].split()[0] == "1" and lines[1].split()[2].endswith(names[order[0]])
    # the figure: the query then 5 results, 128 x 64 tiles in a 3-px frame, one row
    with Image.open(png) as im:
        assert im.size == (12 + 6 * (64 + 6 + 2), 128 + 6 + 4)
        assert im.getpixel((1, 1)) == (128, 128, 128)


def test_search_and_extract_refuse_bad_input_clearly(synthetic_root, tmp_path, pool_weights,
                                                     capsys):
    def error(*argv):
        with pytest.raises(SystemExit) as e:
            evaluate.main(list(argv))
        assert e.value.code == 2
        return capsys.readouterr().err.strip().removeprefix("error: ")
    gallery = os.path.join(synthetic_root, "bounding_box_test")
    assert error("extract", *pool_weights, "--images", gallery, "--out", str(tmp_path / "f.txt")
                 ) == f"--out {tmp_path / 'f.txt'}: expected a file name ending in .npz"
    (tmp_path / "empty").mkdir()
    assert "holds no images" in error("extract", *pool_weights, "--images",
                                      str(tmp_path / "empty"), "--out", str(tmp_path / "f.npz"))
    assert not os.path.exists(tmp_path / "f.npz")
    assert error("search", *pool_weights, "--query", str(tmp_path / "nobody.jpg"), "--gallery",
                 gallery) == f"--query {tmp_path / 'nobody.jpg'} is not an image file"
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    query = os.path.join(gallery, os.listdir(gallery)[0])
    assert "not a features file of `evaluate.py extract`" in error(
        "search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "junk.npz"))
    # features of another model (here 24-d features said to be of 128 x 64 images)
    np.savez(tmp_path / "other.npz", features=np.zeros((2, 24), np.float32),
             paths=np.array(["a.jpg", "b.jpg"]), root="/", model="weights imagenet",
             size=np.array([128, 64]), flip=False)
    assert "extract the gallery with the same model" in error(
        "search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "other.npz"))
    assert error("search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "no.npz")
                 ).startswith(f"--gallery {tmp_path / 'no.npz'} does not exist")
    # features of this model whose images are gone: the error says so, not a decoding failure
    np.savez(tmp_path / "moved.npz", features=np.ones((2, 24), np.float32),
             paths=np.array(["a.jpg", "b.jpg"]), root=str(tmp_path / "gone"),
             model="weights none", size=np.array([64, 32]), flip=False)
    assert "the images moved since extract; run extract again" in error(
        "search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "moved.npz"))


def test_show_ranks_draws_the_queries_named(synthetic_root, tmp_path, pool_weights,
                                            monkeypatch, capsys):
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    names = [os.path.basename(ds.query.paths[i]) for i in (5, 2)]
    drawn = []
    rank_figure = evaluate.rank_figure
    monkeypatch.setattr(evaluate, "rank_figure", lambda dist, ds, num, queries=None: drawn.append(
        queries) or rank_figure(dist, ds, num, queries=queries))
    evaluate.main([*pool_weights, "--root", synthetic_root, "--dataset", "synthetic",
                   "--queries", *names, "--out", str(tmp_path)])
    assert drawn == [[5, 2]]
    with Image.open(tmp_path / "ranks_euclidean.png") as im:
        assert im.size[1] == 2 * (128 + 6 + 4)  # one row per query named
    with pytest.raises(SystemExit):
        evaluate.main([*pool_weights, "--root", synthetic_root, "--dataset", "synthetic",
                       "--queries", "nobody.jpg", "--out", str(tmp_path)])
    assert "--queries nobody.jpg: no query image of that name" in capsys.readouterr().err


def write_log(folder, text):
    os.makedirs(folder, exist_ok=True)
    (folder / "log.csv").write_text(text)
    return str(folder)


def test_plot_overlays_runs_and_reads_a_folder_of_stages(tmp_path, capsys):
    # run a: loss terms L_I1 and L; run b: L and an evaluation at epoch 2 only (empty at 1).
    # Panels: L_I1, L, rank-1, mAP -> 3 columns x 2 rows of 4 x 3 inches at 80 dpi
    a = write_log(tmp_path / "a", "epoch,lr,L_I1,L,img/s,seconds\n1,0.01,4.0,5.0,10,3\n"
                  "2,0.01,3.0,4.0,10,3\n")
    b = write_log(tmp_path / "b", "epoch,lr,L,img/s,seconds,rank-1 euclidean,mAP euclidean\n"
                  "1,0.01,6.0,10,3,,\n2,0.01,5.0,10,3,40.0,30.0\n")
    out = str(tmp_path / "curves.png")
    evaluate.main(["plot", a, b, "--out", out])
    with Image.open(out) as im:
        assert im.size == (3 * 4 * 80, 2 * 3 * 80)
    label, log = evaluate.read_log(b)
    assert label == b and np.isnan(log["rank-1 euclidean"][0]) and log["mAP euclidean"][1] == 30
    # an AAA-Net --out holds a run per stage: each is a curve
    write_log(tmp_path / "aaa" / "stage1", "epoch,lr,L_ce,img/s,seconds\n1,0.01,2.0,10,3\n")
    write_log(tmp_path / "aaa" / "stage3", "epoch,lr,L,img/s,seconds\n1,0.01,1.0,10,3\n")
    assert [label for label, _ in evaluate.run_logs([str(tmp_path / "aaa")])] == [
        str(tmp_path / "aaa" / "stage1"), str(tmp_path / "aaa" / "stage3")]
    with pytest.raises(SystemExit):
        evaluate.main(["plot", str(tmp_path / "none"), "--out", out])
    assert "cannot read" in capsys.readouterr().err
    empty = write_log(tmp_path / "e", "epoch,lr,img/s,seconds\n1,0.01,10,3\n")
    with pytest.raises(SystemExit):
        evaluate.main(["plot", empty, "--out", out])
    assert "no loss term or score to draw" in capsys.readouterr().err


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


def test_file_features_chunk_by_chunk_equal_all_at_once(synthetic_root):
    # chunks of 4 images (the next one decoded while the model runs) give the same rows, in order
    paths = data.load_dataset(synthetic_root, "synthetic", verbose=False).gallery.paths
    chunked = evaluate.file_features(pool_model(), paths, (64, 32), "cpu", batch_size=3, chunk=4)
    torch.testing.assert_close(chunked, pooled(paths))


# -----------------------------------------------------------------------------
# compare: rows over seeds, mean ± sd, the paper's orderings, reuse after a stop

def fake_scores(rank1, mAP):  # the two numbers compare reads from a rank_metrics dict
    return {"euclidean": {"cmc": np.array([rank1 / 100]), "mAP": mAP / 100}}


def test_compare_mean_sd_claims_and_reuse(tmp_path, capsys):
    # A's rank-1 over seeds 0, 1, 2: 50, 52, 54 -> mean 52, sample sd 2; B's: 47, 48, 49 -> 48,
    # sd 1. "A > B": +4.0, pooled sd sqrt((2^2 + 1^2) / 2) = 1.581, 4 / 1.581 = +2.5 sd, holds.
    # mAP: A 30, 30, 30 (sd 0), B 31, 33, 35 (sd 2): -3.0, pooled sqrt(2) -> -2.1 sd, FAILS.
    table = {"A": [(50, 30), (52, 30), (54, 30)], "B": [(47, 31), (48, 33), (49, 35)]}
    calls = []

    def train(label, seed):
        calls.append((label, seed))
        if len(calls) == 5 and not stop_done:  # a signal during the 5th run: it returns None
            return None
        return fake_scores(*table[label][seed])
    stop_done = False
    rows, claims = [("A", 2), ("B", 1)], [("A", "B", "Table 2")]
    out = str(tmp_path / "cmp")
    assert evaluate.compare("toy", rows, claims, train, 3, out) is None
    assert calls == [("A", 0), ("A", 1), ("A", 2), ("B", 0), ("B", 1)]
    # the next invocation reuses the four finished runs and trains the last two
    stop_done, calls[:] = True, []
    text = evaluate.compare("toy", rows, claims, train, 3, out)
    assert calls == [("B", 1), ("B", 2)]
    assert "run 1/2 (4 reused): B, seed 1" in capsys.readouterr().out
    assert "52.0 ± 2.0" in text and "48.0 ± 1.0" in text and "30.0 ± 0.0" in text
    assert ("A > B (Table 2): euclidean rank-1 +4.0 (+2.5 sd) holds; "
            "euclidean mAP -3.0 (-2.1 sd) FAILS") in text
    assert "B, seed 2: 49.00 / 35.00" in text
    assert open(os.path.join(out, "compare.txt")).read() == text + "\n"
    # one seed: no sd, so no size of the difference
    one = evaluate.compare("toy", rows, claims, train, 1, str(tmp_path / "one"))
    assert "+3.0 (n/a) holds" in one and "50.0 ± -" in one


def test_compare_command_flags_folders_and_no_resume(tmp_path, capsys):
    # a paper's compare: each row and seed trains in OUT/<label, non-word runs as _>/seed<s>;
    # --resume (the default) reuses scores.json and asks train_row to resume, --no-resume neither
    calls = []

    def train_row(spec, seed, folder, device, resume):
        calls.append((spec, seed, os.path.relpath(folder, out), device, resume))
        return fake_scores(50 + seed, 40)
    out = str(tmp_path / "cmp")
    rows, claims = [("Baseline 1", "b1", 1), ("AEA (ours)", "aea", 1)], [("AEA (ours)",
                                                                         "Baseline 1", "T2")]
    args = ["--seeds", "2", "--out", out, "--device", "cpu"]
    evaluate.compare_command(args, "x compare", "", "unused", "toy", rows, claims, train_row)
    assert calls == [("b1", 0, os.path.join("Baseline_1", "seed0"), "cpu", True),
                     ("b1", 1, os.path.join("Baseline_1", "seed1"), "cpu", True),
                     ("aea", 0, os.path.join("AEA_ours", "seed0"), "cpu", True),
                     ("aea", 1, os.path.join("AEA_ours", "seed1"), "cpu", True)]
    calls[:] = []  # all four runs in scores.json: reused
    evaluate.compare_command(args, "x compare", "", "unused", "toy", rows, claims, train_row)
    assert calls == []
    evaluate.compare_command(args + ["--no-resume"], "x compare", "", "unused", "toy", rows,
                             claims, train_row)
    assert len(calls) == 4 and not any(resume for *_, resume in calls)
    capsys.readouterr()
    with pytest.raises(common.UserError, match="--seeds 0: expected 1 or more"):
        evaluate.compare_command(["--seeds", "0"], "x compare", "", out, "toy", rows, claims,
                                 train_row)

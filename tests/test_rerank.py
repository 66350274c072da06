"""Tests of evaluate.re_ranking (k-reciprocal re-ranking, Zhong et al., CVPR 2017): a case worked
out by hand, equality with tests/rerank_reference.py (the official Python code step for step) on
random problems whose k-reciprocal sets really expand, numpy / torch / CUDA inputs, and shapes."""
import math
import os
import sys

import numpy as np
import pytest
import torch

import evaluate
from common import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rerank_reference  # noqa: E402  (tests/ on sys.path, the line above)


def line_problem(x, Q):
    """Points on a line: the first Q are queries. -> (q_g, q_q, g_g) |x_a - x_b|, float32."""
    x = np.asarray(x, dtype=np.float64)
    d = np.abs(x[:, None] - x[None, :]).astype(np.float32)
    return d[:Q, Q:], d[:Q, :Q], d[Q:, Q:]


def test_hand_worked_line():
    # Queries q0 = 0, q1 = 3 and gallery items g0 = 1, g1 = 4, g2 = 10; images 0..4 in that
    # order. k1 = 2 (so k1/2 = 1), k2 = 1 (no query expansion), lambda = 0.3.
    # Squared distances M^2 (symmetric here) and each column's maximum:
    #         0    1    2    3    4
    #   0  [  0,   9,   1,  16, 100]    max 100
    #   1  [  9,   0,   4,   1,  49]    max  49
    #   2  [  1,   4,   0,   9,  81]    max  81
    #   3  [ 16,   1,   9,   0,  36]    max  36
    #   4  [100,  49,  81,  36,   0]    max 100
    # d(i, j) = M[j, i]^2 / max of column i:
    #   0: [0, 9/100, 1/100, 16/100, 1]       1: [9/49, 0, 4/49, 1/49, 1]
    #   2: [1/81, 4/81, 0, 9/81, 1]           3: [16/36, 1/36, 9/36, 0, 1]
    #   4: [1, 49/100, 81/100, 36/100, 0]
    # N(i, 2), the 3 nearest: 0 {0,2,1}  1 {1,3,2}  2 {2,0,1}  3 {3,1,2}  4 {4,3,1}
    # R(i, 2), those that have i in their own N: 0 {0,2} (1 lacks 0)  1 {1,2,3}  2 {0,1,2}
    #   3 {1,3} (2 lacks 3)  4 {4}
    # R(q, 1) (2 nearest, mutual): 0 {0,2}  1 {1,3}  2 {0,2}  3 {1,3}  4 {4} (3 lacks 4)
    # Eq. (5): for i = 1, q = 2 shares only 2 of R(2, 1) = {0,2} with R(1, 2) = {1,2,3}:
    # 1 > 2/3 * 2 is false, so 0 is NOT added; likewise for i = 2, q = 1 shares only 1 of
    # R(1, 1) = {1,3}, so 3 is not added. Every other candidate's R(q, 1) lies inside R(i, 2)
    # already, so R* = R for every image (with k1/2 = 1 no set can grow: R(q, 1) has at most
    # 2 members, and more than 2/3 of 2 means both).
    # V (Eq. (8)), exp(-d) on R*, each row over its sum:
    #   V0 on {0,2}:   (1, e^-0.01) / sum                    = (0.502500, 0.497500)
    #   V1 on {1,2,3}: (1, e^-4/49, e^-1/49) / sum           = (0.344660, 0.317643, 0.337697)
    #   V2 on {0,1,2}: (e^-1/81, e^-4/81, 1) / sum           = (0.336013, 0.323796, 0.340188)
    #   V3 on {1,3}:   (e^-1/36, 1) / sum                    = (0.493056, 0.506944)
    #   V4 on {4}:     1
    # s = sum of min over shared columns, d_J = 1 - s / (2 - s):
    #   (q0, g0): columns 0, 2: 0.336013 + 0.340188 = 0.676201 -> d_J = 0.489197
    #   (q1, g0): columns 1, 2: 0.323796 + 0.317643 = 0.641439 -> d_J = 0.527854
    #   (q1, g1): columns 1, 3: 0.344660 + 0.337697 = 0.682357 -> d_J = 0.482138
    #   every other pair shares no column: s = 0, d_J = 1
    # d* = 0.7 d_J + 0.3 d:
    #   q0: 0.7 * 0.489197 + 0.3 * 0.01 = 0.345438,  0.7 + 0.3 * 0.16 = 0.748,  0.7 + 0.3 = 1
    #   q1: 0.7 * 0.527854 + 0.3 * 4/49 = 0.393988,  0.7 * 0.482138 + 0.3 / 49 = 0.343619,  1
    q_g, q_q, g_g = line_problem([0, 3, 1, 4, 10], Q=2)
    out = evaluate.re_ranking(q_g, q_q, g_g, k1=2, k2=1, lambda_value=0.3)

    def V(*d):  # a row of V from the d of its members
        w = [math.exp(-x) for x in d]
        return [x / sum(w) for x in w]

    def d_J(s):
        return 1 - s / (2 - s)
    V0, V1, V2, V3 = V(0, 0.01), V(0, 4 / 49, 1 / 49), V(1 / 81, 4 / 81, 0), V(1 / 36, 0)
    assert np.allclose(V0 + V1 + V2 + V3, [0.502500, 0.497500, 0.344660, 0.317643, 0.337697,
                                           0.336013, 0.323796, 0.340188, 0.493056, 0.506944],
                       atol=1e-6)
    # columns: V0 (0, 2); V1 (1, 2, 3); V2 (0, 1, 2); V3 (1, 3)
    s_00 = min(V0[0], V2[0]) + min(V0[1], V2[2])
    s_10 = min(V1[0], V2[1]) + min(V1[1], V2[2])
    s_11 = min(V1[0], V3[0]) + min(V1[2], V3[1])
    expected = [[0.7 * d_J(s_00) + 0.3 * 0.01, 0.7 + 0.3 * 0.16, 1.0],
                [0.7 * d_J(s_10) + 0.3 * 4 / 49, 0.7 * d_J(s_11) + 0.3 / 49, 1.0]]
    assert np.allclose(expected, [[0.345438, 0.748, 1], [0.393988, 0.343619, 1]], atol=1e-6)
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6), out
    # the transcription of the official code gives the same numbers
    ref = rerank_reference.re_ranking(q_g, q_q, g_g, k1=2, k2=1, lambda_value=0.3)
    assert np.abs(ref - np.asarray(expected)).max() < 1e-6


def clustered_problem(seed, Q, G, ids, dim=16, noise=0.6, symmetric=True):
    """Random Euclidean distances between L2-normalised features drawn around `ids` identity
    centres (so neighbourhoods overlap and k-reciprocal sets expand), float32. symmetric=False:
    independent random matrices instead, so that M^T != M (the official code's column
    normalisation and transpose are then visible)."""
    rng = np.random.default_rng(seed)
    if not symmetric:
        return tuple(rng.uniform(0.1, 2.0, shape).astype(np.float32)
                     for shape in ((Q, G), (Q, Q), (G, G)))
    centres = rng.standard_normal((ids, dim))
    f = centres[rng.integers(0, ids, Q + G)] + noise * rng.standard_normal((Q + G, dim))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    d = np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 0)).astype(np.float32)
    return d[:Q, Q:], d[:Q, :Q], d[Q:, Q:]


def expanded_rows(q_g, q_q, g_g, k1):
    """How many images have |R*(i, k1)| > |R(i, k1)|: Eq. (5) really added someone."""
    q_q, q_g, g_g = evaluate._rerank_inputs(q_g, q_q, g_g)
    rank, _ = evaluate._initial_ranking(q_q, q_g, g_g, k1 + 1)
    half = int(np.around(k1 / 2))
    in_R = evaluate._k_reciprocal(rank, k1)
    i, _ = evaluate._expanded_sets(rank, in_R, evaluate._k_reciprocal(rank, half), k1, half)
    return int((torch.bincount(i, minlength=len(rank)) > in_R.sum(1)).sum())


# (seed, Q, G, identities, k1, k2, lambda, symmetric): the paper's defaults, k2 = 1 (no query
# expansion), an odd k1 (k1/2 = 3.5 -> 4), lambda 0 and 1, a single query, asymmetric matrices
RANDOM = [(0, 20, 100, 8, 20, 6, 0.3, True), (1, 30, 150, 15, 7, 1, 0.5, True),
          (2, 25, 120, 10, 12, 3, 0.1, True), (3, 15, 90, 6, 9, 2, 0.0, True),
          (4, 1, 80, 8, 10, 4, 1.0, True), (5, 12, 60, 1, 8, 6, 0.3, False)]


@pytest.mark.parametrize("seed, Q, G, ids, k1, k2, lam, symmetric", RANDOM)
def test_equals_official_transcription(seed, Q, G, ids, k1, k2, lam, symmetric):
    q_g, q_q, g_g = clustered_problem(seed, Q, G, ids, symmetric=symmetric)
    ref = rerank_reference.re_ranking(q_g, q_q, g_g, k1, k2, lam)
    out = evaluate.re_ranking(q_g, q_q, g_g, k1, k2, lam)
    assert out.shape == (Q, G) and out.dtype == torch.float32
    assert np.abs(out.numpy() - ref).max() <= 1e-4
    if symmetric:  # the expansion of Eq. (5) is exercised, not only R(i, k1)
        assert expanded_rows(q_g, q_q, g_g, k1) > 0


def test_chunks_change_nothing(monkeypatch):
    # Tiny chunks: the initial ranking, R, R* and the Jaccard sums all run over many chunks (one
    # query per Jaccard chunk); the numbers must not move.
    q_g, q_q, g_g = clustered_problem(6, 20, 100, 8)
    ref = rerank_reference.re_ranking(q_g, q_q, g_g)
    monkeypatch.setattr(evaluate, "_RERANK_CHUNK_ELEMENTS", 700)
    monkeypatch.setattr(evaluate, "_RERANK_TRIPLES", 50)
    out = evaluate.re_ranking(q_g, q_q, g_g)
    assert np.abs(out.numpy() - ref).max() <= 1e-4


def test_numpy_torch_and_float64_inputs_agree():
    q_g, q_q, g_g = clustered_problem(7, 10, 60, 6)
    from_numpy = evaluate.re_ranking(q_g, q_q, g_g, k1=8, k2=3)
    from_torch = evaluate.re_ranking(*(torch.from_numpy(x) for x in (q_g, q_q, g_g)), k1=8, k2=3)
    from_f64 = evaluate.re_ranking(*(x.astype(np.float64) for x in (q_g, q_q, g_g)), k1=8, k2=3)
    assert torch.equal(from_numpy, from_torch)
    assert from_f64.dtype == torch.float32
    assert (from_f64 - from_numpy).abs().max() <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    q_g, q_q, g_g = clustered_problem(8, 20, 100, 8)
    cpu = evaluate.re_ranking(q_g, q_q, g_g)
    cuda = evaluate.re_ranking(*(torch.from_numpy(x).cuda() for x in (q_g, q_q, g_g)))
    assert cuda.device.type == "cuda" and cuda.dtype == torch.float32
    assert (cuda.cpu() - cpu).abs().max() <= 1e-4


def test_shapes_and_errors():
    q_g, q_q, g_g = clustered_problem(9, 3, 7, 2)
    out = evaluate.re_ranking(q_g, q_q, g_g, k1=20)  # k1 + 1 > N = 10: every image is a neighbour
    assert out.shape == (3, 7) and out.dtype == torch.float32
    assert np.abs(out.numpy() - rerank_reference.re_ranking(q_g, q_q, g_g, k1=20)).max() <= 1e-4
    with pytest.raises(UserError, match=r"\[Q, G\], \[Q, Q\], \[G, G\]"):
        evaluate.re_ranking(q_g, g_g, q_q)
    with pytest.raises(UserError, match="k2 >= 1"):
        evaluate.re_ranking(q_g, q_q, g_g, k2=0)

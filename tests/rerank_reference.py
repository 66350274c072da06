"""The yardstick for tests/test_rerank.py and bench.py: k-reciprocal re-ranking (Zhong et al.,
"Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017) transcribed step for
step, in numpy, from the authors' official Python version that takes distance matrices:
github.com/zhunzhong07/person-re-ranking, python-version/re_ranking_ranklist.py.

Same steps, same loops, same dtypes, our own names: the dense (Q+G) x (Q+G) matrix, a full
np.argsort of it, one Python loop per image for the k-reciprocal sets and their expansion (with
np.intersect1d), a dense float32 V, a Python list as the inverted index, one loop per query for
the Jaccard sums. Slow and memory-hungry on purpose: it is what `evaluate.re_ranking` must equal,
not what to use.
"""
import numpy as np


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """numpy [Q, G], [Q, Q], [G, G] Euclidean distances -> the re-ranked distances [Q, G] (float32),
    exactly as the official re_ranking_ranklist.py computes them."""
    num_query = q_g_dist.shape[0]
    num_all = q_g_dist.shape[0] + q_g_dist.shape[1]
    # the whole (Q+G) x (Q+G) matrix [[qq, qg], [qg^T, gg]], squared (in the inputs' dtype), float32
    dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                           np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    dist = np.power(dist, 2).astype(np.float32)
    # every column divided by its maximum, then transposed: row i is column i
    dist = np.transpose(1. * dist / np.max(dist, axis=0))
    V = np.zeros_like(dist).astype(np.float32)
    # the initial ranking: every row sorted in full
    rank = np.argsort(dist).astype(np.int32)
    half = int(np.around(k1 / 2.))  # numpy rounds half to even: k1 = 1 -> 0, k1 = 5 -> 2

    for i in range(num_all):
        # R(i, k1): the k1 + 1 nearest of i that have i among their own k1 + 1 nearest
        forward = rank[i, :k1 + 1]
        backward = rank[forward, :k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expanded = reciprocal
        for candidate in reciprocal:
            # R(candidate, half), added when more than 2/3 of it lies in R(i, k1)
            cand_forward = rank[candidate, :half + 1]
            cand_backward = rank[cand_forward, :half + 1]
            cand_reciprocal = cand_forward[np.where(cand_backward == candidate)[0]]
            if len(np.intersect1d(cand_reciprocal, reciprocal)) > 2. / 3 * len(cand_reciprocal):
                expanded = np.append(expanded, cand_reciprocal)
        expanded = np.unique(expanded)
        # V: exp(-d) on the expanded set, divided by its sum
        weight = np.exp(-dist[i, expanded])
        V[i, expanded] = 1. * weight / np.sum(weight)

    dist = dist[:num_query, ]
    if k2 != 1:
        # local query expansion: the mean of the rows of the k2 nearest
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(num_all):
            V_qe[i, :] = np.mean(V[rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del rank

    # the inverted index: for every column, the rows where V is non-zero
    holders = []
    for col in range(num_all):
        holders.append(np.where(V[:, col] != 0)[0])

    jaccard = np.zeros_like(dist, dtype=np.float32)
    for i in range(num_query):
        # s = sum over k of min(V[i, k], V[j, k]), for every j at once, column by column of row i
        overlap = np.zeros(shape=[1, num_all], dtype=np.float32)
        nonzero = np.where(V[i, :] != 0)[0]
        rows_of = [holders[col] for col in nonzero]
        for n in range(len(nonzero)):
            overlap[0, rows_of[n]] = overlap[0, rows_of[n]] + np.minimum(
                V[i, nonzero[n]], V[rows_of[n], nonzero[n]])
        jaccard[i] = 1 - overlap / (2. - overlap)

    final = jaccard * (1 - lambda_value) + dist * lambda_value
    del dist
    del V
    del jaccard
    return final[:num_query, num_query:]

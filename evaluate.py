"""
Re-ID evaluation: features, distances, the Market-1501 ranking metrics, and the two metric
learners AAA-Net's tables use (XQDA, KISSME), with a command line that prints one table.

  python evaluate.py --checkpoint runs/aea/last.pt --root data/market --dataset market1501 \
                     --metric euclidean xqda kissme [--flip] [--show-ranks 8 --out figs]
  python evaluate.py --weights imagenet --root data/market --dataset market1501   # plain ResNet-50

Protocol (Market-1501's MATLAB evaluation, evaluation.m + compute_AP.m), defined by `rank_metrics`
and computed to the same numbers, without sorting, by `fast_rank_metrics` (what `evaluate_model`
uses): for each query, gallery items with the same pid AND the same camera are removed, and junk
(pid -1) is removed; distractors (pid 0) stay and are never a match. Ranking is by distance, equal
distances ordered by gallery index (the stable sort of the official MATLAB code). A query with no
true match left is skipped and counted; CMC and mAP are averaged over the rest.
    CMC rank-k      fraction of queries whose first true match is among the first k items
    mAP             mean over true matches of precision at that match (torchreid / fast-reid)
    mAP (official)  compute_AP.m's trapezoid rule: per match (old_precision + precision) / 2

Metric learning (both fitted on training-set features, both in float64 torch, CPU or CUDA):
  XQDA   Liao et al., "Person Re-identification by Local Maximal Occurrence Representation and
         Metric Learning", CVPR 2015, Sec. 4 and their XQDA.m                      -> `XQDA`
  KISSME Koestinger et al., "Large Scale Metric Learning from Equivalence Constraints",
         CVPR 2012, Eq. (12)-(16), with PCA first as in their toolbox              -> `KISSME`
  The pipeline around them follows the IDE baseline scripts of Zheng et al. for Market-1501
  (github.com/zhunzhong07/IDE-baseline-Market-1501, market_evaluation/baseline_evaluation_IDE.m):
  train, query and gallery features are L2-normalised first; KISSME keeps 200 PCA dimensions.

Choices where the papers and the official code are silent or differ (each marked
"Choice (not in the paper)" at its line):
  - A query without a true match is skipped and counted (num_skipped; num_queries counts the
    queries averaged over), where evaluation.m scores it AP 0 (`rank_metrics`).
  - XQDA/KISSME pairs: all ordered pairs of training images from two different cameras; same id
    -> intra-personal / similar, different id -> extra-personal / dissimilar. Covariances in closed
    form over ALL such pairs (exact), instead of Liao's one-camera-vs-other split or the IDE
    scripts' random pair samples (`pair_covariances`).
  - KISSME learns in the span of the training images when there are fewer images than
    dimensions, as XQDA.m does for XQDA (exact; `_reduce_to_span`).
  - Distances from XQDA/KISSME stay float64; Euclidean/cosine are float32 like the features
    (`_quadratic_distance`).
  - XQDA's e are the generalised eigenvalues of Sigma_E w = e Sigma_I w (Cholesky + eigh), not
    the singular values of Sigma_I^-1 Sigma_E that XQDA.m takes, so the number of kept dimensions
    (e > 1) can differ from XQDA.m's (`XQDA.fit`).
  - KISSME PCA dims capped at N_train - #ids (the rank of the same-id differences), so that
    Sigma_S can be inverted (`KISSME.fit`).
  - A paper checkpoint is re-scored in the precision its run trained with, "auto" resolved by
    the device type it trained on; a plain ResNet-50 in "auto" (`trained_precision`).
  - --show-ranks and the papers' figures draw N items evenly spaced over a list (`evenly_spaced`).
  - --show-ranks draws the ranking that is scored: junk and same-id-same-camera items are left
    out, not drawn (`rank_figure`).
"""
import argparse
import contextlib
import importlib
import io
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

import common
import data
from common import UserError

# -----------------------------------------------------------------------------
# Features and distances


@torch.no_grad()
def extract_features(model, loader, device, flip=False, precision="auto"):
    """Test features of every image: `loader` yields uint8 batches [B, 3, H, W] -> [N, D] float32
    on device.

    flip=True: f = (model(x) + model(mirror(x))) / 2, the horizontal mirror being a free second
    view. precision: the autocast of `common.autocast` (auto: bf16 on CUDA, fp32 on the CPU).
    """
    model.eval()  # BatchNorm running statistics, no dropout
    feats = []
    for x in loader:
        x = data.normalize(data.to_device(x, device))  # pinned + non-blocking on CUDA
        with common.autocast(device, precision):
            f = model(x).float()
            if flip:
                f = (f + model(x.flip(3)).float()) / 2  # dim 3 = width
        feats.append(f)
    if not feats:
        raise UserError("extract_features got no images (the loader was empty)")
    return torch.cat(feats)


def pairwise_distances(qf, gf, metric="euclidean"):
    """[Q, D] x [G, D] -> [Q, G] on qf's device.

    euclidean: ||q/|q| - g/|g| || (common.pairwise_euclidean: one matrix product, clamped at
               1e-12 before the root)
    cosine:    1 - q.g / (|q| |g|)
    """
    qf = torch.as_tensor(qf).float()
    gf = torch.as_tensor(gf).float().to(qf.device)
    # q', g': the L2-normalised features (a zero feature stays zero)
    q, g = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    if metric == "cosine":
        return 1 - q @ g.T
    if metric == "euclidean":
        return common.pairwise_euclidean(q, g)
    raise UserError(f"unknown distance {metric!r}; expected 'euclidean' or 'cosine'")


# -----------------------------------------------------------------------------
# Ranking metrics: the definition, then the same numbers without sorting


def rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """CMC and both mAPs of a [Q, G] distance matrix under the Market-1501 protocol (module
    docstring), step by step as Market-1501's MATLAB code computes them: evaluation.m sorts each
    row, compute_AP.m walks down it. This is the definition; `fast_rank_metrics` gives the same
    numbers without sorting and is what `evaluate_model` uses.

    For each query:
      1. Rank the gallery by distance with a stable sort: equal distances keep gallery order, as
         MATLAB's sort does.
      2. Remove junk (pid -1) and the items of the query's pid in the query's camera. What is left
         is the valid ranking; its items of the query's pid are the n true matches. A query with
         n = 0 is skipped.
      3. Walk down the valid ranking. At valid position j (0-based), after `hits` true matches,
             recall = hits / n,   precision = hits / (j + 1)
         CMC            rank-(k+1) is a hit when the first true match is at a position <= k
         AP             mean over the n true matches of the precision at each
         AP (official)  compute_AP.m's trapezoid rule, summed over positions:
                            (recall - old_recall) * (old_precision + precision) / 2
                        old_* being the previous position's values (0 and 1.0 before the first);
                        recall rises by 1/n at a match and stays elsewhere.
         The walk stops at the last true match (recall 1): nothing after it changes a number.
    CMC and both mAPs are averaged over the queries not skipped.

    Accepts numpy arrays or torch tensors, CPU or CUDA (copied to the CPU). A Python step per
    ranked item: about a minute at Market-1501's size (3368 x 15913) on a CPU, where
    `fast_rank_metrics` takes a fraction of a second.
    Returns {"cmc": np.ndarray [max_rank], "mAP", "mAP_official": float, "num_queries",
    "num_skipped": int}.
    """
    dist, q_pids, g_pids, q_cams, g_cams = (
        x.cpu().numpy() for x in _ranking_inputs(dist, q_pids, g_pids, q_cams, g_cams))
    if not np.isfinite(dist).all():
        raise UserError("rank_metrics: the distance matrix holds NaN or infinite values")
    Q = len(dist)
    cmc_sum, ap_sum, ap_official_sum, num_queries = np.zeros(max_rank), 0.0, 0.0, 0
    for q in range(Q):
        # 1-2. the valid ranking; is_match: a true match at each valid position
        is_match = valid_ranking(dist[q], q_pids[q], q_cams[q], g_pids, g_cams)[1].tolist()
        n = sum(is_match)
        if n == 0:
            # Choice (not in the paper): skipped and counted, not scored AP 0 as evaluation.m
            # does — a query with nothing to find says nothing about the ranking, and torchreid
            # and fast-reid skip it too; Market-1501 has no such query, so both rules agree there
            continue
        # 3. down the valid ranking
        cmc, hits, ap, ap_official = np.zeros(max_rank), 0, 0.0, 0.0
        old_recall, old_precision = 0.0, 1.0
        for j, match in enumerate(is_match):
            if match:
                hits += 1
                if hits == 1:
                    cmc[j:] = 1  # the first true match at position j: a hit at every rank > j
            recall, precision = hits / n, hits / (j + 1)
            # AP: the precision at each true match, averaged over the n
            if match:
                ap += precision / n
            # AP (official): the trapezoid between the previous position and this one
            ap_official += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            if hits == n:
                break
        cmc_sum += cmc
        ap_sum += ap
        ap_official_sum += ap_official
        num_queries += 1
    if num_queries == 0:
        raise no_true_match(Q)
    return {"cmc": cmc_sum / num_queries, "mAP": ap_sum / num_queries,
            "mAP_official": ap_official_sum / num_queries,
            "num_queries": num_queries, "num_skipped": Q - num_queries}


def no_true_match(num_queries):
    """The UserError of a test set in which no query has a true match."""
    return UserError(f"none of the {num_queries} queries has a true match in the gallery "
                     "(same pid, other camera)")


def check_true_matches(ds):
    """Refuse, before any training or feature extraction, a dataset (data.ReIDData) whose test
    split has no query with a true match: `rank_metrics`' error, after the dataset's folder.
    The rule is `valid_ranking`'s; the distances do not matter, so all are 0."""
    query, gallery, d = ds.query, ds.gallery, np.zeros(len(ds.gallery.pids))
    if not any(valid_ranking(d, pid, cam, gallery.pids, gallery.cams)[1].any()
               for pid, cam in zip(query.pids, query.cams)):
        raise UserError(f"{ds.root}: {no_true_match(len(query.pids))}")


def valid_ranking(d, q_pid, q_cam, g_pids, g_cams):
    """Steps 1-2 of `rank_metrics` for one query, numpy: d [G] -> (order, is_match), the gallery
    indices of the valid ranking and whether each is a true match."""
    # 1. gallery indices by distance; ties in gallery order
    order = np.argsort(d, kind="stable")
    # 2. junk (pid -1) and the query's pid in the query's camera out
    same_pid = g_pids[order] == q_pid
    kept = ~((g_pids[order] == -1) | (same_pid & (g_cams[order] == q_cam)))
    return order[kept], same_pid[kept]


def _ranking_inputs(dist, q_pids, g_pids, q_cams, g_cams):
    """The arguments of `rank_metrics` and `fast_rank_metrics`, checked, as torch tensors on dist's
    device: dist [Q, G] float32 or float64, the four label vectors int64."""
    dist = torch.as_tensor(dist)
    if dist.ndim != 2:
        raise UserError("rank_metrics needs a [Q, G] distance matrix, got shape "
                        f"{tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.double()  # integers up to 2^53 stay exact
    elif dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()  # exact; `_true_match_ranks`' bucket arithmetic wants fp32 or fp64
    Q, G = dist.shape
    q_pids, g_pids, q_cams, g_cams = (torch.as_tensor(x).reshape(-1).long().to(dist.device)
                                      for x in (q_pids, g_pids, q_cams, g_cams))
    if (len(q_pids), len(q_cams), len(g_pids), len(g_cams)) != (Q, Q, G, G):
        raise UserError(f"rank_metrics: dist is {Q} x {G} but got {len(q_pids)} query pids, "
                        f"{len(q_cams)} query cameras, {len(g_pids)} gallery pids, "
                        f"{len(g_cams)} gallery cameras")
    return dist, q_pids, g_pids, q_cams, g_cams


# Buckets per query row in the counting pass of `_true_match_ranks`.
_BUCKETS = 4096
# Distance-matrix elements per chunk of queries: caps the temporaries (~30 bytes each) near 130 MB.
_CHUNK_ELEMENTS = 1 << 22


def fast_rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """`rank_metrics`, the same numbers and errors (tests/test_evaluate.py checks them equal on
    random problems with ties, junk and queries without a match), without sorting any row.

    Accepts numpy arrays or torch tensors, CPU or CUDA; the work stays on dist's device, a chunk
    of queries at a time. For query q, let r_1 < r_2 < ... < r_n be the 0-based positions of its
    n true matches in its valid ranking (`rank_metrics`, steps 1-2; found by `_true_match_ranks`).
    Then the walk of step 3 adds up to
        CMC[k]        = fraction of queries with r_1 <= k      (k = 0 .. max_rank-1, "rank-(k+1)")
        AP            = 1/n sum_i precision_i,   precision_i = i / (r_i + 1)
        AP (official) = 1/n sum_i (old_precision_i + precision_i) / 2,
                        old_precision_i = (i - 1) / r_i  (1.0 when r_i = 0)
    the last because recall rises (by 1/n) only at the i-th hit, where the precision one valid
    position earlier is (i - 1) / r_i.
    Returns {"cmc": np.ndarray [max_rank], "mAP", "mAP_official": float, "num_queries",
    "num_skipped": int}.
    """
    dist, q_pids, g_pids, q_cams, g_cams = _ranking_inputs(dist, q_pids, g_pids, q_cams, g_cams)
    Q, G = dist.shape
    # sums over the scored queries, kept on the device in float64; read once at the end
    f64 = dict(dtype=torch.float64, device=dist.device)
    # first_hits[k]: how many queries have r_1 = k; the last bin: r_1 >= max_rank
    first_hits = torch.zeros(max_rank + 1, **f64)
    ap_sum, ap_official_sum, num_queries = torch.zeros((), **f64), torch.zeros((), **f64), 0
    # a chunk of queries at a time: the temporaries scale with rows x G, not Q x G
    rows = max(1, _CHUNK_ELEMENTS // max(G, 1))
    for start in range(0, Q, rows):
        sl = slice(start, start + rows)
        r, n = _true_match_ranks(dist[sl], q_pids[sl], q_cams[sl], g_pids, g_cams)
        keep = n > 0  # queries with no true match are skipped, as in rank_metrics
        r, n = r[keep].double(), n[keep].double()
        num_queries += len(n)
        if not len(n):
            continue
        i = torch.arange(1, r.shape[1] + 1, **f64)  # hit number, 1-based
        is_hit = i <= n[:, None]                    # [B, n_max]: the real entries of the padded r
        # precision at the i-th hit, i / (r_i + 1)
        precision = i / (r + 1)
        # old_precision_i = (i - 1) / r_i, the precision one valid position before the hit
        old_precision = torch.where(r > 0, (i - 1) / r.clamp(min=1), 1.0)
        ap_sum += ((precision * is_hit).sum(1) / n).sum()
        ap_official_sum += (((old_precision + precision) / 2 * is_hit).sum(1) / n).sum()
        # CMC: the first hit r_1 decides; rank-(k+1) counts every query with r_1 <= k (cumsum below)
        first_hits += torch.bincount(r[:, 0].long().clamp(max=max_rank),
                                     minlength=max_rank + 1).double()
    if num_queries == 0:
        raise no_true_match(Q)
    return {"cmc": (first_hits[:max_rank].cumsum(0) / num_queries).cpu().numpy(),
            "mAP": float(ap_sum) / num_queries,
            "mAP_official": float(ap_official_sum) / num_queries,
            "num_queries": num_queries, "num_skipped": Q - num_queries}


def _true_match_ranks(d, q_pids, q_cams, g_pids, g_cams):
    """For a chunk d [B, G]: r [B, n_max], the sorted 0-based positions of each query's true
    matches among its valid gallery items (entries past n[b] are padding), and n [B] its number of
    matches.

    Exact, without sorting a row. The order is by the key (distance, gallery index), so ties go to
    the lower index as in a stable sort. For the t-th match (0-based, in key order)
        r_t = t + #{counted items k : key_k < key_t}
    where "counted" = valid and not a match = other pid and not junk. The count is done in buckets:
      1. u_k = floor((d_k - lo) * (K - 1) / (hi - lo)), lo = the row's minimum, hi = its farthest
         match. Rounding is monotone, so d_k < d_t implies u_k <= u_t: an item in an earlier bucket
         than a match is closer, one in a later bucket is farther.
      2. A histogram of counted items per bucket, summed up to each match's bucket, gives the
         items in strictly earlier buckets (one pass over the row).
      3. The few counted items that share a bucket with a match ("candidates") are compared with
         those matches by the exact key.
    Cost: a handful of elementwise passes over d plus a histogram, instead of an O(G log G) sort.
    """
    B, G = d.shape
    K = _BUCKETS
    dev = d.device
    # lo: the row minimum (NaN propagates into amin and amax, so this also checks for NaN)
    lo = torch.amin(d, dim=1)
    if not (torch.isfinite(lo).all() and torch.isfinite(torch.amax(d, dim=1)).all()):
        raise UserError("rank_metrics: the distance matrix holds NaN or infinite values")
    # same_pid [B, G]: excluded from the count (matches and same-camera items alike)
    same_pid = g_pids[None, :] == q_pids[:, None]
    # true matches: same pid, other camera, not junk; a sparse list (row b, gallery index g)
    b_idx, g_idx = same_pid.nonzero(as_tuple=True)
    keep = (g_cams[g_idx] != q_cams[b_idx]) & (g_pids[g_idx] != -1)
    b_idx, g_idx = b_idx[keep], g_idx[keep]
    n = torch.bincount(b_idx, minlength=B)
    n_max = int(n.max()) if B else 0
    if n_max == 0:
        return torch.zeros(B, 0, dtype=torch.long, device=dev), n

    # the matches of each row in a padded [B, n_max] list; nonzero() lists a row's columns in order
    slot = torch.arange(len(b_idx), device=dev) - (n.cumsum(0) - n)[b_idx]
    m_d = d.new_full((B, n_max), float("inf"))  # padding sorts last
    m_d[b_idx, slot] = d[b_idx, g_idx]
    m_g = torch.full((B, n_max), G, dtype=torch.long, device=dev)
    m_g[b_idx, slot] = g_idx
    # sort each row's matches by key: a stable sort keeps the lower gallery index first among
    # equal distances
    m_d, order = torch.sort(m_d, dim=1, stable=True)
    m_g = m_g.gather(1, order)
    real = torch.arange(n_max, device=dev) < n[:, None]

    # 1. buckets; hi = the farthest match (a row without matches gets hi = lo and is ignored later)
    hi = torch.where(n > 0, m_d.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0], lo)
    # the clamp keeps the scale finite when hi == lo; items beyond the last bucket go to bucket K
    scale = ((K - 1) / (hi - lo)).clamp(max=1e30)
    u = (d - lo[:, None]).mul_(scale[:, None]).clamp_(max=K).long()
    # the matches' buckets; padding -> K + 1
    m_u = u.gather(1, m_g.clamp(max=G - 1)).masked_fill_(~real, K + 1)
    # bucket K + 1 collects the uncounted
    u.masked_fill_(same_pid | (g_pids == -1)[None, :], K + 1)

    # 2. counted items in strictly earlier buckets than each match
    hist = torch.zeros(B, K + 2, dtype=torch.int32, device=dev)
    hist.scatter_add_(1, u, torch.ones(1, 1, dtype=torch.int32, device=dev).expand(B, G))
    earlier = (hist.cumsum(1) - hist).gather(1, m_u).long()  # [B, n_max]

    # 3. candidates. Matches sorted by key have non-decreasing buckets, so those of bucket v are
    # the slots [m_start[v], m_start[v] + m_count[v]).
    m_count = torch.zeros(B, K + 2, dtype=torch.long, device=dev).scatter_add_(1, m_u, real.long())
    m_start = m_count.cumsum(1) - m_count
    # bucket K + 1 never holds a real match, so no uncounted item becomes a candidate
    c_b, c_g = (m_count > 0).gather(1, u).nonzero(as_tuple=True)
    c_u, c_d = u[c_b, c_g], d[c_b, c_g]
    first, end = m_start[c_b, c_u], m_start[c_b, c_u] + m_count[c_b, c_u]
    # p = #matches with key < the candidate's key: those of earlier buckets, plus those of its own
    # bucket that are closer, or equally close with a lower gallery index
    p = first.clone()
    for o in range(int(m_count.max())):
        t = (first + o).clamp(max=n_max - 1)
        closer = (m_d[c_b, t] < c_d) | ((m_d[c_b, t] == c_d) & (m_g[c_b, t] < c_g))
        p += (first + o < end) & closer
    # the candidate precedes its bucket's matches p .. end-1: +1 on those slots, via a difference
    # array
    step = torch.zeros(B, n_max + 1, dtype=torch.long, device=dev)
    ones = torch.ones_like(p)
    step.index_put_((c_b, p), ones, accumulate=True)
    step.index_put_((c_b, end), -ones, accumulate=True)
    same_bucket = step.cumsum(1)[:, :n_max]

    r = torch.arange(n_max, device=dev) + earlier + same_bucket
    return r, n


# -----------------------------------------------------------------------------
# Metric learning on training features: XQDA and KISSME


def pair_covariances(x, pids, cams):
    """Sigma_S, Sigma_D [D, D]: the mean of (x_i - x_j)(x_i - x_j)^T over ordered pairs of images
    from two different cameras, with the same id (S) or with different ids (D).

    Choice (not in the paper): every such pair, in closed form — exact and O(N D^2), where Liao's
    code splits the cameras one-vs-other and the IDE scripts sample random pairs.
    For a symmetric set P of ordered pairs, with deg_i = #{j : (i, j) in P},
        sum_P (x_i - x_j)(x_i - x_j)^T = 2 (sum_i deg_i x_i x_i^T - sum_P x_i x_j^T)
    and the cross term comes from group sums (s: all images, s_c: camera c, s_y: id y, s_yc: both):
        all cross-camera pairs      sum_P x_i x_j^T = s s^T - sum_c s_c s_c^T
                                    deg_i = N - N_c(i)
        same-id cross-camera pairs  sum_P x_i x_j^T = sum_y (s_y s_y^T - sum_c s_yc s_yc^T)
                                    deg_i = N_y(i) - N_yc(i)
    Different-id pairs = all cross-camera pairs minus the same-id ones.
    """
    x = torch.as_tensor(x).double()
    pids, cams = (torch.as_tensor(v).reshape(-1).long().to(x.device) for v in (pids, cams))
    N = len(x)
    # centring changes no difference x_i - x_j, only shrinks the sums below and so their rounding
    x = x - x.mean(0)

    def group_sums(key):  # -> per-group sums of x [n_groups, D], each image's group size [N]
        _, group, size = torch.unique(key, return_inverse=True, return_counts=True)
        return x.new_zeros(len(size), x.shape[1]).index_add_(0, group, x), size[group]

    s_c, n_c = group_sums(cams)
    s_y, n_y = group_sums(pids)
    s_yc, n_yc = group_sums(pids * (int(cams.max()) + 1) + cams)  # one key per (id, camera)
    s = x.sum(0)
    deg_all, deg_S = (N - n_c).double(), (n_y - n_yc).double()
    # sum over P of the outer products of differences, from deg_i and the cross term
    scatter_all = 2 * (x.T @ (deg_all[:, None] * x) - (torch.outer(s, s) - s_c.T @ s_c))
    scatter_S = 2 * (x.T @ (deg_S[:, None] * x) - (s_y.T @ s_y - s_yc.T @ s_yc))
    pairs_S, pairs_D = deg_S.sum(), deg_all.sum() - deg_S.sum()
    if pairs_S == 0 or pairs_D == 0:
        raise UserError("XQDA/KISSME need training images of one id in two cameras and of two ids "
                        f"in two cameras; this training set has {int(pairs_S)} and {int(pairs_D)} "
                        "such pairs")
    return scatter_S / pairs_S, (scatter_all - scatter_S) / pairs_D


def _reduce_to_span(x):
    """XQDA.m's shortcut when there are fewer images than dimensions (N < D): (y, Q) with Q [D, N]
    an orthonormal basis of the span of the training features and y = x Q [N, N] their
    coordinates. Every pair difference and every centred feature lies in that span, so XQDA and
    KISSME can learn in y and map back with Q, exactly, solving N x N instead of D x D
    eigenproblems. (x, None) if N >= D.

    Choice (not in the paper): KISSME learns in the span too — exact for it as well (its centred
    features and pair differences lie in the span), and N x N eigenproblems replace D x D ones.
    """
    N, D = x.shape
    if N >= D:
        return x, None
    Q, _ = torch.linalg.qr(x.T)  # reduced QR: x^T = Q R, Q [D, N]
    return x @ Q, Q


def _quadratic_distance(a, b, M):
    """[Q, r] x [G, r] -> [Q, G]: (a - b)^T M (a - b) = a^T M a + b^T M b - 2 a^T M b (M symmetric).
    Not clamped at 0: with an indefinite M (XQDA forced to keep a direction with e <= 1) the
    value can be negative, and its order is still what the metric says."""
    # Choice (not in the paper): kept in float64 — the fit was float64, and the ranking metrics
    # rank float64 exactly, so no rounding to float32 reorders near-equal distances
    aM = a @ M
    return (aM * a).sum(1)[:, None] + ((b @ M) * b).sum(1)[None, :] - 2 * aM @ b.T


class XQDA:
    """Cross-view Quadratic Discriminant Analysis: Liao et al., CVPR 2015, Sec. 4; their XQDA.m.

    fit(X [N, D], pids, cams) on training features:
      0. x <- x / |x|, as the IDE baseline does before XQDA. No centring or whitening: XQDA.m
         has none, and only differences x_i - x_j enter (centring would change nothing).
      1. Sigma_I, Sigma_E: covariances of x_i - x_j over intra-personal (same id) and
         extra-personal (different id) cross-camera pairs (`pair_covariances`).
      2. Sigma_I <- Sigma_I + lambda I, lambda = 0.001: XQDA.m's default regulariser.
      3. Subspace: maximise J(w) = w^T Sigma_E w / w^T Sigma_I w, i.e. solve the generalised
         eigenproblem Sigma_E w = e Sigma_I w. Solved via the Cholesky factor Sigma_I = L L^T:
         eigh of the symmetric L^-1 Sigma_E L^-T, w = L^-T v, so the e are exactly the generalised
         eigenvalues. XQDA.m differs: it takes svd(Sigma_I \\ Sigma_E) and uses the singular values
         of Sigma_I^-1 Sigma_E as e and its left singular vectors as W. That matrix is not
         symmetric, so its singular values are not the generalised eigenvalues (nor its singular
         vectors the w), and the count kept in step 4 can differ from XQDA.m's.
      4. W = the w with e > 1, largest e first: directions where people differ more between
         identities than within one. At least 1, at most qda_dims (XQDA.m's qdaDims rule, applied
         to the eigenvalues).
      5. M = (W^T Sigma_I W)^-1 - (W^T Sigma_E W)^-1, the QDA log-likelihood ratio in the subspace.
    distance(XQ, XG) -> [Q, G] float64:  d(x, z) = (x - z)^T W M W^T (x - z).
    Rescaling W's columns (W -> W A) leaves d unchanged, so the eigenvectors' normalisation does
    not matter. With fewer images than dimensions, steps 1-5 run in the span of the images
    (`_reduce_to_span`).
    """

    def __init__(self, lam=0.001, qda_dims=None):
        self.lam, self.qda_dims = lam, qda_dims

    def fit(self, feats, pids, cams):
        x = F.normalize(torch.as_tensor(feats).double(), dim=1)
        # y = x Q: the span's coordinates when N < D (an eigenvector with e > 0 lies in that span)
        y, Q = _reduce_to_span(x)
        Sigma_I, Sigma_E = pair_covariances(y, pids, cams)
        # regulariser on the intra-personal covariance
        Sigma_I = Sigma_I + self.lam * torch.eye(len(Sigma_I), dtype=x.dtype, device=x.device)
        # the generalised eigenproblem Sigma_E w = e Sigma_I w, through the Cholesky factor of
        # Sigma_I (positive definite now).
        # Choice (not in the paper): the generalised eigenvalues e by Cholesky + eigh — they are
        # what J(w) is maximised by; XQDA.m's svd(inCov \ exCov) gives the singular values of
        # Sigma_I^-1 Sigma_E instead, which differ from e, so its kept dimension count can differ
        L = torch.linalg.cholesky(Sigma_I)
        L_inv_E = torch.linalg.solve_triangular(L, Sigma_E, upper=False)  # L^-1 Sigma_E
        C = torch.linalg.solve_triangular(L, L_inv_E.T, upper=False)       # L^-1 Sigma_E L^-T
        e, V = torch.linalg.eigh((C + C.T) / 2)                            # ascending
        e, V = e.flip(0), V.flip(1)
        w = torch.linalg.solve_triangular(L.T, V, upper=True)              # L^-T v
        # subspace selection: eigenvalues above 1, at least one, at most qda_dims
        r = int((e > 1).sum())
        dims = max(1, min(r, self.qda_dims) if self.qda_dims else r)
        W, self.eigenvalues = w[:, :dims], e
        # M in the subspace
        self.M = torch.linalg.inv(W.T @ Sigma_I @ W) - torch.linalg.inv(W.T @ Sigma_E @ W)
        self.W = W if Q is None else Q @ W  # [D, dims], acting on the features themselves
        return self

    def distance(self, qf, gf):
        q = F.normalize(torch.as_tensor(qf).double(), dim=1) @ self.W
        g = F.normalize(torch.as_tensor(gf).double().to(q.device), dim=1) @ self.W
        return _quadratic_distance(q, g, self.M)


def psd_repair(M, zero=1e-10, eps=1e-6):
    """KISSME's repair of a symmetric M (validateCovMatrix.m of the KISSME toolbox): if M has a
    negative eigenvalue, M = V diag(e') V^T with e'_k = EPS = 1e-6 where e_k <= ZERO = 1e-10,
    else e_k. A PSD M is returned as it is."""
    e, V = torch.linalg.eigh(M)
    if e.min() >= 0:
        return M
    e = torch.where(e <= zero, eps, e)
    return V @ torch.diag(e) @ V.T


class KISSME:
    """KISS metric learning: Koestinger et al., "Large Scale Metric Learning from Equivalence
    Constraints", CVPR 2012, Eq. (12)-(16), as in their toolbox (LearnAlgoKISSME.m), PCA first.

    fit(X [N, D], pids, cams) on training features:
      0. x <- x / |x|  (the IDE baseline normalises every feature first)
      1. PCA: z = P^T (x - m), m the training mean, P the top `dims` eigenvectors of the training
         covariance. dims = 200: the IDE baseline's params.numCoeffs for Market-1501, capped at D
         and N - #ids (see the Choice in `fit`).
      2. Sigma_S, Sigma_D: covariances of z_i - z_j over similar (same id) and dissimilar
         (different id) cross-camera pairs, Eq. (12)-(13) (`pair_covariances`).
      3. M = Sigma_S^-1 - Sigma_D^-1, Eq. (15)-(16): the log-likelihood ratio of "similar" vs
         "dissimilar" for zero-mean Gaussian differences, with the constant dropped.
      4. PSD repair (`psd_repair`, the toolbox's validateCovMatrix.m): if M has a negative
         eigenvalue, every eigenvalue <= 1e-10 is raised to 1e-6, so that d below is a
         pseudo-metric.
    distance(XQ, XG) -> [Q, G] float64:  d(x, z) = (z_x - z_z)^T M (z_x - z_z).
    """

    def __init__(self, pca_dims=200):
        self.pca_dims = pca_dims

    def fit(self, feats, pids, cams):
        x = F.normalize(torch.as_tensor(feats).double(), dim=1)
        # y = x Q: the span's coordinates when N < D (the centred data and its PCA lie in that span)
        y, Q = _reduce_to_span(x)
        N, D = y.shape
        num_ids = len(torch.unique(torch.as_tensor(pids)))
        # Choice (not in the paper): at most D and N - #ids PCA dimensions — N - #ids is the rank
        # of the same-id differences, so more would leave Sigma_S singular
        dims = min(self.pca_dims, D, N - num_ids)
        if dims < 1:
            raise UserError(f"KISSME needs more training images than identities; got {N} images "
                            f"of {num_ids} ids")
        # PCA on the training features
        yc = y - y.mean(0)
        _, vecs = torch.linalg.eigh(yc.T @ yc / max(N - 1, 1))  # eigenvalues ascending
        P = vecs.flip(1)[:, :dims]  # the top `dims` principal directions
        z = yc @ P
        self.mean = x.mean(0)
        self.P = P if Q is None else Q @ P  # [D_features, dims]
        Sigma_S, Sigma_D = pair_covariances(z, pids, cams)
        # M = Sigma_S^-1 - Sigma_D^-1; a failed Cholesky means Sigma_S is singular
        L_S, info = torch.linalg.cholesky_ex(Sigma_S)
        if info != 0:
            raise UserError(f"KISSME: the same-id covariance in {dims} PCA dimensions is singular; "
                            "use fewer (--kissme-dims)")
        M = torch.cholesky_inverse(L_S) - torch.linalg.inv(Sigma_D)
        # PSD repair by clipping the spectrum
        self.M = psd_repair((M + M.T) / 2)
        return self

    def distance(self, qf, gf):
        q = (F.normalize(torch.as_tensor(qf).double(), dim=1) - self.mean) @ self.P
        g = (F.normalize(torch.as_tensor(gf).double().to(q.device), dim=1) - self.mean) @ self.P
        return _quadratic_distance(q, g, self.M)


# -----------------------------------------------------------------------------
# Command line: a checkpoint (or a plain ResNet-50) on a dataset -> one table


def load_model(args):
    """(model, (height, width), precision) from --checkpoint (dispatch on ckpt["paper"]) or
    --weights. precision, for `extract_features`: a paper checkpoint's training precision
    (`trained_precision`); "auto" for a plain ResNet-50 (--weights or a backbone checkpoint)."""
    if not args.checkpoint:
        model = common.Backbone(weights=args.weights, last_stride=args.last_stride)
        return model, (args.height, args.width), "auto"
    ckpt = common.load_checkpoint(args.checkpoint)
    paper = ckpt.get("paper") if isinstance(ckpt, dict) else None
    if paper in ("aea", "aaanet"):
        # imported only now: evaluating a backbone checkpoint must not depend on the paper modules
        try:
            module = importlib.import_module(paper)
        except ModuleNotFoundError as e:
            if e.name != paper:
                raise
            raise UserError(f"{args.checkpoint} is a {paper!r} checkpoint, but {paper}.py is not "
                            "in this project") from None
        model, size = module.model_from_checkpoint(ckpt, args.checkpoint)
        return model, size, trained_precision(ckpt)
    if paper != "backbone":
        raise UserError(f"{args.checkpoint}: unknown checkpoint kind paper={paper!r}; expected "
                        "'backbone', 'aea' or 'aaanet' (a file written by common.save_checkpoint)")
    try:
        cfg = ckpt["config"]
        model = common.Backbone(weights="none", last_stride=cfg.get("last_stride", 2))
        common.load_weights(model, ckpt["model"], args.checkpoint)
        return model, (cfg["height"], cfg["width"]), "auto"
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{args.checkpoint} does not hold a plain Backbone checkpoint (config with "
                        f"height, width, last_stride and its state dict): "
                        f"{str(e).splitlines()[0]}") from None


def trained_precision(ckpt):
    """The precision ("bf16" or "fp32") a paper checkpoint's run trained with: its config's
    --precision, with "auto" resolved as common.autocast resolves it on the device type the run
    trained on (ckpt["device_type"]): bf16 on "cuda", fp32 on "cpu".

    Choice (not in the paper): a checkpoint is re-scored in its run's training precision — the
    run's own evaluations used it, so an fp32 run is not re-scored in bf16 on a GPU (nor a bf16
    run in fp32 on the CPU), whatever device evaluates it.
    """
    precision = ckpt["config"].get("precision", "auto")
    if precision != "auto":
        return precision
    return "bf16" if ckpt.get("device_type") == "cuda" else "fp32"


def format_table(results, label="metric"):
    """One row per entry of `results` ({row name: rank_metrics dict}, e.g. one per metric, or
    "untrained" / "trained"), under the column title `label`: rank-1/5/10, mAP, mAP (official),
    in percent. No rows: a line that says so (a run stopped before its first evaluation)."""
    if not results:
        return f"{label}: no evaluation yet (python evaluate.py --checkpoint ... scores a run)"
    w = max(10, 2 + max(len(name) for name in results))  # the name column fits the longest name
    lines = [f"{label:<{w}}{'rank-1':>8}{'rank-5':>8}{'rank-10':>9}{'mAP':>8}"
             f"{'mAP (official)':>16}"]
    for name, r in results.items():
        cmc = r["cmc"]
        lines.append(f"{name:<{w}}{100 * cmc[0]:8.2f}{100 * cmc[4]:8.2f}{100 * cmc[9]:9.2f}"
                     f"{100 * r['mAP']:8.2f}{100 * r['mAP_official']:16.2f}")
    r = next(iter(results.values()))
    lines.append(f"{r['num_queries']} queries evaluated, {r['num_skipped']} skipped "
                 "(no true match in the gallery)")
    return "\n".join(lines)


def evenly_spaced(n, num):
    """Up to `num` indices of 0..n-1, evenly spaced, first and last included."""
    # Choice (not in the paper): figures draw evenly spaced queries / images, so that they do not
    # show only the first identity
    return np.unique(np.linspace(0, n - 1, num).round().astype(int))


def rank_figure(dist, ds, num, top=10, height=128, width=64, border=3):
    """A PIL image of `num` queries, one per row: the query (grey frame), then its first `top`
    gallery items in the ranking that is scored: green frame = true match, red = any other item.
    Junk and same-id-same-camera items are not drawn: the protocol removes them from the ranking.
    """
    from PIL import Image  # comes with torchvision
    dist = torch.as_tensor(dist)
    rows = []
    for q in evenly_spaced(len(ds.query), num):
        # Choice (not in the paper): the ranking that is scored, junk and same-id-same-camera items
        # left out — the figure then shows what CMC and mAP count
        order, hits = valid_ranking(dist[q].double().cpu().numpy(), ds.query.pids[q],
                                    ds.query.cams[q], ds.gallery.pids, ds.gallery.cams)
        rows.append((q, order[:top], hits[:top]))
    # every image of the figure decoded in one go, [n, H, W, 3] for PIL
    paths = [p for q, order, _ in rows
             for p in [ds.query.paths[q]] + [ds.gallery.paths[g] for g in order]]
    images = data.load_images(paths, height, width, desc="--show-ranks").permute(0, 2, 3, 1).numpy()
    tile_w, tile_h, gap = width + 2 * border, height + 2 * border, 12  # gap: query | results
    canvas = Image.new("RGB", (gap + (top + 1) * (tile_w + 2), len(rows) * (tile_h + 4)), "white")
    k = 0  # index into `images`, in the order of `paths`
    for row, (q, order, hits) in enumerate(rows):
        frames = [(128, 128, 128)] + [(0, 170, 0) if h else (220, 0, 0) for h in hits]
        for col, colour in enumerate(frames):
            tile = Image.new("RGB", (tile_w, tile_h), colour)  # the frame is the tile's background
            tile.paste(Image.fromarray(images[k]), (border, border))
            canvas.paste(tile, (col * (tile_w + 2) + (gap if col else 0), row * (tile_h + 4)))
            k += 1
    return canvas


def check_image_path(path):
    """Refuse, before any work, an --out image that could not be written: a folder, a name
    without an image extension PIL writes, or a folder that cannot be written to."""
    from PIL import Image  # comes with torchvision
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a folder; expected the image file to write, e.g. "
                        f"{os.path.join(path, 'figure.png')}")
    ext = os.path.splitext(path)[1].lower()
    try:  # a 1x1 colour image in that format, in memory: what PIL can write, it writes here
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=Image.registered_extensions()[ext])
    except (KeyError, OSError, ValueError):
        raise UserError(f"--out {path}: expected an image file name with an extension PIL "
                        f"writes in colour (.png, .jpg, .bmp, ...), got "
                        f"{repr(ext) if ext else 'none'}") from None
    check_out_folder(os.path.dirname(os.path.abspath(path)), path)


def check_out_folder(folder, out=None):
    """Create --out's `folder` and prove it writable, before any work; otherwise one UserError.
    out: the --out file that goes into the folder (None: --out is the folder itself)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # created and removed: the folder takes files
            pass
    except OSError as e:
        where = "there" if out is None else f"into its folder {folder}"
        reason = "a file, not a folder" if os.path.isfile(folder) else e.strerror
        raise UserError(f"--out {out or folder}: cannot write {where} ({reason}); give a folder "
                        "you can write to") from None


def save_image(image, path):
    """Write a PIL image whole or not at all: into a hidden file beside `path`, renamed to `path`
    once complete, so a full disk leaves no partial image; a failure is a UserError naming the
    file."""
    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f".partial-{os.getpid()}-{name}")  # keeps the extension
    try:
        os.makedirs(folder, exist_ok=True)
        image.save(partial)
        os.replace(partial, path)
    except (OSError, ValueError) as e:  # ValueError: a format that cannot hold the image
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise UserError(f"cannot write {path} ({getattr(e, 'strerror', None) or e})") from None


def heat_overlay(images, maps, alpha=0.5):
    """Attention maps drawn over their images, as in the papers' figures (AEA Figs. 3 and 5,
    AAA-Net Fig. 4): uint8 [B, 3, H, W] images, float [B, h, w] maps -> uint8 [B, 3, H, W].

    Each map is resized bilinearly to H x W and min-max scaled to 0..1 per image (only its shape
    matters in a figure), coloured blue (low) -> green -> red (high), and blended with the image.
    """
    B, _, H, W = images.shape
    m = F.interpolate(maps[:, None].float().cpu(), size=(H, W), mode="bilinear",
                      align_corners=False)  # [B, 1, H, W]
    lo = m.amin(dim=(2, 3), keepdim=True)
    m = (m - lo) / (m.amax(dim=(2, 3), keepdim=True) - lo).clamp_min(1e-12)
    # a three-stop colour ramp (blue, green, red), piecewise linear in m
    red = (2 * m - 1).clamp(0, 1)
    blue = (1 - 2 * m).clamp(0, 1)
    green = 1 - red - blue
    heat = torch.cat([red, green, blue], dim=1) * 255                     # [B, 3, H, W]
    return ((1 - alpha) * images.float().cpu() + alpha * heat).round().to(torch.uint8)


def save_image_grid(path, rows, gap=2):
    """Write a PNG of image rows: rows[r][c] is a uint8 [3, H, W] tensor, all the same size."""
    from PIL import Image  # comes with torchvision
    H, W = rows[0][0].shape[1:]
    canvas = Image.new("RGB", (max(len(r) for r in rows) * (W + gap), len(rows) * (H + gap)),
                       "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            canvas.paste(Image.fromarray(img.permute(1, 2, 0).cpu().numpy()),
                         (c * (W + gap), r * (H + gap)))
    save_image(canvas, path)


def figure_inputs(argv, prog, description, paper, default_out, several=False):
    """What the papers' figure commands share (AEA Figs. 3 and 5, AAA-Net Fig. 4): the flags, the
    checkpoints (refused unless `paper` wrote them), and --num images evenly spaced over a split,
    decoded at the checkpoints' input size. Returns (args, device, [(path, ckpt)], uint8 images
    [n, 3, H, W]); args.out is the PNG to write."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--checkpoint", nargs="+" if several else None, required=True,
                   help="checkpoints of one run (e.g. its epoch_N.pt)" if several else None)
    p.add_argument("--root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--split", default="query", choices=["train", "query", "gallery"])
    p.add_argument("--num", type=int, default=8, help="images, evenly spaced over the split")
    p.add_argument("--out", default=default_out, help="the PNG to write")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    check_image_path(args.out)
    paths = args.checkpoint if several else [args.checkpoint]
    ckpts = [common.load_checkpoint(path) for path in paths]
    for path, ckpt in zip(paths, ckpts):
        common.check_checkpoint(ckpt, path, paper)
    cfg = ckpts[0]["config"]
    if len({(c["config"]["height"], c["config"]["width"]) for c in ckpts}) > 1:
        raise UserError("the checkpoints were trained at different input sizes; give checkpoints "
                        "of one size")
    ds = data.load_dataset(args.root or cfg["root"], args.dataset or cfg["dataset"], verbose=False)
    split = getattr(ds, args.split)
    images = data.load_images([split.paths[i] for i in evenly_spaced(len(split), args.num)],
                              cfg["height"], cfg["width"], desc="figure")
    return args, common.pick_device(args.device), list(zip(paths, ckpts)), images


# The valid range of each numeric flag (`common.check_limits` names the first one outside it).
# height and width: at least the paper configs' minimum (aea.py's LIMITS); seed: what numpy takes.
LIMITS = dict(seed="[0, 4294967295]", batch_size="[1, inf)", height="[32, inf)",
              width="[16, inf)", show_ranks="[0, inf)", xqda_lambda="[0, inf)",
              xqda_dims="[0, inf)", kissme_dims="[1, inf)")


def parse_args(argv):
    """The evaluation flags, checked."""
    p = argparse.ArgumentParser(description="Evaluate a re-ID model: CMC rank-1/5/10, mAP and "
                                "mAP (official) per distance metric.")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a checkpoint from common.save_checkpoint "
                       "(paper: backbone, aea, aaanet); scored in the precision it trained with")
    model.add_argument("--weights", help="instead of --checkpoint: a plain ResNet-50 with "
                       "imagenet, none or PATH weights")
    p.add_argument("--root", required=True, help="dataset folder in the Market-1501 layout")
    p.add_argument("--dataset", default="market1501",
                   help="market1501, duke, cuhk03-labeled, cuhk03-detected, synthetic")
    p.add_argument("--metric", nargs="+", default=["euclidean"],
                   choices=["euclidean", "cosine", "xqda", "kissme"])
    p.add_argument("--skip-bad-files", action="store_true",
                   help="warn about and drop images whose name does not parse or that do not "
                   "decode")
    p.add_argument("--flip", action="store_true",
                   help="average the features of each image and its mirror")
    p.add_argument("--show-ranks", type=int, default=0, metavar="N",
                   help="write a PNG of N queries and their top 10")
    p.add_argument("--out", help="folder for the --show-ranks PNGs")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seeds the random weights of --weights none")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--height", type=int, default=256,
                   help="input height with --weights (a checkpoint has its own)")
    p.add_argument("--width", type=int, default=128,
                   help="input width with --weights (a checkpoint has its own)")
    p.add_argument("--last-stride", type=int, default=2, choices=[1, 2],
                   help="layer4 stride with --weights")
    p.add_argument("--xqda-lambda", type=float, default=0.001,
                   help="XQDA regulariser on Sigma_I (XQDA.m default)")
    p.add_argument("--xqda-dims", type=int, default=0,
                   help="XQDA subspace cap; 0 = all with eigenvalue > 1")
    p.add_argument("--kissme-dims", type=int, default=200,
                   help="PCA dims before KISSME (IDE baseline: 200)")
    args = p.parse_args(argv)
    common.check_limits(args, LIMITS)
    if args.show_ranks and not args.out:
        raise UserError("--show-ranks needs --out DIR, the folder to write the PNGs into")
    return args


def evaluate_model(model, ds, size, device, metrics=("euclidean",), images=None, batch_size=256,
                   flip=False, xqda_lambda=0.001, xqda_dims=0, kissme_dims=200, show_ranks=0,
                   figures=None, precision="auto"):
    """Score `model` on `ds` (a data.ReIDData) -> {metric: rank_metrics dict}, in `metrics` order,
    computed by `fast_rank_metrics`.

    size: the model's input (height, width). images: a dict {split name: uint8 tensor} that is
    filled on first use and can be passed again, so a training run that evaluates every few
    epochs decodes each split once. The training split is decoded and its features extracted
    only when XQDA or KISSME is asked for (both are fitted on training features, as in the IDE
    baseline scripts). precision: the autocast of `extract_features`. show_ranks > 0: `figures`,
    a dict, gets {metric: `rank_figure` of show_ranks queries}, drawn while the metric's distances
    exist; the caller writes them.
    """
    images = {} if images is None else images

    def features(name):  # decode once (kept in `images`), then uint8 batches go to the device
        if name not in images:
            images[name] = data.load_images(getattr(ds, name).paths, *size, desc=name)
        return extract_features(model, images[name].split(batch_size), device, flip=flip,
                                precision=precision)

    qf, gf = features("query"), features("gallery")
    if {"xqda", "kissme"} & set(metrics):
        tf = features("train")
    # one distance matrix at a time, scored, drawn if asked, then dropped
    results = {}
    for metric in metrics:
        if metric == "xqda":
            xqda = XQDA(xqda_lambda, xqda_dims).fit(tf, ds.train.pids, ds.train.cams)
            dist = xqda.distance(qf, gf)
        elif metric == "kissme":
            dist = KISSME(kissme_dims).fit(tf, ds.train.pids, ds.train.cams).distance(qf, gf)
        else:
            dist = pairwise_distances(qf, gf, metric)
        results[metric] = fast_rank_metrics(dist, ds.query.pids, ds.gallery.pids, ds.query.cams,
                                            ds.gallery.cams)
        if show_ranks:
            figures[metric] = rank_figure(dist, ds, show_ranks)
    return results


def run(argv=None):
    """The CLI's work; returns {metric: rank_metrics dict}."""
    args = parse_args(argv)
    if args.show_ranks:
        check_out_folder(args.out)  # before any work, not after the whole evaluation
    device = common.pick_device(args.device)
    # --weights none draws its weights: the same seed, the same network
    common.seed_everything(args.seed)
    # the dataset first: a wrong --root fails before any model is built
    ds = data.load_dataset(args.root, args.dataset, skip_bad_files=args.skip_bad_files)
    check_true_matches(ds)
    # the input size and precision come with the model: a checkpoint's config, or --height/--width
    # and "auto" for --weights
    model, size, precision = load_model(args)
    model.to(device)
    figures = {}
    results = evaluate_model(model, ds, size, device, args.metric, batch_size=args.batch_size,
                             flip=args.flip, xqda_lambda=args.xqda_lambda, xqda_dims=args.xqda_dims,
                             kissme_dims=args.kissme_dims, show_ranks=args.show_ranks,
                             figures=figures, precision=precision)
    # the table first: a figure that cannot be written does not cost the numbers
    print(format_table(results))
    for metric, figure in figures.items():
        path = os.path.join(args.out, f"ranks_{metric}.png")
        save_image(figure, path)
        print(f"wrote {path}")
    return results


def main(argv=None):
    """`python evaluate.py [flags]`: `run`, a UserError printed as one line with exit status 2."""
    return common.exit_on_user_error(run, argv)


if __name__ == "__main__":
    main()

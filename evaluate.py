"""
Re-ID evaluation: the test features of a model, their distances, the Market-1501 ranking metrics,
the two metric learners AAA-Net's tables use (XQDA, KISSME) and k-reciprocal re-ranking.
`evaluate_model` scores a model with them (the paper modules call it while they train), and the
command line prints one table. What users run around the evaluation (extract, search, the
ranking figure, curves, the papers' figures, compare over seeds) is in tools.py.

  python evaluate.py --checkpoint runs/aea/last.pt --root data/market --dataset market1501 \
                     --metric euclidean xqda kissme [--flip] [--rerank]
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
Re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR
2017, Eq. (3)-(13), as their python-version/re_ranking_ranklist.py computes it) -> `re_ranking`

Choices where the papers and the official code are silent or differ (each marked
"Choice (not in the paper)" at its line):
  - A query without a true match is skipped and counted (num_skipped; num_queries counts the
    queries averaged over), where evaluation.m scores it AP 0 (`rank_metrics`).
  - XQDA/KISSME pairs: all ordered pairs of training images from two different cameras; same id
    -> intra-personal / similar, different id -> extra-personal / dissimilar. Covariances in closed
    form over ALL such pairs (exact), instead of Liao's one-camera-vs-other split or the IDE
    scripts' random pair samples (`pair_covariances`).
  - XQDA's e are the generalised eigenvalues of Sigma_E w = e Sigma_I w (Cholesky + eigh), not
    the singular values of Sigma_I^-1 Sigma_E that XQDA.m takes, so the number of kept dimensions
    (e > 1) can differ from XQDA.m's (`XQDA.fit`).
  - KISSME PCA dims capped at N_train - #ids (the rank of the same-id differences), so that
    Sigma_S can be inverted (`KISSME.fit`).
  - Re-ranking follows the official Python code where it and the paper differ: d is the squared
    distance over its column's maximum, N(i, k) holds k + 1 images (i itself among them), k1/2 is
    rounded half to even, R(q, k1/2) joins R* when more than 2/3 of it is shared (Eq. (5): at
    least 2/3), and each row of V is divided by its sum (`re_ranking`).
Engineering decisions, each with a plain comment at its line: XQDA and KISSME learn in the span of
the training images when there are fewer images than dimensions (exact; `_reduce_to_span`); their
distances stay float64, Euclidean and cosine are float32 like the features
(`_quadratic_distance`); a paper checkpoint is re-scored in the precision its run trained with
(`trained_precision`).

Imports: common and data. The one upward edge: `load_model` imports aea.py or aaanet.py at run
time when a checkpoint holds one of their networks, to rebuild it with that module's
`model_from_checkpoint` (`python evaluate.py --checkpoint C`). Nothing here imports tools.py or
synthetic.py.
"""
import argparse
import functools
import importlib
import sys

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
    q = F.normalize(qf, dim=1)
    g = F.normalize(gf, dim=1)
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
    ranked item: slow at Market-1501's size (3368 x 15913), where `fast_rank_metrics` is the one
    to use.
    Returns {"cmc": np.ndarray [max_rank], "mAP", "mAP_official": float, "num_queries",
    "num_skipped": int}.
    """
    dist, q_pids, g_pids, q_cams, g_cams = (
        x.cpu().numpy() for x in _ranking_inputs(dist, q_pids, g_pids, q_cams, g_cams))
    if not np.isfinite(dist).all():
        raise UserError("rank_metrics: the distance matrix holds NaN or infinite values")
    Q = len(dist)
    # sums over the scored queries
    cmc_sum = np.zeros(max_rank)
    ap_sum = 0.0
    ap_official_sum = 0.0
    num_queries = 0
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
        cmc = np.zeros(max_rank)
        hits = 0
        ap = 0.0
        ap_official = 0.0
        old_recall = 0.0
        old_precision = 1.0
        for j, match in enumerate(is_match):
            if match:
                hits += 1
                if hits == 1:
                    cmc[j:] = 1  # the first true match at position j: a hit at every rank > j
            recall = hits / n
            precision = hits / (j + 1)
            # AP: the precision at each true match, averaged over the n
            if match:
                ap += precision / n
            # AP (official): the trapezoid between the previous position and this one
            ap_official += (recall - old_recall) * (old_precision + precision) / 2
            old_recall = recall
            old_precision = precision
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
    d = np.zeros(len(ds.gallery.pids))
    if not any(valid_ranking(d, pid, cam, ds.gallery.pids, ds.gallery.cams)[1].any()
               for pid, cam in zip(ds.query.pids, ds.query.cams)):
        raise UserError(f"{ds.root}: {no_true_match(len(ds.query.pids))}")


def check_training_pairs(ds, metrics):
    """Refuse, before any training or feature extraction, a training split that XQDA or KISSME
    (if in `metrics`) cannot be fitted on: `pair_covariances` needs a pair of images of one
    identity in two cameras and one of two identities in two cameras. The pairs are counted from
    the group sizes: ordered pairs in two cameras = N^2 - sum_c N_c^2, the same identity's =
    sum_y (N_y^2 - sum_c N_yc^2)."""
    if not {"xqda", "kissme"} & set(metrics):
        return
    pids = np.asarray(ds.train.pids)
    cams = np.asarray(ds.train.cams)

    def squared_sizes(*keys):  # sum over the groups of equal keys of (group size)^2
        _, sizes = np.unique(np.stack(keys), axis=1, return_counts=True)
        return int((sizes.astype(np.int64) ** 2).sum())
    all_pairs = len(pids) ** 2 - squared_sizes(cams)
    same_id = squared_sizes(pids) - squared_sizes(pids, cams)
    if same_id == 0 or all_pairs - same_id == 0:
        raise UserError(f"{ds.root}: XQDA and KISSME need training images of one identity in two "
                        "cameras and of two identities in two cameras; the training split has "
                        f"{same_id} and {all_pairs - same_id} such pairs (use the euclidean "
                        "metric only)")


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
    ap_sum = torch.zeros((), **f64)
    ap_official_sum = torch.zeros((), **f64)
    num_queries = 0
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
    # the slots of the candidate's bucket's matches: first .. end-1
    first = m_start[c_b, c_u]
    end = first + m_count[c_b, c_u]
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
    deg_all = (N - n_c).double()
    deg_S = (n_y - n_yc).double()
    # sum over P of the outer products of differences, from deg_i and the cross term
    scatter_all = 2 * (x.T @ (deg_all[:, None] * x) - (torch.outer(s, s) - s_c.T @ s_c))
    scatter_S = 2 * (x.T @ (deg_S[:, None] * x) - (s_y.T @ s_y - s_yc.T @ s_yc))
    pairs_S = deg_S.sum()
    pairs_D = deg_all.sum() - pairs_S
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

    KISSME learns in the span too, for speed: exact for it as well (its centred features and pair
    differences lie in the span), and N x N eigenproblems replace D x D ones.
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
    # kept in float64: the fit was float64, and the ranking metrics rank float64 exactly, so no
    # rounding to float32 reorders near-equal distances
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
        self.lam = lam
        self.qda_dims = qda_dims

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
        W = w[:, :dims]
        self.eigenvalues = e
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
        """Steps 0-4 of the class docstring on training features [N, D] (numpy or torch), their
        pids and cams, in float64 -> self. Sets what `distance` reads: self.mean [D], the mean of
        the L2-normalised features; self.P [D, dims], the principal directions of their
        covariance with the `dims` largest eigenvalues, largest first; self.M [dims, dims],
        Sigma_S^-1 - Sigma_D^-1 (`pair_covariances` of the PCA coordinates) made symmetric,
        (M + M^T) / 2, then repaired (`psd_repair`). With N < D the PCA runs on the coordinates
        y = x Q in the span of the features (`_reduce_to_span`) and P is mapped back by Q: the
        same P, faster.
        Choice (not in the paper): dims = min(pca_dims, D, N - #ids): N - #ids is the rank of
        the same-id differences, so more would leave Sigma_S singular. dims < 1, or a Sigma_S
        whose Cholesky factorisation fails, is a UserError saying so."""
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
# Re-ranking (Zhong et al., CVPR 2017)


# Elements per chunk of rows of `re_ranking`'s temporaries, the (Q+G) x (Q+G) matrix's above all:
# 16 MB in float32, so that the few passes over a chunk (square, divide, top-k) stay near the CPU's
# caches; the whole matrix is never held.
_RERANK_CHUNK_ELEMENTS = 1 << 22
# (query, column, gallery item) triples per chunk of queries in `re_ranking`'s Jaccard sums
# (about 70 bytes of temporaries each: under 300 MB).
_RERANK_TRIPLES = 1 << 22


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking: Zhong et al., "Re-ranking Person Re-identification with
    k-reciprocal Encoding", CVPR 2017, Sec. 3, computed as the authors' official Python version
    computes it (github.com/zhunzhong07/person-re-ranking, python-version/re_ranking_ranklist.py;
    tests/test_rerank.py checks the two equal on random problems). The paper's k1 = 20, k2 = 6,
    lambda = 0.3 are the defaults.

    Euclidean distances q_g [Q, G], q_q [Q, Q], g_g [G, G] (numpy arrays or torch tensors, CPU or
    CUDA) -> d* [Q, G], a float32 tensor on q_g's device. All N = Q + G images are ranked against
    all, queries and gallery together, by the official code's original distance
        d(i, j) = M[j, i]^2 / max_m M[m, i]^2,   M = [[q_q, q_g], [q_g^T, g_g]]
    (M squared, each column divided by its maximum, then transposed: row i of d is column i of M,
    taken literally, M need not be symmetric). Then, as the paper names the steps:
      N(i, k)    the k + 1 nearest of i by d(i, .), i itself first                    Eq. (3)
      R(i, k)    = {j in N(i, k) : i in N(j, k)}, the k-reciprocal neighbours         Eq. (4)
      R*(i, k1)  = R(i, k1) + R(q, k1/2) for every q in R(i, k1) with                 Eq. (5)
                   |R(q, k1/2) & R(i, k1)| > 2/3 |R(q, k1/2)|  (k1/2 rounded half to even)
      V[i, j]    = exp(-d(i, j)) for j in R*(i, k1), else 0, each row over its sum    Eq. (8)
      V[i]      <- the mean of V[j] over the k2 nearest j of i (skipped when k2 = 1)  Eq. (12)
      s(i, j)    = sum_k min(V[i, k], V[j, k]), the weighted |R*(i) & R*(j)|          Eq. (9)
      d_J(i, j)  = 1 - s / (2 - s): Eq. (11), whose sum_k max(V[i, k], V[j, k]) is 2 - s
                   as every row of V sums to 1
      d*(i, j)   = (1 - lambda) d_J(i, j) + lambda d(i, j), query i, gallery j         Eq. (13)
    In bounded memory (chunks of rows, never the whole (Q+G) x (Q+G) matrix at once):
    only the k1 + 1 (and k2) nearest of each row are kept, found by torch.topk over chunks of
    rows; V is sparse, a list of its non-zeros; the sums s run over an inverted index of V's
    columns, a chunk of queries at a time. No N x N matrix is ever allocated. Exactly equal
    distances may put another of them among the k nearest than numpy's argsort does (random
    problems have no ties).
    """
    q_q, q_g, g_g = _rerank_inputs(q_g_dist, q_q_dist, g_g_dist)
    Q, G = q_g.shape
    N = Q + G
    if k1 < 1 or k2 < 1:
        raise UserError(f"re_ranking needs k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}")
    # N(i, k) for every k used below (k1 + 1 and k2 columns), and each row's max_m M[m, i]^2.
    # Choice (not in the paper): the official code's d (M squared, over its column's maximum) in
    # place of the paper's d of Eq. (1), and its N(i, k) of k + 1 images, i itself among them:
    # the numbers are then the official code's
    rank, scale = _initial_ranking(q_q, q_g, g_g, min(max(k1 + 1, k2), N))
    # R(i, k1) and R(q, k1/2), Eq. (4), as masks over the first columns of rank.
    # Choice (not in the paper): k1/2 rounded half to even (20 -> 10, 5 -> 2), as the official
    # code's np.around does, so that both give the same R*
    half = int(np.around(k1 / 2))
    in_R = _k_reciprocal(rank, k1)
    in_R_half = _k_reciprocal(rank, half)
    # R*(i, k1), Eq. (5): V's non-zeros (i, j), by row i
    i, j = _expanded_sets(rank, in_R, in_R_half, k1, half)
    # V, Eq. (8): the Gaussian kernel exp(-d(i, j)) on R*(i, k1), d(i, j) = M[j, i]^2 / scale_i.
    # Choice (not in the paper): each row divided by its sum, as the official code does; that
    # makes sum_k max = 2 - s in Eq. (11)
    w = torch.exp(-(_squared_at(q_q, q_g, g_g, j, i) / scale[i]))
    v = w / torch.zeros(N, device=w.device).index_add_(0, i, w)[i]
    # local query expansion, Eq. (12): over the k2 nearest, the image itself among them
    if k2 != 1:
        i, j, v = _query_expansion(i, j, v, rank[:, :k2], N)
    # the Jaccard distance, Eq. (9)-(11), and the final distance, Eq. (13)
    return _jaccard_final(i, j, v, q_g, scale, lambda_value)


def _rerank_inputs(q_g_dist, q_q_dist, g_g_dist):
    """`re_ranking`'s three matrices, checked, as tensors on q_g_dist's device in one dtype (the
    one numpy's concatenation gives them; integers become float64, exact for the squares of
    integers below 2^26); no copy for tensors already there."""
    q_g = torch.as_tensor(q_g_dist)
    q_q, g_g = (torch.as_tensor(x).to(q_g.device) for x in (q_q_dist, g_g_dist))
    if q_g.ndim != 2 or q_q.shape != (len(q_g),) * 2 or g_g.shape != (q_g.shape[1],) * 2:
        raise UserError(f"re_ranking needs distances [Q, G], [Q, Q], [G, G], got shapes "
                        f"{tuple(q_g.shape)}, {tuple(q_q.shape)}, {tuple(g_g.shape)}")
    dtype = torch.promote_types(torch.promote_types(q_g.dtype, q_q.dtype), g_g.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    return q_q.to(dtype), q_g.to(dtype), g_g.to(dtype)


def _squared_rows(q_q, q_g, g_g, a, b):
    """Rows a..b-1 of (M^2)^T, float32 [b - a, N]: row i is column i of M = [[q_q, q_g],
    [q_g^T, g_g]], squared in the inputs' dtype and then rounded to float32, in the official
    order. a..b lies among the queries (b <= Q) or among the gallery items (a >= Q)."""
    Q = len(q_q)
    if b <= Q:  # columns a..b-1 of M: of q_q above, of q_g^T below
        rows = torch.cat([q_q[:, a:b].T, q_g[a:b]], dim=1)
    else:       # columns Q + (a-Q..b-Q-1) of M: of q_g above, of g_g below
        rows = torch.cat([q_g[:, a - Q:b - Q].T, g_g[:, a - Q:b - Q].T], dim=1)
    return rows.square_().float()


def _squared_at(q_q, q_g, g_g, r, c):
    """M[r, c]^2 for index tensors r, c of one shape, float32 (squared in the inputs' dtype)."""
    Q = len(q_q)
    out = torch.empty(r.shape, dtype=q_g.dtype, device=r.device)
    r_q, c_q = r < Q, c < Q
    # the four blocks of M; the lower left one is q_g^T
    for m, block, row, col in ((r_q & c_q, q_q, r, c), (r_q & ~c_q, q_g, r, c - Q),
                               (~r_q & c_q, q_g, c, r - Q), (~r_q & ~c_q, g_g, r - Q, c - Q)):
        out[m] = block[row[m], col[m]]
    return out.square_().float()


def _initial_ranking(q_q, q_g, g_g, K):
    """(rank [N, K] long, scale [N] float32): the K nearest of each image i by d(i, .), nearest
    first (the columns of the official code's full argsort that it reads), and
    scale_i = max_m M[m, i]^2. torch.topk over chunks of rows of d, never the whole matrix."""
    Q, G = q_g.shape
    N = Q + G
    dev = q_g.device
    rank = torch.empty(N, K, dtype=torch.long, device=dev)
    scale = torch.empty(N, device=dev)
    rows = max(1, _RERANK_CHUNK_ELEMENTS // N)
    # query rows and gallery rows apart: their columns of M come from different blocks
    for lo, hi in ((0, Q), (Q, N)):
        for a in range(lo, hi, rows):
            b = min(a + rows, hi)
            squared = _squared_rows(q_q, q_g, g_g, a, b)  # [b - a, N]
            scale[a:b] = squared.amax(1)
            # d(i, .) = M[., i]^2 / scale_i, divided as the official code divides (float32)
            d = squared.div_(scale[a:b, None])
            rank[a:b] = torch.topk(d, K, dim=1, largest=False).indices
    return rank, scale


def _k_reciprocal(rank, k):
    """R(i, k), Eq. (4), as a mask [N, k + 1] over N(i, k) = rank[:, :k + 1]: True where
    rank[i, a] has i among its own k + 1 nearest."""
    forward = rank[:, :k + 1]  # N(i, k), [N, k + 1]
    N = len(rank)
    dev = rank.device
    mask = torch.empty(forward.shape, dtype=torch.bool, device=dev)
    rows = max(1, _RERANK_CHUNK_ELEMENTS // forward.shape[1] ** 2)
    for a in range(0, N, rows):
        f = forward[a:a + rows]
        # N(j, k) of every j in N(i, k): [B, k + 1, k + 1]; is i among them?
        backward = forward[f]
        i = torch.arange(a, a + len(f), device=dev)
        mask[a:a + rows] = (backward == i[:, None, None]).any(2)
    return mask


def _expanded_sets(rank, in_R, in_R_half, k1, half):
    """R*(i, k1), Eq. (5), listed: (i, j) for every j in R*(i, k1), by row i, ascending j."""
    N = len(rank)
    forward = rank[:, :k1 + 1]        # N(i, k1); R(i, k1) where in_R
    half_forward = rank[:, :half + 1]  # N(q, k1/2); R(q, k1/2) where in_R_half
    K1 = forward.shape[1]
    H = half_forward.shape[1]
    rows = max(1, _RERANK_CHUNK_ELEMENTS // (K1 * K1 * H))
    out_i = []
    out_j = []
    for a in range(0, N, rows):
        f, in_f = forward[a:a + rows], in_R[a:a + rows]  # [B, K1]
        # every candidate q in N(i, k1) (it counts only where in R(i, k1)) and R(q, k1/2)
        q_forward, in_q = half_forward[f], in_R_half[f]  # [B, K1, H]
        # |R(q, k1/2) & R(i, k1)|: the members of R(q, k1/2) equal to a member of R(i, k1)
        shared = ((q_forward[..., None] == f[:, None, None, :]) & in_f[:, None, None, :]).any(3)
        shared = (shared & in_q).sum(2)
        # Choice (not in the paper): more than 2/3 (Eq. (5) says at least 2/3), compared in
        # float64 as the official code's `> 2./3*len(...)`, so that both add the same sets
        accept = in_f & (shared > 2.0 / 3 * in_q.sum(2).double())
        # R(i, k1) and every accepted R(q, k1/2), N marking an empty slot: [B, K1 + K1 * H]
        members = torch.cat([f.masked_fill(~in_f, N),
                             q_forward.masked_fill(~(accept[..., None] & in_q), N).flatten(1)], 1)
        # each index once (the official np.unique): sorted, then every repeat emptied
        members = members.sort(dim=1).values
        members[:, 1:].masked_fill_(members[:, 1:] == members[:, :-1], N)
        b, slot = (members < N).nonzero(as_tuple=True)
        out_i.append(b + a)
        out_j.append(members[b, slot])
    return torch.cat(out_i), torch.cat(out_j)


def _query_expansion(i, j, v, nearest, N):
    """Local query expansion, Eq. (12), on V listed as (i, j, v) by row: V'[p] = the mean of
    V[g] over the g in nearest[p] ([N, k2]), listed the same way (by row, ascending column)."""
    dev = i.device
    k2 = nearest.shape[1]
    count = torch.bincount(i, minlength=N)
    start = count.cumsum(0) - count  # row g's entries: start[g] .. start[g] + count[g] - 1
    # one block per pair (p, g = nearest[p, t]), numbered p * k2 + t: row g's entries
    g = nearest.reshape(-1)
    length = count[g]
    block = torch.repeat_interleave(torch.arange(len(g), device=dev), length)
    offset = torch.arange(len(block), device=dev) - (length.cumsum(0) - length)[block]
    src = start[g][block] + offset
    # the k2 rows' values summed per (p, column), then divided by k2
    key, where = torch.unique((block // k2) * N + j[src], return_inverse=True)
    v_qe = torch.zeros(len(key), dtype=v.dtype, device=dev).index_add_(0, where, v[src]) / k2
    return key // N, key % N, v_qe


def _jaccard_final(i, j, v, q_g, scale, lambda_value):
    """Eq. (9), (11) and (13) for every query and gallery item, from V listed as (i, j, v) by
    row: d* [Q, G] float32, a chunk of queries at a time.

    s(p, g) = sum over the columns k of row p of min(V[p, k], V[g, k]): for each non-zero
    V[p, k], the gallery rows g with V[g, k] != 0 come from the inverted index of column k (the
    official invIndex, kept to the gallery rows: d* reads no other)."""
    Q, G = q_g.shape
    N = Q + G
    dev = q_g.device
    # the inverted index: gallery rows' entries sorted by column; column k's run starts at
    # col_start[k] and holds col_count[k] entries
    in_gallery = i >= Q
    by_column = torch.argsort(j[in_gallery], stable=True)
    g_i, g_j, g_v = (x[in_gallery][by_column] for x in (i, j, v))
    col_count = torch.bincount(g_j, minlength=N)
    col_start = col_count.cumsum(0) - col_count
    # the query rows' entries: the first ones, as the list is by row
    n_q = int((i < Q).sum())
    q_i, q_j, q_v = i[:n_q], j[:n_q], v[:n_q]
    # triples (p, k, g) per entry and per query; chunks of queries hold at most _RERANK_TRIPLES
    # of them (at least one query) and _RERANK_CHUNK_ELEMENTS elements of [rows, G]
    per_entry = col_count[q_j]
    per_query = torch.zeros(Q, dtype=torch.long, device=dev).index_add_(0, q_i, per_entry)
    cum_triples = torch.cat([per_query.new_zeros(1), per_query.cumsum(0)]).cpu()
    entry_end = torch.bincount(q_i, minlength=Q).cumsum(0).cpu()
    max_rows = max(1, _RERANK_CHUNK_ELEMENTS // max(G, 1))
    final = torch.empty(Q, G, device=dev)
    a = 0
    while a < Q:
        fits = int(torch.searchsorted(cum_triples, cum_triples[a] + _RERANK_TRIPLES, right=True))
        b = min(max(fits - 1, a + 1), a + max_rows, Q)
        # the query rows' entries of queries a..b-1: e0 .. e1-1
        e0 = int(entry_end[a - 1]) if a else 0
        e1 = int(entry_end[b - 1])
        # one triple per (entry e = (p, k), gallery entry of column k)
        length = per_entry[e0:e1]
        e = torch.repeat_interleave(torch.arange(e1 - e0, device=dev), length)
        offset = torch.arange(len(e), device=dev) - (length.cumsum(0) - length)[e]
        e = e + e0
        at = col_start[q_j[e]] + offset
        # s(p, g) = sum_k min(V[p, k], V[g, k]), Eq. (9)
        s = torch.zeros((b - a) * G, device=dev)
        s.index_add_(0, (q_i[e] - a) * G + (g_i[at] - Q), torch.minimum(q_v[e], g_v[at]))
        s = s.view(b - a, G)
        # d_J, Eq. (11) with sum_k max = 2 - s
        d_J = 1 - s / (2 - s)
        # d(p, g) = M[Q + g, p]^2 / scale_p = q_g[p, g]^2 / scale_p
        d = q_g[a:b].square().float() / scale[a:b, None]
        # the final distance, Eq. (13)
        final[a:b] = d_J * (1 - lambda_value) + d * lambda_value
        a = b
    return final


# -----------------------------------------------------------------------------
# Scoring a model: the features of its splits, each metric's distances, the ranking metrics


def split_features(model, ds, size, device, splits, images=None, batch_size=256, flip=False,
                   precision="auto"):
    """{split name: features [N, D] on device} for each of `splits` ("query", "gallery", "train")
    of `ds` (a data.ReIDData), by `extract_features` at the model's input size (height, width).

    images: a dict {split name: uint8 tensor}, filled on first use, that a caller who scores often
    passes again (a training run evaluates every few epochs), so that each split is decoded once.
    """
    images = {} if images is None else images
    feats = {}
    for name in splits:
        if name not in images:
            images[name] = data.load_images(getattr(ds, name).paths, *size, desc=name)
        batches = images[name].split(batch_size)  # uint8 batches, sent to the device one by one
        feats[name] = extract_features(model, batches, device, flip=flip, precision=precision)
    return feats


def needed_splits(metrics):
    """The splits whose features `metrics` need: query and gallery, and the training split for
    XQDA or KISSME (both are fitted on training features, as in the IDE baseline scripts)."""
    if {"xqda", "kissme"} & set(metrics):
        return ("query", "gallery", "train")
    return ("query", "gallery")


def metric_distance(metric, feats, ds, xqda_lambda=0.001, xqda_dims=0, kissme_dims=200):
    """The distance of `metric` as a function (qf [Q, D], gf [G, D]) -> [Q, G]: euclidean and
    cosine are `pairwise_distances`; xqda and kissme are fitted here, on feats["train"] with the
    pids and cameras of ds.train."""
    if metric == "xqda":
        learner = XQDA(xqda_lambda, xqda_dims)
    elif metric == "kissme":
        learner = KISSME(kissme_dims)
    else:
        return functools.partial(pairwise_distances, metric=metric)
    return learner.fit(feats["train"], ds.train.pids, ds.train.cams).distance


def ranked_distances(metric, distance, feats, rerank=False):
    """{row name: query-gallery distances [Q, G]} of one metric's `distance`: the row `metric`,
    and with rerank the row "<metric> + re-ranking", `re_ranking` of the same metric's
    query-gallery, query-query and gallery-gallery distances."""
    qf = feats["query"]
    gf = feats["gallery"]
    rows = {metric: distance(qf, gf)}
    if rerank:
        rows[f"{metric} + re-ranking"] = re_ranking(rows[metric], distance(qf, qf),
                                                    distance(gf, gf))
    return rows


def score_distances(feats, ds, distances, rerank=False):
    """{row name: rank_metrics dict} by `fast_rank_metrics`, for distances = {metric: distance
    function} in their order, each followed by its re-ranked row when rerank is set."""
    results = {}
    for metric, distance in distances.items():
        # one metric's distance matrices at a time: scored, then dropped
        for name, dist in ranked_distances(metric, distance, feats, rerank).items():
            results[name] = fast_rank_metrics(dist, ds.query.pids, ds.gallery.pids,
                                              ds.query.cams, ds.gallery.cams)
    return results


def evaluate_model(model, ds, size, device, metrics=("euclidean",), images=None,
                   precision="auto", rerank=False):
    """Score `model` on `ds` (a data.ReIDData) -> {metric: rank_metrics dict}, in `metrics` order;
    rerank=True adds "<metric> + re-ranking" after each metric.

    size: the model's input (height, width). images: the dict of decoded splits that
    `split_features` fills, passed again by a training run so that each split is decoded once.
    precision: the autocast of `extract_features`. XQDA and KISSME keep their defaults (the
    command line's --xqda-lambda, --xqda-dims, --kissme-dims change them there).
    """
    feats = split_features(model, ds, size, device, needed_splits(metrics), images,
                           precision=precision)
    distances = {metric: metric_distance(metric, feats, ds) for metric in metrics}
    return score_distances(feats, ds, distances, rerank)


# -----------------------------------------------------------------------------
# The model to score: a checkpoint of either paper, or a plain ResNet-50


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
        # the one upward import (module docstring): only now, so that evaluating a backbone
        # checkpoint does not depend on the paper modules
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

    A checkpoint is re-scored in its run's training precision: the run's own evaluations used it,
    so an fp32 run is not re-scored in bf16 on a GPU (nor a bf16 run in fp32 on the CPU),
    whatever device evaluates it.
    """
    precision = ckpt["config"].get("precision", "auto")
    if precision != "auto":
        return precision
    return "bf16" if ckpt.get("device_type") == "cuda" else "fp32"


def model_on_device(args):
    """(model in eval() on its device, device, (height, width), precision) for the model flags;
    --weights none draws its weights from --seed: the same seed, the same network."""
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)
    model, size, precision = load_model(args)
    return model.to(device).eval(), device, size, precision


# -----------------------------------------------------------------------------
# Command line: a checkpoint (or a plain ResNet-50) on a dataset -> one table


# The valid range of each numeric flag (`common.check_limits` names the first one outside it).
# height and width: the paper configs' range (aea.py's LIMITS); seed: what numpy takes; a batch
# of 4096 images at 256x128 is 1.5 GiB of float32 input alone; XQDA's regulariser must be above
# 0 for Sigma_I + lambda I to have the Cholesky factor XQDA.fit takes.
LIMITS = dict(seed="[0, 4294967295]", batch_size="[1, 4096]", height="[32, 1024]",
              width="[16, 1024]", xqda_lambda="(0, inf)", xqda_dims="[0, inf)",
              kissme_dims="[1, inf)")


def check_args(args):  # the numeric flags `args` has, each within its LIMITS interval
    common.check_limits(args, {k: v for k, v in LIMITS.items() if k in vars(args)})


def add_model_args(p):
    """The flags that choose the model, shared by the evaluation and tools.py's extract, search
    and ranks: --checkpoint, or --weights with --height, --width, --last-stride (--seed for random
    weights); --device, --batch-size and --flip."""
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a checkpoint from common.save_checkpoint "
                       "(paper: backbone, aea, aaanet); scored in the precision it trained with")
    model.add_argument("--weights", help="instead of --checkpoint: a plain ResNet-50 with "
                       "imagenet, synthetic (python pretrain.py --arch resnet50), none or PATH "
                       "weights")
    p.add_argument("--height", type=int, default=256,
                   help="input height with --weights (a checkpoint has its own)")
    p.add_argument("--width", type=int, default=128,
                   help="input width with --weights (a checkpoint has its own)")
    p.add_argument("--last-stride", type=int, default=2, choices=[1, 2],
                   help="layer4 stride with --weights")
    p.add_argument("--seed", type=int, default=0, help="seeds the random weights of --weights none")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--flip", action="store_true",
                   help="average the features of each image and its mirror")
    return p


def add_dataset_args(p):
    """The flags that choose the dataset, shared by the evaluation and tools.py's ranks."""
    p.add_argument("--root", required=True, help="dataset folder (Market-1501 or folder layout)")
    p.add_argument("--dataset", default="market1501", help="market1501, duke, cuhk03-labeled, "
                   "cuhk03-detected, synthetic, folder (ROOT/<split>/<identity>/<image>)")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="warn about and drop images whose name does not parse or that do not "
                   "decode")
    return p


def parse_args(argv):
    """The evaluation flags, checked."""
    p = add_dataset_args(add_model_args(argparse.ArgumentParser(
        prog="evaluate.py", description="Evaluate a re-ID model: CMC rank-1/5/10, mAP and mAP "
        "(official) per distance metric. The tools around it (extract, search, ranks, plot, "
        "figure, compare): python tools.py -h.")))
    p.add_argument("--metric", nargs="+", default=["euclidean"],
                   choices=["euclidean", "cosine", "xqda", "kissme"])
    p.add_argument("--rerank", action="store_true", help="also each metric's distances after "
                   "k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3): a second row each")
    p.add_argument("--xqda-lambda", type=float, default=0.001,
                   help="XQDA regulariser on Sigma_I (XQDA.m default)")
    p.add_argument("--xqda-dims", type=int, default=0,
                   help="XQDA subspace cap; 0 = all with eigenvalue > 1")
    p.add_argument("--kissme-dims", type=int, default=200,
                   help="PCA dims before KISSME (IDE baseline: 200)")
    args = p.parse_args(argv)
    check_args(args)
    return args


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


def run(argv=None):
    """The evaluation: the flags -> the table printed; returns {metric: rank_metrics dict}."""
    args = parse_args(argv)
    # the dataset first: a wrong --root fails before any model is built
    ds = data.load_dataset(args.root, args.dataset, skip_bad_files=args.skip_bad_files)
    check_true_matches(ds)
    check_training_pairs(ds, args.metric)
    # the input size and precision come with the model: a checkpoint's config, or --height/--width
    # and "auto" for --weights
    model, device, size, precision = model_on_device(args)
    feats = split_features(model, ds, size, device, needed_splits(args.metric),
                           batch_size=args.batch_size, flip=args.flip, precision=precision)
    distances = {metric: metric_distance(metric, feats, ds, args.xqda_lambda, args.xqda_dims,
                                         args.kissme_dims)
                 for metric in args.metric}
    results = score_distances(feats, ds, distances, args.rerank)
    print(format_table(results))
    return results


def main(argv=None):
    """`python evaluate.py [flags]`: a UserError printed as one line `error: ...`, exit status 2."""
    common.stop_on_sigterm()  # SIGTERM ends it as Ctrl-C does: one line, no traceback
    argv = list(sys.argv[1:] if argv is None else argv)
    return common.exit_on_user_error(run, argv)


if __name__ == "__main__":
    main()

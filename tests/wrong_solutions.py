"""Plausible wrong solutions of the exercises (tests/exercises.py), one entry per mistake a student
makes: each must fail its exercise's check, so that a green check means a right answer.

Each entry: the exercise number, a short name, the mistake it models, and the source that takes
the place of the `raise NotImplementedError("Exercise N: ...")` line of a student copy (the
function's body after its docstring, or the exercise's block), written without the indentation of
its place. tests/test_wrong_solutions.py plants each into a student copy and runs the check.
"""
from typing import NamedTuple


class Wrong(NamedTuple):
    exercise: int
    name: str
    mistake: str
    body: str


WRONG = [
    # -------------------------------------------------------------------------
    # Exercise 1: data.parse_name
    Wrong(1, "camera-1-based", "the camera number returned as printed, c1 -> 1", """
m = _NAME.match(os.path.basename(filename))
if m is None or not 1 <= int(m.group(2)) <= MAX_CAMERA:
    raise UserError(f"{filename}: image name does not parse")
pid = int(m.group(1))
if pid > MAX_PID:
    raise UserError(f"{filename}: identity {pid} is too large")
return pid, int(m.group(2))
"""),
    Wrong(1, "camera-bound-off-by-one", "the last camera number c<MAX_CAMERA> refused", """
m = _NAME.match(os.path.basename(filename))
if m is None or not 1 <= int(m.group(2)) < MAX_CAMERA:
    raise UserError(f"{filename}: image name does not parse")
pid = int(m.group(1))
if pid > MAX_PID:
    raise UserError(f"{filename}: identity {pid} is too large")
return pid, int(m.group(2)) - 1
"""),
    Wrong(1, "pid-bound-off-by-one", "the largest identity MAX_PID refused", """
m = _NAME.match(os.path.basename(filename))
if m is None or not 1 <= int(m.group(2)) <= MAX_CAMERA:
    raise UserError(f"{filename}: image name does not parse")
pid = int(m.group(1))
if pid >= MAX_PID:
    raise UserError(f"{filename}: identity {pid} is too large")
return pid, int(m.group(2)) - 1
"""),
    Wrong(1, "whole-path", "the pattern matched against the whole path, not the file name", """
m = _NAME.match(filename)
if m is None or not 1 <= int(m.group(2)) <= MAX_CAMERA:
    raise UserError(f"{filename}: image name does not parse")
pid = int(m.group(1))
if pid > MAX_PID:
    raise UserError(f"{filename}: identity {pid} is too large")
return pid, int(m.group(2)) - 1
"""),

    # -------------------------------------------------------------------------
    # Exercise 2: data.PKSampler.__iter__ (no docstring: the body is the whole method)
    Wrong(2, "always-with-replacement", "the K images drawn with replacement even when n >= K", """
P = self.P
K = self.K
rng = np.random.default_rng([self.seed, self.epoch])
order = rng.permutation(len(self.index))
short = len(self) * P - len(order)
if short:
    last = order[len(order) - (P - short):]
    fill = rng.choice(np.setdiff1d(order, last), short, replace=False)
    order = np.concatenate([order, fill])
for group in order.reshape(len(self), P):
    batch = []
    for i in group:
        batch.extend(rng.choice(self.index[i], K).tolist())
    yield batch
"""),
    Wrong(2, "few-images-with-replacement", "an identity with n < K images: all K drawn with "
          "replacement, so some of its n images may be left out", """
P = self.P
K = self.K
rng = np.random.default_rng([self.seed, self.epoch])
order = rng.permutation(len(self.index))
short = len(self) * P - len(order)
if short:
    last = order[len(order) - (P - short):]
    fill = rng.choice(np.setdiff1d(order, last), short, replace=False)
    order = np.concatenate([order, fill])
for group in order.reshape(len(self), P):
    batch = []
    for i in group:
        idx = self.index[i]
        pick = rng.choice(idx, K, replace=len(idx) < K)
        batch.extend(pick.tolist())
    yield batch
"""),
    Wrong(2, "last-group-short", "the last group left with fewer than P identities", """
P = self.P
K = self.K
rng = np.random.default_rng([self.seed, self.epoch])
order = rng.permutation(len(self.index))
for start in range(0, len(order), P):
    batch = []
    for i in order[start:start + P]:
        idx = self.index[i]
        if len(idx) >= K:
            pick = rng.choice(idx, K, replace=False)
        else:
            pick = np.concatenate([rng.permutation(idx), rng.choice(idx, K - len(idx))])
        batch.extend(pick.tolist())
    yield batch
"""),
    Wrong(2, "fill-from-all", "the last group filled from every identity, its own included", """
P = self.P
K = self.K
rng = np.random.default_rng([self.seed, self.epoch])
order = rng.permutation(len(self.index))
short = len(self) * P - len(order)
if short:
    fill = rng.choice(order, short, replace=False)
    order = np.concatenate([order, fill])
for group in order.reshape(len(self), P):
    batch = []
    for i in group:
        idx = self.index[i]
        if len(idx) >= K:
            pick = rng.choice(idx, K, replace=False)
        else:
            pick = np.concatenate([rng.permutation(idx), rng.choice(idx, K - len(idx))])
        batch.extend(pick.tolist())
    yield batch
"""),
    Wrong(2, "fill-with-replacement", "the fill identities drawn with replacement: the last "
          "group can hold one twice when it is short by 2 or more", """
P = self.P
K = self.K
rng = np.random.default_rng([self.seed, self.epoch])
order = rng.permutation(len(self.index))
short = len(self) * P - len(order)
if short:
    last = order[len(order) - (P - short):]
    fill = rng.choice(np.setdiff1d(order, last), short)
    order = np.concatenate([order, fill])
for group in order.reshape(len(self), P):
    batch = []
    for i in group:
        idx = self.index[i]
        if len(idx) >= K:
            pick = rng.choice(idx, K, replace=False)
        else:
            pick = np.concatenate([rng.permutation(idx), rng.choice(idx, K - len(idx))])
        batch.extend(pick.tolist())
    yield batch
"""),
    Wrong(2, "seed-without-epoch", "one generator per seed: every epoch the same batches", """
P = self.P
K = self.K
rng = np.random.default_rng(self.seed)
order = rng.permutation(len(self.index))
short = len(self) * P - len(order)
if short:
    last = order[len(order) - (P - short):]
    fill = rng.choice(np.setdiff1d(order, last), short, replace=False)
    order = np.concatenate([order, fill])
for group in order.reshape(len(self), P):
    batch = []
    for i in group:
        idx = self.index[i]
        if len(idx) >= K:
            pick = rng.choice(idx, K, replace=False)
        else:
            pick = np.concatenate([rng.permutation(idx), rng.choice(idx, K - len(idx))])
        batch.extend(pick.tolist())
    yield batch
"""),

    # -------------------------------------------------------------------------
    # Exercise 3: the block of evaluate.rank_metrics, "cmc = np.zeros(max_rank)" ... "break"
    Wrong(3, "old-precision-0", "the trapezoid's previous precision starts at 0, not 1", """
cmc = np.zeros(max_rank)
hits = 0
ap = 0.0
ap_official = 0.0
old_recall = 0.0
old_precision = 0.0
for j, match in enumerate(is_match):
    if match:
        hits += 1
        if hits == 1:
            cmc[j:] = 1
    recall = hits / n
    precision = hits / (j + 1)
    if match:
        ap += precision / n
    ap_official += (recall - old_recall) * (old_precision + precision) / 2
    old_recall = recall
    old_precision = precision
    if hits == n:
        break
"""),
    Wrong(3, "cmc-one-rank", "CMC set at the first hit's rank only, not at every rank after", """
cmc = np.zeros(max_rank)
hits = 0
ap = 0.0
ap_official = 0.0
old_recall = 0.0
old_precision = 1.0
for j, match in enumerate(is_match):
    if match:
        hits += 1
        if hits == 1 and j < max_rank:
            cmc[j] = 1
    recall = hits / n
    precision = hits / (j + 1)
    if match:
        ap += precision / n
    ap_official += (recall - old_recall) * (old_precision + precision) / 2
    old_recall = recall
    old_precision = precision
    if hits == n:
        break
"""),
    Wrong(3, "old-at-matches-only", "the trapezoid's previous values taken at the previous true "
          "match, not at the previous position", """
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
            cmc[j:] = 1
    recall = hits / n
    precision = hits / (j + 1)
    if match:
        ap += precision / n
        ap_official += (recall - old_recall) * (old_precision + precision) / 2
        old_recall = recall
        old_precision = precision
    if hits == n:
        break
"""),

    # -------------------------------------------------------------------------
    # Exercise 4: common.cross_entropy
    Wrong(4, "torch-cross-entropy", "PyTorch's own loss, not the equations from scratch", """
return F.cross_entropy(logits.float(), labels)
"""),
    Wrong(4, "torch-nll-loss", "PyTorch's own loss, not the equations from scratch", """
return F.nll_loss(F.log_softmax(logits.float(), dim=1), labels)
"""),
    Wrong(4, "naive-exp", "Eq. (4) by exp and a division: overflows for large logits", """
e = logits.float().exp()
p = e / e.sum(dim=1, keepdim=True)
return -p.gather(1, labels[:, None]).log().mean()
"""),
    Wrong(4, "log-of-softmax", "log(softmax): a probability that rounds to 0 gives inf", """
p = torch.softmax(logits.float(), dim=1)
return -p.log().gather(1, labels[:, None]).mean()
"""),
    Wrong(4, "sum-over-batch", "summed over the batch, not averaged", """
log_p = F.log_softmax(logits.float(), dim=1)
return -log_p.gather(1, labels[:, None]).sum()
"""),

    # -------------------------------------------------------------------------
    # Exercise 5: common.batch_hard_triplet_loss
    Wrong(5, "d-ap-minus-inf", "d_ap by the mirror of the +inf trick (-inf, then amax): an "
          "anchor with no other positive gets -inf, so its loss is 0 even when d_an < m", """
with torch.autocast(features.device.type, enabled=False):
    features = features.float()
    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean(features, features)
same = labels[:, None] == labels[None, :]
eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
d_ap = dist.masked_fill(~same | eye, float("-inf")).amax(dim=1)
d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
return F.relu(d_ap + margin - d_an).mean()
"""),
    Wrong(5, "no-fp32", "the distances computed in the autocast precision (bf16)", """
if normalize:
    features = F.normalize(features, dim=1)
dist = pairwise_euclidean(features, features)
same = labels[:, None] == labels[None, :]
eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
d_ap = dist.masked_fill(~same | eye, 0.0).amax(dim=1)
d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
return F.relu(d_ap + margin - d_an).mean()
"""),
    Wrong(5, "squared-distances", "squared distances in Eq. (6)-(7)", """
with torch.autocast(features.device.type, enabled=False):
    features = features.float()
    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean(features, features) ** 2
same = labels[:, None] == labels[None, :]
eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
d_ap = dist.masked_fill(~same | eye, 0.0).amax(dim=1)
d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
return F.relu(d_ap + margin - d_an).mean()
"""),
    Wrong(5, "mean-over-active", "averaged over the anchors with a positive loss only", """
with torch.autocast(features.device.type, enabled=False):
    features = features.float()
    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean(features, features)
same = labels[:, None] == labels[None, :]
eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
d_ap = dist.masked_fill(~same | eye, 0.0).amax(dim=1)
d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
per_anchor = F.relu(d_ap + margin - d_an)
return per_anchor.sum() / (per_anchor > 0).sum().clamp(min=1)
"""),

    # -------------------------------------------------------------------------
    # Exercise 6: aea.attention_map
    Wrong(6, "no-square", "sum_c |M_c|, the power left out", """
return M.float().abs().sum(dim=1)
"""),
    Wrong(6, "mean-over-channels", "the mean over the channels, not the sum", """
return M.float().pow(2).mean(dim=1)
"""),
    Wrong(6, "input-precision", "computed in the input's precision: bf16 under autocast", """
return M.pow(2).sum(dim=1)
"""),
    Wrong(6, "square-of-sum", "(sum_c M_c)^2, the square outside the sum", """
return M.float().sum(dim=1).pow(2)
"""),

    # -------------------------------------------------------------------------
    # Exercise 7: aea.salient_pixels
    Wrong(7, "floor-k", "k rounded down: int(R% of H*W)", """
B = A.shape[0]
H, W = size
A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
k = int(R * H * W / 100)
order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices
mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
mask.scatter_(1, order[:, :k], True)
return mask.view(B, H, W)
"""),
    Wrong(7, "ceil-k", "k rounded up", """
B = A.shape[0]
H, W = size
A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
k = int(-(-R * H * W // 100))  # rounded up
order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices
mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
mask.scatter_(1, order[:, :k], True)
return mask.view(B, H, W)
"""),
    Wrong(7, "half-up-k", "k rounded half up, not half to even", """
B = A.shape[0]
H, W = size
A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
k = int(R * H * W / 100 + 0.5)
order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices
mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
mask.scatter_(1, order[:, :k], True)
return mask.view(B, H, W)
"""),
    Wrong(7, "topk-ties", "torch.topk: ties not broken to the lower index", """
B = A.shape[0]
H, W = size
A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
k = round(R * H * W / 100)
top = A.view(B, H * W).topk(k, dim=1).indices
mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
mask.scatter_(1, top, True)
return mask.view(B, H, W)
"""),
    Wrong(7, "align-corners", "bilinear with align_corners=True (corner pixels aligned)", """
B = A.shape[0]
H, W = size
A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=True)
k = round(R * H * W / 100)
order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices
mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
mask.scatter_(1, order[:, :k], True)
return mask.view(B, H, W)
"""),
    Wrong(7, "nearest", "resized by nearest neighbour, not bilinearly", """
B = A.shape[0]
H, W = size
A = F.interpolate(A[:, None].float(), size=(H, W), mode="nearest")
k = round(R * H * W / 100)
order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices
mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
mask.scatter_(1, order[:, :k], True)
return mask.view(B, H, W)
"""),

    # -------------------------------------------------------------------------
    # Exercise 8: the line of Eq. (8) in aea.training_step
    Wrong(8, "alphas-swapped", "alpha1 on L_T and alpha2 on L_I2", """
L = L_I1 + cfg.alpha2 * L_I2 + cfg.alpha1 * L_T
"""),
    Wrong(8, "unweighted", "the three terms added without their weights", """
L = L_I1 + L_I2 + L_T
"""),
    Wrong(8, "alpha1-on-basic", "alpha1 on the basic network's L_I1", """
L = cfg.alpha1 * L_I1 + L_I2 + cfg.alpha2 * L_T
"""),

    # -------------------------------------------------------------------------
    # Exercise 9: aaanet.grid_masks
    Wrong(9, "grid-ignored", "a 4x4 grid whatever `grid` says", """
rows = torch.arange(H, device=device) * 4 // H
cols = torch.arange(W, device=device) * 4 // W
cell = rows[:, None] * 4 + cols[None, :]
k = torch.arange(16, device=device)
return cell[None] != k[:, None, None]
"""),
    Wrong(9, "array-split-cells", "cells as np.array_split cuts: the larger cells first, not the "
          "floor rule (the same at 7x5 and 3x3, not at 6 or 14)", """
import numpy as np
rows = torch.cat([torch.full((len(a),), i) for i, a in
                  enumerate(np.array_split(np.arange(H), grid))]).to(device)
cols = torch.cat([torch.full((len(a),), i) for i, a in
                  enumerate(np.array_split(np.arange(W), grid))]).to(device)
cell = rows[:, None] * grid + cols[None, :]
k = torch.arange(grid * grid, device=device)
return cell[None] != k[:, None, None]
"""),
    Wrong(9, "inverted", "True on the occluded cell, not on the kept positions", """
rows = torch.arange(H, device=device) * grid // H
cols = torch.arange(W, device=device) * grid // W
cell = rows[:, None] * grid + cols[None, :]
k = torch.arange(grid * grid, device=device)
return cell[None] == k[:, None, None]
"""),
    Wrong(9, "column-major", "cell k at column k // grid, row k % grid", """
rows = torch.arange(H, device=device) * grid // H
cols = torch.arange(W, device=device) * grid // W
cell = cols[None, :] * grid + rows[:, None]
k = torch.arange(grid * grid, device=device)
return cell[None] != k[:, None, None]
"""),

    # -------------------------------------------------------------------------
    # Exercise 10: aaanet.hardest_occlusion
    Wrong(10, "argmax", "the copy of the highest probability, not the lowest", """
B = len(f_r)
G = grid * grid
chunk = chunk or B
p = []
for start in range(0, B, chunk):
    copies = grid_occlusions(f_r[start:start + chunk], grid)
    logits = logits_of(copies.flatten(0, 1))
    y_copies = y[start:start + chunk].repeat_interleave(G)
    p.append(true_class_probability(logits, y_copies).view(-1, G))
p = torch.cat(p)
return p.argmax(dim=1), p
"""),
    Wrong(10, "labels-repeat", "labels tiled (y.repeat) where the copies are image by image", """
B = len(f_r)
G = grid * grid
chunk = chunk or B
p = []
for start in range(0, B, chunk):
    copies = grid_occlusions(f_r[start:start + chunk], grid)
    logits = logits_of(copies.flatten(0, 1))
    y_copies = y[start:start + chunk].repeat(G)
    p.append(true_class_probability(logits, y_copies).view(-1, G))
p = torch.cat(p)
return p.argmin(dim=1), p
"""),
    Wrong(10, "chunk-ignored", "every copy in one pass whatever `chunk` says", """
G = grid * grid
copies = grid_occlusions(f_r, grid)
logits = logits_of(copies.flatten(0, 1))
p = true_class_probability(logits, y.repeat_interleave(G)).view(-1, G)
return p.argmin(dim=1), p
"""),
    Wrong(10, "grid-ignored", "16 copies whatever `grid` says", """
B = len(f_r)
chunk = chunk or B
p = []
for start in range(0, B, chunk):
    copies = grid_occlusions(f_r[start:start + chunk])
    logits = logits_of(copies.flatten(0, 1))
    y_copies = y[start:start + chunk].repeat_interleave(16)
    p.append(true_class_probability(logits, y_copies).view(-1, 16))
p = torch.cat(p)
return p.argmin(dim=1), p
"""),

    # -------------------------------------------------------------------------
    # Exercise 11: aaanet.occlusion_map
    Wrong(11, "batch-maximum", "divided by the largest response of the whole batch, not of "
          "each image", """
mask = grid_masks(*f_r.shape[-2:], grid, f_r.device)[k].float()
if reading == "binary":
    return mask
response = (f_r.float() * mask[:, None]).abs().mean(dim=1)
return response / response.amax().clamp_min(1e-12)
"""),
    Wrong(11, "no-clamp", "an all-zero map divided by its maximum 0: NaN", """
mask = grid_masks(*f_r.shape[-2:], grid, f_r.device)[k].float()
if reading == "binary":
    return mask
response = (f_r.float() * mask[:, None]).abs().mean(dim=1)
return response / response.amax(dim=(1, 2), keepdim=True)
"""),
    Wrong(11, "grid-ignored", "the 4x4 grid's masks whatever `grid` says", """
mask = grid_masks(*f_r.shape[-2:], device=f_r.device)[k].float()
if reading == "binary":
    return mask
response = (f_r.float() * mask[:, None]).abs().mean(dim=1)
return response / response.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
"""),
    Wrong(11, "unoccluded-maximum", "divided by the maximum before the occlusion", """
mask = grid_masks(*f_r.shape[-2:], grid, f_r.device)[k].float()
if reading == "binary":
    return mask
full = f_r.float().abs().mean(dim=1)
return full * mask / full.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
"""),

    # -------------------------------------------------------------------------
    # Exercise 12: aaanet.attention_loss
    Wrong(12, "no-clamp", "M_att - M_occ, the max(M_att, 0) left out", """
M_att = M_att.float()
return ((M_att - M_occ) * M_att).abs().sum(dim=(1, 2))
"""),
    Wrong(12, "no-abs", "the L1 norm without its absolute value", """
M_att = M_att.float()
return ((M_att.clamp(min=0) - M_occ) * M_att).sum(dim=(1, 2))
"""),
    Wrong(12, "mean", "averaged over the positions, not summed", """
M_att = M_att.float()
return ((M_att.clamp(min=0) - M_occ) * M_att).abs().mean(dim=(1, 2))
"""),
    Wrong(12, "clamp-both", "max(M_att, 0) in both factors", """
M_att = M_att.float().clamp(min=0)
return ((M_att - M_occ) * M_att).abs().sum(dim=(1, 2))
"""),

    # -------------------------------------------------------------------------
    # Exercise 13: aaanet.regularization_loss
    Wrong(13, "no-abs", "the signed sum of M_att, not its L1 norm", """
return F.softplus(-M_att.float().sum(dim=(1, 2)))
"""),
    Wrong(13, "norm-ignored", "the sum whatever `norm` says", """
return F.softplus(-M_att.float().abs().sum(dim=(1, 2)))
"""),
    Wrong(13, "sign", "log(1 + exp(+||M_att||_1))", """
absolute = M_att.float().abs()
l1 = absolute.sum(dim=(1, 2)) if norm == "sum" else absolute.mean(dim=(1, 2))
return F.softplus(l1)
"""),

    # -------------------------------------------------------------------------
    # Exercise 14: aaanet.adversarial_loss
    Wrong(14, "at-least-omega", "the gate open at p_bf - p_af = omega too (>=, not >)", """
gate = ((p_bf - p_af).detach() >= omega).float()
return (gate * (lambda1 * L_r + lambda2 * L_att)).mean(), gate
"""),
    Wrong(14, "mean-over-passing", "averaged over the samples that pass the gate only", """
gate = ((p_bf - p_af).detach() > omega).float()
return (gate * (lambda1 * L_r + lambda2 * L_att)).sum() / gate.sum(), gate
"""),
    Wrong(14, "absolute-difference", "|p_bf - p_af| > omega: a rise opens the gate too", """
gate = ((p_bf - p_af).detach().abs() > omega).float()
return (gate * (lambda1 * L_r + lambda2 * L_att)).mean(), gate
"""),
    Wrong(14, "bool-gate", "the gate returned as booleans: the caller's gate.mean() fails", """
gate = (p_bf - p_af).detach() > omega
return (gate * (lambda1 * L_r + lambda2 * L_att)).mean(), gate
"""),

    # -------------------------------------------------------------------------
    # Exercise 15: evaluate.KISSME.fit
    Wrong(15, "no-l2", "the features not L2-normalised first", """
x = torch.as_tensor(feats).double()
y, Q = _reduce_to_span(x)
N, D = y.shape
num_ids = len(torch.unique(torch.as_tensor(pids)))
dims = min(self.pca_dims, D, N - num_ids)
yc = y - y.mean(0)
_, vecs = torch.linalg.eigh(yc.T @ yc / max(N - 1, 1))
P = vecs.flip(1)[:, :dims]
z = yc @ P
self.mean = x.mean(0)
self.P = P if Q is None else Q @ P
Sigma_S, Sigma_D = pair_covariances(z, pids, cams)
M = torch.linalg.inv(Sigma_S) - torch.linalg.inv(Sigma_D)
self.M = psd_repair((M + M.T) / 2)
return self
"""),
    Wrong(15, "smallest-directions", "PCA keeps the eigenvectors of the smallest eigenvalues "
          "(eigh sorts them ascending)", """
x = F.normalize(torch.as_tensor(feats).double(), dim=1)
y, Q = _reduce_to_span(x)
N, D = y.shape
num_ids = len(torch.unique(torch.as_tensor(pids)))
dims = min(self.pca_dims, D, N - num_ids)
yc = y - y.mean(0)
_, vecs = torch.linalg.eigh(yc.T @ yc / max(N - 1, 1))
P = vecs[:, :dims]
z = yc @ P
self.mean = x.mean(0)
self.P = P if Q is None else Q @ P
Sigma_S, Sigma_D = pair_covariances(z, pids, cams)
M = torch.linalg.inv(Sigma_S) - torch.linalg.inv(Sigma_D)
self.M = psd_repair((M + M.T) / 2)
return self
"""),
    Wrong(15, "sign", "M = Sigma_D^-1 - Sigma_S^-1", """
x = F.normalize(torch.as_tensor(feats).double(), dim=1)
y, Q = _reduce_to_span(x)
N, D = y.shape
num_ids = len(torch.unique(torch.as_tensor(pids)))
dims = min(self.pca_dims, D, N - num_ids)
yc = y - y.mean(0)
_, vecs = torch.linalg.eigh(yc.T @ yc / max(N - 1, 1))
P = vecs.flip(1)[:, :dims]
z = yc @ P
self.mean = x.mean(0)
self.P = P if Q is None else Q @ P
Sigma_S, Sigma_D = pair_covariances(z, pids, cams)
M = torch.linalg.inv(Sigma_D) - torch.linalg.inv(Sigma_S)
self.M = psd_repair((M + M.T) / 2)
return self
"""),
    Wrong(15, "no-repair", "M used without the PSD repair", """
x = F.normalize(torch.as_tensor(feats).double(), dim=1)
y, Q = _reduce_to_span(x)
N, D = y.shape
num_ids = len(torch.unique(torch.as_tensor(pids)))
dims = min(self.pca_dims, D, N - num_ids)
yc = y - y.mean(0)
_, vecs = torch.linalg.eigh(yc.T @ yc / max(N - 1, 1))
P = vecs.flip(1)[:, :dims]
z = yc @ P
self.mean = x.mean(0)
self.P = P if Q is None else Q @ P
Sigma_S, Sigma_D = pair_covariances(z, pids, cams)
M = torch.linalg.inv(Sigma_S) - torch.linalg.inv(Sigma_D)
self.M = (M + M.T) / 2
return self
"""),
]

"""Plausible wrong solutions of the exercises (tests/exercises.py), one entry per mistake a student
makes: each must fail its exercise's check, so that a green check means a right answer.

Each entry: the exercise number, a short name, the mistake it models, and the edits that make it
from the repository's own code of the exercise: a list of (old, new), each `old` a piece of text
found exactly once in that code (the lines `make` blanks, found as `make` finds them, without the
indentation of their place), replaced by `new`, in the order listed. A multi-line piece writes its
lines' indentation inside the function body or block, the first statement at column 0.
tests/test_wrong_solutions.py applies the edits (an `old` not found once fails it: the code has
changed, update the entry), plants each result into a student copy and runs the check.
"""
from typing import NamedTuple


class Wrong(NamedTuple):
    exercise: int
    name: str
    mistake: str
    edits: list  # [(old, new), ...]: the repository's code of the exercise -> this mistake


WRONG = [
    # -------------------------------------------------------------------------
    # Exercise 1: data.parse_name
    Wrong(1, "camera-1-based", "the camera number returned as printed, c1 -> 1", [
        ("return pid, int(m.group(2)) - 1", "return pid, int(m.group(2))"),
    ]),
    Wrong(1, "camera-bound-off-by-one", "the last camera number c<MAX_CAMERA> refused", [
        ("int(m.group(2)) <= MAX_CAMERA", "int(m.group(2)) < MAX_CAMERA"),
    ]),
    Wrong(1, "pid-bound-off-by-one", "the largest identity MAX_PID refused", [
        ("if pid > MAX_PID:", "if pid >= MAX_PID:"),
    ]),
    Wrong(1, "whole-path", "the pattern matched against the whole path, not the file name", [
        ("_NAME.match(os.path.basename(filename))", "_NAME.match(filename)"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 2: data.PKSampler.__iter__ (no docstring: the body is the whole method)
    Wrong(2, "always-with-replacement", "the K images drawn with replacement even when n >= K", [
        ("pick = rng.choice(idx, K, replace=False)", "pick = rng.choice(idx, K)"),
    ]),
    Wrong(2, "few-images-with-replacement", "an identity with n < K images: all K drawn with "
          "replacement, so some of its n images may be left out", [
              ("once = rng.permutation(idx)\n"
               "            again = rng.choice(idx, K - len(idx))\n"
               "            pick = np.concatenate([once, again])",
               "pick = rng.choice(idx, K)"),
          ]),
    Wrong(2, "last-group-short", "the last group left with fewer than P identities", [
        ("short = len(self) * P - len(order)", "short = 0"),
        ("for group in order.reshape(len(self), P):",
         "for group in [order[start:start + P] for start in range(0, len(order), P)]:"),
    ]),
    Wrong(2, "fill-from-all", "the last group filled from every identity, its own included", [
        ("rng.choice(np.setdiff1d(order, last), short", "rng.choice(order, short"),
    ]),
    Wrong(2, "fill-with-replacement", "the fill identities drawn with replacement: the last "
          "group can hold one twice when it is short by 2 or more", [
              ("np.setdiff1d(order, last), short, replace=False)",
               "np.setdiff1d(order, last), short)"),
          ]),
    Wrong(2, "seed-without-epoch", "one generator per seed: every epoch the same batches", [
        ("np.random.default_rng([self.seed, self.epoch])", "np.random.default_rng(self.seed)"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 3: the block of evaluate.rank_metrics, "cmc = np.zeros(max_rank)" ... "break"
    Wrong(3, "old-precision-0", "the trapezoid's previous precision starts at 0, not 1", [
        ("old_precision = 1.0", "old_precision = 0.0"),
    ]),
    Wrong(3, "cmc-one-rank", "CMC set at the first hit's rank only, not at every rank after", [
        ("if hits == 1:", "if hits == 1 and j < max_rank:"),
        ("cmc[j:] = 1", "cmc[j] = 1"),
    ]),
    Wrong(3, "old-at-matches-only", "the trapezoid's previous values taken at the previous true "
          "match, not at the previous position", [
              # the three lines moved into the `if match:` above them
              ("    ap_official += (recall - old_recall) * (old_precision + precision) / 2\n"
               "    old_recall = recall\n"
               "    old_precision = precision\n",
               "        ap_official += (recall - old_recall) * (old_precision + precision) / 2\n"
               "        old_recall = recall\n"
               "        old_precision = precision\n"),
          ]),

    # -------------------------------------------------------------------------
    # Exercise 4: common.cross_entropy
    Wrong(4, "torch-cross-entropy", "PyTorch's own loss, not the equations from scratch", [
        ("return -(q * log_p).sum(dim=1).mean()", "return F.cross_entropy(logits.float(), labels)"),
    ]),
    Wrong(4, "torch-nll-loss", "PyTorch's own loss, not the equations from scratch", [
        ("return -(q * log_p).sum(dim=1).mean()", "return F.nll_loss(log_p, labels)"),
    ]),
    Wrong(4, "naive-exp", "Eq. (4) by exp and a division: overflows for large logits", [
        ("log_p = F.log_softmax(logits.float(), dim=1)",
         "e = logits.float().exp()\n"
         "log_p = (e / e.sum(dim=1, keepdim=True)).log()"),
    ]),
    Wrong(4, "log-of-softmax", "log(softmax): a probability that rounds to 0 gives inf", [
        ("F.log_softmax(logits.float(), dim=1)", "torch.softmax(logits.float(), dim=1).log()"),
    ]),
    Wrong(4, "sum-over-batch", "summed over the batch, not averaged", [
        ("(q * log_p).sum(dim=1).mean()", "(q * log_p).sum(dim=1).sum()"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 5: common.batch_hard_triplet_loss
    Wrong(5, "d-ap-minus-inf", "d_ap by the mirror of the +inf trick (-inf, then amax): an "
          "anchor with no other positive gets -inf, so its loss is 0 even when d_an < m", [
              ("masked_fill(~same | eye, 0.0)", 'masked_fill(~same | eye, float("-inf"))'),
          ]),
    Wrong(5, "no-fp32", "the distances computed in the autocast precision (bf16)", [
        # neither autocast switched off nor the features made fp32
        ("with torch.autocast(features.device.type, enabled=False):\n"
         "    features = features.float()\n"
         "    if normalize:\n"
         "        features = F.normalize(features, dim=1)\n"
         "    dist = ",
         "if normalize:\n"
         "    features = F.normalize(features, dim=1)\n"
         "dist = "),
    ]),
    Wrong(5, "squared-distances", "squared distances in Eq. (6)-(7)", [
        ("dist = pairwise_euclidean(features, features)",
         "dist = pairwise_euclidean(features, features) ** 2"),
    ]),
    Wrong(5, "mean-over-active", "averaged over the anchors with a positive loss only", [
        ("return F.relu(d_ap + margin - d_an).mean()",
         "per_anchor = F.relu(d_ap + margin - d_an)\n"
         "return per_anchor.sum() / (per_anchor > 0).sum().clamp(min=1)"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 6: aea.attention_map
    Wrong(6, "no-square", "sum_c |M_c|, the power left out", [
        (".pow(2).sum(dim=1)", ".abs().sum(dim=1)"),
    ]),
    Wrong(6, "mean-over-channels", "the mean over the channels, not the sum", [
        (".sum(dim=1)", ".mean(dim=1)"),
    ]),
    Wrong(6, "input-precision", "computed in the input's precision: bf16 under autocast", [
        ("M.float()", "M"),
    ]),
    Wrong(6, "square-of-sum", "(sum_c M_c)^2, the square outside the sum", [
        (".pow(2).sum(dim=1)", ".sum(dim=1).pow(2)"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 7: aea.salient_pixels
    Wrong(7, "floor-k", "k rounded down: int(R% of H*W)", [
        ("k = round(R * H * W / 100)", "k = int(R * H * W / 100)"),
    ]),
    Wrong(7, "ceil-k", "k rounded up", [
        ("k = round(R * H * W / 100)", "k = int(-(-R * H * W // 100))"),
    ]),
    Wrong(7, "half-up-k", "k rounded half up, not half to even", [
        ("k = round(R * H * W / 100)", "k = int(R * H * W / 100 + 0.5)"),
    ]),
    Wrong(7, "topk-ties", "torch.topk: ties not broken to the lower index", [
        ("torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices",
         "A.view(B, H * W).topk(k, dim=1).indices"),
    ]),
    Wrong(7, "align-corners", "bilinear with align_corners=True (corner pixels aligned)", [
        ("align_corners=False", "align_corners=True"),
    ]),
    Wrong(7, "nearest", "resized by nearest neighbour, not bilinearly", [
        ('mode="bilinear", align_corners=False', 'mode="nearest"'),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 8: the line of Eq. (8) in aea.training_step
    Wrong(8, "alphas-swapped", "alpha1 on L_T and alpha2 on L_I2", [
        ("cfg.alpha1 * L_I2 + cfg.alpha2 * L_T", "cfg.alpha2 * L_I2 + cfg.alpha1 * L_T"),
    ]),
    Wrong(8, "unweighted", "the three terms added without their weights", [
        ("cfg.alpha1 * L_I2 + cfg.alpha2 * L_T", "L_I2 + L_T"),
    ]),
    Wrong(8, "alpha1-on-basic", "alpha1 on the basic network's L_I1", [
        ("L_I1 + cfg.alpha1 * L_I2", "cfg.alpha1 * L_I1 + L_I2"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 9: aaanet.grid_masks
    Wrong(9, "grid-ignored", "a 4x4 grid whatever `grid` says", [
        ("* grid // H", "* 4 // H"),
        ("* grid // W", "* 4 // W"),
        ("rows[:, None] * grid", "rows[:, None] * 4"),
        ("torch.arange(grid * grid,", "torch.arange(16,"),
    ]),
    Wrong(9, "array-split-cells", "cells as np.array_split cuts: the larger cells first, not the "
          "floor rule (the same at 7x5 and 3x3, not at 6 or 14)", [
              ("rows = torch.arange(H, device=device) * grid // H",
               "import numpy as np\n"
               "sizes = [len(a) for a in np.array_split(np.arange(H), grid)]\n"
               "rows = torch.as_tensor(np.repeat(np.arange(grid), sizes), device=device)"),
              ("cols = torch.arange(W, device=device) * grid // W",
               "sizes = [len(a) for a in np.array_split(np.arange(W), grid)]\n"
               "cols = torch.as_tensor(np.repeat(np.arange(grid), sizes), device=device)"),
          ]),
    Wrong(9, "inverted", "True on the occluded cell, not on the kept positions", [
        ("return cell[None] != k", "return cell[None] == k"),
    ]),
    Wrong(9, "column-major", "cell k at column k // grid, row k % grid", [
        ("cell = rows[:, None] * grid + cols[None, :]",
         "cell = cols[None, :] * grid + rows[:, None]"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 10: aaanet.hardest_occlusion
    Wrong(10, "argmax", "the copy of the highest probability, not the lowest", [
        ("return p.argmin(dim=1), p", "return p.argmax(dim=1), p"),
    ]),
    Wrong(10, "labels-repeat", "labels tiled (y.repeat) where the copies are image by image", [
        (".repeat_interleave(G)", ".repeat(G)"),
    ]),
    Wrong(10, "chunk-ignored", "every copy in one pass whatever `chunk` says", [
        ("chunk = chunk or B", "chunk = B"),
    ]),
    Wrong(10, "grid-ignored", "16 copies whatever `grid` says", [
        ("G = grid * grid", "G = 16"),
        ("grid_occlusions(f_r[start:start + chunk], grid)",
         "grid_occlusions(f_r[start:start + chunk])"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 11: aaanet.occlusion_map
    Wrong(11, "batch-maximum", "divided by the largest response of the whole batch, not of "
          "each image", [
              ("response.amax(dim=(1, 2), keepdim=True)", "response.amax()"),
          ]),
    Wrong(11, "no-clamp", "an all-zero map divided by its maximum 0: NaN", [
        (".clamp_min(1e-12)", ""),
    ]),
    Wrong(11, "grid-ignored", "the 4x4 grid's masks whatever `grid` says", [
        ("grid_masks(*f_r.shape[-2:], grid, f_r.device)",
         "grid_masks(*f_r.shape[-2:], device=f_r.device)"),
    ]),
    Wrong(11, "unoccluded-maximum", "divided by the maximum before the occlusion", [
        ("return response / response.amax(",
         "return response / f_r.float().abs().mean(dim=1).amax("),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 12: aaanet.attention_loss
    Wrong(12, "no-clamp", "M_att - M_occ, the max(M_att, 0) left out", [
        ("M_att.clamp(min=0) - M_occ", "M_att - M_occ"),
    ]),
    Wrong(12, "no-abs", "the L1 norm without its absolute value", [
        (".abs().sum(dim=(1, 2))", ".sum(dim=(1, 2))"),
    ]),
    Wrong(12, "mean", "averaged over the positions, not summed", [
        (".abs().sum(dim=(1, 2))", ".abs().mean(dim=(1, 2))"),
    ]),
    Wrong(12, "clamp-both", "max(M_att, 0) in both factors", [
        ("M_att = M_att.float()", "M_att = M_att.float().clamp(min=0)"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 13: aaanet.regularization_loss
    Wrong(13, "no-abs", "the signed sum of M_att, not its L1 norm", [
        ("absolute = M_att.float().abs()", "absolute = M_att.float()"),
    ]),
    Wrong(13, "norm-ignored", "the sum whatever `norm` says", [
        ("l1 = absolute.mean(dim=(1, 2))", "l1 = absolute.sum(dim=(1, 2))"),
    ]),
    Wrong(13, "sign", "log(1 + exp(+||M_att||_1))", [
        ("F.softplus(-l1)", "F.softplus(l1)"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 14: aaanet.adversarial_loss
    Wrong(14, "at-least-omega", "the gate open at p_bf - p_af = omega too (>=, not >)", [
        ("> omega", ">= omega"),
    ]),
    Wrong(14, "mean-over-passing", "averaged over the samples that pass the gate only", [
        (".mean(), gate", ".sum() / gate.sum(), gate"),
    ]),
    Wrong(14, "absolute-difference", "|p_bf - p_af| > omega: a rise opens the gate too", [
        ("(p_bf - p_af).detach() > omega", "(p_bf - p_af).detach().abs() > omega"),
    ]),
    Wrong(14, "bool-gate", "the gate returned as booleans: the caller's gate.mean() fails", [
        ("gate = ((p_bf - p_af).detach() > omega).float()",
         "gate = (p_bf - p_af).detach() > omega"),
    ]),

    # -------------------------------------------------------------------------
    # Exercise 15: evaluate.KISSME.fit
    Wrong(15, "no-l2", "the features not L2-normalised first", [
        ("x = F.normalize(torch.as_tensor(feats).double(), dim=1)",
         "x = torch.as_tensor(feats).double()"),
    ]),
    Wrong(15, "smallest-directions", "PCA keeps the eigenvectors of the smallest eigenvalues "
          "(eigh sorts them ascending)", [
              ("P = vecs.flip(1)[:, :dims]", "P = vecs[:, :dims]"),
          ]),
    Wrong(15, "sign", "M = Sigma_D^-1 - Sigma_S^-1", [
        ("M = torch.cholesky_inverse(L_S) - torch.linalg.inv(Sigma_D)",
         "M = torch.linalg.inv(Sigma_D) - torch.cholesky_inverse(L_S)"),
    ]),
    Wrong(15, "no-repair", "M used without the PSD repair", [
        ("self.M = psd_repair((M + M.T) / 2)", "self.M = (M + M.T) / 2"),
    ]),
]

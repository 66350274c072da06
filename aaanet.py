"""AAA-Net: "Attention-Aware Adversarial Network for Person Re-Identification",
Appl. Sci. 2019, 9(8):1550, doi:10.3390/app9081550.

A ResNet-50 identity classifier (stage 1) gets an attention branch on a middle feature map,
trained against the hardest of 16 grid-occluded copies of that map (stage 2, Algorithm 1); then
the whole network learns from the map and from a copy occluded where the attention is high, with a
gated adversarial loss (stage 3, Algorithm 2). One 0-1 mask convention: 1 = kept, 0 = occluded.

Paper map (paper -> code):
  Sec. 3.1, the baseline: ResNet-50 (`--arch`) -> pool -> dropout -> FC -> `AAANet`, `stage1_loss`
  the "middle layer" f_r (after conv3_x by default, Sec. 4.4)     -> `AAANet.middle`, `.rest`
  Sec. 3.2, "several stacked convolutional layers" -> M_att       -> `AAANet.attention_map`
  Algorithm 1 steps 1-2, 3-4: occluded copies, the hardest -> `grid_occlusions`, `hardest_occlusion`
  M_occ, the difficult sample's response (Sec. 3.2)               -> `occlusion_map`
  Eq. (1), (2), (3): L_adv = L_att + L_r  -> `stage2_loss`, `attention_loss`, `regularization_loss`
  Algorithm 1 step 5 / Algorithm 2 step 4: what each stage trains -> `AAANet.freeze_for`
  Algorithm 2 steps 1-4 and Eq. (4), the omega-gated loss -> `stage3_loss`, `adversarial_loss`
  Sec. 4.2, SGD, lr and its decay, 10 epochs per stage            -> `train_stage`, `resolve`
  Sec. 4.2's stages weighed by their lr summed over the SGD steps -> `lr_steps`, `stage_budget`
  Tables 1-5: Euclidean, XQDA, KISSME on the pooled 2048-d feature -> `AAANet.forward`
  Sec. 3.3, the "attention-aware feature maps" occluded (else f_r) -> `occluded_maps`, `--occlude`

Commands: `python aaanet.py stage1|stage2|stage3 --root DATA --out OUT`, each from the previous
stage's last.pt; no command: the CPU demo (`python synthetic.py` writes its data first, `python
pretrain.py` the backbone it starts from). Fig. 4:
`python tools.py figure aaanet --checkpoint C`; Tables 3-5 in miniature: `python tools.py compare
aaanet`. Ablations by table: --lambda1/2 (1), --omega (2), --point (3), stage3 --mask-source
response (4), --random-erasing (5).

Choices where the paper is silent (each at its line, "Choice (not in the paper)", with its reason):
  - Grid cells: row y in cell row floor(4y / H), columns alike; a grid finer than f_r refused.
  - The attention branch: conv 1x1 C->64, BN, ReLU, conv 3x3, BN, ReLU, conv 1x1 64->1, raw M_att.
  - Last stride 2 kept; classifier N(0, 0.001^2), bias 0; dropout 0.5 where the paper gives none.
  - Pad 10, batch 32, momentum 0.9, decay 5e-4; an epoch: one shuffled pass, no partial batch.
  - M_occ: the hardest copy's channel-mean |f| / its max (--m-occ binary: its mask), in eval mode.
  - Eq. (2), (3): L1 norms summed over an image (--l-r-norm mean: per position); Eq. (4) averaged.
  - Stage 3's mask is 0 where A = normalised relu(M_att) is above 0.5 (--occlude attention-aware:
    f_r * A * kept, A without gradient); f_r and the occluded maps as one batch of 2B.
  - Table 4: stage 3 from stage 1 with a fresh attention branch, the top third of f_r occluded.
  - Stage 2 is not evaluated: its test feature is stage 1's.
"""

import argparse
import csv
import dataclasses
import os
import sys
import time
from typing import Literal, Optional, get_args, get_type_hints

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
import evaluate
from common import UserError

STAGE_NAMES = ("stage1", "stage2", "stage3")
POINTS = ("conv2_x", "conv3_x", "conv4_x", "conv5_x")  # Table 3: the occlusion after each module


# --- The network: the ResNet-50 baseline (Sec. 3.1) and the attention branch (Sec. 3.2) -----------

class AAANet(nn.Module):
    """ResNet-50 -> average pool (D: 2048) -> dropout -> FC (Sec. 3.1), cut at `point` to occlude
    f_r, plus the attention branch (Sec. 3.2). forward(x), in eval() mode, is the test feature g:
        x [B, 3, H, W] -> middle -> f_r [B, C, h, w] -> rest -> g [B, D] -> FC -> [B, N]
                                    f_r -> attention_map -> M_att [B, h, w]"""

    def __init__(self, num_classes, point="conv3_x", dropout=0.5, attention_channels=64,
                 weights="imagenet", arch="resnet50"):
        super().__init__()
        self.frozen = False  # stage 2 (`freeze_for`)
        if point not in POINTS:
            raise UserError(f"--point {point!r}: expected one of {', '.join(POINTS)}")
        # Choice (not in the paper): ResNet-50's own last stride 2 (the paper names no change)
        self.backbone = common.Backbone(weights, last_stride=2, arch=arch)
        self.point = common.PAPER_STAGE_NAMES[point]  # torchvision's name: conv3_x -> layer2
        self.after = common.STAGES[common.STAGES.index(self.point) + 1:]  # none after conv5_x
        self.dropout = nn.Dropout(dropout)  # Sec. 4.2: 0.5 Market1501, 0.6 DukeMTMC-reID
        D = self.backbone.channels["layer4"]  # the pooled feature: 2048 in ResNet-50
        self.classifier = nn.Linear(D, num_classes)
        # Choice (not in the paper): N(0, 0.001^2) weights, zero bias, as the IDE baseline
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)
        # Choice (not in the paper): Sec. 3.2's "several stacked convolutional layers": 1x1 C -> a
        # (~1% of ResNet-50's FLOPs), 3x3 for the neighbours, 1x1 -> raw M_att (Eq. (2) clamps at 0)
        C = self.backbone.channels[self.point]
        a = attention_channels
        self.attention = nn.Sequential(
            nn.Conv2d(C, a, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
            nn.Conv2d(a, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
            nn.Conv2d(a, 1, 1))

    def middle(self, x):
        """f_r: "the convolutional modules in the baseline network" up to `point` (Sec. 3.2)."""
        return self.backbone.run(x, "conv1", self.point)

    def rest(self, f):
        """The stages after the middle layer, then average pooling: [B, C, h, w] -> [B, D]."""
        if self.after:
            f = self.backbone.run(f, self.after[0])
        return f.mean(dim=(2, 3))

    def logits_from_middle(self, f):
        """Identity scores of (possibly occluded) middle-layer maps: [B, C, h, w] -> [B, N]."""
        return self.classifier(self.dropout(self.rest(f)))

    def attention_map(self, f_r):
        """M_att [B, h, w]: the attention branch on f_r, raw (unbounded), at f_r's resolution."""
        return self.attention(f_r)[:, 0]  # [B, 1, h, w] -> [B, h, w]

    def forward(self, x):
        return self.rest(self.middle(x))

    def freeze_for(self, stage):
        """What each stage trains; returns its parameters for SGD. stage1: the baseline. stage2: the
        attention branch (Algorithm 1 step 5); the rest ("fixed in the backward stage", Sec. 3.2):
        no gradient, eval mode (`train`). stage3: "the entire network" (Algorithm 2 step 4)."""
        self.frozen = stage == "stage2"
        for part in (self.backbone, self.classifier):
            part.requires_grad_(not self.frozen)
        self.train(self.training)
        if stage == "stage1":
            return list(self.backbone.parameters()) + list(self.classifier.parameters())
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode=True):
        """nn.Module.train, except that what stage 2 freezes stays in eval mode."""
        super().train(mode)
        if self.frozen:
            for part in (self.backbone, self.dropout, self.classifier):
                part.eval()
        return self


# --- Algorithm 1, steps 1-4: the 16 occluded copies and the difficult sample ----------------------

def grid_masks(H, W, grid=4, device=None):
    """Algorithm 1's grid*grid masks [G, H, W] bool, G = grid*grid, for any `grid`: mask k is 1
    (True, kept) everywhere but on cell k, where it is 0 (False, occluded); cell k lies at cell
    row k // grid, cell column k % grid. Choice (not in the paper): row y lies in cell row
    floor(grid * y / H), column x in cell column floor(grid * x / W), so the cells tile any map
    (H = 7: cell rows of 2, 2, 2, 1 rows), and with H < grid some cells are empty (their
    copy occludes nothing). On `device` (None: the CPU)."""
    # Algorithm 1 step 1: "divided equally into 16 with a square grid"
    rows = torch.arange(H, device=device) * grid // H             # [H] cell row of each row
    cols = torch.arange(W, device=device) * grid // W             # [W] cell column of each column
    cell = rows[:, None] * grid + cols[None, :]                   # [H, W] cell of each position
    # Algorithm 1 step 2: "each grid ... is occluded and reproduced in sequence"
    k = torch.arange(grid * grid, device=device)                  # [G] the cell each copy hides
    return cell[None] != k[:, None, None]                         # [G, H, W]


def grid_occlusions(f, grid=4):
    """Algorithm 1 step 2: copy k of f [B, C, H, W] is f times mask k -> [B, G, C, H, W]."""
    kept = grid_masks(*f.shape[-2:], grid, f.device).to(f.dtype)      # [G, H, W]
    return f[:, None] * kept[None, :, None]                            # [B, G, C, H, W]


def true_class_probability(logits, y):
    """p: the softmax probability of the true class, [B, N] -> [B] (fp32 even under autocast)."""
    return F.softmax(logits.float(), dim=1).gather(1, y[:, None])[:, 0]


@torch.no_grad()
def hardest_occlusion(logits_of, f_r, y, grid=4, chunk=0):
    """Algorithm 1 steps 3-4 -> (hardest copy k [B], every copy's true-class probability p [B, G]);
    logits_of: [n, C, h, w] -> [n, N]. The copies of `chunk` images (0: all) run as ONE batch,
    without gradient: they only choose a target, so no activations are kept for a backward pass.
    Step 3: the G = grid*grid copies of each image (`grid_occlusions`, any `grid`), flattened
    image by image (image 0's G copies, then image 1's, ...), through logits_of in one call per
    chunk of images (B = 3, chunk = 2: a call of 2G copies, then one of G); each copy's label is
    its image's; p by `true_class_probability`. Step 4: k is the copy of the lowest p, the first
    copy (lowest k) where several tie."""
    B = len(f_r)
    G = grid * grid
    chunk = chunk or B
    p = []
    for start in range(0, B, chunk):  # one pass unless --occlusion-chunk asks for several
        copies = grid_occlusions(f_r[start:start + chunk], grid)  # [b, G, C, H, W]
        # Algorithm 1 step 3: "entered together into the classification network"
        logits = logits_of(copies.flatten(0, 1))                  # [b*G, N], an image's adjacent
        y_copies = y[start:start + chunk].repeat_interleave(G)    # [b*G] each label G times
        p.append(true_class_probability(logits, y_copies).view(-1, G))  # [b*G] -> [b, G]
    p = torch.cat(p)                                                   # [B, G]
    return p.argmin(dim=1), p  # Algorithm 1 step 4: "the lowest classification probability"


@torch.no_grad()
def occlusion_map(f_r, k, grid=4, reading="response"):
    """M_occ [B, h, w] of Eq. (2) from the difficult sample, copy k [B] of f_r [B, C, h, w], in
    fp32; the copy's 0-1 mask is grid_masks' mask k[b] of the `grid` (1 kept, 0 occluded).
    binary: that mask itself, 1.0 kept and 0.0 on the occluded cell.
    response (Choice, not in the paper: the reading of "fit the feature response range",
    Sec. 3.2): f_occ = f_r times the mask; the channel mean of |f_occ|, divided by its maximum over
    the h*w positions of the same image (each image on its own scale, never the batch's). So M_occ
    is 0 on the occluded (most discriminative) cell and 1 at the strongest remaining position; an
    all-zero f_r gives M_occ = 0, not NaN (the maximum is clamped to 1e-12 before dividing)."""
    kept = grid_masks(*f_r.shape[-2:], grid, f_r.device)[k].float()   # [B, H, W]
    if reading == "binary":
        return kept
    # Choice (not in the paper): "response", the reading of "fit the feature response range"
    f_occ = f_r.float() * kept[:, None]                                # [B, C, H, W]
    response = f_occ.abs().mean(dim=1)                                 # [B, H, W]
    return response / response.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def occlusion_target(model, f_r, y, cfg):
    """(M_occ [B, h, w], p of its copy [B]): the difficult sample (Algorithm 1 steps 1-4) through
    the current network, without gradient. Choice (not in the paper): in eval mode, also in stage
    3, so the 16B probe copies neither use nor move the BatchNorm statistics of the batch."""
    was_training = model.training
    logits_of = model.eval().logits_from_middle
    k, p = hardest_occlusion(logits_of, f_r, y, cfg.grid, cfg.occlusion_chunk)
    model.train(was_training)
    M_occ = occlusion_map(f_r, k, cfg.grid, cfg.m_occ)
    return M_occ, p.gather(1, k[:, None])[:, 0]


# --- Losses: Eq. (1)-(4) --------------------------------------------------------------------------

def attention_loss(M_att, M_occ):
    """Eq. (2), the data term, as printed: L_att = || [max(M_att, 0) - M_occ] * M_att ||_1, the
    product element-wise, per image: [B, h, w] -> [B], in fp32. The L1 norm is the sum over the
    h*w positions of the absolute values (a term with 0 < M_att < M_occ is negative before it).
    Choice (not in the paper): a sum, not a mean, over the positions (here and in Eq. (3)), and no
    mean over the batch here: the callers average. Its gradient moves M_att < 0 up to 0, 0 < M_att <
    M_occ / 2 down to 0 and M_att > M_occ / 2 to M_occ: high attention follows M_occ."""
    M_att = M_att.float()
    return ((M_att.clamp(min=0) - M_occ) * M_att).abs().sum(dim=(1, 2))


def regularization_loss(M_att, norm="sum"):
    """Eq. (3), the regularisation term: L_r = log(1 + e^(-||M_att||_1)), per image: [B, h, w] ->
    [B], in fp32. norm="sum": ||M_att||_1 is the sum of |M_att| over the h*w positions, the
    formula as printed; norm="mean" (--l-r-norm): the mean of |M_att| over the positions instead.
    Its gradient, -sigmoid(-||M_att||_1) sign(M_att), lifts every |M_att| away from Eq. (2)'s
    trivial minimum 0 (this code's reading: Sec. 3.2 says only that L_r prevents over-fitting and
    keeps the feature maps' structure), but is < 1e-7 once ||M_att||_1 > ~17: 0 in float32 at the
    paper's 28x28."""
    absolute = M_att.float().abs()
    if norm == "sum":
        l1 = absolute.sum(dim=(1, 2))  # the formula as printed: 0 at 28x28, and so its gradient
    else:
        # Choice (not in the paper): norm="mean" (--l-r-norm): per position, an L_r that still acts
        l1 = absolute.mean(dim=(1, 2))
    return F.softplus(-l1)


def adversarial_loss(L_r, L_att, p_bf, p_af, lambda1, lambda2, omega):
    """Eq. (4), L1 = L_r (Eq. (3)), L2 = L_att (Eq. (2)), batch mean -> (loss, gate [B] 0/1):
        L_i = lambda1 * L1_i + lambda2 * L2_i   if p_bf_i - p_af_i > omega,   0 otherwise

    The gate is the "switchable gradient update" of Sec. 3.3: only samples whose true-class
    probability the occlusion lowers by more than omega update the attention through this term.
    A drop of exactly omega shuts it (strictly more). The gate is returned as a float tensor of
    0.0 and 1.0 (the training step logs its mean), computed without gradient. Choice (not in the
    paper): the loss is the mean over all B samples, those the gate shuts adding 0."""
    gate = ((p_bf - p_af).detach() > omega).float()  # [B], compares probabilities: no gradient
    # Choice (not in the paper): the mean over all B samples, failing ones adding 0; with the gate
    # shut for the whole batch, only SGD's weight decay and momentum move the attention branch
    return (gate * (lambda1 * L_r + lambda2 * L_att)).mean(), gate


# --- Algorithm 2, step 1: the 0-1 mask (1 = kept, 0 = occluded) -----------------------------------

def attention_mask(M_att, threshold=0.5):
    """Algorithm 2 step 1: the 0-1 attention mask, M_att [B, h, w] -> bool [B, h, w], True (1) kept.
    Choice (not in the paper): 0 (occluded) where A = `attention_weights(M_att)` > `threshold`,
    the attended regions, as Fig. 4's "black mask", Sec. 4.5's "multiple parts of important
    regions were occluded" and Table 4's "highest response" say; an all-zero map occludes none."""
    return attention_weights(M_att) <= threshold


def attention_weights(M_att):
    """A [B, h, w] in [0, 1]: relu(M_att) min-max normalised per image, without gradient."""
    A = M_att.detach().float().clamp(min=0)                            # relu(M_att)
    lo = A.amin(dim=(1, 2), keepdim=True)
    hi = A.amax(dim=(1, 2), keepdim=True)
    return (A - lo) / (hi - lo).clamp_min(1e-12)


def occluded_maps(f_r, M_att, kept, occlude="features"):
    """Algorithm 2 step 2: f_r * kept, the 0-1 mask (1 kept, 0 occluded); "attention-aware":
    Sec. 3.3's f_r * A * kept, A [B, h, w]."""
    weights = kept                                                     # [B, h, w]
    if occlude == "attention-aware":
        # "integrated ... by an element-wise multiplication". Choice (not in the paper): A in
        # [0, 1] (never amplifies f_r), no gradient: the attention learns by Eq. (4)'s gate alone
        weights = attention_weights(M_att) * kept
    return f_r * weights[:, None].to(f_r.dtype)                        # [B, C, h, w]


def response_mask(f_r):
    """Table 4, "without fine-tuning": occlude "one-third of the feature map regions with the
    highest response": bool [B, h, w], 0 on exactly round(h*w / 3) positions, 1 elsewhere.
    Choice (not in the paper): the response is the channel mean of f_r; ties to the lower index."""
    response = f_r.detach().float().mean(dim=1).flatten(1)             # [B, h*w]
    order = response.argsort(dim=1, descending=True, stable=True)      # [B, h*w]
    third = round(response.shape[1] / 3)
    kept = torch.ones_like(response, dtype=torch.bool)
    kept.scatter_(1, order[:, :third], False)
    return kept.view_as(f_r[:, 0])                                     # [B, h*w] -> [B, h, w]


# --- One training step per stage: each loss returns (total loss, {term: value} for the log) -------

def stage1_loss(model, x, y, cfg):
    """Sec. 3.1: the baseline, "a softmax classification loss function" on the identities."""
    L_ce = common.cross_entropy(model.logits_from_middle(model.middle(x)), y)
    return L_ce, {"L_ce": L_ce}


def stage2_loss(model, x, y, cfg):
    """Algorithm 1: the attention assignment network; only the attention branch learns."""
    f_r = model.middle(x)  # the frozen baseline's middle-layer maps, no gradient (`freeze_for`)
    M_occ, p_hard = occlusion_target(model, f_r, y, cfg)  # Algorithm 1 steps 1-4
    M_att = model.attention_map(f_r)  # the part that learns (Algorithm 1 step 5)
    L_att = attention_loss(M_att, M_occ).mean()  # the data term, Eq. (2)
    L_r = regularization_loss(M_att, cfg.l_r_norm).mean()  # the regularisation term, Eq. (3)
    L_adv = L_att + L_r  # Eq. (1)
    return L_adv, {"L_adv": L_adv, "L_att": L_att, "L_r": L_r, "p_hard": p_hard.mean()}


def stage3_loss(model, x, y, cfg):
    """Algorithm 2: the attention-aware adversarial network; the entire network learns."""
    f_r = model.middle(x)  # with gradient, as M_att
    M_att = model.attention_map(f_r)
    # Algorithm 2 step 1: the 0-1 attention mask, 0 on the attended positions (Table 4: response)
    if cfg.mask_source == "response":
        kept = response_mask(f_r)                                      # [B, h, w]
    else:
        kept = attention_mask(M_att, cfg.threshold)                    # [B, h, w]
    # Algorithm 2 step 2: "the feature maps of the middle layer multiplied by the 0-1 mask"
    f_af = occluded_maps(f_r, M_att, kept, cfg.occlude)  # [B, C, h, w] (attention-aware: Sec. 3.3)
    # Algorithm 2 step 3: f_r and f_af through the classifier; p_bf, p_af: true-class probability
    # Choice (not in the paper): one batch of 2B (BatchNorm sees both), p from it with dropout on
    logits = model.logits_from_middle(torch.cat([f_r, f_af]))          # [2B, N]
    logits_bf, logits_af = logits.chunk(2)                             # [B, N] each
    p_bf = true_class_probability(logits_bf, y)
    p_af = true_class_probability(logits_af, y)
    # Algorithm 2 step 4: cross-entropy on both ("computed by the cross-entropy", Sec. 3.3) ...
    L_ce_bf = common.cross_entropy(logits_bf, y)
    L_ce_af = common.cross_entropy(logits_af, y)
    # ... and Eq. (4), with M_occ as in stage 2
    M_occ, _ = occlusion_target(model, f_r, y, cfg)
    L_r = regularization_loss(M_att, cfg.l_r_norm)
    L_att = attention_loss(M_att, M_occ)
    L_gate, gate = adversarial_loss(L_r, L_att, p_bf, p_af, cfg.lambda1, cfg.lambda2, cfg.omega)
    L = L_ce_bf + L_ce_af + L_gate
    # the gate in the log: gate_pass, the share of samples it opens for; gate_batches, 1 when it
    # opens for at least one sample of the batch (its epoch mean: the share of such batches)
    return L, {"L": L, "L_ce_bf": L_ce_bf, "L_ce_af": L_ce_af, "L_gate": L_gate,
               "L_att": L_att.mean(), "L_r": L_r.mean(), "gate_pass": gate.mean(),
               "gate_batches": gate.max(), "p_bf": p_bf.mean(), "p_af": p_af.mean(),
               "occluded": (~kept).float().mean()}


# the term whose epoch mean chooses best.pt
TOTAL_LOSS = {"stage1": "L_ce", "stage2": "L_adv", "stage3": "L"}


def training_step(model, optimizer, stage, x, y, cfg):
    """One SGD step of `stage` on a batch; returns the loss terms (tensors) for the log."""
    stage_loss = {"stage1": stage1_loss, "stage2": stage2_loss, "stage3": stage3_loss}[stage]
    with common.autocast(x.device, cfg.precision):  # auto: bf16 on CUDA, fp32 on the CPU
        loss, terms = stage_loss(model, x, y, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return terms


# --- Training a stage (Sec. 4.2): the previous stage's weights, SGD, a checkpoint every epoch -----

def load_init(model, cfg, stage, num_classes):
    """Start `stage` from `cfg.init`: the baseline ("fine-tuned by the common layers", Sec. 3.2)
    and stage 2's attention branch, else random ("the rest ... initialized randomly"). Stage 1
    with --init goes on training a finished stage 1 (the compare's control row)."""
    ckpt = common.load_checkpoint(cfg.init)
    path = f"--init {cfg.init}"
    common.check_checkpoint(ckpt, path, "aaanet", num_classes, "classifier.weight")
    # stage 1 and stage 2 follow stage 1; stage 3 follows stage 2, or stage 1 for Table 4's variant
    if stage in ("stage1", "stage2") or cfg.mask_source == "response":
        expected = "stage1"
    else:
        expected = "stage2"
    if ckpt.get("stage") == expected and ckpt["epoch"] < ckpt["config"]["epochs"]:
        raise UserError(f"{path}: that {expected} run stopped after epoch {ckpt['epoch']} of its "
                        f"{ckpt['config']['epochs']}; finish it first (its command with "
                        f"--resume), then start {stage}")
    if ckpt.get("stage") != expected:
        hint = ""
        if stage == "stage3" and ckpt.get("stage") == "stage1":
            hint = " (stage 3 from stage 1 is Table 4's variant: add --mask-source response)"
        raise UserError(f"{path} is a {ckpt.get('stage')} checkpoint; {stage} starts from "
                        f"{expected}{hint}")
    # what the stage inherits must match --init: the input size; stage 2's branch and target
    same = ["height", "width", "arch"]
    if expected == "stage2":
        same += ["point", "attention_channels", "grid", "m_occ"]
    differ = [f"--{k.replace('_', '-')} {ckpt['config'][k]}" for k in same
              if ckpt["config"][k] != getattr(cfg, k)]
    if differ:
        raise UserError(f"{path} was trained with {', '.join(differ)}; {stage} inherits them: "
                        "pass the same values")
    # Choice (not in the paper): Table 4's stage 3 from stage 1 keeps a fresh attention branch
    state = {k: v for k, v in ckpt["model"].items()
             if expected == "stage2" or not k.startswith("attention.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("attention.") for k in missing):
        raise UserError(f"--init {cfg.init} does not fit the network: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")


def epoch_batches(images, labels, g, cfg):
    """One epoch of augmented batches (data.train_batches), in an order drawn from g."""
    N = len(images)
    B = cfg.batch_size
    # Choice (not in the paper): a shuffled pass, the last incomplete batch dropped
    order = torch.randperm(N, generator=g)[:N // B * B].view(N // B, B)  # [steps, B] indices
    yield from data.train_batches(images, labels, order.tolist(), g, pad=cfg.pad,
                                  random_erasing=cfg.random_erasing)


def train_stage(cfg, stage, ds=None, images=None):
    """Train one stage (Sec. 4.2) -> (model, {metric: rank_metrics}; {} for stage 2 or without
    --eval-metrics). ds, images: a dataset and a cache of decoded images to reuse (the demo).
    At each epoch's end OUT/<stage>/last.pt holds everything --resume needs (the dict below).
    Ctrl-C or SIGTERM stops the run wherever it is (a KeyboardInterrupt); --resume redoes the
    epoch in progress, so that on the CPU the resumed run ends bit-identical to an uninterrupted
    one."""
    cfg = resolve(cfg, stage)
    device = common.pick_device(cfg.device)
    out = os.path.join(cfg.out, stage)
    release = common.hold_folder(out)  # OUT/<stage>/.lock, before any data is read
    last = os.path.join(out, "last.pt")
    ckpt = None
    earlier = common.earlier_run(out)  # the files of a run in --out before this one
    if cfg.resume:
        ckpt = common.resume_state(last, "aaanet", cfg, RESUME_MAY_DIFFER, device)
    elif earlier:
        print(f"note: {out} holds an earlier run; its files ({', '.join(earlier)}) are "
              "replaced when this run starts training (--resume continues it instead)")
    common.seed_everything(cfg.seed)  # the same seed draws the same weights and batches
    # the dataset's names parsed into identity and camera labels (no pixels yet)
    if ds is None:
        ds = data.load_dataset(cfg.root, cfg.dataset, skip_bad_files=cfg.skip_bad_files)
    evaluates = stage != "stage2" and cfg.eval_metrics
    if evaluates:  # the evaluation's needs, before training
        evaluate.check_true_matches(ds)
        evaluate.check_training_pairs(ds, cfg.eval_metrics)
    if len(ds.train) < cfg.batch_size:  # no complete batch
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(ds.train)} "
                        "training images")
    # the training files and labels, in a digest: --resume refuses a run's split changed since
    train_digest = common.split_digest(ds.train.paths, ds.train.pids, cfg.root)
    if ckpt is not None:
        common.check_checkpoint(ckpt, last, "aaanet", ds.num_train_pids, "classifier.weight")
        common.check_same_images(ckpt, last, cfg.root, len(ds.train), train_digest)
    # the network before the images: missing ImageNet weights or a wrong --init fail at once;
    # --weights is the start of stage 1 without --init (stages 2 and 3 always have one)
    weights = "none" if cfg.init else cfg.weights
    model = AAANet(ds.num_train_pids, cfg.point, cfg.dropout, cfg.attention_channels, weights,
                   cfg.arch)
    if ckpt is None and cfg.init:
        load_init(model, cfg, stage, ds.num_train_pids)  # a resumed run reads last.pt instead
    model = common.prepare_model(model, device)
    if images is None:
        images = {}
    if "train" not in images:  # decoded once; on a GPU the cache lives there
        images["train"] = data.load_images(ds.train.paths, cfg.height, cfg.width, desc="train")
    train_images = images["train"].to(device)  # uint8 [N, 3, H, W]
    # their identities, 0..N-1: the classifier's targets
    labels = torch.as_tensor(ds.train.pids).to(device)
    # SGD over what this stage trains (Algorithm 1 step 5: the attention branch alone in stage 2)
    optimizer = common.make_sgd(model.freeze_for(stage), cfg.lr, cfg.momentum, cfg.weight_decay)
    # Sec. 4.2: lr x lr_gamma every lr_step epochs
    schedule = common.step_schedule(optimizer, cfg.lr_step, cfg.lr_gamma)
    g = torch.Generator().manual_seed(cfg.seed)  # the batch order and the augmentation, on CPU
    N = len(train_images)
    B = cfg.batch_size

    first_epoch = 0
    log = []  # OUT/<stage>/log.csv: a row per epoch
    results = {}  # {metric: rank_metrics} after the last epoch
    checkpoint = ckpt  # the last one written (or read)
    if ckpt is not None:  # --resume: put back all that the checkpoint below holds
        common.restore(ckpt, last, model, optimizer, schedule, g)
        first_epoch = ckpt["epoch"]
        log = ckpt["log"]
        results = ckpt["results"]
        # in case the run was killed between last.pt and log.csv, or best.pt's link
        common.write_log(out, log)
        if common.lowest_so_far(log, TOTAL_LOSS[stage]):
            common.link_best(last)
        if first_epoch < cfg.epochs:
            print(f"{stage} resuming {last} at epoch {first_epoch + 1}", flush=True)
    else:  # a new run: every check has passed, an earlier run's files in --out go now
        common.clear_earlier_run(out)
    start_from = f"from {cfg.init}" if cfg.init else f"weights {cfg.weights}"
    print(f"{stage}: {N} training images of {ds.num_train_pids} identities at {cfg.height}x"
          f"{cfg.width}, {N // B} batches of {B} per epoch, device {device}, {start_from}",
          flush=True)

    for epoch in range(first_epoch, cfg.epochs):
        model.train()  # what stage 2 freezes stays in eval mode (`AAANet.freeze_for`)
        lr = optimizer.param_groups[0]["lr"]
        where = f"{stage} epoch {epoch + 1}/{cfg.epochs}"
        # a line every 20 steps; a NaN or infinite loss term stops the run there
        progress = common.Progress(N // B, prefix=f"{where}  lr {lr:.0e}  ", where=where)
        for x, y in epoch_batches(train_images, labels, g, cfg):
            terms = training_step(model, optimizer, stage, x, y, cfg)
            progress.update(len(y), terms)
        schedule.step()  # the next epoch's lr (Sec. 4.2: x0.1 every lr_step epochs)
        # log.csv's row: each loss term's mean over the epoch, img/s and seconds
        log.append({"epoch": epoch + 1, "lr": lr, **progress.summary()})

        # the checkpoint: all that --resume needs to go on as if the run had never stopped
        checkpoint = {
            "paper": "aaanet",
            "stage": stage,
            "config": dataclasses.asdict(cfg),
            "epoch": epoch + 1,  # epochs done
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": common.rng_state(),  # Python, numpy, torch (dropout) and CUDA
            "aug_generator": g.get_state(),  # the batch order and data.augment's draws
            "num_images": N,
            "train_digest": train_digest,  # --resume refuses other training files
            "device_type": device.type,  # what --precision auto meant for this run
            "log": log,
            "results": {},
        }
        # OUT/last.pt, OUT/log.csv, and OUT/best.pt if this epoch's mean loss is the lowest so far
        common.save_epoch(out, checkpoint, TOTAL_LOSS[stage])

    if first_epoch == cfg.epochs:
        print(f"{stage}: {last} already holds all {cfg.epochs} epochs; nothing left to train")
    else:
        print(f"wrote {last}; {os.path.join(out, 'best.pt')} is the epoch of lowest mean "
              f"{TOTAL_LOSS[stage]}")
    # Choice (not in the paper): no evaluation after stage 2, whose test feature is stage 1's
    if evaluates and set(results) != set(cfg.eval_metrics):
        # (also when a run stopped during this evaluation is resumed)
        size = (cfg.height, cfg.width)
        results = evaluate.evaluate_model(model, ds, size, device, cfg.eval_metrics,
                                          images=images, precision=cfg.precision)
        for metric, r in results.items():
            log[-1][f"rank-1 {metric}"] = 100 * float(r["cmc"][0])
            log[-1][f"mAP {metric}"] = 100 * float(r["mAP"])
        checkpoint["results"] = common.saved_results(results)
        common.save_epoch(out, checkpoint, TOTAL_LOSS[stage])
    if evaluates:
        rows = {f"{stage} {metric}": r for metric, r in results.items()}
        print(evaluate.format_table(rows, label="stage, metric"))
    release()  # OUT/<stage>/.lock: another run may use the folder now
    return model, results if evaluates else {}


def model_from_checkpoint(ckpt, path="the checkpoint"):
    """evaluate.py's hook: (model in eval(), (height, width)) from a checkpoint of any stage."""
    common.check_checkpoint(ckpt, path, "aaanet")
    try:
        cfg = Config(**ckpt["config"])
        num_classes = ckpt["model"]["classifier.weight"].shape[0]
        model = AAANet(num_classes, cfg.point, cfg.dropout, cfg.attention_channels, "none",
                       cfg.arch)
        common.load_weights(model, ckpt["model"], path)
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: not a complete AAA-Net checkpoint (config and weights of "
                        f"aaanet.py): {str(e).splitlines()[0]}") from None
    return model.eval(), (cfg.height, cfg.width)


# --- Config: the paper's settings as defaults (Sec. 4.2) ------------------------------------------

METRICS = ("euclidean", "cosine", "xqda", "kissme")


@dataclasses.dataclass
class Config:
    """One stage's run, saved in its checkpoints; the defaults are the paper's (Sec. 4.2)."""
    root: str = ""  # dataset folder, Market-1501 or folder layout (required by the stage commands)
    dataset: str = "market1501"  # market1501, duke, cuhk03-labeled/-detected, synthetic, folder
    height: int = 224  # input height, Sec. 4.2 ("resized to 224 x 224")
    width: int = 224  # input width, Sec. 4.2
    weights: str = "imagenet"  # stage 1's ResNet-50 start: imagenet, synthetic, none or a path
    arch: Literal[tuple(common.ARCHS)] = "resnet50"  # the paper's ResNet-50; 18, 34 for CPU runs
    dropout: Optional[float] = None  # before the classifier, Sec. 4.2 (None: 0.6 Duke, else 0.5)
    point: Literal["conv2_x", "conv3_x", "conv4_x", "conv5_x"] = "conv3_x"  # f_r's layer, Table 3
    attention_channels: int = 64  # channels of the attention branch's convs (Sec. 3.2 gives none)
    grid: int = 4  # f_r is occluded cell by cell on a grid x grid grid, Algorithm 1 step 1
    m_occ: Literal["response", "binary"] = "response"  # M_occ of Eq. (2): scaled response or 0-1
    occlusion_chunk: int = 0  # images whose 16 copies run per pass (0: the whole batch at once)
    threshold: float = 0.5  # Algorithm 2 step 1: occlude where normalised relu(M_att) is above
    mask_source: Literal["attention", "response"] = "attention"  # stage 3: M_att or Table 4's
    l_r_norm: Literal["sum", "mean"] = "sum"  # ||M_att||_1 in Eq. (3): summed as printed, or mean
    occlude: Literal["features", "attention-aware"] = "features"  # stage 3: f_r or Sec. 3.3's
    lambda1: float = 0.3  # lambda1, weight of L1 = L_r in Eq. (4), Sec. 4.2, Table 1
    lambda2: float = 1.7  # lambda2, weight of L2 = L_att in Eq. (4), Sec. 4.2, Table 1
    omega: float = 0.04  # omega, the gate on p_bf - p_af in Eq. (4), Sec. 4.3, Table 2
    # Choice (not in the paper): pad 10, batch 32, SGD momentum and decay: re-ID baseline values
    pad: int = 10  # pixels of zero padding before the augmentation's random crop
    random_erasing: float = 0.0  # random-erasing probability; 0.5 in stage 1 = Table 5's baseline
    batch_size: int = 32  # images per SGD step
    epochs: int = 10  # epochs of this stage, Sec. 4.2 (each network "converged after 10 epochs")
    lr: Optional[float] = None  # SGD lr, Sec. 4.2 (None: 0.001 in stage 1, 0.0001 in stages 2-3)
    lr_step: Optional[int] = None  # lr x lr_gamma every this many epochs (None: 2 / 3), Sec. 4.2
    lr_gamma: float = 0.1  # the decay factor, Sec. 4.2
    momentum: float = 0.9  # SGD momentum (the paper names SGD only)
    weight_decay: float = 5e-4  # SGD weight decay (the paper names SGD only)
    out: str = "runs/aaanet"  # checkpoints: OUT/stage1/last.pt, OUT/stage2/..., OUT/stage3/...
    init: str = ""  # the start (empty: the previous stage's last.pt in OUT; stage 1: --weights)
    eval_metrics: tuple[str, ...] = ("euclidean", "xqda", "kissme")  # after the stage; Tables 1-5
    seed: int = 0  # seeds the weights, the batch order and the augmentation
    device: str = "auto"  # auto (CUDA if present), cpu, cuda or cuda:N
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on the CPU
    resume: bool = False  # continue from OUT/<stage>/last.pt, with the same flags
    skip_bad_files: bool = False  # warn about and drop images that do not parse or decode


def resolve(cfg, stage):
    """The config with the stage's paper defaults filled in (Sec. 4.2: stage 1 lr 0.001 x0.1
    every 2 epochs, stages 2-3 lr 0.0001 x0.1 every 3; dropout 0.5 Market / 0.6 Duke), checked."""
    lr = cfg.lr
    if lr is None:
        lr = 0.001 if stage == "stage1" else 0.0001
    lr_step = cfg.lr_step
    if lr_step is None:
        lr_step = 2 if stage == "stage1" else 3
    dropout = cfg.dropout
    if dropout is None:
        # Choice (not in the paper): 0.5 for the datasets the paper does not train on
        dropout = 0.6 if cfg.dataset == "duke" else 0.5
    # the checkpoint this stage starts from; Table 4 ("without fine-tuning") skips stage 2
    previous = {"stage1": "", "stage2": "stage1",
                "stage3": "stage1" if cfg.mask_source == "response" else "stage2"}[stage]
    init = cfg.init
    if not init and previous:
        init = os.path.join(cfg.out, previous, "last.pt")
    cfg = dataclasses.replace(cfg, lr=lr, lr_step=lr_step, dropout=dropout, init=init)
    if not cfg.root:
        raise UserError("--root is required (python aaanet.py without arguments: the demo)")
    common.check_limits(cfg, LIMITS)
    common.check_padding(cfg.pad, cfg.height, cfg.width)
    if cfg.occlusion_chunk > cfg.batch_size:
        raise UserError(f"--occlusion-chunk {cfg.occlusion_chunk}: expected at most --batch-size "
                        f"{cfg.batch_size} images per pass (0: the whole batch)")
    # f_r's size: each stride-2 layer before the point halves the input, rounding up
    halvings = 2 ** (POINTS.index(cfg.point) + 2)
    h = -(-cfg.height // halvings)
    w = -(-cfg.width // halvings)
    if stage != "stage1" and cfg.grid > min(h, w):  # Algorithm 1's cells need a position each
        raise UserError(f"--grid {cfg.grid} is finer than f_r's {h}x{w} map (--point {cfg.point}, "
                        f"{cfg.height}x{cfg.width} inputs): give --grid {min(h, w)} or less")
    if not set(cfg.eval_metrics) <= set(METRICS):
        raise UserError(f"--eval-metrics: expected some of {', '.join(METRICS)}, got "
                        f"{' '.join(cfg.eval_metrics)}")
    return cfg


# The valid range of each numeric flag (`common.check_limits` names the first one outside it);
# height and width: person crops (224x224 in the paper); at 1024 px a training batch of 32 no
# longer fits a GPU. 2048 attention channels: ResNet-50's widest layer. `resolve` adds the ranges
# that join two flags.
LIMITS = dict(height="[32, 1024]", width="[32, 1024]", lr_step="[1, inf)", threshold="[0, 1)",
              lambda1="[0, inf)", lambda2="[0, inf)", epochs="[1, inf)", lr_gamma="(0, 1]",
              random_erasing="[0, 1]", seed="[0, 4294967295]", batch_size="[2, inf)", lr="(0, inf)",
              momentum="[0, 1)", dropout="[0, 1)", grid="[1, inf)", pad="[0, inf)", omega="[0, 1)",
              attention_channels="[1, 2048]", occlusion_chunk="[0, inf)", weight_decay="[0, inf)")

# The flags a resumed run may change: none of them changes the weights
RESUME_MAY_DIFFER = ("resume", "device", "eval_metrics")


# --- The demo: the three stages on the synthetic data, minutes on 2 CPU cores ---------------------

# A ResNet-18 from the synthetic pretrained backbone (`python pretrain.py`, the offline stand-in
# for ImageNet; the classifier is a new layer) at 64x32 (f_r 8x4 after conv3_x, grid cells 2x1),
# no crop padding and stage 1's lr 10x the paper's (STARTS), stages 2 and 3 train at
# 0.004, 40x: near the paper's share of stage 1's lr x steps in 5 epochs instead of its 10
DEMO = dict(dataset="synthetic", height=64, width=32, pad=0, weights="synthetic", arch="resnet18",
            batch_size=32, dropout=0.5, eval_metrics=())  # the demo evaluates, into one table
DEMO_METRICS = ("euclidean", "xqda", "kissme")
# Each start's weights for stage 1, its lr there and the crop's padding (`python tools.py
# compare aaanet --start`), the same for every row; the demo uses the pretrained start's. Chosen
# on the validation benchmark data/synthetic_val, never on the test queries (docs/results.md)
STARTS = {"pretrained": dict(weights="synthetic", stage1_lr=0.01, pad=0),
          "random": dict(weights="none", stage1_lr=0.03, pad=0)}
# each stage's epochs, lr and lr step; the compare's control row (`continued_schedule`) and the
# demo's budget lines (`stage_budget`) follow them. Stages 2 and 3: 5 epochs at 0.004, so that
# each one's lr x steps is near the paper's share of stage 1's (`stage_budget`; from random
# weights, stage 1's larger lr makes their share smaller)
DEMO_STAGES = {"stage1": dict(epochs=15, lr=STARTS["pretrained"]["stage1_lr"], lr_step=12),
               "stage2": dict(epochs=5, lr=0.004, lr_step=4),
               "stage3": dict(epochs=5, lr=0.004, lr_step=4)}


def lr_steps(epochs, lr, lr_step, steps_per_epoch, gamma=0.1):
    """lr x steps: the lr of each SGD step of a stage, summed over its steps. The lr of 0-based
    epoch e is lr * gamma^(e // lr_step) (Sec. 4.2, `common.step_schedule`), so
        lr_steps = sum over e = 0..epochs-1 of steps_per_epoch * lr * gamma^(e // lr_step)
    A stage's budget: how far its SGD steps may move the weights, in units of the lr."""
    return sum(steps_per_epoch * lr * gamma ** (e // lr_step) for e in range(epochs))


def stage_budget(steps_per_epoch):
    """The text lines that weigh DEMO_STAGES' stages 2 and 3 against stage 1 by `lr_steps`, as a
    share of stage 1's, beside the paper's (Sec. 4.2: stage 1 lr 0.001 x0.1 every 2 epochs,
    stages 2 and 3 lr 0.0001 x0.1 every 3, 10 epochs each; with equal steps per epoch, which
    cancel in the share, (0.0001 x 3.331) / (0.001 x 2.2222): about 15%). steps_per_epoch: the
    demo's batches per epoch, the same in its three stages."""
    demo_cfgs = {s: Config(**DEMO_STAGES[s]) for s in STAGE_NAMES}
    # Config's defaults are the paper's, `resolve` fills in each stage's lr and lr step
    paper_cfgs = {s: resolve(Config(root="."), s) for s in STAGE_NAMES}

    def share(cfgs, stage):  # % of stage 1's lr x steps
        budget = {s: lr_steps(c.epochs, c.lr, c.lr_step, steps_per_epoch, c.lr_gamma)
                  for s, c in cfgs.items()}
        return 100 * budget[stage] / budget["stage1"]

    def schedule(cfg):
        return f"{cfg.epochs} epochs, lr {cfg.lr:g} x{cfg.lr_gamma:g} every {cfg.lr_step}"
    lines = [f"lr x steps (each SGD step's lr, summed over a stage; {steps_per_epoch} steps per "
             "epoch here, equal steps per epoch in the paper) as a share of stage 1's:"]
    for stage in ("stage2", "stage3"):
        lines.append(f"  {stage}: demo {share(demo_cfgs, stage):.1f}% ("
                     f"{schedule(demo_cfgs[stage])}), paper {share(paper_cfgs, stage):.1f}% "
                     f"({schedule(paper_cfgs[stage])}, Sec. 4.2)")
    return lines


def demo_parser():
    """The demo's flags: a few of Config's, with the demo's defaults."""
    parser = argparse.ArgumentParser(prog="aaanet.py demo", description=demo.__doc__)
    flags = ("out", "seed", "device", "precision", "resume", "arch")
    defaults = dict(out="runs/aaanet_demo", arch=DEMO["arch"])
    return common.add_config_args(parser, Config, only=flags, defaults=defaults)


def demo(args):
    """python aaanet.py [demo]: the three stages on data/synthetic, stage 1 from the synthetic
    pretrained backbone (`python pretrain.py` builds it), then one table under Euclidean, XQDA and
    KISSME, as Tables 3-5, of: the network with random weights, the network stage 1 starts from
    (before any step), stage 1 and stage 3. --resume: complete stages are loaded, the first
    incomplete one resumed, the rest run anew."""
    start = time.time()
    root = data.demo_dataset()  # written by `python synthetic.py`: refused here if it is missing
    ds = data.load_dataset(root, "synthetic")  # read once, for the three stages
    base = Config(root=root, **{**DEMO, **vars(args)})  # args: the flags above
    resolve(base, "stage1")  # the flags (--seed) checked before any work
    device = common.pick_device(args.device)
    size = (base.height, base.width)
    images = {}  # the decoded images, shared by the stages and the evaluations
    stages = ", ".join(f"{s} {v['epochs']} epochs lr {v['lr']}" for s, v in DEMO_STAGES.items())
    print(f"demo: {base.arch}, weights {base.weights} (the stand-in for ImageNet that `python "
          f"pretrain.py` builds), {size[0]}x{size[1]} inputs, batch {base.batch_size}, {stages}")
    # the stages' lr x steps beside the paper's; an epoch: the training set's complete batches
    for line in stage_budget(len(ds.train) // base.batch_size):
        print(line)

    def score(model):  # one row per metric
        return evaluate.evaluate_model(model.to(device), ds, size, device, DEMO_METRICS,
                                       images=images, precision=args.precision)
    # the network stage 1 starts from: train_stage draws it from the same seed, the backbone of
    # DEMO's weights and a new classifier. Before it, the same network with random weights, drawn
    # apart so that the seeded draws stay as they are (its classifier and attention branch are
    # the start's)
    common.seed_everything(args.seed)
    with torch.random.fork_rng(devices=[]):
        random_network = AAANet(ds.num_train_pids, base.point, base.dropout,
                                base.attention_channels, "none", base.arch)
    start_network = AAANet(ds.num_train_pids, base.point, base.dropout, base.attention_channels,
                           base.weights, base.arch)
    results = {"random weights": score(random_network),
               f"start: weights {base.weights}": score(start_network)}
    resuming = args.resume  # stays True while every stage so far was complete in OUT
    for stage in STAGE_NAMES:
        cfg = dataclasses.replace(base, **DEMO_STAGES[stage])
        last = os.path.join(args.out, stage, "last.pt")
        resume = resuming and os.path.isfile(last)
        # a complete stage is loaded, not trained; after an incomplete one the rest start anew
        if resume:
            resuming = common.load_checkpoint(last).get("epoch") == cfg.epochs
        else:
            resuming = False
        model, _ = train_stage(dataclasses.replace(cfg, resume=resume), stage, ds, images)
        if stage != "stage2":  # stage 2 leaves the test feature as it was
            results[stage] = score(model)
    rows = {f"{name} {metric}": r for name, by_metric in results.items()
            for metric, r in by_metric.items()}
    print(evaluate.format_table(rows, label="network, metric"))
    print(f"demo: {time.time() - start:.0f} s in all")
    return results


# --- Tables 3-5 in miniature: the rows of `python tools.py compare aaanet` ------------------------

# a compare row's stage beside the demo's three: stage 1 again, from the "Stage 1" row's network
CONTINUED = "stage1, continued"
# (row, (its stages, its settings over the demo's), its cost in stage-1 runs). A row that does
# not begin with stage 1 (CONTINUED included) starts from the "Stage 1" row's run of its seed,
# which runs first. Table 3's conv4_x point gets a 2 x 2 grid and conv5_x no row: at the demo's
# 64x32 inputs f_r is 4x2 after conv4_x and 2x1 after conv5_x, too small for a 4 x 4 grid
COMPARE = [("Stage 1", (["stage1"], {}), 1),
           ("Stage 3", (["stage2", "stage3"], {}), 1.1),
           # a control, not a paper row: stage 1's training goes on for the epochs that stages 2
           # and 3 add (`continued_schedule`), so that Stage 3 meets as much extra training
           ("Stage 1, continued", ([CONTINUED], {}), 0.7),
           ("without stage 2", (["stage3"], dict(mask_source="response")), 0.75),
           ("random erasing", (["stage1"], dict(random_erasing=0.5)), 1),
           ("conv2_x", (["stage2", "stage3"], dict(point="conv2_x")), 1.5),
           ("conv4_x, 2x2 grid", (["stage2", "stage3"], dict(point="conv4_x", grid=2)), 0.8)]
# (better, worse, where the paper says so)
CLAIMS = [("Stage 3", "Stage 1", "Tables 3-5"),
          ("Stage 3", "Stage 1, continued", "a control, not the paper's: the same extra epochs"),
          ("Stage 3", "without stage 2", "Table 4"),
          ("without stage 2", "Stage 1", "Table 4"),
          ("Stage 3", "random erasing", "Table 5"),
          ("random erasing", "Stage 1", "Table 5"),
          ("Stage 3", "conv2_x", "Table 3"),
          ("conv2_x", "Stage 1", "Table 3"),
          ("conv4_x, 2x2 grid", "Stage 1", "Table 3")]


def continued_schedule(stages=None):
    """CONTINUED's epochs, lr and lr step: as many epochs as the stages 2 and 3 of `stages`
    (None: DEMO_STAGES) add together, at stage 3's lr and lr step. The stage is stage 1's
    (cross-entropy, all of stage 1's parameters, its dropout) from the "Stage 1" row's network,
    so that "Stage 3 > Stage 1, continued" weighs the method against the same amount of extra
    training."""
    stages = DEMO_STAGES if stages is None else stages
    epochs = stages["stage2"]["epochs"] + stages["stage3"]["epochs"]
    stage3 = stages["stage3"]
    return dict(epochs=epochs, lr=stage3["lr"], lr_step=stage3["lr_step"])


def apply_settings(settings, schedules):
    """A compare's --set {"stageN.field" or Config field: value (a string)}: each stageN.field
    written into `schedules` ({stage: its epochs, lr, lr_step}) -> {Config field: value}, the
    rest, each value typed as its field; a key that is neither, or a number that is not one, is
    a UserError."""
    overrides = {}
    types = get_type_hints(Config)  # {field: int, float, str, a Literal, ...}
    for key, value in settings.items():
        stage, _, field = key.rpartition(".")
        if field not in types or (stage and stage not in schedules):
            raise UserError(f"--set {key}={value}: expected a field of aaanet.py's Config, "
                            "or stageN.epochs, stageN.lr, stageN.lr_step")
        # a number field (Optional[float] too) gets its number; a choice stays a string
        numeric = [t for t in (types[field], *get_args(types[field])) if t in (int, float)]
        typed = value
        if numeric:
            try:
                typed = numeric[0](value)
            except ValueError:
                raise UserError(f"--set {key}={value}: expected a number") from None
        if stage:
            schedules[stage][field] = typed
        else:
            overrides[field] = typed
    return overrides


def compare_run(spec, seed, out, device, resume, loaded, root="data/synthetic",
                start="pretrained", settings=None):
    """One run of the compare: a row's stages (spec = (stages, settings)) trained as the demo's in
    folder `out` on the synthetic benchmark at `root` (each stage resumed from its last.pt if
    `resume` and there is one) -> {metric: rank_metrics} of its last stage. `loaded`: a dict
    shared by the compare's runs, filled here with the dataset and its decoded images, so they
    are read once. start: a key of STARTS, stage 1's start in the rows that begin with stage 1;
    the other rows start from the "Stage 1" row's network, whatever it started from.
    settings: {"stageN.field" or Config field: value} over the demo's, in every row (e.g.
    {"stage1.lr": "0.003"}), how the demo's settings are chosen on the validation benchmark."""
    stages, row_settings = spec
    # the "Stage 1" row's run of this seed: OUT/Stage_1/seed<seed>/stage1, beside OUT/<row>/...
    row_folders = os.path.dirname(os.path.dirname(out))
    shared = os.path.join(row_folders, "Stage_1", f"seed{seed}", "stage1", "last.pt")
    if loaded.get("asked") != root:  # the first run, or another benchmark than the last run's
        loaded["asked"] = root
        loaded["root"] = data.demo_dataset(root)
        loaded["ds"] = data.load_dataset(loaded["root"], "synthetic")
        loaded["images"] = {}
    # the epochs, lr and lr step of each stage a row names; stage 1's lr is the start's
    schedules = {name: dict(values) for name, values in DEMO_STAGES.items()}
    schedules["stage1"]["lr"] = STARTS[start]["stage1_lr"]
    overrides = apply_settings(settings or {}, schedules)  # Config fields over the demo's
    # the control's epochs follow the stages 2 and 3 trained here
    schedules[CONTINUED] = continued_schedule(schedules)
    # the demo's settings, stage 1 from the start's weights, the settings and the row's over them
    start_settings = {k: STARTS[start][k] for k in ("weights", "pad")}
    row = {**DEMO, **start_settings, **overrides, **row_settings}
    base = Config(root=loaded["root"], **row, seed=seed, device=device, out=out)
    results = {}
    for name in stages:
        stage = "stage1" if name == CONTINUED else name  # the control trains stage 1 again
        resume_stage = resume and os.path.isfile(os.path.join(out, stage, "last.pt"))
        init = ""
        if name == stages[0] and name != "stage1":  # from the "Stage 1" row's network
            init = shared
        metrics = DEMO_METRICS if name == stages[-1] else ()
        cfg = dataclasses.replace(base, **schedules[name], resume=resume_stage, init=init,
                                  eval_metrics=metrics)
        _, results = train_stage(cfg, stage, loaded["ds"], loaded["images"])
    return results


# the columns of stage 3's log.csv that `run_diagnostics` reads per epoch
DIAGNOSTICS = ("gate_pass", "gate_batches", "L_r")


def run_diagnostics(folder):
    """Stage 3's diagnostics of a compare run in `folder` (compare_run's `out`), from its
    stage3/log.csv -> {name: float}; for each epoch e (1, 2, ...): "gate_pass, epoch e", the share
    of samples whose omega gate of Eq. (4) opens; "gate_batches, epoch e", the share of batches
    in which it opens for at least one sample; "L_r, epoch e", Eq. (3)'s mean. Does Eq. (4) act
    at all? {} for a row without stage 3, or a log without one of these columns."""
    path = os.path.join(folder, "stage3", "log.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        log = list(csv.DictReader(f))
    diagnostics = {}
    for row in log:
        for column in DIAGNOSTICS:
            if not row.get(column):  # a log without this column (or an empty cell): none
                return {}
            diagnostics[f"{column}, epoch {int(row['epoch'])}"] = float(row[column])
    return diagnostics


# --- Command line ---------------------------------------------------------------------------------

def run(argv):
    """python aaanet.py [stage1|stage2|stage3|demo] [flags]; no command: the demo. Returns what
    the command returns; None if Ctrl-C or SIGTERM stopped it (the resume command is printed)."""
    command = "demo"
    rest = argv
    if argv and not argv[0].startswith("-"):
        command = argv[0]
        rest = argv[1:]
    if command not in (*STAGE_NAMES, "demo"):
        raise UserError(f"unknown command {command!r}; expected one of {', '.join(STAGE_NAMES)}, "
                        "demo (or nothing: the demo). Fig. 4 and Tables 3-5 in miniature: "
                        "python tools.py figure aaanet, python tools.py compare aaanet")
    if command == "demo":
        args = demo_parser().parse_args(rest)
        folder = args.out
    else:
        parser = argparse.ArgumentParser(prog=f"aaanet.py {command}", description=f"Train "
                                         f"AAA-Net's {command} (defaults: the paper's, Sec. 4.2).")
        args = common.add_config_args(parser, Config).parse_args(rest)
        folder = os.path.join(args.out, command)
    common.stop_on_sigterm()  # SIGTERM (a cluster's time limit, `kill`) stops it as Ctrl-C does
    try:
        if command == "demo":
            return demo(args)
        return train_stage(common.config_from_args(Config, args), command)
    except KeyboardInterrupt as stop:
        common.report_stop(stop, folder)
        return None


def main(argv=None):
    """`python aaanet.py ...`; a UserError becomes `error: ...` and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return common.exit_on_user_error(run, argv)


if __name__ == "__main__":
    main()

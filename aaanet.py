"""
AAA-Net: "Attention-Aware Adversarial Network for Person Re-Identification",
Appl. Sci. 2019, 9(8):1550, doi:10.3390/app9081550.

A ResNet-50 identity classifier (stage 1) gets an attention branch on a middle feature map, trained
against the hardest of 16 grid-occluded copies of that map (stage 2); then the whole network is
trained on the map and on a copy occluded where the attention is high, with a gated adversarial loss (stage 3).

Paper map (paper step / equation -> code):
  Sec. 3.1, baseline: ResNet-50 -> pool -> dropout -> FC, softmax  -> `AAANet`, `stage1_loss`
  "middle layer" f_r (after conv3_x by default, Sec. 4.4)         -> `AAANet.middle`, `AAANet.rest`
  Sec. 3.2, "several stacked convolutional layers" -> M_att         -> `AAANet.attention_map`
  Algorithm 1 steps 1-2: a 4 x 4 grid, each cell occluded in turn  -> `grid_masks`, `grid_occlusions`
  Algorithm 1 steps 3-4: the 16 copies classified, lowest p kept   -> `hardest_occlusion`
  M_occ, the difficult sample's response ("fits the feature response range") -> `occlusion_map`
  Eq. (1) L_adv = L_att + L_r; Eq. (2) L_att; Eq. (3) L_r          -> `stage2_loss`, `attention_loss`, `regularization_loss`
  Algorithm 1 step 5, only the attention branch learns             -> `stage2_loss`, `set_stage_modes`, `stage_parameters`
  Algorithm 2 step 1, the 0-1 mask from M_att                      -> `attention_mask` (`response_mask`: Table 4)
  Algorithm 2 steps 2-3, occluded f_r, p_bf and p_af               -> `stage3_loss`, `true_class_probability`
  Eq. (4), the per-sample omega gate on p_bf - p_af                 -> `adversarial_loss`
  Algorithm 2 step 4, the whole network learns                     -> `stage3_loss`, `stage_parameters`
  Sec. 4.2, SGD, lr and its decay, 10 epochs per stage             -> `resolve`, `train_stage`
  Sec. 4.1 / Tables 1-5, Euclidean, XQDA, KISSME on the pooled 2048-d feature -> `AAANet.forward`, `model_from_checkpoint`
  Fig. 4, images, attention maps, occluded regions drawn black      -> `figure`

One command per stage (real data; each stage starts from the previous stage's checkpoint):
  python aaanet.py stage1 --root DATA --dataset market1501 --out runs/aaanet   # -> runs/aaanet/stage1/last.pt
  python aaanet.py stage2 --root DATA --dataset market1501 --out runs/aaanet   # --init runs/aaanet/stage1/last.pt
  python aaanet.py stage3 --root DATA --dataset market1501 --out runs/aaanet   # --init runs/aaanet/stage2/last.pt
  python evaluate.py --checkpoint runs/aaanet/stage3/last.pt --root DATA --dataset market1501 --metric euclidean xqda kissme
  python aaanet.py figure --checkpoint runs/aaanet/stage3/last.pt --out fig4.png      # Fig. 4
  python aaanet.py benchmark        # stage-1 vs stage-2 vs stage-3 step on one batch, with the floor
  python aaanet.py                  # demo: all three stages on synthetic data, CPU-sized (~2 min)
Checkpoints and faults (`train_stage`): each stage writes OUT/<stage>/last.pt at every epoch end
(atomically) and best.pt (lowest epoch-mean total loss: L_ce, L_adv, L). --resume continues from
last.pt (same flags; on the CPU bit-identical to an uninterrupted run); Ctrl-C or SIGTERM finishes
the step, writes last.pt, prints the command to resume and exits 0; a NaN or infinite loss stops
the run naming the step and the term (exit 2), last.pt untouched. `python aaanet.py demo --resume`
loads the stages that finished and resumes the first that did not. --precision auto|bf16|fp32
picks the training step's autocast (auto: bf16 on CUDA, none on the CPU).
Ablation flags: --lambda1/--lambda2 (Table 1), --omega (Table 2), --point conv2_x..conv5_x (Table 3),
stage3 --mask-source response from stage 1 (Table 4), stage1 --random-erasing 0.5 (Table 5),
--m-occ binary (SPEC.md's second reading of M_occ).

Choices where the paper and SPEC.md are silent (each marked "Choice (not in the paper)" at its line):
  - Grid cells when H or W is not a multiple of 4: feature row y lies in cell row floor(4y / H)
    (columns alike), so the 16 cells tile the map exactly; a map smaller than 4 leaves some cells
    empty (their copy equals f_r).
  - The attention branch: conv 1x1 C->64, BN, ReLU, conv 3x3 64->64, BN, ReLU, conv 1x1 64->1;
    the output is the raw (unbounded) M_att at f_r's resolution.
  - The backbone keeps ResNet-50's last stride 2 (224x224 -> conv5_x 7x7); the classifier's
    weights start from N(0, 0.001^2), bias 0 (the IDE baseline's initialisation).
  - Batch size 32; each epoch is one shuffled pass over the training images (softmax-only
    training needs no PK batches), the last incomplete batch dropped (BatchNorm needs 2+ samples).
  - SGD with momentum 0.9 and weight decay 5e-4; augmentation flip + pad 10 + random crop in all
    three stages (data.augment); dropout 0.5 for CUHK03 and the synthetic set.
  - Eq. (2) and (3): the L1 norms are sums over the map's positions, per image; each loss is
    averaged over the batch. Eq. (4)'s gated term is averaged over the whole batch (samples that
    fail the gate add 0).
  - Stage 3: the 0-1 mask marks the positions to occlude (per-image min-max normalised relu(M_att)
    above 0.5), and the occluded map is f_r * (1 - mask); see `attention_mask`.
  - Stage 3: f_r and its occluded copy go through the rest of the network as one batch of 2B;
    the loss is CE(f_r) + CE(occluded) + Eq. (4) in every step (the paper's "take turns" is not
    specified further). p_bf and p_af come from that training pass (dropout on), without gradient.
  - Stage 3: M_occ is recomputed by the grid occlusion through the current network in eval mode,
    without gradient, as in stage 2. The hard mask carries no gradient, so the attention branch
    learns only through Eq. (4).
  - Table 4 ("without fine-tuning"): stage 3 from stage 1 with a freshly initialised attention
    branch, still trained by Eq. (4); the mask is the round(HW/3) positions of highest channel-
    mean f_r, ties to the lower index.
  - Stage 2 is not evaluated: the backbone is frozen, so its test feature is stage 1's.
  - best.pt is the epoch with the lowest mean training loss (no validation split; common.RunCheckpoints);
    a checkpoint written by a stop signal mid-epoch carries the loss sums of the steps so far, so
    the resumed epoch's mean still covers all of its steps.
  - --resume may change only --device and --eval-metrics (`RESUME_MAY_DIFFER`); any other flag
    would make the resumed run a different run, so it is refused, naming the flag.
"""
import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import common
import data
import evaluate
from common import UserError

STAGE_NAMES = ("stage1", "stage2", "stage3")
POINTS = ("conv2_x", "conv3_x", "conv4_x", "conv5_x")  # Table 3: the occlusion after each module
METRICS = ("euclidean", "cosine", "xqda", "kissme")


@dataclasses.dataclass
class Config:
    """Every setting of one stage's run; saved in each checkpoint and reloaded whole by
    `model_from_checkpoint`. Defaults are the paper's for real data (Sec. 4.2)."""
    root: str = ""  # dataset folder in the Market-1501 layout (required by the stage commands)
    dataset: str = "market1501"  # market1501, duke, cuhk03-labeled, cuhk03-detected or synthetic (Sec. 4.1)
    height: int = 224  # input height, Sec. 4.2 ("resized to 224 x 224")
    width: int = 224  # input width, Sec. 4.2
    weights: str = "imagenet"  # stage 1's ResNet-50 start: imagenet, none or a state-dict path (Sec. 3.1)
    dropout: Optional[float] = None  # dropout before the classifier, Sec. 4.2: 0.5 Market1501, 0.6 DukeMTMC-reID (None: by --dataset)
    point: Literal["conv2_x", "conv3_x", "conv4_x", "conv5_x"] = "conv3_x"  # the middle layer f_r comes from, Sec. 4.4 / Table 3
    attention_channels: int = 64  # channels of the attention branch's convs, Sec. 3.2 (width not given)
    grid: int = 4  # f_r is occluded cell by cell on a grid x grid grid, Algorithm 1 step 1 (16 copies)
    m_occ: Literal["response", "binary"] = "response"  # M_occ in Eq. (2): the difficult sample's scaled response, or 0 on its cell / 1 elsewhere
    occlusion_chunk: int = 0  # images whose 16 copies go through the network per pass (0: the whole batch at once)
    threshold: float = 0.5  # Algorithm 2 step 1: occlude where min-max normalised relu(M_att) > threshold (SPEC.md)
    mask_source: Literal["attention", "response"] = "attention"  # stage-3 mask: M_att, or Table 4's top third of f_r's response
    lambda1: float = 0.3  # lambda1, weight of L1 = L_r in Eq. (4), Sec. 4.2 / Table 1
    lambda2: float = 1.7  # lambda2, weight of L2 = L_att in Eq. (4), Sec. 4.2 / Table 1
    omega: float = 0.04  # omega, the gate on p_bf - p_af in Eq. (4), Sec. 4.3 / Table 2
    pad: int = 10  # pixels of zero padding before the random crop of the augmentation (not in the paper)
    random_erasing: float = 0.0  # random-erasing probability on the input images; 0.5 in stage 1 = Table 5's baseline
    # Choice (not in the paper): batch size 32, pad 10, SGD momentum 0.9 and weight decay 5e-4
    batch_size: int = 32  # images per SGD step (not in the paper)
    epochs: int = 10  # epochs of this stage, Sec. 4.2 (each network "converged after 10 epochs")
    lr: Optional[float] = None  # SGD learning rate, Sec. 4.2: 0.001 in stage 1, 0.0001 in stages 2-3 (None: by stage)
    lr_step: Optional[int] = None  # lr x lr_gamma every this many epochs, Sec. 4.2: 2 in stage 1, 3 in stages 2-3 (None: by stage)
    lr_gamma: float = 0.1  # the decay factor, Sec. 4.2
    momentum: float = 0.9  # SGD momentum (not in the paper)
    weight_decay: float = 5e-4  # SGD weight decay (not in the paper)
    out: str = "runs/aaanet"  # checkpoints go to OUT/stage1/last.pt, OUT/stage2/last.pt, OUT/stage3/last.pt
    init: str = ""  # the previous stage's checkpoint (empty: OUT/stage1/last.pt for stage 2, OUT/stage2/last.pt for stage 3)
    eval_metrics: tuple[str, ...] = ("euclidean", "xqda", "kissme")  # metrics printed after the stage (none: skip), Tables 1-5
    seed: int = 0  # seeds the weights, the batch order and the augmentation
    device: str = "auto"  # auto (CUDA if present), cpu, cuda or cuda:N
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # autocast of the training step: auto = bf16 on CUDA, fp32 on the CPU
    resume: bool = False  # continue from OUT/<stage>/last.pt (weights, optimizer, schedule, epoch, step, RNG states), same flags
    skip_bad_files: bool = False  # warn about and skip image files whose name does not parse or that do not decode


def resolve(cfg, stage):
    """The config with the stage's paper defaults filled in and every value checked (UserError).

    Sec. 4.2: stage 1 lr 0.001 x0.1 every 2 epochs; stages 2 and 3 lr 0.0001 x0.1 every 3 epochs;
    dropout 0.5 (Market1501) / 0.6 (DukeMTMC-reID).
    """
    lr = cfg.lr if cfg.lr is not None else (0.001 if stage == "stage1" else 0.0001)
    lr_step = cfg.lr_step if cfg.lr_step is not None else (2 if stage == "stage1" else 3)
    # Choice (not in the paper): 0.5 for the datasets the paper does not train on (CUHK03, synthetic)
    dropout = cfg.dropout if cfg.dropout is not None else (0.6 if cfg.dataset == "duke" else 0.5)
    # the checkpoint this stage starts from; Table 4 ("without fine-tuning") skips stage 2
    previous = {"stage1": "", "stage2": "stage1", "stage3": "stage1" if cfg.mask_source == "response" else "stage2"}[stage]
    init = cfg.init or (os.path.join(cfg.out, previous, "last.pt") if previous else "")
    cfg = dataclasses.replace(cfg, lr=lr, lr_step=lr_step, dropout=dropout, init=init)
    checks = [
        (bool(cfg.root), "--root is required: the dataset folder in the Market-1501 layout (python aaanet.py "
                         "with no arguments runs the synthetic demo)"),
        (cfg.height >= 32 and cfg.width >= 32, f"--height and --width must be at least 32, got {cfg.height}x{cfg.width}"),
        (cfg.batch_size >= 2, f"--batch-size must be at least 2 (BatchNorm needs 2 samples), got {cfg.batch_size}"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.lr_step >= 1, f"--lr-step must be at least 1 epoch, got {cfg.lr_step}"),
        (0 < cfg.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {cfg.lr_gamma}"),
        (cfg.momentum >= 0 and cfg.weight_decay >= 0, "--momentum and --weight-decay must be >= 0"),
        (0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}"),
        (cfg.pad >= 0, f"--pad must be >= 0, got {cfg.pad}"),
        (0 <= cfg.random_erasing <= 1, f"--random-erasing is a probability in [0, 1], got {cfg.random_erasing}"),
        (cfg.grid >= 1, f"--grid must be at least 1, got {cfg.grid}"),
        (cfg.attention_channels >= 1, f"--attention-channels must be at least 1, got {cfg.attention_channels}"),
        (cfg.occlusion_chunk >= 0, f"--occlusion-chunk must be >= 0 (0: one pass), got {cfg.occlusion_chunk}"),
        (0 <= cfg.threshold < 1, f"--threshold must be in [0, 1), got {cfg.threshold}"),
        (cfg.lambda1 >= 0 and cfg.lambda2 >= 0, f"--lambda1 and --lambda2 must be >= 0, got {cfg.lambda1}, {cfg.lambda2}"),
        (0 <= cfg.omega < 1, f"--omega compares two probabilities and must be in [0, 1), got {cfg.omega}"),
        (set(cfg.eval_metrics) <= set(METRICS), f"--eval-metrics: expected some of {', '.join(METRICS)}, "
                                                f"got {' '.join(cfg.eval_metrics)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return cfg


# -----------------------------------------------------------------------------
# The network: ResNet-50 baseline (Sec. 3.1) + attention branch on the middle layer (Sec. 3.2)

class AAANet(nn.Module):
    """ResNet-50 -> global average pool (2048-d) -> dropout -> FC over the training identities
    (Sec. 3.1), cut at the middle layer `point` so that f_r can be occluded before the rest runs,
    plus the attention branch that maps f_r to a one-channel M_att (Sec. 3.2).

        x [B, 3, H, W] -> middle -> f_r [B, C, h, w] -> rest -> g [B, 2048] -> classify -> logits [B, N]
                                       f_r -> attention_map -> M_att [B, h, w]

    forward(x) is the test feature: g of the unoccluded image (SPEC.md), in eval() mode.
    """

    def __init__(self, num_classes, point="conv3_x", dropout=0.5, attention_channels=64, weights="imagenet"):
        super().__init__()
        if point not in POINTS:
            raise UserError(f"--point {point!r}: expected one of {', '.join(POINTS)}")
        # Choice (not in the paper): ResNet-50's own last stride 2 (SPEC.md names no change)
        self.backbone = common.Backbone(weights, last_stride=2)
        self.point = common.PAPER_STAGE_NAMES[point]  # torchvision's name: conv3_x -> layer2
        # the stages after the middle layer (none when the occlusion follows conv5_x)
        self.after = common.STAGES[common.STAGES.index(self.point) + 1:]
        self.dropout = nn.Dropout(dropout)  # Sec. 4.2: 0.5 Market1501, 0.6 DukeMTMC-reID
        self.classifier = nn.Linear(2048, num_classes)
        # Choice (not in the paper): N(0, 0.001^2) weights, zero bias, as the IDE baseline
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)
        # Choice (not in the paper): the "several stacked convolutional layers" of Sec. 3.2. A 1x1
        # conv first narrows C (256..2048) to a few channels, so the branch costs ~1% of the
        # backbone's FLOPs after conv3_x (4% after conv2_x); the 3x3 conv lets each position see its neighbours; the last 1x1 conv gives
        # the raw M_att (no ReLU or sigmoid: Eq. (2) takes max(M_att, 0) itself).
        C, a = common.STAGE_CHANNELS[self.point], attention_channels
        self.attention = nn.Sequential(
            nn.Conv2d(C, a, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
            nn.Conv2d(a, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
            nn.Conv2d(a, 1, 1))

    def middle(self, x):
        """f_r: the middle-layer feature maps, "the convolutional modules in the baseline network" up to `point`."""
        return self.backbone.run(x, "conv1", self.point)

    def rest(self, f):
        """The rest of the CNN after the middle layer, then global average pooling: f [B, C, h, w] -> g [B, 2048]."""
        for name in self.after:
            f = getattr(self.backbone, name)(f)
        return f.mean(dim=(2, 3))

    def classify(self, g):
        """Identity scores s (Sec. 3.1): dropout then the FC layer, [B, 2048] -> [B, N]."""
        return self.classifier(self.dropout(g))

    def logits_from_middle(self, f):
        """Scores of (possibly occluded) middle-layer maps: f [B, C, h, w] -> [B, N]."""
        return self.classify(self.rest(f))

    def attention_map(self, f_r):
        """M_att [B, h, w]: the attention branch on f_r, raw (unbounded), at f_r's resolution (Sec. 3.2)."""
        return self.attention(f_r)[:, 0]  # [B, 1, h, w] -> [B, h, w]

    def forward(self, x):
        """The test feature: the 2048-d pooled feature of the unoccluded image."""
        return self.rest(self.middle(x))


# -----------------------------------------------------------------------------
# Algorithm 1, steps 1-4: the 16 occluded copies and the difficult sample

def grid_masks(H, W, grid=4, device=None):
    """keep [grid*grid, H, W] bool: copy k has cell k (row k // grid, column k % grid) False, the rest True.

    Choice (not in the paper): feature row y belongs to cell row floor(grid * y / H) (cell row i
    starts at row ceil(i * H / grid)), columns alike; so the cells tile any H x W exactly (7 rows:
    2, 2, 2, 1) and every position is occluded in exactly one copy. With H < grid some cell rows
    are empty (3 rows: 1, 1, 1, 0) and their copies equal the unoccluded map.
    """
    # Algorithm 1 step 1: "divided equally into 16 with a square grid"
    rows = torch.arange(H, device=device) * grid // H                 # [H] cell row of each feature row
    cols = torch.arange(W, device=device) * grid // W                 # [W] cell column of each feature column
    cell = rows[:, None] * grid + cols[None, :]                       # [H, W] cell index of each position
    # Algorithm 1 step 2: "each grid ... is occluded and reproduced in sequence"
    return cell[None] != torch.arange(grid * grid, device=device)[:, None, None]  # [G, H, W]


def grid_occlusions(f, grid=4):
    """The grid*grid occluded copies of f [B, C, H, W] -> [B, G, C, H, W]: copy k is f with cell k zeroed."""
    B, C, H, W = f.shape
    keep = grid_masks(H, W, grid, f.device).to(f.dtype)               # [G, H, W]
    return f[:, None] * keep[None, :, None]                            # [B, 1, C, H, W] * [1, G, 1, H, W]


def true_class_probability(logits, y):
    """p: the softmax probability of the true class, [B, N] logits -> [B] (fp32 even under autocast)."""
    return F.softmax(logits.float(), dim=1).gather(1, y[:, None])[:, 0]


@torch.no_grad()
def hardest_occlusion(logits_of, f_r, y, grid=4, chunk=0):
    """Algorithm 1 steps 3-4: classify every occluded copy, keep the one the classifier finds hardest.

    logits_of: occluded maps [n, C, h, w] -> scores [n, N] (the rest of the frozen network).
    Returns k [B], the index of each image's difficult sample (lowest true-class probability),
    and p [B, G], the true-class probability of every copy.

    All copies of `chunk` images (0: the whole batch) go through the network as ONE batch of
    chunk * G maps, without gradient: the copies only choose a target, nothing is learned from
    them, so no activations are kept for a backward pass (16 forward passes of the rest of the
    network, not 16 forward + backward passes).
    """
    B, C, H, W = f_r.shape
    G = grid * grid
    chunk = chunk or B
    p = []
    for start in range(0, B, chunk):  # one pass unless --occlusion-chunk asks for several (memory)
        copies = grid_occlusions(f_r[start:start + chunk], grid)     # [b, G, C, H, W]
        b = copies.shape[0]
        logits = logits_of(copies.reshape(b * G, C, H, W))            # [b*G, N], copies of an image adjacent
        y_copies = y[start:start + chunk].repeat_interleave(G)        # [b*G] each image's label G times
        # Algorithm 1 step 3: "classification probability" of each copy = softmax true-class p
        p.append(true_class_probability(logits, y_copies).view(b, G))  # [b*G] -> [b, G]
    p = torch.cat(p)                                                   # [B, G]
    # Algorithm 1 step 4: "the feature maps with the lowest classification probability"
    return p.argmin(dim=1), p


@torch.no_grad()
def occlusion_map(f_r, k, grid=4, reading="response"):
    """M_occ [B, h, w] of Eq. (2), from the difficult sample (copy k [B] of f_r [B, C, h, w]).

    response (SPEC.md): the channel-mean of |f_occ| divided by its per-image maximum, so the most
      discriminative cell reads 0 and the rest follows the feature response ("This allows the
      attention map to fit the feature response range", Sec. 3.2);
    binary (SPEC.md's second reading): 0 on the occluded cell, 1 elsewhere.
    """
    B, C, H, W = f_r.shape
    keep = grid_masks(H, W, grid, f_r.device)[k].float()              # [B, H, W]: the difficult sample's cells
    if reading == "binary":
        return keep
    # f_occ: the difficult sample itself
    f_occ = f_r.float() * keep[:, None]                                # [B, C, H, W]
    response = f_occ.abs().mean(dim=1)                                 # [B, H, W]
    return response / response.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


@contextlib.contextmanager
def frozen(*modules):
    """Run the modules in eval() mode for the block (BatchNorm uses its running statistics and does not
    update them; no dropout), then give each back the mode it had."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def occlusion_target(model, f_r, y, cfg):
    """M_occ for f_r: the difficult sample (Algorithm 1 steps 1-4) through the current backbone and
    classifier, in eval mode and without gradient. Returns (M_occ [B, h, w], p of that copy [B])."""
    # Choice (not in the paper): eval mode also in stage 3, so the 16B probe copies neither use nor
    # move the BatchNorm statistics of the training batch
    with frozen(model.backbone, model.dropout, model.classifier):
        k, p = hardest_occlusion(model.logits_from_middle, f_r.detach(), y, cfg.grid, cfg.occlusion_chunk)
    return occlusion_map(f_r.detach(), k, cfg.grid, cfg.m_occ), p.gather(1, k[:, None])[:, 0]


# -----------------------------------------------------------------------------
# Losses: Eq. (1)-(4)

def attention_loss(M_att, M_occ):
    """L_att = || (max(M_att, 0) - M_occ) * M_att ||_1, Eq. (2), per image: [B, h, w] x2 -> [B].

    Choice (not in the paper): the L1 norm sums over the h*w positions of one image (here and in
    Eq. (3)); the callers average over the batch. The data term: where M_att > 0 it pulls M_att to M_occ, elsewhere to 0; so the attention is
    high where the difficult sample still responds, i.e. away from the cell the classifier needed most.
    """
    return ((M_att.float().clamp(min=0) - M_occ) * M_att.float()).abs().sum(dim=(1, 2))


def regularization_loss(M_att):
    """L_r = log(1 + exp(-||M_att||_1)), Eq. (3), per image: [B, h, w] -> [B].

    Keeps the map from collapsing to 0 (the trivial minimum of Eq. (2)). softplus(-x) = log(1 + e^-x),
    computed without overflow.
    """
    return F.softplus(-M_att.float().abs().sum(dim=(1, 2)))


def adversarial_loss(L_r, L_att, p_bf, p_af, lambda1, lambda2, omega):
    """Eq. (4), per sample i, averaged over the batch:

        L_i = lambda1 * L1_i + lambda2 * L2_i   if p_bf_i - p_af_i > omega,   0 otherwise
        L1 = L_r (Eq. 3), L2 = L_att (Eq. 2)

    The gate is the paper's "switchable gradient update": only samples whose true-class probability
    the occlusion lowers by more than omega update the attention through this term.
    Returns (loss, gate [B] float 0/1).
    """
    # the gate: a comparison of probabilities, no gradient
    gate = ((p_bf - p_af).detach() > omega).float()                   # [B]
    # Choice (not in the paper): averaged over all B samples, failing ones adding 0
    return (gate * (lambda1 * L_r + lambda2 * L_att)).mean(), gate


# -----------------------------------------------------------------------------
# Algorithm 2, step 1: the 0-1 mask

def attention_mask(M_att, threshold=0.5):
    """Algorithm 2 step 1: the 0-1 mask from M_att [B, h, w] -> bool [B, h, w], True = occluded.

    relu(M_att) is min-max normalised per image and thresholded (SPEC.md; threshold 0.5 is SPEC.md's
    choice). Reading (documented choice): the mask's 1s are the positions that get OCCLUDED, i.e.
    the regions the attention finds important, and the occluded map is f_r * (1 - mask). SPEC.md's
    wording "f_r * mask" read literally would keep only the attended positions and erase the rest,
    contradicting the paper: Fig. 4 draws the occluded area as "the black mask" over the attended
    body parts, Sec. 4.5 says "multiple parts of important regions were occluded", and the Table 4
    variant occludes the regions "with the highest response".
    """
    A = M_att.detach().float().clamp(min=0)                            # relu(M_att)
    lo, hi = A.amin(dim=(1, 2), keepdim=True), A.amax(dim=(1, 2), keepdim=True)
    return (A - lo) / (hi - lo).clamp_min(1e-12) > threshold          # an all-zero map occludes nothing


def response_mask(f_r):
    """Table 4, "without fine-tuning": occlude "one-third of the feature map regions with the highest
    response": bool [B, h, w], True on exactly round(h*w / 3) positions of highest channel-mean f_r.

    Choice (not in the paper): the response is the channel mean of f_r (a ReLU output, >= 0); equal
    responses go to the lower position index (a stable sort), so the count is exact.
    """
    B, C, H, W = f_r.shape
    response = f_r.detach().float().mean(dim=1).view(B, H * W)         # [B, h*w]
    order = response.argsort(dim=1, descending=True, stable=True)      # [B, h*w]
    mask = torch.zeros(B, H * W, dtype=torch.bool, device=f_r.device)
    mask.scatter_(1, order[:, :round(H * W / 3)], True)
    return mask.view(B, H, W)                                          # [B, h*w] -> [B, h, w]


def occlusion_mask(f_r, M_att, cfg):
    """Stage 3's mask for f_r: from the attention (the method) or the response (Table 4)."""
    return response_mask(f_r) if cfg.mask_source == "response" else attention_mask(M_att, cfg.threshold)


# -----------------------------------------------------------------------------
# One training step per stage: each returns (total loss, {term: value} for the log)

def stage1_loss(model, x, y, cfg):
    """Sec. 3.1: the baseline classifier, softmax cross-entropy on the identities."""
    logits = model.logits_from_middle(model.middle(x))
    # L_ce: "a softmax classification loss function", Sec. 3.1
    L_ce = common.cross_entropy(logits, y)
    return L_ce, {"L_ce": L_ce}


def stage2_loss(model, x, y, cfg):
    """Algorithm 1: the attention assignment network. Only the attention branch gets gradient;
    the backbone and classifier run frozen in eval mode (`set_stage_modes`)."""
    # f_r: the middle-layer maps of the frozen baseline, no gradient ("fixed in the backward stage")
    with torch.no_grad():
        f_r = model.middle(x)
    # Algorithm 1 steps 1-4: the 16 occluded copies, the difficult sample and its M_occ
    M_occ, p_hard = occlusion_target(model, f_r, y, cfg)
    # M_att: the attention branch, the only part that learns (step 5)
    M_att = model.attention_map(f_r)
    # L_att: the data term, Eq. (2)
    L_att = attention_loss(M_att, M_occ).mean()
    # L_r: the regularisation term, Eq. (3)
    L_r = regularization_loss(M_att).mean()
    L_adv = L_att + L_r  # Eq. (1)
    return L_adv, {"L_adv": L_adv, "L_att": L_att, "L_r": L_r, "p_hard": p_hard.mean()}


def stage3_loss(model, x, y, cfg):
    """Algorithm 2: the attention-aware adversarial network; every parameter is trained."""
    # f_r: the middle-layer maps, with gradient (the whole baseline is updated, step 4)
    f_r = model.middle(x)
    M_att = model.attention_map(f_r)
    # step 1: the 0-1 mask (True = occluded); step 2: "the feature maps of the middle layer
    # multiplied by the 0-1 mask as occluded feature maps" (reading: see `attention_mask`)
    mask = occlusion_mask(f_r, M_att, cfg)                             # [B, h, w]
    # Choice (not in the paper): the mask's 1s are occluded, so the kept positions are ~mask
    f_af = f_r * (~mask)[:, None].to(f_r.dtype)                        # [B, C, h, w]
    # step 3: original and occluded maps through the rest of the network, as one batch
    # Choice (not in the paper): one pass of 2B (BatchNorm sees both), not two passes
    logits_bf, logits_af = model.logits_from_middle(torch.cat([f_r, f_af])).chunk(2)  # [2B, N] -> 2 x [B, N]
    # p_bf, p_af: true-class probability before / after the occlusion
    # Choice (not in the paper): read from this training pass (dropout on); the gate detaches them
    p_bf, p_af = true_class_probability(logits_bf, y), true_class_probability(logits_af, y)
    # cross-entropy on both streams ("computed by the cross-entropy", Sec. 3.3)
    L_ce_bf = common.cross_entropy(logits_bf, y)
    L_ce_af = common.cross_entropy(logits_af, y)
    # M_occ recomputed by the grid occlusion, as in stage 2 (SPEC.md)
    M_occ, _ = occlusion_target(model, f_r, y, cfg)
    # L1 = L_r, Eq. (3), and L2 = L_att, Eq. (2), per sample
    L_r = regularization_loss(M_att)
    L_att = attention_loss(M_att, M_occ)
    # the gated adversarial term, Eq. (4)
    L_gate, gate = adversarial_loss(L_r, L_att, p_bf, p_af, cfg.lambda1, cfg.lambda2, cfg.omega)
    L = L_ce_bf + L_ce_af + L_gate  # CE on both streams + Eq. (4)
    return L, {"L": L, "L_ce_bf": L_ce_bf, "L_ce_af": L_ce_af, "L_gate": L_gate, "L_att": L_att.mean(),
               "L_r": L_r.mean(), "gate_pass": gate.mean(), "p_bf": p_bf.mean(), "p_af": p_af.mean(),
               "occluded": mask.float().mean()}


def set_stage_modes(model, stage):
    """train() for what the stage trains, eval() for what it freezes: in stage 2 the backbone and
    classifier run in eval mode, so their BatchNorm statistics do not move and no dropout is drawn."""
    model.train()
    if stage == "stage2":
        for part in (model.backbone, model.dropout, model.classifier):
            part.eval()


def stage_parameters(model, stage):
    """The parameters each stage updates: stage 1 the baseline, stage 2 only the attention branch
    (Sec. 3.2, "these parameters are fixed in the backward stage"), stage 3 everything (Sec. 3.3)."""
    if stage == "stage2":
        for part in (model.backbone, model.classifier):
            part.requires_grad_(False)
        return list(model.attention.parameters())
    if stage == "stage1":
        return list(model.backbone.parameters()) + list(model.classifier.parameters())
    return list(model.parameters())


def train_step(model, optimizer, stage, x, y, cfg):
    """One SGD step of `stage` on a batch; returns the loss terms (tensors) for the log."""
    # --precision auto: bf16 on CUDA, nothing on the CPU; the occlusion probes inside the stage-2/3
    # losses run under this same autocast
    with common.autocast(x.device, cfg.precision):
        if stage == "stage1":
            loss, terms = stage1_loss(model, x, y, cfg)
        elif stage == "stage2":
            loss, terms = stage2_loss(model, x, y, cfg)
        else:
            loss, terms = stage3_loss(model, x, y, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return terms


# -----------------------------------------------------------------------------
# Training a stage: data, the previous stage's weights, SGD, a checkpoint every epoch

def load_init(model, cfg, stage, num_classes):
    """Start `stage` from the previous stage's checkpoint `cfg.init`: the baseline's weights (Sec. 3.2:
    "fine-tuned by the common layers of the baseline network"), plus the attention branch when
    stage 3 follows stage 2 (Sec. 3.3); from stage 1 the attention branch keeps its fresh random
    initialisation ("the rest of the parameters are initialized randomly")."""
    ckpt = common.load_checkpoint(cfg.init)
    # another paper's checkpoint (an AEA one), or one trained on another number of identities, is
    # refused with what the file is and what was expected
    common.check_checkpoint(ckpt, f"--init {cfg.init}", "aaanet", num_classes, "classifier.weight")
    # stage 2 follows stage 1; stage 3 follows stage 2, or stage 1 for Table 4's "without fine-tuning"
    expected = "stage1" if stage == "stage2" or cfg.mask_source == "response" else "stage2"
    if ckpt.get("stage") != expected:
        hint = (" (stage 3 from stage 1 is Table 4's variant: add --mask-source response)"
                if stage == "stage3" and ckpt.get("stage") == "stage1" else "")
        raise UserError(f"--init {cfg.init} is a {ckpt.get('stage')} checkpoint; {stage} starts from {expected}{hint}")
    state = ckpt["model"]
    if expected == "stage2" and ckpt["config"]["point"] != cfg.point:
        raise UserError(f"--init {cfg.init} put the attention branch after {ckpt['config']['point']}; "
                        f"pass --point {ckpt['config']['point']} (or train stage 2 again with --point {cfg.point})")
    if expected == "stage1":
        # Choice (not in the paper): Table 4's stage 3 from stage 1 keeps a fresh attention branch
        state = {k: v for k, v in state.items() if not k.startswith("attention.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("attention.") for k in missing):
        raise UserError(f"--init {cfg.init} does not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}")


# Choice (not in the paper): the Config fields a resumed run may change; none changes the trained weights
RESUME_MAY_DIFFER = ("resume", "device", "eval_metrics")
# each stage's total loss, whose epoch mean chooses best.pt (common.RunCheckpoints)
TOTAL_LOSS = {"stage1": "L_ce", "stage2": "L_adv", "stage3": "L"}


def train_stage(cfg, stage, ds=None, images=None):
    """Train one stage (Sec. 4.2) and return (model, {metric: results}) (no results for stage 2 or
    with --eval-metrics empty; results None when SIGINT/SIGTERM stopped the run before its end).

    Writes OUT/<stage>/last.pt at the end of every epoch and OUT/<stage>/best.pt for the epoch with
    the lowest mean total loss (L_ce, L_adv or L). A checkpoint records the position (epoch =
    epochs completed, step = steps of the next epoch already trained) and the augmentation
    generator's state at the start of that epoch. --resume rebuilds everything as a fresh run
    would, restores weights, optimizer, schedule and the Python/numpy/torch/CUDA RNG states, and
    replays the first `step` batches of the epoch without training on them: the batch order and
    every augmentation draw come from that one generator, so the replay leaves it where the
    stopped run had it, and on the CPU the resumed run ends bit-identical to an uninterrupted one.

    ds, images: a loaded dataset and a {split: uint8 cache} dict to reuse (the demo passes them, so
    the images are decoded once for all three stages and every evaluation).
    """
    cfg = resolve(cfg, stage)
    device = common.pick_device(cfg.device)
    folder = os.path.join(cfg.out, stage)
    # a folder that cannot be written fails now, not at the first checkpoint after an epoch of training
    common.check_writable(folder)
    checkpoints = common.RunCheckpoints(folder)
    # --resume: the checkpoint to continue, refused if another paper wrote it or other flags were given
    state = (common.resume_state(checkpoints.last, "aaanet", cfg, may_differ=RESUME_MAY_DIFFER, device=device)
             if cfg.resume else None)
    common.seed_everything(cfg.seed)  # the same seed draws the same weights and batches
    ds = ds or data.load_dataset(cfg.root, cfg.dataset, skip_bad_files=cfg.skip_bad_files)
    # the network first: missing ImageNet weights or a wrong --init fail before any image is decoded
    model = AAANet(ds.num_train_pids, cfg.point, cfg.dropout, cfg.attention_channels,
                   cfg.weights if stage == "stage1" else "none")
    if state is not None:
        # the same flags, but the dataset on disk may have changed since
        common.check_checkpoint(state, checkpoints.last, "aaanet", ds.num_train_pids, "classifier.weight")
    elif stage != "stage1":
        load_init(model, cfg, stage, ds.num_train_pids)  # a resumed run takes every weight from last.pt instead
    model = common.prepare_model(model, device)
    images = {} if images is None else images
    if "train" not in images:
        images["train"] = data.load_images(ds.train.paths, cfg.height, cfg.width, desc="train")
    train_images = images["train"].to(device)  # decoded once; on a GPU the whole cache lives there
    labels = torch.as_tensor(ds.train.pids).to(device)
    # SGD for the three networks, Sec. 4.2; lr x lr_gamma every lr_step epochs
    optimizer = common.make_sgd(stage_parameters(model, stage), cfg.lr, cfg.momentum, cfg.weight_decay)
    schedule = common.step_schedule(optimizer, range(cfg.lr_step, cfg.epochs, cfg.lr_step), cfg.lr_gamma)
    # one CPU generator for the batch order and the augmentation: a seed gives the same run on any device
    g = torch.Generator().manual_seed(cfg.seed)
    N, B = len(train_images), cfg.batch_size
    steps = N // B
    if steps == 0:
        raise UserError(f"--batch-size {B} is larger than the {N} training images")
    start_epoch, start_step, resume_sums = 0, 0, {}
    if state is not None:
        # the replay below needs the same images: a changed training folder would replay other batches
        common.check_same_images(state, checkpoints.last, N, cfg.root)
        # weights, momentum buffers, lr schedule and the global RNGs (dropout) as they were at the save
        start_epoch = common.restore_training(state, model, optimizer, schedule)
        start_step, resume_sums = state.get("step", 0), state.get("epoch_sums", {})
        g.set_state(state["aug_generator"])  # the generator as it was at the start of epoch `start_epoch`
        checkpoints.restore(state)
        state = None  # the loaded checkpoint (weights, momentum) is not kept alive for the whole stage
        if start_epoch < cfg.epochs:
            print(f"{stage}: resuming {checkpoints.last} at epoch {start_epoch + 1} step {start_step}", flush=True)
    print(f"{stage}: {N} training images of {ds.num_train_pids} identities at {cfg.height}x{cfg.width}, "
          f"{steps} batches of {B} per epoch, device {device}, "
          + (f"weights {cfg.weights}" if stage == "stage1" else f"from {cfg.init}"), flush=True)
    # SIGINT / SIGTERM: the current step finishes, last.pt is written, the command to resume printed
    with common.StopOnSignal() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            set_stage_modes(model, stage)
            epoch_start = g.get_state()  # a checkpoint written inside this epoch replays from here
            # Choice (not in the paper): a shuffled pass over the images, the last incomplete batch dropped
            order = torch.randperm(N, generator=g)[:steps * B].view(steps, B)  # [steps, B] image indices
            progress = common.Progress(steps, prefix=f"{stage} epoch {epoch + 1}/{cfg.epochs}  "
                                                     f"lr {optimizer.param_groups[0]['lr']:.0e}  ")
            # the shared data path: each row of `order` -> cache rows -> augment, x [B, 3, H, W] float32
            batches = data.train_batches(train_images, labels, order.tolist(), g, pad=cfg.pad,
                                         random_erasing=cfg.random_erasing)
            # Choice (not in the paper): after a stop, the steps trained before it are drawn again
            # without training (the generator moves on), keep their numbers and count in the
            # epoch's mean (best.pt), from the sums the stopped run saved
            finished = common.train_epoch(batches, lambda x, y: train_step(model, optimizer, stage, x, y, cfg),
                                          progress, stop, start_step, resume_sums)
            start_step = 0
            if not finished:
                # the steps since the last line are checked for NaN before anything is written
                checkpoints.save(common.training_state("aaanet", model, optimizer, schedule, epoch, cfg, stage=stage,
                                                       step=progress.i, aug_generator=epoch_start,
                                                       epoch_sums=progress.sums(), num_images=N))
                common.stopped(stop, f"at epoch {epoch + 1}/{cfg.epochs} step {progress.i}/{steps}", checkpoints.last)
                return model, None
            schedule.step()
            # everything needed to continue: weights, optimizer, schedule, epoch, config, RNG states;
            # the epoch's last step printed its line, so every term was checked finite
            checkpoints.save(common.training_state("aaanet", model, optimizer, schedule, epoch + 1, cfg, stage=stage,
                                                   step=0, aug_generator=g.get_state(), num_images=N),
                             epoch_loss=progress.mean(TOTAL_LOSS[stage]))
            if stop.requested and epoch + 1 < cfg.epochs:
                common.stopped(stop, f"after epoch {epoch + 1}/{cfg.epochs}", checkpoints.last)
                return model, None
    if start_epoch == cfg.epochs:
        print(f"{stage}: {checkpoints.last} already holds all {cfg.epochs} epochs; nothing left to train")
    else:
        print(f"wrote {checkpoints.last}; {checkpoints.best} is the epoch of lowest mean {TOTAL_LOSS[stage]}")
    results = {}
    # Choice (not in the paper): no evaluation after stage 2, whose test feature is stage 1's
    if stage == "stage2":
        print("stage 2 trains only the attention branch: the test feature is stage 1's, not evaluated again")
    elif cfg.eval_metrics:
        results = evaluate.evaluate_model(model, ds, (cfg.height, cfg.width), device, cfg.eval_metrics, images=images,
                                          precision=cfg.precision)
        print(evaluate.format_table({f"{stage} {m}": r for m, r in results.items()}, label="stage, metric"))
    return model, results


def model_from_checkpoint(ckpt, path="the checkpoint"):
    """evaluate.py's hook: (model, (height, width)) from a checkpoint of any stage. model(x) in
    eval() gives the test feature, the 2048-d pooled feature of the unoccluded image (SPEC.md).
    path: the file's name, for the message that refuses another paper's checkpoint."""
    common.check_checkpoint(ckpt, path, "aaanet")
    try:
        cfg = Config(**ckpt["config"])
        num_classes = ckpt["model"]["classifier.weight"].shape[0]
        model = AAANet(num_classes, cfg.point, cfg.dropout, cfg.attention_channels, weights="none")
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"not a complete AAA-Net checkpoint (config and weights of aaanet.py): "
                        f"{str(e).splitlines()[0]}") from None
    return model.eval(), (cfg.height, cfg.width)


# -----------------------------------------------------------------------------
# Demo: the three stages on the synthetic data, CPU-sized

# Choice (not in the paper): the demo's sizes, so that all of it runs in about 2 minutes on 2 CPU cores.
# 64x32 inputs (f_r after conv3_x is 8x4, each grid cell 2x1) with the padding scaled down with them
# (10 px of a 32-px-wide image would shift it by a third); batches of 16 for more steps per epoch;
# random initial weights (no ImageNet file offline) need a larger lr than the paper's fine-tuning.
DEMO = dict(dataset="synthetic", height=64, width=32, pad=3, weights="none", batch_size=16, dropout=0.5,
            eval_metrics=())
DEMO_STAGES = {"stage1": dict(epochs=25, lr=0.003, lr_step=20),
               "stage2": dict(epochs=3, lr=0.001, lr_step=3),
               "stage3": dict(epochs=5, lr=0.001, lr_step=5)}
DEMO_METRICS = ("euclidean", "xqda", "kissme")


def demo(argv):
    """python aaanet.py [demo]: all three stages on data/synthetic, then one table (rank-1, mAP) of
    the untrained network, stage 1 and stage 3 under Euclidean, XQDA and KISSME, as Tables 3-5.

    --resume: a stage whose last.pt holds all its epochs is loaded, not trained again; the first
    one that does not is resumed (or started, without a last.pt), and the stages after it run anew.
    Stopped by SIGINT/SIGTERM, the demo returns None after the stopped stage wrote its last.pt."""
    p = argparse.ArgumentParser(prog="aaanet.py demo", description=demo.__doc__)
    p.add_argument("--out", default="runs/aaanet_demo", help="checkpoints go to OUT/stage1..3/last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT (see above)")
    p.add_argument("--precision", choices=common.PRECISIONS, default="auto",
                   help="autocast of training and evaluation: auto = bf16 on CUDA, fp32 on the CPU (default: auto)")
    args = p.parse_args(argv)
    start = time.time()
    root = data.ensure_synthetic()
    ds = data.load_dataset(root, "synthetic")
    base = Config(root=root, out=args.out, seed=args.seed, device=args.device, precision=args.precision, **DEMO)
    device, size, images = common.pick_device(args.device), (base.height, base.width), {}
    print(f"demo: weights {base.weights} (no ImageNet download), {size[0]}x{size[1]} inputs, batch {base.batch_size}, "
          + ", ".join(f"{s} {v['epochs']} epochs lr {v['lr']}" for s, v in DEMO_STAGES.items()))
    # the untrained network: the seed draws the very weights stage 1 starts from
    common.seed_everything(args.seed)
    untrained = AAANet(ds.num_train_pids, base.point, base.dropout, base.attention_channels, weights="none")
    results = {"untrained": evaluate.evaluate_model(untrained.to(device), ds, size, device, DEMO_METRICS, images=images,
                                                    precision=args.precision)}
    resuming = args.resume  # stays True while every stage so far was complete in OUT
    for stage in STAGE_NAMES:
        cfg = dataclasses.replace(base, **DEMO_STAGES[stage])
        last = os.path.join(args.out, stage, "last.pt")
        resume = resuming and os.path.isfile(last)
        if resume:
            ckpt = common.load_checkpoint(last)
            # complete: train_stage loads it and trains nothing; otherwise the later stages start anew
            resuming = isinstance(ckpt, dict) and ckpt.get("epoch") == cfg.epochs
        else:
            resuming = False
        model, stage_results = train_stage(dataclasses.replace(cfg, resume=resume), stage, ds, images)
        if stage_results is None:  # stopped by a signal: last.pt written, the resume command printed
            return None
        if stage != "stage2":  # stage 2 leaves the test feature as it was
            results[stage] = evaluate.evaluate_model(model, ds, size, device, DEMO_METRICS, images=images,
                                                     precision=args.precision)
    rows = {f"{name} {metric}": r for name, by_metric in results.items() for metric, r in by_metric.items()}
    print(evaluate.format_table(rows, label="network, metric"))
    print(f"demo: {time.time() - start:.0f} s in all")
    return results


# -----------------------------------------------------------------------------
# Fig. 4: images, their attention maps, the occluded regions drawn black

def figure(argv):
    """python aaanet.py figure --checkpoint C --out F.png: like Fig. 4, three rows of N images:
    the inputs, their attention maps over them, and the inputs with stage 3's occluded region black."""
    p = argparse.ArgumentParser(prog="aaanet.py figure", description=figure.__doc__)
    p.add_argument("--checkpoint", required=True, help="a stage-2 or stage-3 checkpoint (or stage 1 with --mask-source response)")
    p.add_argument("--out", default="aaanet_fig4.png", help="the PNG to write")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--split", default="query", choices=["train", "query", "gallery"])
    p.add_argument("--num", type=int, default=8, help="images, evenly spaced over the split")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    ckpt = common.load_checkpoint(args.checkpoint)
    model, (H, W) = model_from_checkpoint(ckpt, f"--checkpoint {args.checkpoint}")
    cfg = Config(**ckpt["config"])
    if ckpt.get("stage") == "stage1" and cfg.mask_source == "attention":
        raise UserError(f"{args.checkpoint} is a stage-1 checkpoint: its attention branch is untrained "
                        "(draw a stage-2 or stage-3 checkpoint)")
    device = common.pick_device(args.device)
    ds = data.load_dataset(args.root or cfg.root, args.dataset or cfg.dataset, verbose=False)
    split = getattr(ds, args.split)
    pick = sorted({round(i * (len(split) - 1) / max(args.num - 1, 1)) for i in range(args.num)})
    images = data.load_images([split.paths[i] for i in pick], H, W, desc="figure")  # [n, 3, H, W] uint8
    model.to(device)
    with torch.no_grad(), common.autocast(device, cfg.precision):
        f_r = model.middle(data.normalize(common.to_device(images, device)))
        M_att = model.attention_map(f_r)
        mask = occlusion_mask(f_r, M_att, cfg)                           # [n, h, w], True = occluded
    # the map that chose the mask: relu(M_att), or the channel-mean response for Table 4's variant
    shown = f_r.float().mean(dim=1) if cfg.mask_source == "response" else M_att.float().clamp(min=0)
    heat = evaluate.heat_overlay(images, shown)
    # the mask upsampled to the image (nearest: each feature position is a block of pixels), drawn black
    black = F.interpolate(mask[:, None].float().cpu(), size=(H, W), mode="nearest").bool()  # [n, 1, H, W]
    evaluate.save_image_grid(args.out, [list(images), list(heat), list(images.masked_fill(black, 0))])
    print(f"wrote {args.out}: {len(pick)} {args.split} images, their attention and the occluded regions "
          f"({100 * mask.float().mean():.0f}% of the positions)")


# -----------------------------------------------------------------------------
# Benchmark: a stage-2 step against a stage-1 step on the same batch, with the floor

def benchmark(argv):
    """python aaanet.py benchmark: the time of a stage-1, stage-2 and stage-3 step on one batch, and
    the floor of stage 2 / stage 1: what stage 2 cannot avoid (f_r without gradient on B images plus
    the rest of the network without gradient on the 16B occluded copies) over a stage-1 step."""
    p = argparse.ArgumentParser(prog="aaanet.py benchmark", description=benchmark.__doc__)
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--width", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=751, help="identities (Market-1501: 751)")
    p.add_argument("--point", default="conv3_x", choices=POINTS)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each step after one warm-up; the median is shown")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.repeats < 1:
        raise UserError("--batch-size must be at least 2 and --repeats at least 1")
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)
    B, G = args.batch_size, 16
    model = AAANet(args.classes, args.point, weights="none").to(device)
    cfg = Config(point=args.point)
    x = torch.randn(B, 3, args.height, args.width, device=device)
    y = torch.randint(0, args.classes, (B,), device=device)

    def prepare(stage):
        """The model as `stage` trains it (modes, frozen parts); returns the parameters it updates."""
        model.requires_grad_(True)  # undo stage 2's freezing before another stage
        set_stage_modes(model, stage)
        return stage_parameters(model, stage)

    optimizers = {stage: common.make_sgd(prepare(stage), 1e-4) for stage in STAGE_NAMES}
    with torch.no_grad():
        f_r = model.middle(x)
    C, h, w = f_r.shape[1:]

    def step(stage):
        prepare(stage)
        train_step(model, optimizers[stage], stage, x, y, cfg)

    @torch.no_grad()
    def floor_part(part):
        """The two things a stage-2 step cannot avoid, as it runs them: eval mode, no gradient."""
        model.eval()
        with common.autocast(device):
            if part == "middle":   # f_r of the B images
                model.middle(x)
            else:                  # the rest of the network on the B*16 occluded copies
                model.logits_from_middle(grid_occlusions(f_r).reshape(B * G, C, h, w))  # [B, G, C, h, w] -> [B*G, C, h, w]

    # Rounds that time every piece once each, so that a slow spell of this shared machine hits all
    # pieces alike; the first round warms up (allocator, thread pools) and is not counted.
    jobs = {**{stage: (lambda s=stage: step(s)) for stage in STAGE_NAMES},
            "middle": lambda: floor_part("middle"), "rest": lambda: floor_part("rest")}
    times = {name: [] for name in jobs}
    for _ in range(args.repeats + 1):
        for name, job in jobs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            job()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    t = {name: statistics.median(ts[1:]) for name, ts in times.items()}
    floor = t["middle"] + t["rest"]
    # the same floor in counted FLOPs (torch's FlopCounterMode: convolutions and matrix products)
    prepare("stage1")
    with FlopCounterMode(display=False) as stage1_flops:
        stage1_loss(model, x, y, cfg)[0].backward()
    with FlopCounterMode(display=False) as floor_flops:
        floor_part("middle")
        floor_part("rest")
    flops_ratio = floor_flops.get_total_flops() / stage1_flops.get_total_flops()
    print(f"batch {B} at {args.height}x{args.width}, {args.classes} identities, occlusion after {args.point} "
          f"(f_r {C}x{h}x{w}), device {device}, {torch.get_num_threads()} threads, median of {args.repeats} rounds")
    rows = [("stage-1 step: forward + backward + SGD, whole network", t["stage1"]),
            ("stage-2 step", t["stage2"]), ("stage-3 step", t["stage3"]),
            (f"floor part: f_r of the {B} images, no grad", t["middle"]),
            (f"floor part: rest of the network on {B * G} copies, no grad", t["rest"]),
            ("floor of a stage-2 step (the two parts)", floor)]
    for label, secs in rows:
        print(f"  {label:<62}{secs:8.3f} s {secs / t['stage1']:7.2f} x stage 1")
    print(f"  {'floor in counted FLOPs: ' + f'{floor_flops.get_total_flops() / 1e9:.1f} of {stage1_flops.get_total_flops() / 1e9:.1f} GFLOP':<62}"
          f"{'':10} {flops_ratio:7.2f} x stage 1")
    print(f"stage 2 / stage 1 = {t['stage2'] / t['stage1']:.2f}; floor {floor / t['stage1']:.2f} (timed), "
          f"{flops_ratio:.2f} (counted FLOPs)")
    return {"time": t, "floor": floor, "flops_ratio": flops_ratio}


# -----------------------------------------------------------------------------
# Command line

def run(argv):
    """Dispatch on the first word: stage1 | stage2 | stage3 | figure | benchmark | demo (the default)."""
    argv = list(argv)
    if not argv or argv[0].startswith("-"):  # `python aaanet.py --resume` is the demo's resume command
        argv = ["demo", *argv]
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return demo(rest)
    if command == "figure":
        return figure(rest)
    if command == "benchmark":
        return benchmark(rest)
    if command in STAGE_NAMES:
        p = argparse.ArgumentParser(prog=f"aaanet.py {command}",
                                    description=f"Train AAA-Net's {command} (defaults: the paper's, Sec. 4.2).")
        args = common.add_config_args(p, Config).parse_args(rest)
        return train_stage(common.config_from_args(Config, args), command)
    raise UserError(f"unknown command {command!r}; expected one of {', '.join(STAGE_NAMES)}, figure, benchmark, demo "
                    "(or nothing: the demo)")


def main(argv=None):
    """`python aaanet.py ...`; a UserError becomes `error: ...` and exit status 2."""
    return common.exit_on_user_error(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

"""
Adversarial Erasing Attention for person re-identification (AEA).
  IEEE Access 8:56469 (2020), doi:10.1109/ACCESS.2020.2981791

A basic network learns global + 4 stripe features from the original images. At every iteration its
own conv2_x attention map picks the R% most-attended pixels of each image, which are erased; a
complementary network with its own weights learns from the erased images. Test feature: both, 5120-d.

Paper map (paper -> code):
  Sec. III-A, Table 1, Fig. 2 upper branch: basic network   -> `Subnetwork` (FC_1, `part_fc`, FC_2)
  Sec. III-B, Fig. 2 lower branch: complementary network    -> `AEA.complementary`, a second `Subnetwork`
  Eq. (1), attention map A_l = sum_c |M_l,c|^2              -> `attention_map`
  Sec. III-B, Fig. 4, adversarial erasing operation         -> `salient_pixels`, `erase_top`, `adversarial_erasing`
  Sec. III-B, dynamic strategy (erase at each iteration)    -> `training_step`, step 2
  Eq. (2)-(4), L_I1 and L_I2 (cross-entropy)                -> `common.cross_entropy`, in `training_step`
  Eq. (5)-(7), L_T (batch-hard triplet on 2PK features)     -> `common.batch_hard_triplet_loss`, in `training_step`
  Eq. (8), L = L_I1 + alpha1 L_I2 + alpha2 L_T              -> `training_step`, step 4
  Sec. IV-B, schedule, 10-epoch warm-up of the basic net    -> `AEAConfig`, `train`, `basic_alone_epochs`
  Sec. IV-B, 5120-d L2-normalised test feature              -> `AEA.forward`, `model_from_checkpoint`
  Sec. IV-C, Baselines 1-4 (Table 2)                        -> `--variant b1|b2|b3|b4`, `fixed_erasing_masks`
  Table 6, REDA and AOS                                     -> `--erasing random|fixed`, `epoch_batches`
  Fig. 6 (R), Fig. 7 (m), Tables 7-8 (alpha), Table 9 (l)   -> `--R`, `--margin`, `--alpha1/2`, `--attention-layer`
  Figs. 3 and 5, images / attention maps / erased images   -> `figure`
  (not in the paper) last.pt / best.pt, --resume, SIGINT/SIGTERM, NaN stop -> `train`, `RESUME_MAY_DIFFER`
  (not in the paper) --precision auto|bf16|fp32 (autocast)  -> `training_step`, `fixed_erasing_masks`

Commands (one per job):
  python aea.py                                             # demo: synthetic data, CPU-sized, ~3 min
  python aea.py --root DIR --dataset market1501 [--variant b1 ...]   # the paper's schedule
  python aea.py <the same flags> --resume                   # continue a stopped or killed run from OUT/last.pt
  python evaluate.py --checkpoint runs/aea/market1501-aea/last.pt --root DIR --dataset market1501
  python aea.py figure --checkpoint C [C2 ...] --out attention.png   # Figs. 3 and 5
  python aea.py benchmark                                   # an AEA step vs a B1 step, same batch

Choices where the paper and SPEC.md are silent (each marked "Choice (not in the paper)" at its line):
  - FC_1 and the four stripe FCs: Linear -> BatchNorm -> LeakyReLU 0.1 -> Dropout 0.5 (SPEC.md);
    the 2560-d feature (input of FC_2, of L_T and the test feature) is taken after the dropout.
  - The 4 stripes are adaptive average pools of conv5_x into 4 rows: the paper's equal split when
    the map's height is a multiple of 4 (16 at 256x128), overlapping bins otherwise (small demos).
  - Top-R%: k = round(R * H * W / 100) pixels per image (Python's round, half to even); among
    equal attention values the lower row-major pixel index is erased first (a stable sort).
  - Erased pixels are 0 in the normalised image (SPEC.md). Where an erased copy is cached as uint8
    (B3, B4, --erasing fixed), they hold the ImageNet mean colour rounded to uint8, i.e. within
    0.01 of 0 after normalisation.
  - The erasing is applied to the augmented batch the basic network saw (flip, pad 10, crop, as
    data.augment does), so the attention map and the pixels line up.
  - Warm-up (basic alone) only where the erasing reads the basic network (adversarial, fixed, B4);
    B3 (grey level) and --erasing random train both networks from the first epoch.
  - B2's basic network is trained with L_I1 only (the paper: "using the cross-entropy loss"), in
    the warm-up too; its L_T is over the PK erased images alone.
  - B4 "until convergence": the basic network trains alone for --b4-basic-epochs (default 40 of
    the 100, at lr 0.01), then the erasing is computed once and both train for the remaining epochs.
  - Erase-once attention (B4, --erasing fixed) and B3's grey level are computed on the unaugmented
    cached images, with the basic network in eval mode (BatchNorm running statistics); grey level =
    ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B). The erased copy then gets the same flip and crop
    as its original in every batch (a twin of the augmentation generator).
  - --erasing random (REDA, Table 6): the complementary network sees a second, independent
    augmentation of the same images with random erasing (p = --reda-p 0.5, Zhong et al.'s default).
  - --erasing fixed (AOS-style, Table 6): attention erasing computed once, at the end of the
    warm-up, from the basic network (B4 with a 10-epoch basic phase). AOS finds its areas with a
    separately trained network (Sec. IV-D); the row here isolates "fixed vs dynamic".
  - The warm-up loss is L_I1 + L_T (no alpha2), as SPEC.md writes it; B1's likewise.
  - Every test feature is L2-normalised (5120-d: after the concatenation, SPEC.md).
  - The demo (`python aea.py`, no --root) runs 64x32 inputs, 40 epochs, random weights and no
    dropout in the heads (see DEMO for why); every real-data default is the paper's.
  - --precision auto: bf16 autocast on CUDA, fp32 on the CPU (common.autocast); losses, distances
    and the attention map A_l stay fp32 under bf16.
  - Checkpoints: OUT/last.pt after every epoch (and on SIGINT/SIGTERM, mid-epoch), OUT/best.pt for
    the epoch with the lowest mean total loss L (common.RunCheckpoints: the datasets have no
    validation split; the paper reports the last epoch). A checkpoint holds the epoch's start state
    of the augmentation generator, and --resume replays the finished steps of an interrupted epoch
    without training on them, so on CPU a resumed run ends bit-identical to an uninterrupted one.
  - --resume may change only --device, --out, --eval-every, --eval-untrained and --keep-every
    (`RESUME_MAY_DIFFER`); a finished run resumed prints its stored table and trains nothing.
"""

import argparse
import dataclasses
import os
import resource
import sys
import time
import typing
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
import evaluate
from common import UserError


# -----------------------------------------------------------------------------
# Config: the paper's schedule as defaults (Sec. IV-B); the demo and the datasets adjust some below

@dataclass
class AEAConfig:
    root: str = ""  # dataset folder (Market-1501 layout); without it `python aea.py` runs the demo
    dataset: typing.Literal["market1501", "duke", "cuhk03-labeled", "cuhk03-detected", "synthetic"] = "market1501"  # Sec. IV-A
    height: int = 256  # input height, Sec. IV-B ("resize all pedestrian images to 256x128")
    width: int = 128  # input width, Sec. IV-B
    weights: str = "imagenet"  # ResNet-50 initialisation, Sec. IV-B: imagenet, none or a state-dict path
    variant: typing.Literal["aea", "b1", "b2", "b3", "b4"] = "aea"  # AEA or Baseline 1-4, Sec. IV-C, Table 2
    erasing: typing.Literal["adversarial", "random", "fixed"] = "adversarial"  # input of the complementary network, Table 6: AEA, REDA, AOS-style
    dropout: float = 0.5  # Dropout rate in FC_1 and the stripe FCs, Sec. IV-B
    attention_layer: typing.Literal["conv2_x", "conv3_x", "conv4_x", "conv5_x"] = "conv2_x"  # l in Eq. (1), Table 9
    R: float = 10.0  # R, percent of pixels erased, Sec. III-B, Fig. 6 (10 Market/Duke, 20 CUHK03)
    reda_p: float = 0.5  # --erasing random: random erasing probability (Zhong et al.), Table 6
    margin: float = 0.3  # m in Eq. (5), Sec. IV-B, Fig. 7 (0.3 Market/Duke, 0.35 CUHK03)
    alpha1: float = 1.0  # alpha1 in Eq. (8), Tables 7-8
    alpha2: float = 1.0  # alpha2 in Eq. (8), Tables 7-8
    P: int = 8  # identities per batch, Sec. IV-B
    K: int = 4  # images per identity, Sec. IV-B
    epochs: int = 100  # Sec. IV-B
    lr: float = 0.01  # learning rate, Sec. IV-B
    lr_step: int = 75  # the epoch at which lr is multiplied by 0.1, Sec. IV-B
    warmup_epochs: int = 10  # basic network alone first, Sec. IV-B
    b4_basic_epochs: int = 40  # Baseline 4: basic network alone "until convergence", Sec. IV-C (choice)
    momentum: float = 0.9  # SGD momentum (the paper names no optimizer; SPEC.md)
    weight_decay: float = 5e-4  # SGD weight decay (SPEC.md)
    seed: int = 0  # seeds the weights, the PK sampler and the augmentation
    device: str = "auto"  # auto (CUDA if present), cpu, cuda or cuda:N
    out: str = ""  # output folder; empty = runs/aea/<dataset>-<variant> (the demo: runs/aea/demo)
    eval_every: int = 0  # also evaluate every N epochs (0: only at the end)
    eval_untrained: bool = False  # evaluate the untrained network first (the demo does)
    keep_every: int = 0  # also keep epoch_N.pt every N epochs, for Fig. 5's training statuses (0: none)
    skip_bad_files: bool = False  # warn about and drop images whose name does not parse or that do not decode
    precision: typing.Literal["auto", "bf16", "fp32"] = "auto"  # autocast of training: auto = bf16 on CUDA, fp32 on the CPU
    resume: bool = False  # continue the run in --out from its last.pt (same flags; see RESUME_MAY_DIFFER)


# Choice (not in the paper): the flags a resumed run may change (`--resume`); none of them changes
# what is trained (another device only rounds differently). Every other flag must be the one the
# run started with, or `common.resume_state` names it and refuses.
RESUME_MAY_DIFFER = ("resume", "device", "out", "eval_every", "eval_untrained", "keep_every")


# Margin and R per dataset, Sec. IV-B and IV-E; flags given explicitly win.
PER_DATASET = {"market1501": dict(margin=0.3, R=10.0), "duke": dict(margin=0.3, R=10.0),
               "cuhk03-labeled": dict(margin=0.35, R=20.0), "cuhk03-detected": dict(margin=0.35, R=20.0),
               "synthetic": dict(margin=0.3, R=10.0)}

# `python aea.py` without --root: the CPU-sized demo on data/synthetic (217 training images of 32
# identities, 64 queries, 161 gallery images), about 3 minutes on 2 cores (README). The schedule
# keeps the paper's shape (warm-up, one lr step at 3/4) on 40 epochs of 4 PK batches at 64x32.
# Choice (not in the paper): the demo trains without the heads' dropout. From random weights (no
# ImageNet file offline) and ~160 steps, Dropout 0.5 on the 2560-d feature kept the training
# cross-entropy from falling at all (measured, B1 at lr 0.01: with it, 40 epochs, L_I1 4.0 -> 5.1
# and mAP 4.3%; without, 20 epochs, L_I1 3.9 -> 2.8 and mAP 11.1%); lr 0.02-0.1 did worse either way.
DEMO = dict(root="data/synthetic", dataset="synthetic", height=64, width=32, weights="none", dropout=0.0,
            epochs=40, lr_step=30, warmup_epochs=4, lr=0.01, eval_untrained=True, out=os.path.join("runs", "aea", "demo"))


def parse_config(argv):
    """Flags -> (AEAConfig, is_demo). Defaults: the paper's; the demo's without --root; margin and
    R per dataset. Anything given on the command line wins over all of them."""
    parser = argparse.ArgumentParser(
        prog="aea.py", description="Train AEA (or a baseline); the defaults below are the paper's. Without "
        "--root: the demo, with " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO.items()) +
        ". Other commands: `aea.py figure -h`, `aea.py benchmark -h`.")
    common.add_config_args(parser, AEAConfig)
    demo = not parser.parse_args(argv).root
    if demo:
        parser.set_defaults(**DEMO)
    args = parser.parse_args(argv)
    if demo and args.dataset != "synthetic":
        raise UserError(f"--dataset {args.dataset} needs --root DIR (the dataset's folder); without --root "
                        "`python aea.py` runs the demo on data/synthetic")
    parser.set_defaults(**PER_DATASET[args.dataset])
    cfg = common.config_from_args(AEAConfig, parser.parse_args(argv))
    if not cfg.out:
        cfg.out = os.path.join("runs", "aea", f"{cfg.dataset}-{cfg.variant}")
    check_config(cfg)
    return cfg, demo


def check_config(cfg):
    """One clear UserError per bad value, naming the flag."""
    if not 0 < cfg.R < 100:
        raise UserError(f"--R is the percentage of pixels erased and must lie in (0, 100), got {cfg.R}")
    for name in ("margin", "alpha1", "alpha2", "weight_decay", "momentum"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if not (0 <= cfg.reda_p <= 1 and 0 <= cfg.dropout < 1):
        raise UserError(f"--reda-p must lie in [0, 1] and --dropout in [0, 1), got {cfg.reda_p} and {cfg.dropout}")
    if cfg.height < 32 or cfg.width < 16:
        raise UserError(f"--height/--width must be at least 32/16 (conv5_x needs a few rows), got {cfg.height}x{cfg.width}")
    if cfg.P < 2 or cfg.K < 1:
        raise UserError(f"--P must be >= 2 (the triplet loss needs negatives) and --K >= 1, got P={cfg.P}, K={cfg.K}")
    if cfg.epochs < 1 or min(cfg.warmup_epochs, cfg.b4_basic_epochs, cfg.eval_every, cfg.keep_every) < 0:
        raise UserError("--epochs must be >= 1 and --warmup-epochs, --b4-basic-epochs, --eval-every, "
                        "--keep-every >= 0")
    if cfg.variant in ("b1", "b3", "b4") and cfg.erasing != "adversarial":
        raise UserError(f"--erasing {cfg.erasing} applies to --variant aea and b2; {cfg.variant} fixes its own "
                        "input to the complementary network (Sec. IV-C)")
    if cfg.variant != "b1" and basic_alone_epochs(cfg) >= cfg.epochs:
        flag = "--b4-basic-epochs" if cfg.variant == "b4" else "--warmup-epochs"
        raise UserError(f"{flag} {basic_alone_epochs(cfg)} leaves no epoch of --epochs {cfg.epochs} for the "
                        "complementary network")


def erasing_mode(cfg):
    """What the complementary network is fed: 'adversarial' (AEA's dynamic attention erasing),
    'random' (REDA), 'fixed' (attention erasing computed once: B4, AOS-style) or 'grey' (B3)."""
    return {"b3": "grey", "b4": "fixed"}.get(cfg.variant, cfg.erasing)


def basic_alone_epochs(cfg):
    """The epochs at the start in which only the basic network trains (L_I1 + L_T, Sec. IV-B)."""
    if cfg.variant == "b1":
        return cfg.epochs  # Baseline 1 is the basic network alone
    if cfg.variant == "b4":
        # Choice (not in the paper): "until convergence" (Sec. IV-C) = --b4-basic-epochs, 40 of 100
        return cfg.b4_basic_epochs
    # Choice (not in the paper): the warm-up exists "to enable the basic network to predict the
    # salient parts properly" (Sec. IV-B), so only erasings that read the basic network wait for it
    return cfg.warmup_epochs if erasing_mode(cfg) in ("adversarial", "fixed") else 0


# -----------------------------------------------------------------------------
# Networks: basic and complementary (Sec. III-A/B), the test feature (Sec. IV-B)

def embedding(dropout):
    """FC_1's form, used by the global branch and by each stripe: 2048 -> 512 (Sec. III-A, IV-B)."""
    # Choice (not in the paper): the BatchNorm (SPEC.md); LeakyReLU 0.1 and Dropout (0.5) are Sec. IV-B's
    return nn.Sequential(nn.Linear(2048, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.1), nn.Dropout(dropout))


class Subnetwork(nn.Module):
    """The basic network (Sec. III-A, Table 1); the complementary network is the same architecture
    with its own weights (Sec. III-B).

    ResNet-50 without conv5_x's down-sampling (a 256x128 input gives conv5_x 2048x16x8) ->
      global: average pool -> FC_1 (512)                      } concatenated: f, 2560-d
      local:  4 horizontal stripes -> average pool -> FC (512) each }
    -> FC_2, the identity classifier (2560 -> number of training identities).
    """

    def __init__(self, num_classes, weights="imagenet", dropout=0.5):
        super().__init__()
        self.backbone = common.Backbone(weights, last_stride=1)
        self.FC_1 = embedding(dropout)
        self.part_fc = nn.ModuleList(embedding(dropout) for _ in range(4))
        self.FC_2 = nn.Linear(5 * 512, num_classes)

    def forward(self, x, attention_layer=None):
        """x [B, 3, H, W] -> (f [B, 2560], v [B, N] the logits of FC_2, M_l or None).

        With attention_layer (conv2_x..conv5_x), M_l is that stage's output from this same pass,
        e.g. conv2_x [B, 256, H/4, W/4]: the attention costs no second forward pass.
        """
        B, _, H, W = x.shape
        if attention_layer is None:
            M_l, M_5 = None, self.backbone.run(x)
        else:
            # stop at layer l, keep its output, go on from the next stage to conv5_x
            layer = common.PAPER_STAGE_NAMES[attention_layer]
            M_l = self.backbone.run(x, "conv1", layer)
            nxt = common.STAGES.index(layer) + 1
            M_5 = M_l if nxt == len(common.STAGES) else self.backbone.run(M_l, common.STAGES[nxt], "layer4")
        # global branch: average pool over the whole conv5_x map (16x8 at 256x128) -> FC_1
        g = self.FC_1(M_5.mean(dim=(2, 3)))                                # [B, 512]
        # local branch: 4 horizontal stripes, each average-pooled -> its own 512-d FC.
        # Choice (not in the paper): adaptive pooling = the equal split when the rows divide by 4
        stripes = F.adaptive_avg_pool2d(M_5, (4, 1)).flatten(2)            # [B, 2048, 4]
        parts = [fc(stripes[:, :, i]) for i, fc in enumerate(self.part_fc)]  # 4 x [B, 512]
        # Choice (not in the paper): f after the dropout, i.e. exactly FC_2's input ("the input of
        # FC_2 is also regarded as the input of the triplet loss", Sec. IV-C)
        f = torch.cat([g, *parts], dim=1)                                  # [B, 2560]
        return f, self.FC_2(f), M_l


class AEA(nn.Module):
    """Both subnetworks; forward(x) is the test feature of the variant (what evaluate.py calls).

    aea, b3, b4: concat(basic f, complementary f) -> L2-normalised, 5120-d (Sec. IV-B)
    b1: the basic network's 2560-d (it has no complementary network); b2: the complementary's 2560-d.
    """

    def __init__(self, num_classes, variant="aea", weights="imagenet", dropout=0.5):
        super().__init__()
        self.variant = variant
        self.basic = Subnetwork(num_classes, weights, dropout)
        self.complementary = Subnetwork(num_classes, weights, dropout) if variant != "b1" else None

    def forward(self, x):
        if self.variant == "b1":
            f = self.basic(x)[0]                                           # [B, 2560]
        elif self.variant == "b2":
            f = self.complementary(x)[0]                                   # [B, 2560]
        else:
            f = torch.cat([self.basic(x)[0], self.complementary(x)[0]], 1)  # [B, 5120]
        # "We then normalize features using L2 norm" (Sec. IV-B): of the concatenation, not per half.
        # Choice (not in the paper): the 2560-d features of B1 and B2 are L2-normalised as well
        return F.normalize(f.float(), dim=1)


# -----------------------------------------------------------------------------
# Attention map (Eq. 1) and the adversarial erasing operation (Sec. III-B, Fig. 4)

def attention_map(M):
    """Eq. (1): A_l = sum_c |M_l,c|^2, element-wise over the C channels of layer l's output.

    M [B, C, h, w] -> A [B, h, w], in fp32 (squares of bf16 activations would lose the ranking).
    """
    return M.float().pow(2).sum(dim=1)


def salient_pixels(A, R, size):
    """The top R% of an attention map after resizing it to the image, as a mask (Sec. III-B).

    A [B, h, w] -> bilinear resize to size = (H, W) -> bool [B, H, W] with exactly
    k = round(R * H * W / 100) True per image. Ties: among equal values the lower row-major pixel
    index is taken first (a stable sort), so the mask is the same on every run and device.
    """
    B, (H, W) = A.shape[0], size
    # "we resize the attention map into the same size with the original pedestrian image ... using
    # bilinear interpolation" (Sec. III-B); a map already at (H, W) comes back unchanged
    A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)  # [B, 1, H, W]
    # Choice (not in the paper): k rounds half to even (Python's round)
    k = round(R * H * W / 100)
    # "select the top R% largest values". Choice (not in the paper): ties go to the lower pixel
    # index, as a stable descending sort keeps equal values in index order
    order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices  # [B, H*W]
    mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(B, H, W)                                              # [B, H*W] -> [B, H, W]


def erase_top(images, A, R):
    """Erase the top R% pixels of A in normalised images [B, 3, H, W]: set them to 0, the mean
    colour (SPEC.md), in all three channels -> the erased pedestrian images (Fig. 4)."""
    B, C, H, W = images.shape
    return images.masked_fill(salient_pixels(A, R, (H, W))[:, None], 0.0)


@torch.no_grad()
def adversarial_erasing(x, M_l, R):
    """Sec. III-B: A (Eq. 1) from the basic network's layer-l output M_l -> the erased batch.

    No gradient: the erasing picks pixels (an index selection, with no derivative), and the
    complementary network must not push the basic network through it; Fig. 2's back-propagation
    path reaches the basic network only through L_I1 and L_T. no_grad also skips the graph.
    """
    return erase_top(x, attention_map(M_l), R)


# -----------------------------------------------------------------------------
# The training step: Eq. (8) on one PK batch

def training_step(model, optimizer, x, y, cfg, joint, x_other=None):
    """One SGD step; returns the loss terms, for the progress line.

    x: the augmented, normalised originals [B, 3, H, W]; y: identity labels [B].
    joint=False: the basic network alone (warm-up, Baseline 1, Baseline 4's first phase):
        L = L_I1 + L_T on the originals (Baseline 2: L = L_I1).
    joint=True: both networks, Eq. (8):
        L = L_I1 + alpha1 * L_I2 + alpha2 * L_T,  L_T over the 2B features of originals (basic)
        and erased images (complementary) with their labels (Baseline 2: the B erased only).
    x_other: the complementary network's input when it is not the dynamic attention erasing of x
    (B3, B4, --erasing fixed or random: see `epoch_batches`).
    """
    dynamic = joint and erasing_mode(cfg) == "adversarial"
    # --precision: bf16 autocast or none (auto: bf16 on CUDA, fp32 on the CPU, `common.autocast`)
    with common.autocast(x.device, cfg.precision):
        # 1. basic network on the originals (Sec. III-A); with the dynamic erasing, the same pass
        #    also returns layer l's output (conv2_x by default), the M_l of Eq. (1)
        f_b, v_b, M_l = model.basic(x, cfg.attention_layer if dynamic else None)
        # L_I1: cross-entropy of the basic network on the original images, Eq. (2)-(4)
        L_I1 = common.cross_entropy(v_b, y)
        if not joint and cfg.variant == "b2":
            # Choice (not in the paper): Baseline 2's basic network learns with the cross-entropy only
            # ("train the basic network using the cross-entropy loss", Sec. IV-C), in the warm-up too
            L = L_I1
            terms = dict(L_I1=L_I1)
        elif not joint:
            # L_T: batch-hard triplet on the originals' L2-normalised 2560-d features, Eq. (5)-(7)
            L_T = common.batch_hard_triplet_loss(f_b, y, cfg.margin)
            # Choice (not in the paper): the basic network alone, L_I1 + L_T without alpha2 (SPEC.md)
            L = L_I1 + L_T
            terms = dict(L_I1=L_I1, L_T=L_T)
        else:
            # 2. dynamic strategy: the erasing is recomputed now, from the current basic network's
            #    attention (Sec. III-B), detached; or the fixed / random input of the other modes.
            #    Choice (not in the paper): it erases the augmented batch x the basic network saw
            x_erased = adversarial_erasing(x, M_l, cfg.R) if dynamic else x_other
            # 3. complementary network on the erased images (same labels as the originals)
            f_c, v_c, _ = model.complementary(x_erased)
            # L_I2: cross-entropy of the complementary network on the erased images, Eq. (2)-(4)
            L_I2 = common.cross_entropy(v_c, y)
            if cfg.variant == "b2":
                # L_T: triplet over the erased images alone (Baseline 2, Sec. IV-C), Eq. (5)-(7)
                L_T = common.batch_hard_triplet_loss(f_c, y, cfg.margin)
            else:
                # L_T: "triplets contain both original ... and erased pedestrian images", Eq. (5)-(7)
                L_T = common.batch_hard_triplet_loss(torch.cat([f_b, f_c]), torch.cat([y, y]), cfg.margin)  # [2B, 2560]
            # 4. the total loss, Eq. (8)
            L = L_I1 + cfg.alpha1 * L_I2 + cfg.alpha2 * L_T
            terms = dict(L_I1=L_I1, L_I2=L_I2, L_T=L_T)
    # the backward pass outside autocast; parameters without a gradient (the complementary network
    # during the warm-up) are skipped by SGD: no step, no weight decay
    optimizer.zero_grad(set_to_none=True)
    L.backward()
    optimizer.step()
    return dict(terms, L=L)


# -----------------------------------------------------------------------------
# Erase-once inputs (B3, B4, --erasing fixed) and the batches of one epoch

# Choice (not in the paper): 0 in the normalised image = the ImageNet mean colour, rounded to uint8
# for cached erased copies (within 0.01 of 0 once normalised)
MEAN_UINT8 = torch.tensor([round(255 * m) for m in data.MEAN], dtype=torch.uint8)
# Choice (not in the paper): ITU-R 601 luma as Baseline 3's grey level (what PIL's convert("L") uses)
LUMA = torch.tensor([0.299, 0.587, 0.114])


@torch.no_grad()
def fixed_erasing_masks(images, R, basic=None, attention_layer="conv2_x", batch_size=128, precision="auto"):
    """The pixels to erase once, for every cached image: uint8 [N, 3, H, W] -> bool [N, H, W].

    basic=None: Baseline 3, the top R% of the grey-level image (Sec. IV-C).
    basic given: Baseline 4 / --erasing fixed, the top R% of that network's attention (Eq. 1),
    on the unaugmented images, in eval mode (BatchNorm running statistics), under `precision`'s
    autocast (the training run's --precision).
    """
    if basic is not None:
        # Choice (not in the paper): eval mode, so each image's map does not depend on its batch
        was_training = basic.training
        basic.eval()
    masks = []
    for u8 in images.split(batch_size):
        if basic is None:
            A = (u8.float() * LUMA.to(u8.device).view(1, 3, 1, 1)).sum(dim=1)  # grey level [b, H, W]
        else:
            with common.autocast(u8.device, precision):
                A = attention_map(basic.backbone.run(data.normalize(u8), "conv1", attention_layer))  # [b, h, w]
        masks.append(salient_pixels(A, R, u8.shape[-2:]))
    if basic is not None:
        basic.train(was_training)
    return torch.cat(masks)                                                # [N, H, W]


def erase_uint8(images, mask):
    """uint8 images [N, 3, H, W] with the mask's pixels [N, H, W] set to the mean colour."""
    return torch.where(mask[:, None], MEAN_UINT8.to(images.device).view(1, 3, 1, 1), images)


def epoch_batches(images, labels, sampler, g, cfg, joint, erased_images=None):
    """One epoch of (x, y, x_other): x the augmented originals, x_other the complementary
    network's input when it is not erased from x on the fly (else None).

    fixed (B3, B4, --erasing fixed): the erased copy of the same images, with the SAME flips and
      crops: a twin generator in the generator's state yields the same draws, and the sampler
      yields the same indices to both (its order is a function of its seed and epoch only).
    random (REDA): a second augmentation of the same images, with random erasing.
    """
    originals = data.train_batches(images, labels, sampler, g)
    if joint and erased_images is not None:
        # Choice (not in the paper): the erased copy aligned with its augmented original by a twin
        twin = torch.Generator().set_state(g.get_state())
        others = data.train_batches(erased_images, labels, sampler, twin)
    elif joint and erasing_mode(cfg) == "random":
        # Choice (not in the paper): REDA as an independent second view of the image, p = --reda-p
        others = data.train_batches(images, labels, sampler, g, random_erasing=cfg.reda_p)
    else:
        return ((x, y, None) for x, y in originals)
    return ((x, y, x_other) for (x, y), (x_other, _) in zip(originals, others))


# -----------------------------------------------------------------------------
# Training run

def score(model, ds, cfg, device, cache):
    """Rank-1/5/10 and mAP of the test feature (Euclidean on L2-normalised features, Sec. IV-B)."""
    return evaluate.evaluate_model(model, ds, (cfg.height, cfg.width), device, images=cache,
                                   precision=cfg.precision)["euclidean"]


def results_for_checkpoint(results):
    """{row: rank_metrics} with the CMC as a tensor, so a checkpoint keeps loading with weights_only."""
    return {name: dict(r, cmc=torch.as_tensor(np.asarray(r["cmc"]))) for name, r in results.items()}


def results_from_checkpoint(saved):
    """The inverse of `results_for_checkpoint`: the CMC back to the numpy array rank_metrics returns."""
    return {name: dict(r, cmc=r["cmc"].numpy()) for name, r in saved.items()}


def train(cfg):
    """The paper's training (Sec. IV-B) with the variant's networks and inputs; returns {row name:
    rank_metrics} (untrained, every --eval-every, final), or None when a signal stopped the run.

    Checkpoints (common.RunCheckpoints): OUT/last.pt at the end of every epoch, OUT/best.pt for the
    epoch with the lowest mean total loss L. Each records the position (epoch = epochs completed,
    step = steps done in the next one) and the augmentation generator's state at the START of that
    epoch; `--resume` rebuilds the run, restores weights, optimizer, schedule and every random
    state, and replays the first `step` batches of the epoch without training on them, which lands
    the generator where it was (the PK sampler is a function of (seed, epoch), every augmentation
    draw comes from the generator). On CPU a resumed run ends bit-identical to an uninterrupted one.
    SIGINT / SIGTERM: the current step finishes, last.pt is written mid-epoch, the resume command is
    printed, and train returns (exit status 0). A NaN or infinite loss raises common.LossNotFinite
    before anything more is written, so last.pt stays the last good epoch's.
    """
    device = common.pick_device(cfg.device)
    # before any data is read: a run must not die at its first checkpoint, an hour in
    common.check_writable(cfg.out)
    runs = common.RunCheckpoints(cfg.out)
    state = (common.resume_state(runs.last, "aea", cfg, may_differ=RESUME_MAY_DIFFER, device=device)
             if cfg.resume else None)
    if state is not None and state["epoch"] >= cfg.epochs:
        # Choice (not in the paper): a finished run resumed reports its stored table; nothing is trained
        print(f"{runs.last} already holds all {cfg.epochs} epochs of this run; nothing left to resume")
        results = results_from_checkpoint(state.get("results", {}))
        if results:
            print(evaluate.format_table(results, label=f"AEA {cfg.variant}"), flush=True)
        return results
    if state is None and os.path.isfile(runs.last):
        print(f"note: {runs.last} is there and will be overwritten by this new run (add --resume to continue it)")
    common.seed_everything(cfg.seed)
    ds = data.load_dataset(cfg.root, cfg.dataset, skip_bad_files=cfg.skip_bad_files)
    if cfg.P > ds.num_train_pids:
        raise UserError(f"--P {cfg.P}: a PK batch needs P distinct identities, but the training split of "
                        f"{cfg.root} has only {ds.num_train_pids}; give --P <= {ds.num_train_pids}")
    # the model before the images: a missing ImageNet file fails in seconds, not after decoding
    model = common.prepare_model(AEA(ds.num_train_pids, cfg.variant, cfg.weights, cfg.dropout), device)
    optimizer = common.make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    schedule = common.step_schedule(optimizer, [cfg.lr_step])  # lr x0.1 at epoch 75 (Sec. IV-B)
    print(f"AEA variant {cfg.variant}, erasing {erasing_mode(cfg)}, R {cfg.R}%, m {cfg.margin}, "
          f"{cfg.height}x{cfg.width}, P={cfg.P} K={cfg.K}, {cfg.epochs} epochs ({basic_alone_epochs(cfg)} basic "
          f"alone), lr {cfg.lr} (x0.1 at {cfg.lr_step}), weights {cfg.weights}, device {device}, "
          f"precision {cfg.precision}, out {cfg.out}")
    images = data.load_images(ds.train.paths, cfg.height, cfg.width, desc="train").to(device)
    labels = torch.as_tensor(ds.train.pids).to(device)
    sampler = data.PKSampler(ds.train.pids, cfg.P, cfg.K, seed=cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # every augmentation draw (data.augment)
    # erase-once modes: the mask (kept bit-packed for the checkpoint: Market's is 53 MB) and the
    # erased uint8 copy of the training images; `extra` goes into every checkpoint
    mode, extra, erased_images = erasing_mode(cfg), {}, None
    cache, results = {}, {}  # decoded query/gallery images, kept across evaluations; the table's rows
    start_epoch, skip, partial = 0, 0, None
    if state is not None:
        # the same identities (FC_2's rows) as the run being continued
        common.check_checkpoint(state, runs.last, "aea", ds.num_train_pids, "basic.FC_2.weight")
        # the replay needs the same images: a changed training folder would replay other batches
        common.check_same_images(state, runs.last, len(images), cfg.root)
        start_epoch = common.restore_training(state, model, optimizer, schedule)  # + Python/numpy/torch RNG
        skip, partial = state.get("step", 0), state.get("epoch_sums")  # no step: an epoch-end file
        g.set_state(state["aug_generator"])  # the generator as it was at the start of epoch start_epoch
        runs.restore(state)                  # the best epoch loss so far, for best.pt
        results = results_from_checkpoint(state.get("results", {}))
        if "erase_mask" in state:
            packed = state["erase_mask"]
            extra["erase_mask"] = packed
            erase_mask = torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=cfg.width).astype(bool))
            erased_images = erase_uint8(images, erase_mask.to(device))
        print(f"resuming {runs.last} at epoch {start_epoch + 1} step {skip}", flush=True)
        state = None  # everything is restored: free the loaded checkpoint (both networks + momenta)
    elif cfg.eval_untrained:
        results["untrained"] = score(model, ds, cfg, device, cache)

    def snapshot(epoch, step, aug_generator, **more):
        """Everything needed to go on from here (a later --resume): weights, optimizer, schedule,
        the position, the config, every random state, the generator at the epoch's start, the
        erase-once mask where there is one, and the evaluations so far."""
        return common.training_state("aea", model, optimizer, schedule, epoch, cfg, num_classes=ds.num_train_pids,
                                     step=step, aug_generator=aug_generator, results=results_for_checkpoint(results),
                                     num_images=len(images),
                                     **extra, **more)

    with common.StopOnSignal() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            joint = epoch >= basic_alone_epochs(cfg)
            if joint and erased_images is None and mode in ("grey", "fixed"):
                # B3: the grey level does not change, so its erasing is done once (Sec. IV-C);
                # B4 / AOS-style: erase once, from the basic network as it is now (no dynamic strategy)
                basic = None if mode == "grey" else model.basic
                erase_mask = fixed_erasing_masks(images, cfg.R, basic, cfg.attention_layer, precision=cfg.precision)
                erased_images = erase_uint8(images, erase_mask)
                extra["erase_mask"] = torch.from_numpy(np.packbits(erase_mask.cpu().numpy(), axis=-1))  # [N, H, W/8]
            model.train()
            sampler.set_epoch(epoch)
            epoch_start = g.get_state()  # what a mid-epoch checkpoint records (the twin copies it too)
            progress = common.Progress(len(sampler), prefix=f"epoch {epoch + 1}/{cfg.epochs}  ")
            batches = epoch_batches(images, labels, sampler, g, cfg, joint, erased_images)
            # resume mid-epoch: the `skip` batches already trained on are drawn again without
            # training, so the generator (and the erase-once twin) reach the interrupted step's state
            finished = common.train_epoch(
                batches, lambda x, y, x_other: training_step(model, optimizer, x, y, cfg, joint, x_other),
                progress, stop, skip, partial)
            skip = 0
            if not finished:
                # stopped mid-epoch: the steps not yet printed are checked (a NaN raises, nothing is
                # written), then last.pt at (epoch, step) with the generator at the epoch's start
                # and the loss sums so far
                runs.save(snapshot(epoch, progress.i, epoch_start, epoch_sums=progress.sums()))
                common.stopped(stop, f"at epoch {epoch + 1}/{cfg.epochs} step {progress.i}/{len(sampler)}", runs.last)
                return None
            schedule.step()
            if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                # before the checkpoint, so its table holds this row (a resumed run prints every
                # row); evaluation draws no random number and changes no weight
                results[f"epoch {epoch + 1}"] = score(model, ds, cfg, device, cache)
                print(evaluate.format_table(results, label=f"AEA {cfg.variant}"), flush=True)
            # the last step printed a line, so every term of the epoch was checked (a NaN raised)
            saved = snapshot(epoch + 1, 0, g.get_state())
            runs.save(saved, epoch_loss=progress.mean("L"))  # last.pt; best.pt on the lowest mean L
            if cfg.keep_every and (epoch + 1) % cfg.keep_every == 0:
                common.save_checkpoint(os.path.join(cfg.out, f"epoch_{epoch + 1}.pt"), saved)
            if stop.requested and epoch + 1 < cfg.epochs:
                common.stopped(stop, f"after epoch {epoch + 1}/{cfg.epochs}", runs.last)
                return None
    return results


def model_from_checkpoint(ckpt, path="the checkpoint"):
    """evaluate.py's hook: (model, (height, width)) from an AEA checkpoint; model(x) in eval() is
    the variant's test feature (`AEA.forward`). The config is rebuilt whole from the checkpoint;
    another paper's file is refused, and weights that do not fit the network named by it."""
    cfg = config_from_checkpoint(ckpt, path)
    model = AEA(ckpt["num_classes"], cfg.variant, "none", cfg.dropout)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: the weights do not fit AEA variant {cfg.variant} "
                        f"({str(e).splitlines()[0]})") from None
    return model.eval(), (cfg.height, cfg.width)


def config_from_checkpoint(ckpt, path="the checkpoint"):
    """The AEAConfig saved in a checkpoint; a UserError saying what the file is for another paper's
    or a foreign file (common.check_checkpoint)."""
    common.check_checkpoint(ckpt, path, "aea")
    try:
        return AEAConfig(**ckpt["config"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: the AEA checkpoint's config does not match this aea.py: {e}") from None


# -----------------------------------------------------------------------------
# Figures 3 and 5: images, their attention maps, the erased images

def figure(argv=None):
    """python aea.py figure --checkpoint C [C2 ...] --out F.png: one column per query image; rows:
    the images, then per checkpoint its attention map as a heat overlay (Fig. 3; several
    checkpoints of one run = Fig. 5's training statuses) and its erased images (Fig. 4)."""
    p = argparse.ArgumentParser(prog="aea.py figure", description=figure.__doc__)
    p.add_argument("--checkpoint", nargs="+", required=True, help="AEA checkpoints (e.g. epoch_N.pt of one run)")
    p.add_argument("--root", help="dataset folder (default: the first checkpoint's)")
    p.add_argument("--dataset", help="dataset name (default: the first checkpoint's)")
    p.add_argument("--num", type=int, default=8, help="query images, evenly spaced over the query set")
    p.add_argument("--out", default=os.path.join("runs", "aea", "attention.png"))
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    device = common.pick_device(args.device)
    ckpts = [common.load_checkpoint(c) for c in args.checkpoint]
    cfgs = [config_from_checkpoint(c, path) for c, path in zip(ckpts, args.checkpoint)]
    if len({(c.height, c.width) for c in cfgs}) > 1:
        raise UserError("the checkpoints were trained at different input sizes; give checkpoints of one size")
    cfg = cfgs[0]
    ds = data.load_dataset(args.root or cfg.root, args.dataset or cfg.dataset, verbose=False)
    pick = np.unique(np.linspace(0, len(ds.query) - 1, args.num).round().astype(int))
    images = data.load_images([ds.query.paths[i] for i in pick], cfg.height, cfg.width)  # uint8 [n, 3, H, W]
    rows = [list(images)]
    for ckpt, c, path in zip(ckpts, cfgs, args.checkpoint):
        model = model_from_checkpoint(ckpt, path)[0].to(device)
        with torch.no_grad(), common.autocast(device):
            # the attention of the basic network, as the training step computes it (Eq. 1)
            M_l = model.basic.backbone.run(data.normalize(images.to(device)), "conv1", c.attention_layer)
        A = attention_map(M_l).cpu()                                        # [n, h, w]
        rows.append(list(evaluate.heat_overlay(images, A)))
        rows.append(list(erase_uint8(images, salient_pixels(A, c.R, images.shape[-2:]))))
    evaluate.save_image_grid(args.out, rows)
    print(f"wrote {args.out}: {len(pick)} query images; rows: images, then per checkpoint attention + erased")
    return args.out


# -----------------------------------------------------------------------------
# Benchmark: an AEA step against a B1 (basic only) step on the same batch

def benchmark(argv=None):
    """python aea.py benchmark: median times of an AEA training step (both networks, dynamic
    erasing) and of a B1 step (basic network only) on one random batch, interleaved, and their
    ratio; plus the attention map + erasing alone."""
    p = argparse.ArgumentParser(prog="aea.py benchmark", description=benchmark.__doc__)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--P", type=int, default=8)
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--classes", type=int, default=751, help="FC_2 outputs (Market-1501: 751)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=common.PRECISIONS, default="auto",
                   help="autocast: auto = bf16 on CUDA, fp32 on the CPU (default: auto)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.classes < 1:
        raise UserError(f"--repeats and --classes must be >= 1, got {args.repeats} and {args.classes}")
    device = common.pick_device(args.device)
    common.seed_everything(0)
    cfg = AEAConfig(height=args.height, width=args.width, P=args.P, K=args.K, weights="none", precision=args.precision)
    check_config(cfg)
    model = common.prepare_model(AEA(args.classes, "aea", "none"), device).train()
    optimizer = common.make_sgd(model.parameters(), cfg.lr)
    x = data.normalize(torch.randint(0, 256, (args.P * args.K, 3, args.height, args.width), dtype=torch.uint8).to(device))
    y = torch.arange(args.P, device=device).repeat_interleave(args.K) % args.classes  # P identities x K
    with torch.no_grad(), common.autocast(device, cfg.precision):
        M_l = model.basic.backbone.run(x, "conv1", cfg.attention_layer)

    def timed(step):
        """(wall seconds, kernel CPU seconds) of one call; the kernel time is mostly page faults of
        freshly mapped memory, which grow with the memory a step keeps alive (see README)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # GPU work is queued: wait for it before and after
        start, sys0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0

    b1 = dataclasses.replace(cfg, variant="b1")
    steps = {"B1 step (basic only)": lambda: training_step(model, optimizer, x, y, b1, False),
             "AEA step (basic + complementary)": lambda: training_step(model, optimizer, x, y, cfg, True),
             "attention + erasing alone": lambda: adversarial_erasing(x, M_l, cfg.R)}
    times = {name: [] for name in steps}
    for r in range(args.repeats + 1):  # round 0 warms up (allocations, kernel choice) and is dropped
        for name, step in steps.items():  # interleaved: a slow spell of the machine hits all three
            t = timed(step)
            if r:
                times[name].append(t)
    med = {name: float(np.median([w for w, _ in t])) for name, t in times.items()}
    print(f"batch {args.P}x{args.K} at {args.height}x{args.width}, device {device}, precision {cfg.precision}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    for name, t in times.items():
        print(f"  {name:34s} {med[name] * 1000:9.1f} ms  (median of {', '.join(f'{w * 1000:.0f}' for w, _ in t)}; "
              f"kernel CPU {', '.join(f'{k * 1000:.0f}' for _, k in t)} ms)")
    ratio = med["AEA step (basic + complementary)"] / med["B1 step (basic only)"]
    print(f"AEA / B1 = {ratio:.2f}; attention + erasing = "
          f"{100 * med['attention + erasing alone'] / med['AEA step (basic + complementary)']:.1f}% of an AEA step")
    return med, ratio


# -----------------------------------------------------------------------------
# Command line

def main(argv=None):
    """`python aea.py [flags]` trains (the demo without --root); `figure` and `benchmark` as above."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["figure"]:
        return figure(argv[1:])
    if argv[:1] == ["benchmark"]:
        return benchmark(argv[1:])
    cfg, demo = parse_config(argv)
    if demo:
        data.ensure_synthetic(cfg.root)
        print(f"demo: synthetic data at {cfg.root}, weights {cfg.weights} (random init: no ImageNet "
              "download offline; the real-data default is imagenet), CPU-sized schedule")
    start = time.time()
    results = train(cfg)  # its last table holds every row: untrained (demo), each evaluation, final
    if results is None:  # stopped by SIGINT / SIGTERM: train printed how to resume; exit status 0
        return None
    print(f"finished in {time.time() - start:.0f} s; checkpoint {os.path.join(cfg.out, 'last.pt')}")
    return results


if __name__ == "__main__":
    common.exit_on_user_error(main)  # a UserError becomes "error: <message>", exit status 2

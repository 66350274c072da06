"""
Adversarial Erasing Attention for person re-identification (AEA).
  IEEE Access 8:56469 (2020), doi:10.1109/ACCESS.2020.2981791

A basic network learns global + 4 stripe features from the original images. At every iteration
its own conv2_x attention map picks the R% most-attended pixels of each image, which are erased; a
complementary network with its own weights learns from the erased images. Test feature: both.

Paper map (paper -> code; follow one batch from `train` to Eq. (8) in `training_step`):
  Sec. III-A, Table 1, Fig. 2 upper branch: the basic network   -> `Subnetwork`
  Sec. III-B, Fig. 2 lower branch: the complementary network    -> `AEA.complementary`
  Eq. (1), attention map A_l = sum_c |M_l,c|^2                  -> `attention_map`
  Sec. III-B, Fig. 4, the adversarial erasing operation         -> `salient_pixels`, `erase_top`
  Sec. III-B, dynamic strategy (erase at every iteration)       -> `training_step`, step 2
  Eq. (2), (3), (4): L_I1 and L_I2, cross-entropy               -> `common.cross_entropy`
  Eq. (5), (6), (7): L_T, batch-hard triplet on 2PK features    -> `common.batch_hard_triplet_loss`
  Eq. (8), L = L_I1 + alpha1 L_I2 + alpha2 L_T                  -> `training_step`, step 4
  Sec. IV-B, schedule, the basic network's 10-epoch warm-up     -> `AEAConfig`, `train`
  Sec. IV-B, the 5120-d L2-normalised test feature              -> `AEA.forward`
  Sec. IV-C, Baselines 1-4 (Table 2)                            -> `--variant b1|b2|b3|b4`
  Table 6, REDA and AOS-style fixed erasing                     -> `--erasing random|fixed`
  Fig. 6 (R), Fig. 7 (m), Tables 7-8 (alpha), Table 9 (l)  -> `--R`, `--margin`, `--alpha1/2`,
                                                              `--attention-layer`
  Figs. 3 and 5, images / attention maps / erased images        -> `figure`

Commands:
  python aea.py                                             # the demo: synthetic data, CPU-sized
  python aea.py --root DIR --dataset market1501 [--variant b1 ...]   # the paper's schedule
  python aea.py <the same flags> --resume                   # continue a stopped run (OUT/last.pt)
  python evaluate.py --checkpoint runs/aea/market1501-aea/last.pt --root DIR --dataset market1501
  python aea.py figure --checkpoint C [C2 ...] --out attention.png   # Figs. 3 and 5

Choices where the paper is silent (each at its line, "Choice (not in the paper)", with its reason):
  - FC_1 and the stripe FCs: Linear -> BatchNorm -> LeakyReLU 0.1 -> Dropout; f after the dropout.
  - The 4 stripes: adaptive average pooling of conv5_x into 4 rows (any map height).
  - Top-R%: k = round(R * H * W / 100) pixels, ties to the lower pixel index (a stable sort).
  - Erased pixels are 0 in the normalised image (the mean colour); cached erased copies hold the
    ImageNet mean rounded to uint8. The erasing applies to the augmented batch the basic net saw.
  - The warm-up only where the erasing reads the basic network (adversarial, fixed, B4).
  - The basic network alone trains with L_I1 + L_T; Baseline 2's with L_I1 only.
  - B4 "until convergence" = --b4-basic-epochs (40) of the basic network alone.
  - Erase-once masks (B3, B4, --erasing fixed) from the unaugmented images, the basic network in
    eval mode; --erasing fixed (AOS-style) from the basic network after the warm-up, not from a
    separate network; B3's grey level is ITU-R 601 luma; the erased copy gets its original's flip
    and crop (a twin generator). --erasing random: an independent second augmentation (REDA).
  - Every test feature is L2-normalised (B1's and B2's 2560-d ones too).
  - The demo: 64x32, 40 epochs, random weights, no dropout (`DEMO`); --resume may change only
    the device, --out and the evaluation flags (`RESUME_MAY_DIFFER`).
"""

import argparse
import os
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

DATASETS = typing.Literal["market1501", "duke", "cuhk03-labeled", "cuhk03-detected", "synthetic",
                          "folder"]  # folder: your own images, ROOT/<split>/<identity>/<image>
LAYERS = typing.Literal["conv2_x", "conv3_x", "conv4_x", "conv5_x"]


# --- Config: the paper's schedule as defaults (Sec. IV-B); the demo and datasets adjust some ------

@dataclass
class AEAConfig:
    root: str = ""  # dataset folder (Market-1501 or folder layout); none: `python aea.py`, the demo
    dataset: DATASETS = "market1501"  # Sec. IV-A
    height: int = 256  # input height, Sec. IV-B ("resize all pedestrian images to 256x128")
    width: int = 128  # input width, Sec. IV-B
    weights: str = "imagenet"  # ResNet-50 start, Sec. IV-B: imagenet, none or a state-dict path
    variant: typing.Literal["aea", "b1", "b2", "b3", "b4"] = "aea"  # AEA or Baseline 1-4, Table 2
    # the complementary network's input, Table 6: AEA's, REDA, AOS-style fixed erasing
    erasing: typing.Literal["adversarial", "random", "fixed"] = "adversarial"  # Table 6
    dropout: float = 0.5  # Dropout rate in FC_1 and the stripe FCs, Sec. IV-B
    attention_layer: LAYERS = "conv2_x"  # l in Eq. (1), Table 9
    R: float = 10.0  # percent of pixels erased, Sec. III-B, Fig. 6 (10 Market/Duke, 20 CUHK03)
    reda_p: float = 0.5  # --erasing random: random erasing probability (Zhong et al.), Table 6
    margin: float = 0.3  # m in Eq. (5), Sec. IV-B, Fig. 7 (0.3 Market/Duke, 0.35 CUHK03)
    alpha1: float = 1.0  # alpha1 in Eq. (8), Tables 7-8
    alpha2: float = 1.0  # alpha2 in Eq. (8), Tables 7-8
    P: int = 8  # identities per batch, Sec. IV-B
    K: int = 4  # images per identity, Sec. IV-B
    epochs: int = 100  # Sec. IV-B
    lr: float = 0.01  # learning rate, Sec. IV-B
    lr_step: int = 75  # the epoch at which lr is multiplied by 0.1, Sec. IV-B
    warmup_epochs: int = 10  # the basic network alone first, Sec. IV-B
    b4_basic_epochs: int = 40  # Baseline 4: the basic network alone "until convergence", Sec. IV-C
    momentum: float = 0.9  # SGD momentum (the paper names no optimiser)
    weight_decay: float = 5e-4  # SGD weight decay (the paper names no optimiser)
    seed: int = 0  # seeds the weights, the PK sampler and the augmentation
    device: str = "auto"  # auto (CUDA if present), cpu, cuda or cuda:N
    out: str = ""  # output folder; empty: runs/aea/<dataset>-<variant> (the demo: runs/aea/demo)
    eval_every: int = 0  # also evaluate every N epochs (0: only at the end)
    eval_untrained: bool = False  # evaluate the untrained network first (the demo does)
    keep_every: int = 0  # also keep epoch_N.pt every N epochs, for Fig. 5 (0: none)
    skip_bad_files: bool = False  # warn about and drop images that do not parse or decode
    precision: typing.Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    resume: bool = False  # continue the run in --out from its last.pt (same flags)


# Choice (not in the paper): the flags a resumed run may change (none changes what is trained)
RESUME_MAY_DIFFER = ("resume", "device", "out", "eval_every", "eval_untrained", "keep_every")

# The valid range of each numeric flag (`common.check_limits` names the first one outside it)
LIMITS = dict(R="(0, 100)", reda_p="[0, 1]", dropout="[0, 1)", margin="[0, inf)",
              alpha1="[0, inf)", alpha2="[0, inf)", lr="(0, inf)", momentum="[0, 1)",
              weight_decay="[0, inf)", height="[32, inf)", width="[16, inf)", P="[2, inf)",
              K="[1, inf)", epochs="[1, inf)", lr_step="[1, inf)", warmup_epochs="[0, inf)",
              b4_basic_epochs="[0, inf)", eval_every="[0, inf)", keep_every="[0, inf)",
              seed="[0, 4294967295]")

# Margin and R per dataset, Sec. IV-B and IV-E (CUHK03: 0.35 and 20; other sets Market-1501's)
PER_DATASET = {d: dict(margin=0.35, R=20.0) if d.startswith("cuhk03") else dict(margin=0.3, R=10.0)
               for d in typing.get_args(DATASETS)}

# `python aea.py` without --root: the CPU-sized demo on data/synthetic, the paper's shape (warm-up,
# one lr step at 3/4) on 40 epochs of 4 PK batches at 64x32. Choice (not in the paper): no dropout
# in the heads: from random weights and ~160 steps, Dropout 0.5 kept the training cross-entropy
# from falling at all (B1, lr 0.01: L_I1 4.0 -> 5.1 with it, 3.9 -> 2.8 without).
DEMO = dict(root="data/synthetic", dataset="synthetic", height=64, width=32, weights="none",
            dropout=0.0, epochs=40, lr_step=30, warmup_epochs=4, lr=0.01, eval_untrained=True,
            out=os.path.join("runs", "aea", "demo"))


def erasing_mode(cfg):
    """What the complementary network is fed: 'adversarial' (AEA's dynamic attention erasing),
    'random' (REDA), 'fixed' (attention erasing computed once: B4, AOS-style) or 'grey' (B3)."""
    return {"b3": "grey", "b4": "fixed"}.get(cfg.variant, cfg.erasing)


def basic_alone_epochs(cfg):
    """The epochs at the start in which only the basic network trains (Sec. IV-B)."""
    if cfg.variant == "b1":
        return cfg.epochs  # Baseline 1 is the basic network alone
    if cfg.variant == "b4":
        # Choice (not in the paper): --b4-basic-epochs for "until convergence" (Sec. IV-C)
        return cfg.b4_basic_epochs
    # Choice (not in the paper): the warm-up exists "to enable the basic network to predict the
    # salient parts properly" (Sec. IV-B), so only erasings that read the basic network wait
    return cfg.warmup_epochs if erasing_mode(cfg) in ("adversarial", "fixed") else 0


# --- Networks: basic and complementary (Sec. III-A/B), the test feature (Sec. IV-B) ---------------

def embedding(dropout):
    """FC_1's form, used by the global branch and by each stripe: 2048 -> 512 (Sec. III-A)."""
    # Choice (not in the paper): the BatchNorm, so that the five 512-d outputs share one scale,
    # and the stripe FCs in FC_1's form (Sec. IV-B gives LeakyReLU 0.1 and Dropout for FC_1)
    return nn.Sequential(nn.Linear(2048, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.1),
                         nn.Dropout(dropout))


class Subnetwork(nn.Module):
    """The basic network (Sec. III-A, Table 1); the complementary network is the same
    architecture with its own weights (Sec. III-B).

    ResNet-50 without conv5_x's down-sampling (a 256x128 input gives conv5_x 2048x16x8) ->
      global: average pool -> FC_1 (512)                             } concatenated: f, 2560-d
      local:  4 horizontal stripes -> average pool -> FC (512) each  }
    -> FC_2, the identity classifier (2560 -> number of training identities).
    """

    def __init__(self, num_classes, weights="imagenet", dropout=0.5):
        super().__init__()
        self.backbone = common.Backbone(weights, last_stride=1)
        self.FC_1 = embedding(dropout)
        self.part_fc = nn.ModuleList(embedding(dropout) for _ in range(4))
        self.FC_2 = nn.Linear(5 * 512, num_classes)

    def forward(self, x, attention_layer=None):
        """x [B, 3, H, W] -> (f [B, 2560], v [B, N] the logits of FC_2, M_l or None); M_l is
        layer `attention_layer`'s output from this same pass: no second pass for the attention."""
        if attention_layer is None:
            M_l, M_5 = None, self.backbone.run(x)
        else:
            # stop at layer l, keep its output, go on from the next stage to conv5_x
            layer = common.PAPER_STAGE_NAMES[attention_layer]
            M_l = self.backbone.run(x, "conv1", layer)
            nxt = common.STAGES.index(layer) + 1
            M_5 = M_l if nxt == len(common.STAGES) else self.backbone.run(M_l, common.STAGES[nxt])
        # global branch: average pool over the whole conv5_x map (16x8 at 256x128) -> FC_1
        g = self.FC_1(M_5.mean(dim=(2, 3)))                                # [B, 512]
        # local branch: 4 horizontal stripes, each average-pooled -> its own 512-d FC.
        # Choice (not in the paper): adaptive pooling = the equal split when the rows divide by 4
        stripes = F.adaptive_avg_pool2d(M_5, (4, 1)).flatten(2)            # [B, 2048, 4]
        parts = [fc(stripes[:, :, i]) for i, fc in enumerate(self.part_fc)]  # 4 x [B, 512]
        # Choice (not in the paper): f after the dropout, i.e. exactly FC_2's input ("the input
        # of FC_2 is also regarded as the input of the triplet loss", Sec. IV-C)
        f = torch.cat([g, *parts], dim=1)                                  # [B, 2560]
        return f, self.FC_2(f), M_l


class AEA(nn.Module):
    """Both subnetworks; forward(x) is the variant's test feature (what evaluate.py calls):
    aea, b3, b4: concat(basic f, complementary f), L2-normalised, 5120-d (Sec. IV-B);
    b1: the basic network's 2560-d (it has no complementary network); b2: the complementary's."""

    def __init__(self, num_classes, variant="aea", weights="imagenet", dropout=0.5):
        super().__init__()
        self.variant = variant
        self.basic = Subnetwork(num_classes, weights, dropout)
        self.complementary = (Subnetwork(num_classes, weights, dropout) if variant != "b1"
                              else None)

    def forward(self, x):
        if self.variant == "b1":
            f = self.basic(x)[0]                                           # [B, 2560]
        elif self.variant == "b2":
            f = self.complementary(x)[0]                                   # [B, 2560]
        else:
            f = torch.cat([self.basic(x)[0], self.complementary(x)[0]], 1)  # [B, 5120]
        # "We then normalize features using L2 norm" (Sec. IV-B): the concatenation, not each
        # half. Choice (not in the paper): B1's and B2's 2560-d features are L2-normalised too
        return F.normalize(f.float(), dim=1)


# --- Eq. (1), the attention map, and the adversarial erasing operation (Sec. III-B, Fig. 4) -------

def attention_map(M):
    """Eq. (1): A_l = sum_c |M_l,c|^2 over the C channels of layer l's output: M [B, C, h, w] ->
    A [B, h, w], in fp32 (squares of bf16 activations would lose the ranking)."""
    return M.float().pow(2).sum(dim=1)


def salient_pixels(A, R, size):
    """The top R% of an attention map A [B, h, w] resized to size = (H, W) (Sec. III-B): bool
    [B, H, W], exactly k = round(R * H * W / 100) True per image."""
    B, (H, W) = A.shape[0], size
    # "we resize the attention map into the same size with the original pedestrian image ...
    # using bilinear interpolation" (Sec. III-B); a map already at (H, W) comes back unchanged
    A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
    # Choice (not in the paper): k rounds half to even (Python's round)
    k = round(R * H * W / 100)
    # "select the top R% largest values". Choice (not in the paper): ties to the lower pixel
    # index (a stable sort), so that the mask is the same on every run and device
    order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices  # [B, H*W]
    mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(B, H, W)                                              # [B, H*W] -> [B, H, W]


def erase_top(images, A, R):
    """The erased pedestrian images (Fig. 4): the top R% pixels of A set to 0 in normalised
    images [B, 3, H, W]. Choice (not in the paper): 0, the mean colour, which random erasing and
    the padding write too."""
    return images.masked_fill(salient_pixels(A, R, images.shape[-2:])[:, None], 0.0)


@torch.no_grad()
def adversarial_erasing(x, M_l, R):
    """Sec. III-B: A (Eq. (1)) from the basic network's layer-l output M_l -> the erased batch.
    No gradient: the erasing selects pixels (no derivative), and Fig. 2's back-propagation reaches
    the basic network only through L_I1 and L_T, never through the complementary network."""
    return erase_top(x, attention_map(M_l), R)


# --- The training step: Eq. (8) on one PK batch ---------------------------------------------------

def training_step(model, optimizer, x, y, cfg, joint, x_other=None):
    """One SGD step on a PK batch; returns the loss terms, for the progress line.

    x [B, 3, H, W]: the augmented, normalised originals; y [B]: their identity labels.
    joint=True, AEA (Fig. 2): the basic network on x; the top R% of its attention erased from x;
      the complementary network on the erased images; Eq. (8):
          L = L_I1 + alpha1 * L_I2 + alpha2 * L_T,  L_T over the 2B features of both.
    joint=False: the basic network alone (the warm-up, Baseline 1, Baseline 4's first phase),
      L = L_I1 + L_T.
    Each baseline differs from AEA in one place: B1 never joins (`basic_alone_epochs`); B2's
    L_T and its basic network's loss (below); B3, B4 and --erasing fixed | random feed the
    complementary network x_other, made in `epoch_batches`, instead of the dynamic erasing of x.
    """
    dynamic = joint and erasing_mode(cfg) == "adversarial"
    # --precision: bf16 autocast or none (auto: bf16 on CUDA, fp32 on the CPU)
    with common.autocast(x.device, cfg.precision):
        # 1. The basic network on the originals (Sec. III-A); under the dynamic strategy the
        #    same pass returns layer l's output M_l (conv2_x by default), Eq. (1)'s input
        f_b, v_b, M_l = model.basic(x, cfg.attention_layer if dynamic else None)
        # L_I1: cross-entropy of the basic network on the originals, Eq. (2)
        L_I1 = common.cross_entropy(v_b, y)
        if joint:
            # 2. Dynamic strategy (Sec. III-B): the erasing is recomputed now from the current
            #    basic network's attention map, Eq. (1), without gradient. Choice (not in the
            #    paper): it erases the augmented x the basic network saw, so map and pixels align
            x_erased = adversarial_erasing(x, M_l, cfg.R) if dynamic else x_other
            # 3. The complementary network on the erased images, with the same labels
            f_c, v_c, _ = model.complementary(x_erased)
            # L_I2: cross-entropy of the complementary network on the erased images, Eq. (2)
            L_I2 = common.cross_entropy(v_c, y)
            # L_T, Eq. (5): "triplets contain both original ... and erased pedestrian images";
            # Baseline 2 (Sec. IV-C): the erased images alone
            f, labels = ((f_c, y) if cfg.variant == "b2"
                         else (torch.cat([f_b, f_c]), torch.cat([y, y])))  # [2B, 2560], [2B]
            L_T = common.batch_hard_triplet_loss(f, labels, cfg.margin)
            # 4. The total loss, Eq. (8)
            L = L_I1 + cfg.alpha1 * L_I2 + cfg.alpha2 * L_T
            terms = dict(L_I1=L_I1, L_I2=L_I2, L_T=L_T)
        elif cfg.variant == "b2":
            # Choice (not in the paper): Baseline 2's basic network learns with the cross-entropy
            # alone, as Sec. IV-C says: "train the basic network using the cross-entropy loss"
            L, terms = L_I1, dict(L_I1=L_I1)
        else:
            # L_T on the originals' features, Eq. (5). Choice (not in the paper): L_I1 + L_T
            # without alpha2, which weighs the joint term of Eq. (8)
            L_T = common.batch_hard_triplet_loss(f_b, y, cfg.margin)
            L, terms = L_I1 + L_T, dict(L_I1=L_I1, L_T=L_T)
    # the backward pass outside autocast; parameters without a gradient (the complementary
    # network during the warm-up) are skipped by SGD: no step, no weight decay
    optimizer.zero_grad(set_to_none=True)
    L.backward()
    optimizer.step()
    return dict(terms, L=L)


# --- Erase-once inputs (B3, B4, --erasing fixed) and the batches of one epoch ---------------------

# Choice (not in the paper): the ImageNet mean colour rounded to uint8 for cached erased copies
MEAN_UINT8 = torch.tensor([round(255 * m) for m in data.MEAN], dtype=torch.uint8)
# Choice (not in the paper): ITU-R 601 luma as Baseline 3's grey level (PIL's convert("L"))
LUMA = torch.tensor([0.299, 0.587, 0.114])


@torch.no_grad()
def fixed_erasing_masks(images, R, basic=None, attention_layer="conv2_x", precision="auto"):
    """The pixels to erase once, for every cached image: uint8 [N, 3, H, W] -> bool [N, H, W]:
    the top R% of the grey-level image (basic=None, Baseline 3, Sec. IV-C), or of `basic`'s
    attention (Eq. (1); Baseline 4, --erasing fixed) on the unaugmented images."""
    if basic is not None:
        # Choice (not in the paper): eval mode, so each image's map does not depend on its batch
        was_training = basic.training
        basic.eval()
    masks = []
    for u8 in images.split(128):  # 128 images at a time
        if basic is None:
            A = (u8.float() * LUMA.to(u8.device).view(1, 3, 1, 1)).sum(dim=1)  # grey [b, H, W]
        else:
            with common.autocast(u8.device, precision):
                M_l = basic.backbone.run(data.normalize(u8), "conv1", attention_layer)
            A = attention_map(M_l)                                         # [b, h, w]
        masks.append(salient_pixels(A, R, u8.shape[-2:]))
    if basic is not None:
        basic.train(was_training)
    return torch.cat(masks)                                                # [N, H, W]


def erase_uint8(images, mask):
    """uint8 images [N, 3, H, W] with the mask's pixels [N, H, W] set to the mean colour."""
    return torch.where(mask[:, None], MEAN_UINT8.to(images.device).view(1, 3, 1, 1), images)


def epoch_batches(images, labels, sampler, g, cfg, joint, erased_images=None):
    """One epoch of (x, y, x_other): x the augmented originals, x_other the complementary
    network's input when it is not erased from x on the fly (else None): the erased copy with the
    SAME flips and crops (B3, B4, --erasing fixed: a twin of g and the same sampler indices), or a
    second augmentation with random erasing (--erasing random, REDA)."""
    originals = data.train_batches(images, labels, sampler, g)
    if joint and erased_images is not None:
        # Choice (not in the paper): the erased copy aligned with its augmented original
        twin = torch.Generator().set_state(g.get_state())
        others = data.train_batches(erased_images, labels, sampler, twin)
    elif joint and erasing_mode(cfg) == "random":
        # Choice (not in the paper): REDA as an independent second view, p = --reda-p
        others = data.train_batches(images, labels, sampler, g, random_erasing=cfg.reda_p)
    else:
        return ((x, y, None) for x, y in originals)
    return ((x, y, x_other) for (x, y), (x_other, _) in zip(originals, others))


# --- Training run (Sec. IV-B) ---------------------------------------------------------------------

def score(model, ds, cfg, device, cache):
    """Rank-1/5/10 and mAP of the test feature: Euclidean on L2-normalised features."""
    return evaluate.evaluate_model(model, ds, (cfg.height, cfg.width), device, images=cache,
                                   precision=cfg.precision)["euclidean"]


def train(cfg):
    """The paper's training (Sec. IV-B) with the variant's networks and inputs; returns {row:
    rank_metrics} (untrained, every --eval-every, final), or None when a signal stopped the run.
    OUT/last.pt after every epoch, OUT/best.pt, --resume and stop signals: common.TrainingRun."""
    device = common.pick_device(cfg.device)
    run = common.TrainingRun("aea", cfg, cfg.out, RESUME_MAY_DIFFER, device, loss="L",
                             erase_mask=None)  # erase-once runs (B3, B4, fixed): the mask, packed
    if run.finished:  # a finished run resumed: its table
        print(f"{run.last} already holds all {cfg.epochs} epochs; nothing left to resume\n"
              + evaluate.format_table(run.results, label=f"AEA {cfg.variant}"), flush=True)
        return run.results
    common.seed_everything(cfg.seed)
    ds = data.load_dataset(cfg.root, cfg.dataset, skip_bad_files=cfg.skip_bad_files)
    evaluate.check_true_matches(ds)  # the evaluation's need, before training
    sampler = data.PKSampler(ds.train.pids, cfg.P, cfg.K, seed=cfg.seed)  # --P checked here
    # the model before the images: a missing ImageNet file fails in seconds, not after decoding
    model = AEA(ds.num_train_pids, cfg.variant, cfg.weights, cfg.dropout)
    model = common.prepare_model(model, device)
    optimizer = common.make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    schedule = common.step_schedule(optimizer, [cfg.lr_step])  # lr x0.1 at epoch 75, Sec. IV-B
    print(f"AEA variant {cfg.variant}, erasing {erasing_mode(cfg)}, R {cfg.R}%, m {cfg.margin}, "
          f"{cfg.height}x{cfg.width}, P={cfg.P} K={cfg.K}, {cfg.epochs} epochs "
          f"({basic_alone_epochs(cfg)} basic alone), lr {cfg.lr} (x0.1 at {cfg.lr_step}), "
          f"weights {cfg.weights}, device {device}, precision {cfg.precision}, out {cfg.out}")
    images = data.load_images(ds.train.paths, cfg.height, cfg.width, desc="train").to(device)
    labels = torch.as_tensor(ds.train.pids).to(device)
    g = torch.Generator().manual_seed(cfg.seed)  # every augmentation draw (data.augment)
    first = run.start(model, optimizer, schedule, g, len(images), ds.num_train_pids,
                      "basic.FC_2.weight")
    mode, erased_images, cache = erasing_mode(cfg), None, {}  # cache: decoded query / gallery
    if run.extra["erase_mask"] is not None:  # a resumed erase-once run: its mask, bit-packed
        mask = np.unpackbits(run.extra["erase_mask"].numpy(), axis=-1, count=cfg.width)
        erased_images = erase_uint8(images, torch.from_numpy(mask.astype(bool)).to(device))
    elif run.state is None and cfg.eval_untrained:
        run.results["untrained"] = score(model, ds, cfg, device, cache)
    with run:  # SIGINT / SIGTERM: the step finishes, last.pt is written, the run stops
        for epoch in range(first, cfg.epochs):
            joint = epoch >= basic_alone_epochs(cfg)
            if joint and erased_images is None and mode in ("grey", "fixed"):
                # B3's grey level, B4's trained basic network: erased once (Sec. IV-C). Choice
                # (not in the paper): AOS-style (Table 6) erases once from the basic network after
                # its warm-up, where AOS learns the erased area with a separate network
                basic = None if mode == "grey" else model.basic
                mask = fixed_erasing_masks(images, cfg.R, basic, cfg.attention_layer,
                                           precision=cfg.precision)
                erased_images = erase_uint8(images, mask)
                # kept bit-packed for the checkpoints (Market-1501's mask: 53 MB)
                run.extra["erase_mask"] = torch.from_numpy(np.packbits(mask.cpu().numpy(), -1))
            model.train()
            sampler.set_epoch(epoch)
            batches = epoch_batches(images, labels, sampler, g, cfg, joint, erased_images)
            for x, y, x_other in run.epoch(epoch, batches, len(sampler)):
                run.log(len(y), training_step(model, optimizer, x, y, cfg, joint, x_other))
            if run.stopped:  # a signal: last.pt holds this epoch's steps so far
                return None
            schedule.step()
            # last.pt before the evaluation: an evaluation that fails loses no trained epoch
            if not run.end_epoch(keep_copy=cfg.keep_every and (epoch + 1) % cfg.keep_every == 0):
                return None
            if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                run.results[f"epoch {epoch + 1}"] = r = score(model, ds, cfg, device, cache)
                print(evaluate.format_table(run.results, label=f"AEA {cfg.variant}"), flush=True)
                run.save_results({"euclidean": r})  # last.pt and log.csv again, with this row
    return run.results


def model_from_checkpoint(ckpt, path="the checkpoint"):
    """evaluate.py's hook: (model in eval(), (height, width)) from an AEA checkpoint, its config
    rebuilt whole; another paper's file, or weights that do not fit it, are refused."""
    common.check_checkpoint(ckpt, path, "aea")
    try:
        cfg = AEAConfig(**ckpt["config"])
        model = AEA(ckpt["model"]["basic.FC_2.weight"].shape[0], cfg.variant, "none", cfg.dropout)
        common.load_weights(model, ckpt["model"], path)
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: the config or weights do not fit aea.py's network "
                        f"({str(e).splitlines()[0]})") from None
    return model.eval(), (cfg.height, cfg.width)


# --- Figures 3 and 5: images, their attention maps, the erased images -----------------------------

def figure(argv=None):
    """python aea.py figure --checkpoint C [C2 ...] --out F.png: one column per query image;
    rows: the images, then per checkpoint its attention map as a heat overlay (Fig. 3; several
    checkpoints of one run = Fig. 5's training statuses) and its erased images (Fig. 4)."""
    args, device, ckpts, images = evaluate.figure_inputs(
        argv, "aea.py figure", figure.__doc__, "aea", os.path.join("runs", "aea", "attention.png"),
        several=True)
    rows = [list(images)]                                                 # uint8 [n, 3, H, W]
    for path, ckpt in ckpts:
        model, cfg = model_from_checkpoint(ckpt, path)[0].to(device), AEAConfig(**ckpt["config"])
        with torch.no_grad(), common.autocast(device, evaluate.trained_precision(ckpt)):
            # the basic network's attention (Eq. (1)) at test time: the unaugmented images, in
            # eval mode (BatchNorm's running statistics), as `fixed_erasing_masks` computes it
            M_l = model.basic.backbone.run(data.normalize(images.to(device)), "conv1",
                                           cfg.attention_layer)
        A = attention_map(M_l).cpu()                                       # [n, h, w]
        rows.append(list(evaluate.heat_overlay(images, A)))
        rows.append(list(erase_uint8(images, salient_pixels(A, cfg.R, images.shape[-2:]))))
    evaluate.save_image_grid(args.out, rows)
    print(f"wrote {args.out}: {len(images)} {args.split} images, per checkpoint attention + erased")
    return args.out


# --- Command line ---------------------------------------------------------------------------------

def parse_config(argv):
    """Flags -> (AEAConfig, is_demo): the paper's defaults, the demo's without --root, margin and
    R per dataset; flags given on the command line win over all of them."""
    parser = argparse.ArgumentParser(
        prog="aea.py", description="Train AEA (or a baseline); the defaults are the paper's. "
        "Without --root: the demo, with " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                    for k, v in DEMO.items()) +
        ". Figures 3 and 5: `aea.py figure -h`.")
    common.add_config_args(parser, AEAConfig)
    demo = not parser.parse_args(argv).root
    parser.set_defaults(**(DEMO if demo else {}))
    args = parser.parse_args(argv)
    if demo and args.dataset != "synthetic":
        raise UserError(f"--dataset {args.dataset} needs --root DIR (the dataset's folder); "
                        "without --root `python aea.py` runs the demo on data/synthetic")
    parser.set_defaults(**PER_DATASET[args.dataset])
    cfg = common.config_from_args(AEAConfig, parser.parse_args(argv))
    cfg.out = cfg.out or os.path.join("runs", "aea", f"{cfg.dataset}-{cfg.variant}")
    check_config(cfg)
    return cfg, demo


def check_config(cfg):  # one clear UserError for the first bad value, naming the flag
    common.check_limits(cfg, LIMITS)
    if cfg.variant not in ("aea", "b2") and cfg.erasing != "adversarial":
        raise UserError(f"--erasing {cfg.erasing} applies to --variant aea and b2; {cfg.variant} "
                        "fixes its own input to the complementary network (Sec. IV-C)")
    # k = round(R * H * W / 100) pixels are erased (`salient_pixels`): 0 where R * H * W <= 50
    if cfg.R * cfg.height * cfg.width <= 50 and cfg.variant != "b1" and cfg.erasing != "random":
        raise UserError(f"--R {cfg.R} erases round({cfg.R}% of {cfg.height}x{cfg.width}) = 0 "
                        f"pixels: give --R above {50 / (cfg.height * cfg.width):.3g}")
    if cfg.variant != "b1" and basic_alone_epochs(cfg) >= cfg.epochs:
        raise UserError(f"--{'b4-basic' if cfg.variant == 'b4' else 'warmup'}-epochs "
                        f"{basic_alone_epochs(cfg)} leaves no epoch of --epochs {cfg.epochs} for "
                        "the complementary network")


def main(argv=None):
    """`python aea.py [flags]` trains (the demo without --root); `python aea.py figure ...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["figure"]:
        return figure(argv[1:])
    cfg, demo = parse_config(argv)
    if demo:
        data.ensure_synthetic(cfg.root)
        print(f"demo: synthetic data at {cfg.root}, weights {cfg.weights} (no ImageNet download "
              "offline; the real-data default is imagenet), CPU-sized schedule")
    start = time.time()
    results = train(cfg)  # its last table holds every row: untrained (demo), evaluations, final
    if results is None:  # stopped by SIGINT / SIGTERM: train printed how to resume; exit 0
        return None
    print(f"finished in {time.time() - start:.0f} s; checkpoint {os.path.join(cfg.out, 'last.pt')}")
    return results


if __name__ == "__main__":
    common.exit_on_user_error(main)  # a UserError becomes "error: <message>", exit status 2

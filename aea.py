"""Adversarial Erasing Attention for person re-identification (AEA).
  IEEE Access 8:56469 (2020), doi:10.1109/ACCESS.2020.2981791

A basic network learns global + 4 stripe features from the original images. At every iteration
its own conv2_x attention map picks the R% most-attended pixels of each image, which are erased; a
complementary network with its own weights learns from the erased images. Test feature: both.

Paper map (paper -> code; follow one batch from `train` to Eq. (8) in `training_step`):
  Sec. III-A, Table 1, Fig. 2 upper branch: the basic network   -> `Subnetwork` (ResNet: `--arch`)
  Sec. III-B, Fig. 2 lower branch: the complementary network    -> `AEA.complementary`
  Eq. (1), attention map A_l = sum_c |M_l,c|^2                  -> `attention_map`
  Sec. III-B, Fig. 4, the adversarial erasing operation         -> `salient_pixels`, `erase_top`
  Sec. III-B, dynamic strategy (erase at every iteration)       -> `training_step`, step 2
  Eq. (2), (3), (4): L_I1 and L_I2, cross-entropy               -> `common.cross_entropy`
  Eq. (5), (6), (7): L_T, batch-hard triplet on 2PK features    -> `common.batch_hard_triplet_loss`
  Eq. (8), L = L_I1 + alpha1 L_I2 + alpha2 L_T                  -> `training_step`, step 4
  Sec. IV-B, schedule, the basic network's 10-epoch warm-up     -> `train`, `AEAConfig`
  Sec. IV-B, the 5120-d L2-normalised test feature              -> `AEA.forward`
  Sec. IV-C, Baselines 1-4 (Table 2), B4's two phases    -> `--variant`, `total_epochs`, `lr_factor`
  Table 6, REDA and AOS-style fixed erasing                     -> `--erasing random|fixed`
  Figs. 6-7, Tables 7-9 (R, m, alpha, l) -> `--R`, `--margin`, `--alpha1/2`, `--attention-layer`

Commands:
  python synthetic.py && python pretrain.py && python aea.py   # the demo: synthetic, CPU-sized
  python aea.py --root DIR --dataset market1501 [--variant b1 ...]   # the paper's schedule
  python aea.py <the same flags> --resume                   # continue a stopped run (OUT/last.pt)
  python evaluate.py --checkpoint runs/aea/market1501-aea/last.pt --root DIR --dataset market1501
  python tools.py figure aea --checkpoint C [C2 ...]         # Figs. 3 and 5
  python tools.py compare aea [--start random]              # Tables 2 and 6 in miniature

Choices where the paper is silent (each at its line, "Choice (not in the paper)", with its reason):
  - One starting backbone for both networks whatever the start (random weights: one draw, copied);
    the heads drawn apart.
  - FC_1 and the stripe FCs: Linear -> BatchNorm -> LeakyReLU 0.1 -> Dropout, f after the dropout;
    4 stripes by adaptive pooling (any height); all test features L2-normalised (B1's, B2's too).
  - Top-R%: k = round(R * H * W / 100), ties to the lower pixel index (a stable sort). Erased
    pixels: the mean colour (0 in the normalised image), in the augmented batch.
  - The warm-up only where the erasing reads the basic network (adversarial, fixed, B4); alone, it
    trains with L_I1 + L_T (B2's: L_I1). B4 "until convergence" = B1's whole run, then AEA's joint
    phase, epochs and lrs (`lr_factor`): only the dynamic strategy differs.
  - Erase-once masks (B3, B4, --erasing fixed): unaugmented images, eval mode, for fixed (AOS-style)
    after the warm-up, no separate network; B3's grey: ITU-R 601 luma; the erased copy gets its
    original's flip and crop (a twin generator). --erasing random: REDA, an independent second view.
"""

import argparse
import dataclasses
import os
import sys
import time
import typing

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
import evaluate
from common import UserError


# --- Networks: basic and complementary (Sec. III-A/B), the test feature (Sec. IV-B) ---------------

def embedding(dropout, C=2048):
    """FC_1 (Sec. III-A; LeakyReLU 0.1 and Dropout: Sec. IV-B): C (conv5_x's channels) -> 512."""
    # Choice (not in the paper): the stripe FCs alike; a BatchNorm, so the 5 outputs share a scale
    return nn.Sequential(nn.Linear(C, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.1),
                         nn.Dropout(dropout))


class Subnetwork(nn.Module):
    """The basic network (Sec. III-A, Table 1); the complementary network (Sec. III-B) is the same
    with its own weights. ResNet-50, conv5_x with stride 1 (256x128: 2048x16x8; ResNet-18: 512) ->
      global: average pool -> FC_1 (512)                             } concatenated: f, 2560-d
      local:  4 horizontal stripes -> average pool -> FC (512) each  }  (whatever the --arch)
    -> FC_2, the identity classifier (2560 -> number of training identities)."""

    def __init__(self, num_classes, weights="imagenet", dropout=0.5, arch="resnet50"):
        super().__init__()
        self.backbone = common.Backbone(weights, last_stride=1, arch=arch)
        C = self.backbone.channels["layer4"]  # conv5_x's channels: 2048 in ResNet-50
        self.FC_1 = embedding(dropout, C)
        self.part_fc = nn.ModuleList(embedding(dropout, C) for _ in range(4))
        self.FC_2 = nn.Linear(5 * 512, num_classes)

    def forward(self, x, attention_layer=None):
        """x [B, 3, H, W] -> (f [B, 2560], v [B, N] the logits of FC_2, M_l or None); M_l is
        layer `attention_layer`'s output from this same pass: no second pass for the attention."""
        if attention_layer is None:
            M_l = None
            M_5 = self.backbone.run(x)
        else:
            # run to layer l, keep its output M_l, then go on from there to conv5_x
            layer = common.PAPER_STAGE_NAMES[attention_layer]
            M_l = self.backbone.run(x, "conv1", layer)
            if layer == "layer4":
                M_5 = M_l
            else:
                after = common.STAGES[common.STAGES.index(layer) + 1]
                M_5 = self.backbone.run(M_l, after)
        # global branch: all of conv5_x pooled
        g = self.FC_1(M_5.mean(dim=(2, 3)))                                # [B, 512]
        # local branch: 4 horizontal stripes, each pooled, each through its own FC.
        # Choice (not in the paper): adaptive pooling = the equal split when the rows divide by 4
        stripes = F.adaptive_avg_pool2d(M_5, (4, 1)).flatten(2)           # [B, C, 4]
        parts = [fc(stripes[:, :, i]) for i, fc in enumerate(self.part_fc)]  # 4 x [B, 512]
        # Choice (not in the paper): f after the dropout, i.e. exactly FC_2's input ("the input
        # of FC_2 is also regarded as the input of the triplet loss", Sec. IV-C)
        f = torch.cat([g, *parts], dim=1)                                  # [B, 2560]
        return f, self.FC_2(f), M_l


class AEA(nn.Module):
    """Both subnetworks; forward(x), the test feature (evaluate.py's): aea, b3, b4: concat(basic f,
    complementary f), 5120-d (Sec. IV-B); b1: the basic 2560-d f; b2: the complementary one."""

    def __init__(self, num_classes, variant="aea", weights="imagenet", dropout=0.5,
                 arch="resnet50"):
        super().__init__()
        self.variant = variant
        self.basic = Subnetwork(num_classes, weights, dropout, arch)
        self.complementary = None  # B1: the basic network alone
        if variant != "b1":
            # "We initialize the basic network and complementary network of AEA using ResNet-50"
            # (Sec. IV-B): one starting backbone for both, copied; the heads (FC_1, the stripe
            # FCs, FC_2) are new layers in each. Choice (not in the paper): the same from random
            # weights, one draw copied, so that the two networks differ only in what they learn
            self.complementary = Subnetwork(num_classes, "none", dropout, arch)
            self.complementary.backbone.load_state_dict(self.basic.backbone.state_dict())

    def forward(self, x):
        if self.variant == "b1":
            f = self.basic(x)[0]                                           # [B, 2560]
        elif self.variant == "b2":
            f = self.complementary(x)[0]                                   # [B, 2560]
        else:
            f_basic = self.basic(x)[0]
            f_complementary = self.complementary(x)[0]
            f = torch.cat([f_basic, f_complementary], dim=1)               # [B, 5120]
        # "We then normalize features using L2 norm" (Sec. IV-B): the concatenation, not each
        # half. Choice (not in the paper): B1's and B2's 2560-d features are L2-normalised too
        return F.normalize(f.float(), dim=1)


# --- Eq. (1), the attention map, and the adversarial erasing operation (Sec. III-B, Fig. 4) -------

def attention_map(M):
    """Eq. (1), the attention map of layer l: A_l = sum over the C channels c of |M_l,c|^2,
    position by position. M [B, C, h, w] -> A [B, h, w], computed in fp32 whatever M's precision:
    under autocast M arrives in bf16, whose 8 significant bits would round the sums (16^2 + 1^2 =
    257 becomes 256) and so reorder the pixels that `salient_pixels` ranks."""
    return M.float().pow(2).sum(dim=1)


def salient_pixels(A, R, size):
    """The top R% of maps A [B, h, w] resized to size = (H, W) (Sec. III-B): bool [B, H, W], True
    on the pixels to be erased.
      1. Resize A to (H, W) in fp32 by bilinear interpolation with half-pixel centres (output
         pixel i reads source coordinate (i + 0.5) * h / H - 0.5, clamped to the map: PyTorch's
         bilinear interpolate without aligned corners); a map already at (H, W) is unchanged.
      2. Choice (not in the paper): k = R% of H*W rounded to the nearest integer, a half to the
         even one as Python's round does (2.5 -> 2, 3.5 -> 4, 3.2 -> 3).
      3. In each image, the k pixels of largest value. Choice (not in the paper): ties go to the
         lower row-major pixel index (y * W + x), so the pixels are the same on every run and
         device."""
    B = A.shape[0]
    H, W = size
    # "we resize the attention map into the same size with the original pedestrian image ...
    # using bilinear interpolation" (Sec. III-B); a map already at (H, W) comes back unchanged
    A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
    k = round(R * H * W / 100)  # Choice (not in the paper): half to even (Python's round)
    # "select the top R% largest values". Choice (not in the paper): ties to the lower pixel
    # index (a stable sort), so that the erased pixels are the same on every run and device
    order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices  # [B, H*W]
    erased = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
    erased.scatter_(1, order[:, :k], True)
    return erased.view(B, H, W)                                            # [B, H*W] -> [B, H, W]


def erase_top(images, A, R):
    """The erased pedestrian images (Fig. 4): the top R% pixels of A set to 0 in normalised
    images [B, 3, H, W]. Choice (not in the paper): 0, the mean colour, as random erasing writes."""
    return images.masked_fill(salient_pixels(A, R, images.shape[-2:])[:, None], 0.0)


@torch.no_grad()
def adversarial_erasing(x, M_l, R):
    """Sec. III-B: A (Eq. (1)) from the basic network's layer-l output M_l -> the erased batch. No
    gradient: selecting pixels has none, and in Fig. 2 only L_I1 and L_T reach the basic network."""
    return erase_top(x, attention_map(M_l), R)


# --- The training step: Eq. (8) on one PK batch ---------------------------------------------------

def training_step(model, optimizer, x, y, cfg, joint, x_other=None):
    """One SGD step on a PK batch; returns the loss terms, for the progress line.
    x [B, 3, H, W]: the augmented, normalised originals; y [B]: their identity labels.
    joint=True, AEA (Fig. 2): steps 1-4 below, Eq. (8); joint=False: the basic network alone
    (warm-up, Baseline 1, B4's first phase). Each baseline differs from AEA in one place: B1 never
    joins (`basic_alone_epochs`); B2's L_T and basic loss (below); B3, B4, --erasing fixed | random
    feed the complementary network x_other (`epoch_batches`) instead of the dynamic erasing of x.
    Step 4, Eq. (8): the total loss L adds the basic network's cross-entropy L_I1 as it is, the
    complementary network's L_I2 weighed by alpha1 and the triplet loss L_T weighed by alpha2
    (cfg.alpha1, cfg.alpha2: AEAConfig, Sec. IV-B)."""
    dynamic = joint and erasing_mode(cfg) == "adversarial"
    attention_layer = cfg.attention_layer if dynamic else None
    with common.autocast(x.device, cfg.precision):  # auto: bf16 on CUDA, fp32 on the CPU
        # 1. The basic network on the originals (Sec. III-A); dynamic: M_l too, Eq. (1)'s input
        f_b, v_b, M_l = model.basic(x, attention_layer)
        # L_I1: cross-entropy of the basic network on the originals, Eq. (2)
        L_I1 = common.cross_entropy(v_b, y)
        if joint:
            # 2. Dynamic strategy (Sec. III-B): the erasing is recomputed now from the current
            #    basic network's attention map, Eq. (1), without gradient. Choice (not in the
            #    paper): it erases the augmented x the basic network saw, so map and pixels align
            if dynamic:
                x_erased = adversarial_erasing(x, M_l, cfg.R)
            else:
                x_erased = x_other
            # 3. The complementary network on the erased images, with the same labels
            f_c, v_c, _ = model.complementary(x_erased)
            # L_I2: cross-entropy of the complementary network on the erased images, Eq. (2)
            L_I2 = common.cross_entropy(v_c, y)
            # L_T, Eq. (5): "triplets contain both original ... and erased pedestrian images";
            # Baseline 2 (Sec. IV-C): the erased images alone
            if cfg.variant == "b2":
                L_T = common.batch_hard_triplet_loss(f_c, y, cfg.margin)
            elif cfg.triplet == "separate":
                # --triplet separate, a diagnostic, not the paper's: each network its own
                # batch-hard triplet over its own PK features, so that the basic network's
                # triplet is Baseline 1's; does the shared 2PK triplet pull the basic one down?
                L_T_basic = common.batch_hard_triplet_loss(f_b, y, cfg.margin)
                L_T_complementary = common.batch_hard_triplet_loss(f_c, y, cfg.margin)
                L_T = L_T_basic + L_T_complementary
            else:
                f_both = torch.cat([f_b, f_c])                             # [2B, 2560]
                y_both = torch.cat([y, y])                                 # [2B]
                L_T = common.batch_hard_triplet_loss(f_both, y_both, cfg.margin)
            # 4. The total loss, Eq. (8)
            L = L_I1 + cfg.alpha1 * L_I2 + cfg.alpha2 * L_T
            terms = dict(L_I1=L_I1, L_I2=L_I2, L_T=L_T)
        elif cfg.variant == "b2":
            # Choice (not in the paper): Baseline 2's basic network learns with the cross-entropy
            # alone, as Sec. IV-C says: "train the basic network using the cross-entropy loss"
            L = L_I1
            terms = dict(L_I1=L_I1)
        else:
            # L_T on the originals, Eq. (5). Choice (not in the paper): alpha2 weighs Eq. (8) only
            L_T = common.batch_hard_triplet_loss(f_b, y, cfg.margin)
            L = L_I1 + L_T
            terms = dict(L_I1=L_I1, L_T=L_T)
    # the backward pass outside autocast; parameters without a gradient (the complementary
    # network during the warm-up) are skipped by SGD: no step, no weight decay
    optimizer.zero_grad(set_to_none=True)
    L.backward()
    optimizer.step()
    return dict(terms, L=L)


# --- The schedule (Sec. IV-B) and the baselines' epochs (Sec. IV-C) -------------------------------

def erasing_mode(cfg):
    """What the complementary network is fed: 'adversarial' (AEA's dynamic attention erasing),
    'random' (REDA), 'fixed' (attention erasing computed once: B4, AOS-style) or 'grey' (B3)."""
    if cfg.variant == "b3":
        return "grey"
    if cfg.variant == "b4":
        return "fixed"
    return cfg.erasing


def basic_alone_epochs(cfg):
    """The epochs at the start in which only the basic network trains (Sec. IV-B)."""
    if cfg.variant in ("b1", "b4"):
        # B1: the basic network alone. Choice (not in the paper): B4 "until convergence" = B1
        return cfg.epochs
    # Choice (not in the paper): the warm-up exists "to enable the basic network to predict the
    # salient parts properly" (Sec. IV-B), so only erasings that read the basic network wait
    if erasing_mode(cfg) in ("adversarial", "fixed"):
        return cfg.warmup_epochs
    return 0


def total_epochs(cfg):
    """The run's epochs: --epochs; B4: --epochs basic, then AEA's joint phase (Sec. IV-C)."""
    if cfg.variant == "b4":
        return cfg.epochs + cfg.epochs - cfg.warmup_epochs
    return cfg.epochs


def lr_factor(cfg, epoch):
    """The lr of 0-based `epoch` over --lr: 1, x0.1 from epoch --lr-step on (Sec. IV-B). E.g.
    B4 with --epochs 4 --lr-step 3 --warmup-epochs 1: 1, 1, 1, 0.1 (basic), 1, 1, 0.1 (joint)."""
    if cfg.variant == "b4" and epoch >= cfg.epochs:
        # Choice (not in the paper): AEA's joint-phase lrs: only the dynamic strategy differs
        epoch += cfg.warmup_epochs - cfg.epochs
    return 0.1 if epoch >= cfg.lr_step else 1.0


# --- Erase-once inputs (B3, B4, --erasing fixed) and the batches of one epoch ---------------------

# the mean colour of `erase_top` in uint8, for the erased copies kept in the image cache
MEAN_UINT8 = torch.tensor([round(255 * m) for m in data.MEAN], dtype=torch.uint8)
# Choice (not in the paper): ITU-R 601 luma as Baseline 3's grey level (PIL's convert("L"))
LUMA = torch.tensor([0.299, 0.587, 0.114])


@torch.no_grad()
def fixed_erasing_masks(images, R, basic=None, attention_layer="conv2_x", precision="auto"):
    """Erase-once pixels: unaugmented uint8 images [N, 3, H, W] -> bool [N, H, W], True where
    erased: the top R% of the grey image (basic=None: B3, Sec. IV-C) or `basic`'s attention
    (Eq. (1): B4, --erasing fixed)."""
    # Choice (not in the paper): eval mode, so each image's map does not depend on its batch
    was_training = basic is not None and basic.training
    erased = []
    for u8 in images.split(128):  # 128 images at a time
        if basic is None:
            luma = LUMA.to(u8.device).view(1, 3, 1, 1)
            A = (u8.float() * luma).sum(dim=1)                             # grey [b, H, W]
        else:
            with common.autocast(u8.device, precision):
                M_l = basic.eval().backbone.run(data.normalize(u8), "conv1", attention_layer)
            A = attention_map(M_l)                                         # [b, h, w]
        erased.append(salient_pixels(A, R, u8.shape[-2:]))
    if basic is not None:
        basic.train(was_training)
    return torch.cat(erased)                                               # [N, H, W]


def erase_uint8(images, erased):
    """uint8 images [N, 3, H, W] with the erased pixels (True in `erased` [N, H, W]) set to the
    mean colour."""
    mean = MEAN_UINT8.to(images.device).view(1, 3, 1, 1)
    return torch.where(erased[:, None], mean, images)


def epoch_batches(images, labels, sampler, g, cfg, joint, erased_images=None):
    """One epoch of (x, y, x_other): x the augmented originals, x_other the complementary network's
    input when it is not erased from x on the fly (B3, B4, --erasing fixed | random), else None."""
    originals = data.train_batches(images, labels, sampler, g, pad=cfg.pad)
    if joint and erased_images is not None:
        # Choice (not in the paper): the erased copy aligned with its augmented original
        twin = torch.Generator().set_state(g.get_state())
        others = data.train_batches(erased_images, labels, sampler, twin, pad=cfg.pad)
    elif joint and erasing_mode(cfg) == "random":
        # Choice (not in the paper): REDA as an independent second view, p = --reda-p
        others = data.train_batches(images, labels, sampler, g, pad=cfg.pad,
                                    random_erasing=cfg.reda_p)
    else:
        return ((x, y, None) for x, y in originals)
    return ((x, y, x_other) for (x, y), (x_other, _) in zip(originals, others))


# --- Training (Sec. IV-B) -------------------------------------------------------------------------

def score(model, ds, cfg, device, cache):
    """Rank-1/5/10 and mAP of the test feature: Euclidean on L2-normalised features."""
    size = (cfg.height, cfg.width)
    results = evaluate.evaluate_model(model, ds, size, device, images=cache,
                                      precision=cfg.precision)
    return results["euclidean"]


class View(nn.Module):
    """A diagnostic test feature of an AEA network (not the paper's, which is AEA.forward's):
    part 'basic' or 'complementary', one subnetwork's 2560-d f, or 'both', their 5120-d
    concatenation; L2-normalised as the test feature is. Which half carries the score?"""

    def __init__(self, model, part):
        super().__init__()
        self.model = model
        self.part = part

    def forward(self, x):
        if self.part == "both":
            f = torch.cat([self.model.basic(x)[0], self.model.complementary(x)[0]], dim=1)
        else:
            f = getattr(self.model, self.part)(x)[0]
        return F.normalize(f.float(), dim=1)


# the rows `train` adds after its last epoch for a network with both halves: {row: View part}
VIEWS = {"basic half": "basic", "complementary half": "complementary", "concatenation": "both"}


def score_views(model, ds, cfg, device, cache):
    """The diagnostics of a network with both halves -> {VIEWS row: rank_metrics}: each half
    alone and their concatenation, except the view that is the test feature itself (AEA, B3, B4:
    the concatenation; B2: the complementary half); {} for Baseline 1."""
    if model.complementary is None:
        return {}
    test_part = "complementary" if cfg.variant == "b2" else "both"
    return {row: score(View(model, part), ds, cfg, device, cache)
            for row, part in VIEWS.items() if part != test_part}


def train(cfg):
    """The paper's training (Sec. IV-B) -> {row: rank_metrics}: with --eval-untrained "untrained"
    (random weights), or "random weights" and "start: weights W" (the network the run starts
    from); "epoch N" every --eval-every epochs and after the last, then "epoch N, <view>" for
    each half of a two-network test feature (`score_views`). At each epoch's end OUT/last.pt holds
    everything --resume needs (the dict below). Ctrl-C or SIGTERM stops the run wherever it is (a
    KeyboardInterrupt: `main` says how to resume); --resume redoes the epoch in progress, so that
    on the CPU a stopped and resumed run ends bit-identical to an uninterrupted one."""
    device = common.pick_device(cfg.device)
    release = common.hold_folder(cfg.out)  # OUT/.lock, before any data is read
    last = os.path.join(cfg.out, "last.pt")
    epochs = total_epochs(cfg)
    ckpt = None
    earlier = common.earlier_run(cfg.out)  # the files of a run in --out before this one
    if cfg.resume:
        ckpt = common.resume_state(last, "aea", cfg, RESUME_MAY_DIFFER, device)
    elif earlier:
        print(f"note: {cfg.out} holds an earlier run; its files ({', '.join(earlier)}) are "
              "replaced when this run starts training (--resume continues it instead)")
    # the same seed draws the same weights, PK batches and augmentation
    common.seed_everything(cfg.seed)
    # the dataset's names parsed into identity and camera labels (no pixels yet)
    ds = data.load_dataset(cfg.root, cfg.dataset, skip_bad_files=cfg.skip_bad_files)
    evaluate.check_true_matches(ds)  # the evaluation's need, before training
    # the training files and labels, in a digest: --resume refuses a run's split changed since
    train_digest = common.split_digest(ds.train.paths, ds.train.pids, cfg.root)
    if ckpt is not None:
        common.check_checkpoint(ckpt, last, "aea", ds.num_train_pids, "basic.FC_2.weight")
        common.check_same_images(ckpt, last, cfg.root, len(ds.train), train_digest)
    sampler = data.PKSampler(ds.train.pids, cfg.P, cfg.K, seed=cfg.seed)  # --P checked here
    # the model before the images: a missing ImageNet file fails in seconds, not after decoding
    model = AEA(ds.num_train_pids, cfg.variant, cfg.weights, cfg.dropout, cfg.arch)
    model = common.prepare_model(model, device)
    optimizer = common.make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    # Sec. IV-B: lr x0.1 from epoch --lr-step on (B4: `lr_factor`)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg, e))
    print(f"AEA variant {cfg.variant}, erasing {erasing_mode(cfg)}, R {cfg.R}%, m {cfg.margin}, "
          f"{cfg.height}x{cfg.width}, {cfg.arch}, P={cfg.P} K={cfg.K}, {epochs} epochs "
          f"({basic_alone_epochs(cfg)} basic alone), lr {cfg.lr} (x0.1 at {cfg.lr_step}), "
          f"weights {cfg.weights}, device {device}, precision {cfg.precision}, out {cfg.out}")
    # every training image decoded once, uint8 [N, 3, H, W], on the training device
    images = data.load_images(ds.train.paths, cfg.height, cfg.width, desc="train").to(device)
    # their identities, 0..N-1: the targets of FC_2 and the triplet's labels
    labels = torch.as_tensor(ds.train.pids).to(device)
    g = torch.Generator().manual_seed(cfg.seed)  # every augmentation draw (data.augment)

    first_epoch = 0
    log = []  # OUT/log.csv: a row per epoch
    results = {}  # {row: rank_metrics}, the table
    erased_packed = None  # B3, B4, --erasing fixed: the erase-once pixels, bit-packed
    checkpoint = ckpt  # the last one written (or read)
    if ckpt is not None:  # --resume: put back all that the checkpoint below holds
        common.restore(ckpt, last, model, optimizer, schedule, g)
        first_epoch = ckpt["epoch"]
        log = ckpt["log"]
        results = ckpt["results"]
        erased_packed = ckpt["erased"]
        # in case the run was killed between last.pt and log.csv, or best.pt's link
        common.write_log(cfg.out, log)
        if common.lowest_so_far(log, "L"):
            common.link_best(last)
        if first_epoch < epochs:
            print(f"resuming {last} at epoch {first_epoch + 1}", flush=True)
    else:  # a new run: every check has passed, an earlier run's files in --out go now
        common.clear_earlier_run(cfg.out)

    mode = erasing_mode(cfg)
    erased_images = None  # the erased copies of the training images (erase-once modes)
    if erased_packed is not None:
        erased = np.unpackbits(erased_packed.numpy(), axis=-1, count=cfg.width).astype(bool)
        erased_images = erase_uint8(images, torch.from_numpy(erased).to(device))
    cache = {}  # the decoded query and gallery images, for every evaluation
    if ckpt is None and cfg.eval_untrained:
        if cfg.weights == "none":
            results["untrained"] = score(model, ds, cfg, device, cache)
        else:
            # the start's two rows: the same network with random weights (drawn apart, so that
            # the run's own draws stay as they are), then the network this run starts from
            with torch.random.fork_rng(devices=[]):
                random_model = AEA(ds.num_train_pids, cfg.variant, "none", cfg.dropout, cfg.arch)
            random_model = common.prepare_model(random_model, device)
            results["random weights"] = score(random_model, ds, cfg, device, cache)
            results[f"start: weights {cfg.weights}"] = score(model, ds, cfg, device, cache)

    def evaluate_epoch(epoch):
        """Score epoch `epoch`, print the table, add the scores to log.csv and last.pt; after
        the last epoch, each half of the test feature too (`score_views`)."""
        r = score(model, ds, cfg, device, cache)
        results[f"epoch {epoch}"] = r
        if epoch == epochs:
            for row, view in score_views(model, ds, cfg, device, cache).items():
                results[f"epoch {epoch}, {row}"] = view
        print(evaluate.format_table(results, label=f"AEA {cfg.variant}"), flush=True)
        log[-1]["rank-1 euclidean"] = 100 * float(r["cmc"][0])
        log[-1]["mAP euclidean"] = 100 * float(r["mAP"])
        checkpoint["results"] = common.saved_results(results)
        common.save_epoch(cfg.out, checkpoint, "L")

    for epoch in range(first_epoch, epochs):
        # after the basic network's warm-up (Sec. IV-B), both networks train, Eq. (8)
        joint = epoch >= basic_alone_epochs(cfg)
        if joint and erased_images is None and mode in ("grey", "fixed"):
            # B3's grey level, B4's trained basic network: erased once (Sec. IV-C). Choice (not
            # in the paper): AOS-style (Table 6) too, after the warm-up, not a separate network
            basic = None if mode == "grey" else model.basic
            erased = fixed_erasing_masks(images, cfg.R, basic, cfg.attention_layer, cfg.precision)
            erased_images = erase_uint8(images, erased)
            # saved in the checkpoints, bit-packed (Market-1501's erased pixels: 53 MB)
            erased_packed = torch.from_numpy(np.packbits(erased.cpu().numpy(), axis=-1))
        model.train()  # dropout on, BatchNorm on the batch's statistics
        sampler.set_epoch(epoch)  # this epoch's P x K batches, drawn from (seed, epoch)
        lr = optimizer.param_groups[0]["lr"]
        where = f"epoch {epoch + 1}/{epochs}"
        # a line every 20 steps; a NaN or infinite loss term stops the run there
        progress = common.Progress(len(sampler), prefix=f"{where}  lr {lr:.0e}  ", where=where)
        for x, y, x_other in epoch_batches(images, labels, sampler, g, cfg, joint, erased_images):
            terms = training_step(model, optimizer, x, y, cfg, joint, x_other)
            progress.update(len(y), terms)
        schedule.step()  # the next epoch's lr
        # log.csv's row: each loss term's mean over the epoch, img/s and seconds
        log.append({"epoch": epoch + 1, "lr": lr, **progress.summary()})

        # the checkpoint: all that --resume needs to go on as if the run had never stopped
        checkpoint = {
            "paper": "aea",
            "config": dataclasses.asdict(cfg),
            "epoch": epoch + 1,  # epochs done
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": common.rng_state(),  # Python, numpy, torch (dropout) and CUDA
            "aug_generator": g.get_state(),  # data.augment's draws
            "erased": erased_packed,
            "num_images": len(images),
            "train_digest": train_digest,  # --resume refuses other training files
            "device_type": device.type,  # what --precision auto meant for this run
            "log": log,
            "results": common.saved_results(results),
        }
        # OUT/last.pt, OUT/log.csv, and OUT/best.pt if this epoch's mean L is the lowest so far
        common.save_epoch(cfg.out, checkpoint, "L")
        if cfg.keep_every and (epoch + 1) % cfg.keep_every == 0:
            common.save_checkpoint(os.path.join(cfg.out, f"epoch_{epoch + 1}.pt"), checkpoint)
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < epochs:
            evaluate_epoch(epoch + 1)

    # the last epoch's evaluation (also when a run stopped during it is resumed)
    if f"epoch {epochs}" not in results:
        evaluate_epoch(epochs)
    elif first_epoch == epochs:
        print(f"{last} already holds all {epochs} epochs, evaluated; nothing left to train\n"
              + evaluate.format_table(results, label=f"AEA {cfg.variant}"), flush=True)
    release()  # OUT/.lock: another run may use the folder now
    return results


def model_from_checkpoint(ckpt, path="the checkpoint"):
    """evaluate.py's hook: AEA checkpoint -> (model in eval(), (height, width)), or a UserError."""
    common.check_checkpoint(ckpt, path, "aea")
    try:
        cfg = AEAConfig(**ckpt["config"])
        num_classes = ckpt["model"]["basic.FC_2.weight"].shape[0]
        model = AEA(num_classes, cfg.variant, "none", cfg.dropout, cfg.arch)
        common.load_weights(model, ckpt["model"], path)
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: the config or weights do not fit aea.py's network "
                        f"({str(e).splitlines()[0]})") from None
    return model.eval(), (cfg.height, cfg.width)


# --- Config: the paper's schedule as defaults (Sec. IV-B); the demo and datasets adjust some ------

DATASETS = typing.Literal["market1501", "duke", "cuhk03-labeled", "cuhk03-detected", "synthetic",
                          "folder"]  # folder: your own images, ROOT/<split>/<identity>/<image>
LAYERS = typing.Literal["conv2_x", "conv3_x", "conv4_x", "conv5_x"]


@dataclasses.dataclass
class AEAConfig:
    root: str = ""  # dataset folder (Market-1501 or folder layout); none: `python aea.py`, the demo
    dataset: DATASETS = "market1501"  # Sec. IV-A
    height: int = 256  # input height, Sec. IV-B ("resize all pedestrian images to 256x128")
    width: int = 128  # input width, Sec. IV-B
    weights: str = "imagenet"  # ResNet-50 start, Sec. IV-B: imagenet, synthetic, none or a path
    arch: typing.Literal[tuple(common.ARCHS)] = "resnet50"  # Sec. III-A's ResNet-50; 18, 34: CPU
    variant: typing.Literal["aea", "b1", "b2", "b3", "b4"] = "aea"  # AEA or Baseline 1-4, Table 2
    erasing: typing.Literal["adversarial", "random", "fixed"] = "adversarial"  # Table 6
    dropout: float = 0.5  # Dropout rate in FC_1 and the stripe FCs, Sec. IV-B
    attention_layer: LAYERS = "conv2_x"  # l in Eq. (1), Table 9
    R: float = 10.0  # percent of pixels erased, Sec. III-B, Fig. 6 (10 Market/Duke, 20 CUHK03)
    reda_p: float = 0.5  # --erasing random: random erasing probability (Zhong et al.), Table 6
    margin: float = 0.3  # m in Eq. (5), Sec. IV-B, Fig. 7 (0.3 Market/Duke, 0.35 CUHK03)
    alpha1: float = 1.0  # alpha1 in Eq. (8), Tables 7-8
    alpha2: float = 1.0  # alpha2 in Eq. (8), Tables 7-8
    # L_T, Eq. (5): shared, over both networks' 2PK features; separate: each network its own PK
    # triplet, a diagnostic that is not the paper's (AEA, B3, B4)
    triplet: typing.Literal["shared", "separate"] = "shared"
    P: int = 8  # identities per batch, Sec. IV-B
    K: int = 4  # images per identity, Sec. IV-B
    epochs: int = 100  # Sec. IV-B
    lr: float = 0.01  # learning rate, Sec. IV-B
    lr_step: int = 75  # the epoch at which lr is multiplied by 0.1, Sec. IV-B
    warmup_epochs: int = 10  # the basic network alone first, Sec. IV-B
    momentum: float = 0.9  # SGD momentum (the paper names no optimiser)
    weight_decay: float = 5e-4  # SGD weight decay (the paper names no optimiser)
    pad: int = 10  # pixels of zero padding before the random crop (data.augment's choice)
    seed: int = 0  # seeds the weights, the PK sampler and the augmentation
    device: str = "auto"  # auto (CUDA if present), cpu, cuda or cuda:N
    out: str = ""  # output folder; empty: runs/aea/<dataset>-<variant> (the demo: runs/aea/demo)
    eval_every: int = 0  # also evaluate every N epochs (0: only at the end)
    eval_untrained: bool = False  # score the start first, and random weights beside (the demo)
    keep_every: int = 0  # also keep epoch_N.pt every N epochs, for Fig. 5 (0: none)
    skip_bad_files: bool = False  # warn about and drop images that do not parse or decode
    precision: typing.Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    resume: bool = False  # continue the run in --out from its last.pt (same flags)


# Margin and R per dataset, Sec. IV-B and IV-E (CUHK03: 0.35 and 20; other sets Market-1501's)
PER_DATASET = {
    "market1501": dict(margin=0.3, R=10.0),
    "duke": dict(margin=0.3, R=10.0),
    "cuhk03-labeled": dict(margin=0.35, R=20.0),
    "cuhk03-detected": dict(margin=0.35, R=20.0),
    "synthetic": dict(margin=0.3, R=10.0),
    "folder": dict(margin=0.3, R=10.0),
}

# The flags a resumed run may change: none of them changes what is trained
RESUME_MAY_DIFFER = ("resume", "device", "out", "eval_every", "eval_untrained", "keep_every")

# The valid range of each numeric flag (`common.check_limits` names the first one outside it);
# height and width: person crops, 128x64 in Market-1501, 256x128 in the paper; at 1024 px a
# training batch of 32 no longer fits a GPU. check_config adds the ranges that join two flags.
LIMITS = dict(R="(0, 100)", reda_p="[0, 1]", dropout="[0, 1)", margin="[0, inf)",
              alpha1="[0, inf)", alpha2="[0, inf)", lr="(0, inf)", momentum="[0, 1)",
              weight_decay="[0, inf)", height="[32, 1024]", width="[16, 1024]", P="[2, inf)",
              K="[1, inf)", pad="[0, inf)", epochs="[1, inf)", lr_step="[1, inf)",
              warmup_epochs="[0, inf)", eval_every="[0, inf)", keep_every="[0, inf)",
              seed="[0, 4294967295]")

# The settings of each start, shared by every row of a compare (`python tools.py compare aea
# --start pretrained|random`); the demo uses the pretrained start's. Chosen on the validation
# benchmark data/synthetic_val, never on the test queries: docs/results.md lists the runs
STARTS = {"pretrained": dict(weights="synthetic", lr=0.02, pad=0, dropout=0.0),
          "random": dict(weights="none", lr=0.02, pad=0, dropout=0.0)}

# `python aea.py` without --root: the demo on data/synthetic, minutes on 2 CPU cores, with the
# paper's shape (a warm-up, one lr step at 4/5) on 30 epochs of 10 PK batches at 64x32: a
# ResNet-18 from the pretrained start (`python pretrain.py`: the stand-in for ImageNet), P=16
DEMO = dict(root="data/synthetic", dataset="synthetic", height=64, width=32, arch="resnet18",
            P=16, epochs=30, lr_step=24, warmup_epochs=6, eval_untrained=True,
            out=os.path.join("runs", "aea", "demo"), **STARTS["pretrained"])


# --- Tables 2 and 6 in miniature: the rows of `python tools.py compare aea` -----------------------

# (row, its flags over the demo's, its cost in AEA runs); B1 trains one network, B4 adds B1's run
COMPARE = [("AEA", [], 1),
           ("Baseline 1", ["--variant", "b1"], 0.5),
           ("Baseline 2", ["--variant", "b2"], 1),
           ("Baseline 3", ["--variant", "b3"], 1),
           ("Baseline 4", ["--variant", "b4"], 1.5),
           ("REDA", ["--erasing", "random"], 1),
           ("erase-once", ["--erasing", "fixed"], 1),
           # a diagnostic row, not the paper's: AEA with each network's own PK triplet
           ("own triplets", ["--triplet", "separate"], 1)]
# (better, worse, where the paper says so)
CLAIMS = [("AEA", "Baseline 1", "Table 2"),
          ("AEA", "Baseline 2", "Table 2"),
          ("AEA", "Baseline 3", "Table 2"),
          ("AEA", "Baseline 4", "Table 2"),
          ("Baseline 1", "Baseline 2", "Table 2"),
          ("Baseline 4", "Baseline 3", "Table 2"),
          ("AEA", "REDA", "Table 6"),
          ("AEA", "erase-once", "Table 6")]
# (better, worse, the question): where AEA's score comes from, on the halves of its test
# feature (VIEWS) and the "own triplets" row; not the paper's orderings
DIAGNOSTIC_CLAIMS = [
    ("Baseline 1", "AEA, basic half", "does the joint phase pull the basic network down?"),
    ("own triplets, basic half", "AEA, basic half", "is it the shared 2PK triplet of Eq. (5)?"),
    ("Baseline 1", "own triplets, basic half", "with its own triplet, is it Baseline 1?"),
    ("AEA, basic half", "AEA, complementary half", "is the complementary half the weaker?"),
    ("AEA", "AEA, basic half", "does the concatenation add to the basic half?")]
# each compare run: the demo's shape (a fifth warm-up, the lr step at 4/5) in 10 epochs, so that
# 5 seeds of the 8 rows fit in an hour on 2 CPU cores
COMPARE_EPOCHS = ["--epochs", "10", "--warmup-epochs", "2", "--lr-step", "8"]


def as_flags(values):
    """{AEAConfig field: value} -> the command line that sets them: ["--lr", "0.01", ...];
    a bool as --flag / --no-flag."""
    argv = []
    for key, value in values.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def compare_run(flags, seed, out, device, resume, root=DEMO["root"], start="pretrained",
                settings=None):
    """One run of the compare: the demo's settings with `start`'s (STARTS), COMPARE_EPOCHS and
    `settings` ({AEAConfig field: value}, e.g. {"lr": "0.02"}) over them, then a row's
    `flags`, on the synthetic benchmark at `root`, in folder `out` (resumed from its last.pt if
    `resume` and there is one) -> {"euclidean": its last epoch's rank_metrics, and each of its
    VIEWS}."""
    data.demo_dataset(root)
    values = {**DEMO, **STARTS[start], "root": root, "seed": seed, "out": out,
              "device": device, "eval_untrained": False}
    argv = [*as_flags(values), *COMPARE_EPOCHS, *as_flags(settings or {}), *flags]
    if resume and os.path.isfile(os.path.join(out, "last.pt")):
        argv.append("--resume")
    cfg, _ = parse_config(argv)
    results = train(cfg)
    last = f"epoch {total_epochs(cfg)}"
    views = {view: results[f"{last}, {view}"] for view in VIEWS if f"{last}, {view}" in results}
    return {"euclidean": results[last], **views}


# --- Command line ---------------------------------------------------------------------------------

def parse_config(argv):
    """Flags -> (AEAConfig, is_demo): the paper's, DEMO's, PER_DATASET's defaults; flags win."""
    flags = " ".join(as_flags(DEMO))  # the demo's
    parser = argparse.ArgumentParser(prog="aea.py", description="Train AEA (or a baseline); the "
                                     f"defaults are the paper's. Without --root: the demo, with "
                                     f"{flags}. Figures 3 and 5, Tables 2 and 6 in miniature: "
                                     "python tools.py figure|compare aea -h.")
    common.add_config_args(parser, AEAConfig)
    # three passes, each default set under the flags: the demo's (no --root), then the margin
    # and R of the dataset the flags name, then the flags themselves
    demo = not parser.parse_args(argv).root
    if demo:
        parser.set_defaults(**DEMO)
    args = parser.parse_args(argv)
    if demo and args.dataset != "synthetic":
        raise UserError(f"--dataset {args.dataset} needs --root DIR (the dataset's folder); "
                        "without --root `python aea.py` runs the demo on data/synthetic")
    parser.set_defaults(**PER_DATASET[args.dataset])
    cfg = common.config_from_args(AEAConfig, parser.parse_args(argv))
    if not cfg.out:  # runs/aea/<dataset>-<variant>: a folder per table row
        cfg.out = os.path.join("runs", "aea", f"{cfg.dataset}-{cfg.variant}")
    check_config(cfg)
    return cfg, demo


def check_config(cfg):
    """One clear UserError for the first bad value, naming the flag."""
    common.check_limits(cfg, LIMITS)
    common.check_padding(cfg.pad, cfg.height, cfg.width)
    if cfg.triplet == "separate" and cfg.variant in ("b1", "b2"):
        raise UserError(f"--triplet separate applies to the variants with Eq. (5)'s shared "
                        f"triplet (aea, b3, b4); {cfg.variant} has one network's triplet only")
    if cfg.variant not in ("aea", "b2") and cfg.erasing != "adversarial":
        raise UserError(f"--erasing {cfg.erasing} applies to --variant aea and b2; {cfg.variant} "
                        "fixes its own input to the complementary network (Sec. IV-C)")
    erases = cfg.variant != "b1" and cfg.erasing != "random"
    if erases and cfg.R * cfg.height * cfg.width <= 50:
        raise UserError(f"--R {cfg.R} erases round({cfg.R}% of {cfg.height}x{cfg.width}) = 0 "
                        f"pixels: give --R above {50 / (cfg.height * cfg.width):.3g}")
    if cfg.variant != "b1" and basic_alone_epochs(cfg) >= total_epochs(cfg):  # B4: too
        raise UserError(f"--warmup-epochs {cfg.warmup_epochs} leaves no epoch of --epochs "
                        f"{cfg.epochs} for the complementary network")


def main(argv=None):
    """`python aea.py [flags]` trains (the demo without --root) -> its results; None if Ctrl-C or
    SIGTERM stopped it (it then prints the command that resumes it, and the exit status is 0)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):
        raise UserError(f"unknown command {argv[0]!r}: python aea.py takes flags only (figures "
                        "and comparisons: python tools.py figure aea, python tools.py compare aea)")
    cfg, demo = parse_config(argv)
    if demo:  # its dataset is written by `python synthetic.py`: refused here if it is missing
        data.demo_dataset(cfg.root)
        print(f"demo: synthetic data at {cfg.root}, weights {cfg.weights} (the stand-in for "
              "ImageNet that `python pretrain.py` builds; the real-data default is imagenet), "
              "CPU-sized schedule")
    common.stop_on_sigterm()  # SIGTERM (a cluster's time limit, `kill`) stops it as Ctrl-C does
    start = time.time()
    try:
        results = train(cfg)  # its last table holds every row: untrained (demo), evaluations
    except KeyboardInterrupt as stop:
        common.report_stop(stop, cfg.out)
        return None
    print(f"finished in {time.time() - start:.0f} s; checkpoint {os.path.join(cfg.out, 'last.pt')}")
    return results


if __name__ == "__main__":
    common.exit_on_user_error(main)  # a UserError becomes "error: <message>", exit status 2

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
  Sec. IV-B, schedule, the basic network's 10-epoch warm-up     -> `AEAConfig`, `train`
  Sec. IV-B, the 5120-d L2-normalised test feature              -> `AEA.forward`
  Sec. IV-C, Baselines 1-4 (Table 2), B4's two phases    -> `--variant`, `total_epochs`, `lr_factor`
  Table 6, REDA and AOS-style fixed erasing                     -> `--erasing random|fixed`
  Figs. 6-7, Tables 7-9 (R, m, alpha, l) -> `--R`, `--margin`, `--alpha1/2`, `--attention-layer`

Commands:
  python aea.py                                             # the demo: synthetic data, CPU-sized
  python aea.py --root DIR --dataset market1501 [--variant b1 ...]   # the paper's schedule
  python aea.py <the same flags> --resume                   # continue a stopped run (OUT/last.pt)
  python evaluate.py --checkpoint runs/aea/market1501-aea/last.pt --root DIR --dataset market1501
  python aea.py figure --checkpoint C [C2 ...] --out attention.png   # Figs. 3 and 5 (`figure`)
  python aea.py compare [--seeds 3]                         # Tables 2 and 6 in miniature

Choices where the paper is silent (each at its line, "Choice (not in the paper)", with its reason):
  - FC_1 and the stripe FCs: Linear -> BatchNorm -> LeakyReLU 0.1 -> Dropout, f after the dropout;
    4 stripes by adaptive pooling (any height); all test features L2-normalised (B1's, B2's too).
  - Top-R%: k = round(R * H * W / 100), ties to the lower pixel index (a stable sort). Erased
    pixels: the mean colour (0 normalised, rounded in uint8 copies), in the augmented batch.
  - The warm-up only where the erasing reads the basic network (adversarial, fixed, B4); alone, it
    trains with L_I1 + L_T (B2's: L_I1). B4 "until convergence" = B1's whole run, then AEA's joint
    phase, epochs and lrs (`lr_factor`): only the dynamic strategy differs.
  - Erase-once masks (B3, B4, --erasing fixed): unaugmented images, eval mode, for fixed (AOS-style)
    after the warm-up, no separate network; B3's grey: ITU-R 601 luma; the erased copy gets its
    original's flip and crop (a twin generator). --erasing random: REDA, an independent second view.
  - The demo (`DEMO`): random ResNet-18, 64x32, pad 2, P=16, 50 epochs, lr 0.04, no dropout;
    compare: 20 epochs of it per run (`COMPARE_EPOCHS`). --resume may change only the device,
    --out and the evaluation flags (`RESUME_MAY_DIFFER`).
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
              K="[1, inf)", pad="[0, inf)", epochs="[1, inf)", lr_step="[1, inf)",
              warmup_epochs="[0, inf)", eval_every="[0, inf)", keep_every="[0, inf)",
              seed="[0, 4294967295]")

# Margin and R per dataset, Sec. IV-B and IV-E (CUHK03: 0.35 and 20; other sets Market-1501's)
PER_DATASET = {d: dict(margin=0.35, R=20.0) if d.startswith("cuhk03") else dict(margin=0.3, R=10.0)
               for d in typing.get_args(DATASETS)}

# `python aea.py` without --root: the CPU-sized demo on data/synthetic, the paper's shape (warm-up,
# one lr step at 4/5) on 50 epochs of 10 PK batches at 64x32. Choice (not in the paper): a random
# ResNet-18 (no ImageNet file offline), P=16, a larger lr for random weights; the padding scaled
# to the input (10 px shifts a 32 px wide image by a third: rank-1 52.8 at pad 2, 28.1 at 10); no
# dropout in the heads (B1, 30 epochs, pad 3: rank-1 55.1 without, 38.7 with Dropout 0.5).
DEMO = dict(root="data/synthetic", dataset="synthetic", height=64, width=32, weights="none",
            arch="resnet18", dropout=0.0, P=16, epochs=50, lr_step=40, warmup_epochs=10, lr=0.04,
            pad=2, eval_untrained=True, out=os.path.join("runs", "aea", "demo"))


def erasing_mode(cfg):
    """What the complementary network is fed: 'adversarial' (AEA's dynamic attention erasing),
    'random' (REDA), 'fixed' (attention erasing computed once: B4, AOS-style) or 'grey' (B3)."""
    return {"b3": "grey", "b4": "fixed"}.get(cfg.variant, cfg.erasing)


def total_epochs(cfg):
    """The run's epochs: --epochs; B4: --epochs basic, then AEA's joint phase (Sec. IV-C)."""
    return cfg.epochs + (cfg.epochs - cfg.warmup_epochs if cfg.variant == "b4" else 0)


def lr_factor(cfg, epoch):
    """The lr of 0-based `epoch` over --lr: 1, x0.1 from epoch --lr-step on (Sec. IV-B). E.g.
    B4 with --epochs 4 --lr-step 3 --warmup-epochs 1: 1, 1, 1, 0.1 (basic), 1, 1, 0.1 (joint)."""
    if cfg.variant == "b4" and epoch >= cfg.epochs:
        # Choice (not in the paper): AEA's joint-phase lrs: only the dynamic strategy differs
        epoch += cfg.warmup_epochs - cfg.epochs
    return 0.1 if epoch >= cfg.lr_step else 1.0


def basic_alone_epochs(cfg):
    """The epochs at the start in which only the basic network trains (Sec. IV-B)."""
    if cfg.variant in ("b1", "b4"):
        # B1: the basic network alone. Choice (not in the paper): B4 "until convergence" = B1
        return cfg.epochs
    # Choice (not in the paper): the warm-up exists "to enable the basic network to predict the
    # salient parts properly" (Sec. IV-B), so only erasings that read the basic network wait
    return cfg.warmup_epochs if erasing_mode(cfg) in ("adversarial", "fixed") else 0


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
        self.FC_1 = embedding(dropout, C := self.backbone.channels["layer4"])  # C: 2048, ResNet-50
        self.part_fc = nn.ModuleList(embedding(dropout, C) for _ in range(4))
        self.FC_2 = nn.Linear(5 * 512, num_classes)

    def forward(self, x, attention_layer=None):
        """x [B, 3, H, W] -> (f [B, 2560], v [B, N] the logits of FC_2, M_l or None); M_l is
        layer `attention_layer`'s output from this same pass: no second pass for the attention."""
        if attention_layer is None:
            M_l, M_5 = None, self.backbone.run(x)
        else:
            layer = common.PAPER_STAGE_NAMES[attention_layer]  # run to l, keep M_l, on to conv5_x
            M_l, nxt = self.backbone.run(x, "conv1", layer), common.STAGES.index(layer) + 1
            M_5 = M_l if nxt == len(common.STAGES) else self.backbone.run(M_l, common.STAGES[nxt])
        g = self.FC_1(M_5.mean(dim=(2, 3)))  # global branch: all of conv5_x pooled, [B, 512]
        # Choice (not in the paper): adaptive pooling = the equal split when the rows divide by 4
        stripes = F.adaptive_avg_pool2d(M_5, (4, 1)).flatten(2)  # local branch: 4 stripes [B, C, 4]
        parts = [fc(stripes[:, :, i]) for i, fc in enumerate(self.part_fc)]  # own FCs: 4 x [B, 512]
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
        self.variant, net = variant, (num_classes, weights, dropout, arch)
        self.basic = Subnetwork(*net)
        self.complementary = Subnetwork(*net) if variant != "b1" else None  # B1: the basic alone

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
    """Eq. (1): A_l = sum_c |M_l,c|^2: [B, C, h, w] -> [B, h, w], fp32 (bf16 loses the ranking)."""
    return M.float().pow(2).sum(dim=1)


def salient_pixels(A, R, size):
    """The top R% of maps A [B, h, w] resized to size = (H, W) (Sec. III-B): bool [B, H, W]."""
    B, (H, W) = A.shape[0], size
    # "we resize the attention map into the same size with the original pedestrian image ...
    # using bilinear interpolation" (Sec. III-B); a map already at (H, W) comes back unchanged
    A = F.interpolate(A[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
    k = round(R * H * W / 100)  # Choice (not in the paper): half to even (Python's round)
    # "select the top R% largest values". Choice (not in the paper): ties to the lower pixel
    # index (a stable sort), so that the mask is the same on every run and device
    order = torch.sort(A.view(B, H * W), dim=1, descending=True, stable=True).indices  # [B, H*W]
    mask = torch.zeros(B, H * W, dtype=torch.bool, device=A.device)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(B, H, W)                                              # [B, H*W] -> [B, H, W]


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
    feed the complementary network x_other (`epoch_batches`) instead of the dynamic erasing of x."""
    dynamic = joint and erasing_mode(cfg) == "adversarial"
    with common.autocast(x.device, cfg.precision):  # auto: bf16 on CUDA, fp32 on the CPU
        # 1. The basic network on the originals (Sec. III-A); dynamic: M_l too, Eq. (1)'s input
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
            # L_T on the originals, Eq. (5). Choice (not in the paper): alpha2 weighs Eq. (8) only
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
    """Erase-once pixels: unaugmented uint8 images [N, 3, H, W] -> bool [N, H, W], the top R% of the
    grey image (basic=None: B3, Sec. IV-C) or `basic`'s attention (Eq. (1): B4, --erasing fixed)."""
    # Choice (not in the paper): eval mode, so each image's map does not depend on its batch
    was_training, masks = basic is not None and basic.training, []
    for u8 in images.split(128):  # 128 images at a time
        if basic is None:
            A = (u8.float() * LUMA.to(u8.device).view(1, 3, 1, 1)).sum(dim=1)  # grey [b, H, W]
        else:
            with common.autocast(u8.device, precision):
                M_l = basic.eval().backbone.run(data.normalize(u8), "conv1", attention_layer)
            A = attention_map(M_l)                                         # [b, h, w]
        masks.append(salient_pixels(A, R, u8.shape[-2:]))
    if basic is not None:
        basic.train(was_training)
    return torch.cat(masks)                                                # [N, H, W]


def erase_uint8(images, mask):
    """uint8 images [N, 3, H, W] with the mask's pixels [N, H, W] set to the mean colour."""
    return torch.where(mask[:, None], MEAN_UINT8.to(images.device).view(1, 3, 1, 1), images)


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


# --- Training run (Sec. IV-B) ---------------------------------------------------------------------
def score(model, ds, cfg, device, cache):
    """Rank-1/5/10 and mAP of the test feature: Euclidean on L2-normalised features."""
    return evaluate.evaluate_model(model, ds, (cfg.height, cfg.width), device, images=cache,
                                   precision=cfg.precision)["euclidean"]


def train(cfg):
    """The paper's training (Sec. IV-B) -> {row: rank_metrics} (untrained, every --eval-every,
    final), None if a signal stopped it; last.pt, best.pt, --resume, signals: common.TrainingRun."""
    device = common.pick_device(cfg.device)
    run = common.TrainingRun("aea", cfg, cfg.out, RESUME_MAY_DIFFER, device, loss="L",
                             epochs=total_epochs(cfg), erase_mask=None)  # erase_mask: B3, B4, fixed
    if run.finished:  # a finished run resumed: its table
        print(f"{run.last} already holds all {run.epochs} epochs; nothing left to resume\n"
              + evaluate.format_table(run.results, label=f"AEA {cfg.variant}"), flush=True)
        return run.results
    common.seed_everything(cfg.seed)
    ds = data.load_dataset(cfg.root, cfg.dataset, skip_bad_files=cfg.skip_bad_files)
    evaluate.check_true_matches(ds)  # the evaluation's need, before training
    sampler = data.PKSampler(ds.train.pids, cfg.P, cfg.K, seed=cfg.seed)  # --P checked here
    # the model before the images: a missing ImageNet file fails in seconds, not after decoding
    model = AEA(ds.num_train_pids, cfg.variant, cfg.weights, cfg.dropout, cfg.arch)
    model = common.prepare_model(model, device)
    optimizer = common.make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg, e))  # IV-B
    print(f"AEA variant {cfg.variant}, erasing {erasing_mode(cfg)}, R {cfg.R}%, m {cfg.margin}, "
          f"{cfg.height}x{cfg.width}, {cfg.arch}, P={cfg.P} K={cfg.K}, {run.epochs} epochs "
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
        for epoch in range(first, run.epochs):
            joint = epoch >= basic_alone_epochs(cfg)
            if joint and erased_images is None and mode in ("grey", "fixed"):
                # B3's grey level, B4's trained basic network: erased once (Sec. IV-C). Choice (not
                # in the paper): AOS-style (Table 6) too, after the warm-up, not a separate network
                mask = fixed_erasing_masks(images, cfg.R, None if mode == "grey" else model.basic,
                                           cfg.attention_layer, cfg.precision)
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
            if epoch + 1 == run.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                run.results[f"epoch {epoch + 1}"] = r = score(model, ds, cfg, device, cache)
                print(evaluate.format_table(run.results, label=f"AEA {cfg.variant}"), flush=True)
                run.save_results({"euclidean": r})  # last.pt and log.csv again, with this row
    return run.results


def model_from_checkpoint(ckpt, path="the checkpoint"):
    """evaluate.py's hook: AEA checkpoint -> (model in eval(), (height, width)), or a UserError."""
    common.check_checkpoint(ckpt, path, "aea")
    try:
        # an older checkpoint: no "arch" (its default: ResNet-50), the removed b4_basic_epochs
        cfg = AEAConfig(**{k: v for k, v in ckpt["config"].items() if k != "b4_basic_epochs"})
        model = AEA(ckpt["model"]["basic.FC_2.weight"].shape[0], cfg.variant, "none", cfg.dropout,
                    cfg.arch)
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
        model, cfg = model_from_checkpoint(ckpt, path)[0].to(device), ckpt["config"]
        with torch.no_grad(), common.autocast(device, evaluate.trained_precision(ckpt)):
            # Eq. (1) at test time, as in `fixed_erasing_masks`: unaugmented images, eval mode
            M_l = model.basic.backbone.run(data.normalize(images.to(device)), "conv1",
                                           cfg["attention_layer"])
        A = attention_map(M_l).cpu()                                       # [n, h, w]
        rows.append(list(evaluate.heat_overlay(images, A)))
        rows.append(list(erase_uint8(images, salient_pixels(A, cfg["R"], images.shape[-2:]))))
    evaluate.save_image_grid(args.out, rows)
    print(f"wrote {args.out}: {len(images)} {args.split} images, per checkpoint attention + erased")
    return args.out


# --- Tables 2 and 6 in miniature: `python aea.py compare [--seeds N]` -----------------------------
# (row, its flags over the demo's, its cost in AEA runs); B1 trains one network, B4 adds B1's run
COMPARE = [("AEA", [], 1), ("Baseline 1", ["--variant", "b1"], 0.5),
           ("Baseline 2", ["--variant", "b2"], 1), ("Baseline 3", ["--variant", "b3"], 1),
           ("Baseline 4", ["--variant", "b4"], 1.5), ("REDA", ["--erasing", "random"], 1),
           ("erase-once", ["--erasing", "fixed"], 1)]
CLAIMS = [("AEA", f"Baseline {i}", "Table 2") for i in (1, 2, 3, 4)] + [
    ("Baseline 1", "Baseline 2", "Table 2"), ("Baseline 4", "Baseline 3", "Table 2"),
    ("AEA", "REDA", "Table 6"), ("AEA", "erase-once", "Table 6")]


# Choice (not in the paper): each compare run is the demo at 2/5 of its length, 20 epochs (4
# warm-up, the lr step at 16), so that 3 seeds of the 7 rows take under 45 minutes on 2 CPU cores
COMPARE_EPOCHS = ["--epochs", "20", "--warmup-epochs", "4", "--lr-step", "16"]


def compare(argv):
    """python aea.py compare [--seeds N]: AEA, Baselines 1-4 (Table 2), REDA and the erase-once
    AOS-style input (Table 6), each the demo in 20 epochs, with seeds 0..N-1; mean ± sd of rank-1
    and mAP, and each ordering the paper claims with whether it holds here. Resumable."""
    def train_row(flags, seed, out, device, resume):  # one run; None if a signal stopped it
        data.ensure_synthetic(DEMO["root"])
        resume = resume and os.path.isfile(os.path.join(out, "last.pt"))
        cfg, _ = parse_config([*COMPARE_EPOCHS, *flags, "--seed", str(seed), "--out", out,
                               "--device", device, "--no-eval-untrained"] + ["--resume"] * resume)
        results = train(cfg)
        return results and {"euclidean": results[f"epoch {total_epochs(cfg)}"]}
    return evaluate.compare_command(argv, "aea.py compare", compare.__doc__,
                                    os.path.join("runs", "aea", "compare"),
                                    "AEA, Tables 2 and 6 in miniature", COMPARE, CLAIMS, train_row)


# --- Command line ---------------------------------------------------------------------------------
def parse_config(argv):
    """Flags -> (AEAConfig, is_demo): the paper's, DEMO's, PER_DATASET's defaults; flags win."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO.items())  # the demo's
    parser = argparse.ArgumentParser(prog="aea.py", description="Train AEA (or a baseline); the "
                                     f"defaults are the paper's. Without --root: the demo, with "
                                     f"{flags}. Figures 3 and 5: `aea.py figure -h`.")
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
    if cfg.R * cfg.height * cfg.width <= 50 and cfg.variant != "b1" and cfg.erasing != "random":
        raise UserError(f"--R {cfg.R} erases round({cfg.R}% of {cfg.height}x{cfg.width}) = 0 "
                        f"pixels: give --R above {50 / (cfg.height * cfg.width):.3g}")
    if cfg.variant != "b1" and basic_alone_epochs(cfg) >= total_epochs(cfg):  # B4: too
        raise UserError(f"--warmup-epochs {cfg.warmup_epochs} leaves no epoch of --epochs "
                        f"{cfg.epochs} for the complementary network")


def main(argv=None):
    """`python aea.py [flags]` trains (the demo without --root); `aea.py figure|compare ...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["figure"], ["compare"]):
        return (figure if argv[0] == "figure" else compare)(argv[1:])
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

"""
What both papers share: the ResNet-50 backbone, the batch-hard triplet loss, cross-entropy, the
optimiser and schedule builders, configs as argparse flags, a progress line, safe checkpoints and
the resume / stop-signal / NaN machinery both training loops use.

  AEA    -- Adversarial Erasing Attention, IEEE Access 8:56469 (2020), doi:10.1109/ACCESS.2020.2981791
  AAA-Net -- Attention-Aware Adversarial Network, Appl. Sci. 9(8):1550 (2019), doi:10.3390/app9081550

Paper map (what lives here):
  ResNet-50 [He et al. 2016], conv1 / conv2_x..conv5_x   -> `Backbone` (stages `conv1`, `layer1`..`layer4`)
  "remove the down-sampling of Conv5_X" (AEA Sec. III-A) -> `Backbone(last_stride=1)`
  AEA Eq. (2)-(4), softmax cross-entropy                -> `cross_entropy`
  AEA Eq. (5)-(7), batch-hard triplet loss               -> `batch_hard_triplet_loss`
  SGD with step decay (AEA Sec. IV-B, AAA-Net Sec. 4.2)  -> `make_sgd`, `step_schedule`

Nothing here knows about either paper's networks; `aea.py` and `aaanet.py` build on these pieces.
This module imports neither `data.py` nor `evaluate.py`.

Choices made here where the papers say nothing:
  - The stem `conv1` holds conv 7x7, BatchNorm, ReLU *and* the 3x3 max-pool, as torchvision groups
    it; the ResNet paper lists the max-pool at the head of conv2_x. The stage outputs are the same.
  - `last_stride=1` sets the stride of layer4's first 3x3 conv and of its 1x1 shortcut to 1
    (torchvision's ResNet-50 is "v1.5": the stride sits on the 3x3 conv, not on the first 1x1).
  - The triplet loss excludes the anchor itself from its positives; an anchor with no other
    positive in the batch gets d_ap = 0, one with no negative contributes 0.
  - Pairwise distances use ||a||^2 + ||b||^2 - 2ab clamped at 1e-12 before the square root, so the
    gradient stays finite where two features coincide.
  - SGD uses momentum 0.9 and weight decay 5e-4 unless a paper module says otherwise (SPEC.md, AEA).
  - Mixed precision (`--precision auto`) is bf16 autocast on CUDA, with the model in channels_last,
    and plain fp32 on the CPU; losses and distances are computed in fp32 even under autocast.
  - On the CPU glibc keeps freed memory (`keep_freed_memory`) instead of returning it to the OS.
  - Resuming, faults and signals (issue 6): a checkpoint at every epoch end (`RunCheckpoints`:
    last.pt, and best.pt = the lowest mean training loss, since the datasets have no validation
    split); SIGINT/SIGTERM finish the step and checkpoint (`StopOnSignal`, `train_epoch`, which also
    replays an interrupted epoch's batches on resume); a NaN/inf loss stops the
    run naming its step and term (`Progress.check`); `--resume` refuses changed flags (`resume_state`).
"""

import argparse
import contextlib
import ctypes
import dataclasses
import inspect
import io
import math
import os
import pickle
import random
import re
import shlex
import signal
import sys
import time
import tokenize
import typing

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class UserError(Exception):
    """Bad input from the person running the code: a wrong path, flag or file.

    The message names the cause (which file, which flag, what was expected). Command-line entry
    points catch it and print it as one line (see `exit_on_user_error`) instead of a traceback.
    """


class LossNotFinite(UserError):
    """A NaN or infinite loss: the message names the epoch, the step and the loss term."""


def exit_on_user_error(main, argv=None):
    """Run `main(argv)`; turn a `UserError` into `error: <message>` on stderr and exit status 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# -----------------------------------------------------------------------------
# Device, seeding, mixed precision

def pick_device(name="auto"):
    """'auto' -> CUDA if a GPU is visible, else CPU; 'cpu', 'cuda' or 'cuda:N' as asked.
    On the CPU it also calls `keep_freed_memory` (training on the CPU is the case it speeds up)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU on this machine "
                        "(use --device cpu or --device auto)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        keep_freed_memory()
    return device


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    A training step on the CPU allocates and frees activations of 10-130 MB. By default glibc
    serves blocks that big with mmap and returns them with munmap on free, so the next step takes
    page faults on every fresh page again; the kernel time this adds grew the AEA step (two networks'
    graphs alive at once) to 2.2-3.8x the B1 step, against 2.0-2.1x with this setting (README, bench.py).
    M_MMAP_THRESHOLD (-3) = 1 GiB: such blocks come from the heap; M_TRIM_THRESHOLD (-1) = 2 GiB - 1:
    the heap top is not trimmed. The cost: the process keeps its peak memory until it exits.
    Does nothing where the C library is not glibc (macOS, Windows, musl). Returns True if applied.
    """
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT is None:
        _FREED_MEMORY_KEPT = False
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            _FREED_MEMORY_KEPT = bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 2 ** 31 - 1))
    return _FREED_MEMORY_KEPT


_FREED_MEMORY_KEPT = None  # set once per process by keep_freed_memory


def freed_memory_kept():
    """Whether keep_freed_memory has run in this process (bench.py measures without it first)."""
    return _FREED_MEMORY_KEPT is not None


def seed_everything(seed):
    """Seed Python, numpy and torch (all CUDA devices too) from one integer."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def to_device(t, device):
    """Copy a tensor to `device`; from the CPU to CUDA through pinned memory and without blocking.

    A plain copy from pageable memory makes the host wait until the GPU has finished all the work
    queued before it; from pinned memory with non_blocking=True the host goes on queueing the next
    step while the copy and the previous step run.
    """
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)  # already there (a cache on the GPU): the same tensor, no copy


PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device, precision="auto"):
    """The mixed-precision context of a training or feature step.

    precision "auto": bf16 autocast on CUDA, plain fp32 on the CPU; "bf16": bf16 autocast on either;
    "fp32": none. Choice: the CPU default stays fp32 although bf16 can be faster there (1.35x for
    the AEA demo on this project's CPU, which has AVX512_BF16; many CPUs have no bf16 kernels): fp32
    is what makes a CPU run bit-identical on resume, and the demo's bf16 run ended 2.4 mAP lower.
    bf16 keeps fp32's exponent range, so no loss scaling is needed (unlike fp16). Losses and
    distances are computed in fp32 inside it (`cross_entropy`, `batch_hard_triplet_loss`).
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model, device):
    """Move a model to its device; on CUDA also to channels_last (NHWC) memory format.

    Under bf16 autocast cuDNN's fastest convolution kernels (tensor cores) read NHWC; with the
    weights in channels_last, each conv turns its input into NHWC once and its output stays NHWC,
    so the whole network runs without layout transposes. On the CPU NCHW stays (oneDNN picks its
    own blocked layout either way).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


# -----------------------------------------------------------------------------
# Backbone: torchvision's ResNet-50 with its stages reachable by name

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # the papers' conv1, conv2_x .. conv5_x
STAGE_CHANNELS = {"conv1": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
PAPER_STAGE_NAMES = {"conv2_x": "layer1", "conv3_x": "layer2", "conv4_x": "layer3", "conv5_x": "layer4"}


def imagenet_state_dict():
    """torchvision's IMAGENET1K_V1 ResNet-50 weights, from the local cache or the network.

    The file is `resnet50-0676ba61.pth`; torchvision keeps it in `<torch hub dir>/checkpoints/`. On
    a machine without internet, copy it there (or pass its path as the weights).
    """
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, map_location="cpu", weights_only=True)
    except Exception as e:  # offline: URLError, socket errors, a half-written download...
        raise UserError(
            f"could not load the ImageNet ResNet-50 weights ({type(e).__name__}: {e}). Without internet, "
            f"download {url} elsewhere and put it at {cache} (the folder follows $TORCH_HOME), "
            "or pass its path instead of 'imagenet', or use weights 'none' to start from random weights") from None


class Backbone(nn.Module):
    """ResNet-50 [He et al. 2016] cut into its five stages, each an attribute named as in torchvision.

    x [B, 3, H, W] -> conv1 [B, 64, H/4, W/4] -> layer1 [B, 256, H/4, W/4] -> layer2 [B, 512, H/8, W/8]
      -> layer3 [B, 1024, H/16, W/16] -> layer4 [B, 2048, H/32, W/32] (H/16, W/16 with last_stride=1)

    `run(x, first, last)` runs a contiguous range of stages, so a paper module can stop at a middle
    layer, change the features, and go on from there (AAA-Net's occlusion after conv3_x; AEA's
    attention on conv2_x in the same pass that produces conv5_x).

    weights: 'imagenet' (torchvision IMAGENET1K_V1), 'none' (random init), or the path of a
    ResNet-50 state dict in torchvision's key names (the classifier `fc.*` is ignored).
    """

    def __init__(self, weights="imagenet", last_stride=2):
        super().__init__()
        if last_stride not in (1, 2):
            raise UserError(f"last_stride must be 1 or 2, got {last_stride}")
        resnet = torchvision.models.resnet50(weights=None)
        if weights not in ("imagenet", "none") and not os.path.isfile(weights):
            raise UserError(f"weights {weights!r}: expected 'imagenet', 'none' or the path of a ResNet-50 state dict file")
        if weights != "none":
            state = imagenet_state_dict() if weights == "imagenet" else load_resnet_file(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            try:
                missing, unexpected = resnet.load_state_dict(state, strict=False)
            except RuntimeError as e:  # same names, other shapes (a ResNet-18, say)
                missing, unexpected = [(str(e).splitlines()[1:] or [str(e)])[0].strip()], []
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise UserError(f"weights {weights!r} are not a torchvision ResNet-50 state dict: "
                                f"missing or mismatched {missing[:3]}, unexpected {unexpected[:3]}")
        if last_stride == 1:
            # AEA Sec. III-A: "remove the down-sampling of Conv5_X" -> conv5_x map 16x8 for a 256x128 input
            resnet.layer4[0].conv2.stride = (1, 1)
            resnet.layer4[0].downsample[0].stride = (1, 1)
        self.last_stride = last_stride
        self.conv1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def run(self, x, first="conv1", last="layer4"):
        """Run stages `first`..`last` (inclusive, in STAGES order) on x; the papers' names conv2_x..conv5_x work too."""
        first, last = PAPER_STAGE_NAMES.get(first, first), PAPER_STAGE_NAMES.get(last, last)
        if first not in STAGES or last not in STAGES:
            raise UserError(f"unknown stage {first if first not in STAGES else last!r}; expected one of "
                            f"{', '.join(STAGES)} or {', '.join(PAPER_STAGE_NAMES)}")
        i, j = STAGES.index(first), STAGES.index(last)
        for name in STAGES[i:j + 1]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x):
        """The plain re-ID feature of an ImageNet network: layer4 global-average-pooled, [B, 2048]."""
        return self.run(x).mean(dim=(2, 3))


def load_resnet_file(path):
    """A ResNet-50 state dict from a file, loaded without running any pickled code."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a plain state dict (name -> tensor), as torchvision's "
                        "resnet50-0676ba61.pth does")
    return state


# -----------------------------------------------------------------------------
# Losses

def cross_entropy(logits, labels, label_smoothing=0.0):
    """Softmax cross-entropy, AEA Eq. (2)-(4) (AAA-Net's "softmax classification loss", Sec. 3.1).

        p(t) = exp(v_t) / sum_i exp(v_i)                                         Eq. (4)
        q(t) = 1 if t == y else 0                                                Eq. (3)
        L_I  = - sum_t q(t) log p(t), averaged over the batch                    Eq. (2)

    With label_smoothing = eps (not in either paper; off by default), q(t) = (1 - eps) [t == y] + eps / N.
    Computed in fp32 even under autocast: log-softmax over hundreds of classes needs the precision.
    """
    B, N = logits.shape
    # log p(t), Eq. (4), in fp32
    log_p = F.log_softmax(logits.float(), dim=1)  # [B, N]
    # q(t), Eq. (3) (+ optional smoothing)
    q = torch.full_like(log_p, label_smoothing / N)
    q.scatter_(1, labels.view(B, 1), 1.0 - label_smoothing + label_smoothing / N)
    # L_I, Eq. (2)
    return -(q * log_p).sum(dim=1).mean()


def pairwise_euclidean(a, b):
    """Euclidean distances between the rows of a [n, d] and of b [m, d] -> [n, m], one matrix product."""
    d2 = (a * a).sum(dim=1)[:, None] + (b * b).sum(dim=1)[None, :] - 2.0 * (a @ b.t())  # ||a||^2 + ||b||^2 - 2 a.b
    return d2.clamp(min=1e-12).sqrt()  # clamp: rounding can make d2 slightly negative; keeps sqrt' finite


def batch_hard_triplet_loss(features, labels, margin, normalize=True):
    """Batch-hard triplet loss, AEA Eq. (5)-(7) [Hermans et al. 2017].

        L_T  = [ d_ap + m - d_an ]_+                       Eq. (5), averaged over the anchors a
        d_ap = max_p || f(x_a) - f(x_p) ||_2               Eq. (6), p: same identity, p != a
        d_an = min_n || f(x_a) - f(x_n) ||_2               Eq. (7), n: another identity

    Every sample of the batch is an anchor; its hardest positive and negative are searched inside
    the batch, which is why batches are P identities x K images (data.PKSampler). With
    normalize=True the features are L2-normalised first ("these features are all normalized by L2
    norm", AEA Sec. III-C), so distances lie in [0, 2] and the margin m is on that scale.

    features [n, d], labels [n] -> scalar loss.
    """
    # fp32 even under bf16 autocast: with unit-length features d^2 = 2 - 2 cos, and bf16's 8-bit
    # mantissa would move small distances by ~20%, enough to change which pair is the hardest
    with torch.autocast(features.device.type, enabled=False):
        features = features.float()
        if normalize:
            features = F.normalize(features, dim=1)
        dist = pairwise_euclidean(features, features)  # [n, n]
    same = labels[:, None] == labels[None, :]  # [n, n], True on the diagonal too
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    # d_ap: farthest positive, Eq. (6); 0 where an anchor has no other positive in the batch
    d_ap = dist.masked_fill(~same | eye, 0.0).amax(dim=1)
    # d_an: nearest negative, Eq. (7); +inf where there is none, so that anchor's loss is 0
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    # [d_ap + m - d_an]_+, Eq. (5)
    return F.relu(d_ap + margin - d_an).mean()


# -----------------------------------------------------------------------------
# Optimiser and learning-rate schedule

def make_sgd(params, lr, momentum=0.9, weight_decay=5e-4):
    """SGD, as both papers train (AAA-Net Sec. 4.2 names it; AEA names none, SPEC.md picks it)."""
    if not lr > 0:
        raise UserError(f"the learning rate must be positive, got {lr}")
    if weight_decay < 0 or momentum < 0:
        raise UserError(f"momentum and weight decay must be >= 0, got {momentum} and {weight_decay}")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def step_schedule(optimizer, milestones, gamma=0.1):
    """Multiply every learning rate by gamma at each epoch in `milestones` (stepped once per epoch).

    AEA Sec. IV-B: lr 0.01, x0.1 at epoch 75          -> milestones=[75]
    AAA-Net Sec. 4.2: x0.1 every 2 (or 3) epochs        -> milestones=range(2, epochs, 2)
    """
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=sorted(milestones), gamma=gamma)


# -----------------------------------------------------------------------------
# One visible config per paper: a dataclass, its flags built from it

def field_comments(cls):
    """{field name: its trailing comment} read from the dataclass source, used as the flag's help."""
    comments, src = {}, inspect.getsource(cls)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            m = re.match(r"\s*(\w+)\s*:", tok.line)
            if m:
                comments[m.group(1)] = tok.string.lstrip("# ").strip()
    return comments


def add_config_args(parser, cls):
    """One flag per dataclass field: `--field-name`, its type and default, its comment as help.

    bool fields become `--flag / --no-flag`; `typing.Literal[...]` fields get their choices;
    `tuple[int, ...]`-like fields take several values.
    """
    hints, helps = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        kind, flag = hints[f.name], "--" + f.name.replace("_", "-")
        if typing.get_origin(kind) is typing.Union:  # Optional[X]: the flag takes an X
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # argparse %-formats help texts: a comment such as "top R% pixels" needs its % doubled
        kw = dict(default=default, help=f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%"))
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            kw["choices"] = typing.get_args(kind)
            kw["type"] = type(kw["choices"][0])
        elif typing.get_origin(kind) in (tuple, list):
            kw["nargs"] = "*"
            kw["type"] = typing.get_args(kind)[0]
        else:
            kw["type"] = kind
        parser.add_argument(flag, **kw)
    return parser


def config_from_args(cls, args):
    """The dataclass instance holding the parsed flags (lists turned back into tuples)."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


# -----------------------------------------------------------------------------
# Progress line

class Progress:
    """Prints, every `every` iterations, one line: iteration, mean loss terms, img/s and ETA.

        epoch 3/100  iter 120/400  L_I1 2.3110  L_T 0.1820  | 41.3 img/s  ETA 00:01:08

    Call `update(num_images, name=value, ...)` once per iteration; values may be tensors (read
    only when a line is printed, so the GPU is synchronised once per line, not per step).
    """

    def __init__(self, total, prefix="", every=20, file=None):
        self.total, self.prefix, self.every, self.file = total, prefix, every, file or sys.stdout
        self.i, self.images, self.pending = 0, 0, []
        self.start = self.last = time.perf_counter()
        self.last_images = 0
        self.totals = {}  # sums over every step printed so far (i - len(pending) steps), for `mean`
        self.resumed_at = 0  # steps done before this process (a resumed epoch): not in the ETA's rate

    def update(self, num_images, **terms):
        self.i += 1
        self.images += num_images
        # detached: keeping a loss tensor must not keep its whole autograd graph alive
        self.pending.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in terms.items()})
        if self.i % self.every == 0 or self.i == self.total:
            self.print_line()

    def check(self):
        """Read the pending terms (one GPU sync); a NaN or infinite one raises `LossNotFinite`
        naming its step and term. Returns the pending steps' sums and clears nothing."""
        sums = {}
        first = self.i - len(self.pending) + 1  # the 1-based step of pending[0] in this epoch
        for j, terms in enumerate(self.pending):
            for k, v in terms.items():
                v = float(v)
                if not math.isfinite(v):
                    raise LossNotFinite(f"{self.prefix.strip()} step {first + j}/{self.total}: the loss term {k} "
                                        f"is {v}; the run stops here and the last checkpoint (written before "
                                        "this step) is left untouched. A smaller --lr usually helps.")
                sums[k] = sums.get(k, 0.0) + v
        return sums

    def sums(self):
        """The sum of each term over every step of the epoch so far, pending ones included (read and
        checked now: a NaN raises). What a mid-epoch checkpoint saves for `resume`."""
        pending = self.check()
        return {k: self.totals.get(k, 0.0) + pending.get(k, 0.0) for k in {**self.totals, **pending}}

    def resume(self, steps, num_images, sums):
        """Go on with an epoch stopped after `steps` steps of `num_images` images in all, whose terms
        summed to `sums` (`Progress.sums` of the stopped run): the lines count on from there and
        `mean` covers the whole epoch, the steps before the stop included."""
        self.i, self.images, self.last_images = steps, num_images, num_images
        self.totals, self.resumed_at = dict(sums), steps

    def mean(self, key):
        """The mean of term `key` over all the steps printed so far (the whole epoch at its end)."""
        return self.totals[key] / (self.i - len(self.pending))

    def print_line(self):
        sums, n = self.check(), len(self.pending)
        for k, v in sums.items():
            self.totals[k] = self.totals.get(k, 0.0) + v
        now = time.perf_counter()
        rate = (self.images - self.last_images) / max(now - self.last, 1e-9)
        eta = (now - self.start) / (self.i - self.resumed_at) * (self.total - self.i)
        loss_txt = "  ".join(f"{k} {v / n:.4f}" for k, v in sums.items())
        print(f"{self.prefix}iter {self.i}/{self.total}  {loss_txt}  | {rate:.1f} img/s  "
              f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", file=self.file, flush=True)
        self.pending, self.last, self.last_images = [], now, self.images


# -----------------------------------------------------------------------------
# Checkpoints: atomic writes, safe loads, RNG state

def rng_state():
    """The random states of Python, numpy, torch and CUDA, as types `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(paper, model, optimizer, schedule, epoch, config, **extra):
    """The dict every training command saves at the end of an epoch, all of it `weights_only`-safe.

    paper: "aea" or "aaanet" (evaluate.py dispatches on it); epoch: the epochs completed;
    config: the run's config dataclass, stored as a plain dict so evaluation can rebuild the model
    whole; rng: every random generator (`rng_state`); `extra`: anything else the paper needs
    (a sampler's position, the augmentation generator's state, ...).
    """
    return {"paper": paper, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "epoch": epoch, "config": dataclasses.asdict(config),
            "rng": rng_state(), "device_type": next(model.parameters()).device.type, **extra}


def restore_training(state, model, optimizer, schedule):
    """Load what `training_state` saved into a freshly built model, optimizer and schedule, and
    restore the random generators; returns the number of epochs already completed."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    set_rng_state(state["rng"])
    return state["epoch"]


def save_checkpoint(path, state):
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A run killed mid-write leaves the previous checkpoint intact (rename is atomic on POSIX).
    `state` should hold only tensors and plain Python values, so that `load_checkpoint` can read
    it with weights_only=True: a checkpoint is data, never code.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        # whatever went wrong (disk full, an unpicklable value, Ctrl-C), the old checkpoint at
        # `path` is untouched; only the half-written temporary file needs removing
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "PytorchStreamWriter" in str(e)):
            # torch.save reports a full disk as a RuntimeError from its zip writer
            reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0]
            raise UserError(f"cannot write the checkpoint {path}: {reason} (is the folder {folder} writable, "
                            "is the disk full, is the path a folder?)") from None
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load a file written by `save_checkpoint` (or any torch.save of tensors) with weights_only=True.

    weights_only=True runs no pickled code: a file that carries Python objects other than tensors,
    containers and plain values is refused with a UserError instead of being executed.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"refusing to load {path}: it carries pickled Python objects that weights_only=True "
                        f"loading does not allow, so it may run code ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None


def describe_checkpoint(ckpt):
    """What wrote a checkpoint, in words: 'an AEA checkpoint (aea.py)' and so on."""
    paper = ckpt.get("paper") if isinstance(ckpt, dict) else None
    stage = f" {ckpt['stage']}" if paper == "aaanet" and ckpt.get("stage") else ""  # AAA-Net: which stage wrote it
    return {"aea": "an AEA checkpoint (aea.py)", "aaanet": f"an AAA-Net{stage} checkpoint (aaanet.py)"
            }.get(paper, f"not a checkpoint of this project (paper={paper!r})")


def check_checkpoint(ckpt, path, paper, num_classes=None, classifier_key=None):
    """Refuse, with one UserError saying what the file is and what was expected, a checkpoint of the
    other paper (or of neither) or one whose classifier has another number of identities.

    classifier_key: the state-dict entry of the classifier weight [num_classes, D] to compare with
    `num_classes` (the number of training identities of the dataset given now).
    """
    expected = describe_checkpoint({"paper": paper})
    if not isinstance(ckpt, dict) or ckpt.get("paper") != paper or "model" not in ckpt:
        raise UserError(f"{path} is {describe_checkpoint(ckpt)}; expected {expected}")
    if num_classes is not None and classifier_key is not None:
        weight = ckpt["model"].get(classifier_key) if isinstance(ckpt["model"], dict) else None
        if weight is None:
            raise UserError(f"{path} has no {classifier_key}: not a complete {expected}")
        have = weight.shape[0]
        if have != num_classes:
            raise UserError(f"{path} was trained on {have} identities, but this dataset has {num_classes} training "
                            "identities: give the --root (and --dataset) the checkpoint was trained on")


def resume_state(path, paper, config, may_differ=(), device=None):
    """The checkpoint `--resume` continues from, checked: written by `paper`, with the same config
    except the fields in `may_differ` (e.g. the device). A different flag would make the resumed
    run a different run, so each one is named instead of silently taking either value. With
    --precision auto, `device` (the one picked now) must be of the type the run trained on:
    auto means fp32 on the CPU and bf16 on CUDA, so a move would change the arithmetic unasked."""
    if not os.path.isfile(path):
        raise UserError(f"--resume: there is no checkpoint {path} to continue from (start the run without --resume, "
                        "or give the --out of the run to continue)")
    state = load_checkpoint(path)
    check_checkpoint(state, path, paper)
    now = dataclasses.asdict(config)
    before = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
    differ = [f"--{k.replace('_', '-')} {before.get(k)!r} in the checkpoint, {now[k]!r} now"
              for k in now if k not in may_differ and before.get(k) != now[k]]
    if differ:
        raise UserError(f"--resume {path}: the run was started with other settings ({'; '.join(differ)}); "
                        "resume with the same flags")
    trained_on = state.get("device_type")
    if device is not None and trained_on and now.get("precision") == "auto" and torch.device(device).type != trained_on:
        raise UserError(f"--resume {path}: the run trained on {trained_on} with --precision auto, which means "
                        f"{'bf16' if trained_on == 'cuda' else 'fp32'} there; on {torch.device(device).type} auto would "
                        f"switch precision mid-run. Resume with --device {trained_on}, or start the run again with an "
                        "explicit --precision")
    return state


def check_same_images(state, path, num_images, root):
    """Refuse to resume on a training split of another size than the run's (a resume replays the
    interrupted epoch's batches by index, so other images would be other batches)."""
    saved = state.get("num_images")
    if saved is not None and saved != num_images:
        raise UserError(f"--resume {path}: the run trained on {saved} training images, the training split of "
                        f"{root} now has {num_images}; resume on the run's own data")


def resume_command(argv=None):
    """The command line that continues this run: the same command with --resume appended."""
    argv = list(sys.argv if argv is None else argv)
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["python", os.path.basename(argv[0])] + argv[1:])


class RunCheckpoints:
    """OUT/last.pt after every epoch (and on a stop signal), OUT/best.pt for the epoch with the
    lowest mean training loss.

    Choice (not in either paper): "best" = the lowest mean training loss over an epoch. Market-1501,
    DukeMTMC-reID and CUHK03-NP have no validation split, and choosing by the test set's mAP would
    tune on the test set; the papers report their last epoch, which is last.pt.
    """

    def __init__(self, folder):
        self.folder = folder
        self.last, self.best = os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt")
        self.best_loss = math.inf

    def restore(self, state):
        """Continue the best-so-far bookkeeping of a resumed run. If the run was killed after
        writing a best last.pt but before linking it as best.pt, the link is made now."""
        self.best_loss = state.get("best_loss", math.inf)
        if state.get("is_best") and not (os.path.exists(self.best) and os.path.samefile(self.last, self.best)):
            self._link_best(state)

    def save(self, state, epoch_loss=None):
        """Write last.pt; also best.pt when `epoch_loss` (an epoch's mean loss) beats every earlier one."""
        is_best = epoch_loss is not None and epoch_loss < self.best_loss
        if is_best:
            self.best_loss = epoch_loss
        # is_best marks the file that best.pt must be (restore() mends a link a crash cut off)
        state["best_loss"], state["is_best"] = self.best_loss, is_best
        save_checkpoint(self.last, state)
        if is_best:
            self._link_best(state)

    def _link_best(self, state):
        """best.pt = last.pt, as a second name for the same file (a hard link): no second write of a
        checkpoint that is ~460 MB for AEA. The link is made under a temporary name and renamed over
        best.pt, so best.pt is always whole; the next save_checkpoint replaces the name last.pt by a
        new file and leaves this one to best.pt."""
        tmp = os.path.join(self.folder, f".best.pt.link{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        try:
            os.link(self.last, tmp)
            os.replace(tmp, self.best)
        except OSError:  # a file system without hard links: write it again
            with contextlib.suppress(OSError):
                os.remove(tmp)
            save_checkpoint(self.best, state)


def check_writable(folder, flag="--out"):
    """Create `folder` and prove it writable now, before any training: a full run must not die at its
    first checkpoint. One UserError naming the flag and the folder otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write_test{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{flag} {folder}: cannot write there ({e.strerror}); give a folder you can write to") from None


def train_epoch(batches, step, progress, stop, skip=0, skip_sums=None):
    """One epoch of training steps under the rules both papers' loops share; True if the epoch ran
    to its end, False if a stop signal came in first (the caller then writes last.pt at step
    `progress.i` with `progress.sums()`, prints `stopped(...)` and returns).

    batches: the epoch's batches, each a tuple whose second item is the labels [B]; step(*batch)
    runs one SGD step and returns its loss terms (for `progress`, which checks them for NaN).
    skip: batches trained before a stop (--resume). They are drawn again without training on them,
    so the generator the batches come from lands exactly where it was; skip_sums: their loss sums
    (saved with the checkpoint), so the epoch's mean loss (best.pt) still covers the whole epoch.
    """
    batches = iter(batches)
    if skip:
        for _ in range(skip):
            size = len(next(batches)[1])
        progress.resume(skip, skip * size, skip_sums)
    for batch in batches:
        progress.update(len(batch[1]), **step(*batch))
        if stop.requested and progress.i < progress.total:
            return False  # the step finished; the rest of the epoch waits for --resume
    return True


def stopped(stop, where, path):
    """The message after a stop signal: where the run stopped, what was written, how to go on."""
    print(f"stopped by {stop.requested} {where}; wrote {path}. Resume with:\n  {resume_command()}", flush=True)


class StopOnSignal:
    """SIGINT (Ctrl-C) and SIGTERM (a job scheduler) ask the training loop to stop: the current step
    finishes, the loop writes its checkpoint, prints how to resume and the program exits 0.

        with common.StopOnSignal() as stop:
            for ...: step(); if stop.requested: save; print(resume_command()); return

    A second Ctrl-C while stopping interrupts at once (KeyboardInterrupt), as usual. Signals can
    only be caught in the main thread; elsewhere (a notebook's worker thread) this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested, self.previous = None, {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: finishing this step, then writing the checkpoint", file=sys.stderr, flush=True)

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self.previous = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

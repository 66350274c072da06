"""What both papers share: the ResNet backbone cut into its stages, the softmax cross-entropy,
the batch-hard triplet loss, SGD and its schedule; then the small helpers around a paper's
training loop (device and precision, configs as flags, checkpoints, the --out folder, the log,
the progress line, stop signals). It knows neither paper's networks, and imports none of this
project's other modules.

Paper map (AEA: IEEE Access 8:56469, 2020; AAA-Net: Appl. Sci. 9(8):1550, 2019):
  ResNet-50 (--arch 18, 34 for CPUs), conv1 / conv2_x..conv5_x -> `Backbone` (`conv1`..`layer4`)
  "remove the down-sampling of Conv5_X" (AEA Sec. III-A) -> `Backbone(last_stride=1)`
  AEA Eq. (2), (3), (4): softmax cross-entropy           -> `cross_entropy`
  AEA Eq. (5), (6), (7): batch-hard triplet loss         -> `batch_hard_triplet_loss`
  SGD, AAA-Net's step decay (Sec. 4.2)                   -> `make_sgd`, `step_schedule`

Choices where the papers say nothing (each marked "Choice" at its line, with its reason):
  - `conv1` holds the stem's max-pool, as torchvision groups it (the stage outputs are the same).
  - `last_stride=1`: stride 1 in layer4's first 3x3 conv (ResNet-50: the middle one) and shortcut.
  - The triplet loss leaves the anchor out of its positives; no other positive: d_ap = 0.
  - SGD momentum 0.9 and weight decay 5e-4 (AAA-Net names SGD without settings, AEA nothing).

Around a training loop (each paper's `train` writes its loop and its checkpoint dict in sight):
  hold_folder(OUT)               OUT/.lock: one run per --out folder
  save_checkpoint, load_checkpoint  atomic writes; loads with weights_only=True
  rng_state, set_rng_state       every random generator, saved with each epoch's checkpoint
  resume_state, restore          the checkpoint --resume goes on from, checked; put back
  split_digest, check_same_images  --resume refuses another training split, even of equal size
  earlier_run, clear_earlier_run   a new run in an earlier run's --out replaces all its files
  save_epoch                     OUT/last.pt, OUT/log.csv (a row per epoch), OUT/best.pt
  Progress                       the progress line; a NaN or infinite loss stops the run
  stop_on_sigterm, report_stop   Ctrl-C and SIGTERM stop a run; the command that resumes it
"""

import argparse
import atexit
import contextlib
import csv
import ctypes
import dataclasses
import functools
import hashlib
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
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


# --- Backbone: torchvision's ResNet-50 (or 18, 34) with its stages reachable by name -------------

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # the papers' conv1, conv2_x..conv5_x
PAPER_STAGE_NAMES = dict(zip(("conv2_x", "conv3_x", "conv4_x", "conv5_x"), STAGES[1:]))
# the channels of each stage in STAGES, per --arch
ARCHS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
}


class Backbone(nn.Module):
    """ResNet-50 [He et al. 2016] (or `arch` resnet18 / resnet34) cut into its five stages, named
    as in torchvision, with `channels` {stage: C} (ResNet-18/34: 64, 64, 128, 256, 512):

      x [B, 3, H, W] -> conv1 [B, 64, H/4, W/4] -> layer1 [B, 256, H/4, W/4]
        -> layer2 [B, 512, H/8, W/8] -> layer3 [B, 1024, H/16, W/16] -> layer4 [B, 2048, H/32, W/32]

    `run(x, first, last)` runs a range of stages, so a paper module can stop at a middle layer,
    change the features and go on (AAA-Net's occlusion; AEA's attention). weights: 'imagenet'
    (IMAGENET1K_V1), 'synthetic' (the stand-in for ImageNet that `python pretrain.py` builds:
    PRETRAINED), 'none' (random init), or the path of a state dict of `arch` in torchvision's
    key names (the classifier `fc.*` is ignored). last_stride=1: layer4 is H/16, W/16."""

    def __init__(self, weights="imagenet", last_stride=2, arch="resnet50"):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"--arch {arch!r}: expected one of {', '.join(ARCHS)}")
        self.channels = dict(zip(STAGES, ARCHS[arch]))
        resnet = getattr(torchvision.models, arch)(weights=None)
        resnet.fc = nn.Identity()  # torchvision's ImageNet classifier: not used here
        if weights != "none":
            load_backbone_weights(resnet, weights, arch)
        if last_stride == 1:
            # AEA Sec. III-A: "remove the down-sampling of Conv5_X" -> conv5_x 16x8 at 256x128.
            # Choice (not in the paper): stride 1 in the shortcut and torchvision's strided 3x3 conv
            block = resnet.layer4[0]
            strided = block.conv2 if arch == "resnet50" else block.conv1
            strided.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        # Choice (not in the paper): conv1 = the stem with its max-pool, torchvision's grouping
        self.conv1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4

    def run(self, x, first="conv1", last="layer4"):
        """Run stages `first`..`last` (inclusive; the papers' conv2_x..conv5_x work too) on x."""
        # the papers' names (conv3_x) to torchvision's (layer2), then their places in STAGES
        i = STAGES.index(PAPER_STAGE_NAMES.get(first, first))
        j = STAGES.index(PAPER_STAGE_NAMES.get(last, last))
        for name in STAGES[i:j + 1]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x):
        """The plain re-ID feature: layer4 average-pooled, [B, 2048] (ResNet-18/34: [B, 512])."""
        return self.run(x).mean(dim=(2, 3))


# `--weights synthetic`: where `python pretrain.py --arch ARCH` writes the backbone it pretrains
# on the synthetic pretraining set (other identities than the demos' benchmark), the offline
# stand-in for ImageNet weights; the demos start from it
PRETRAINED = os.path.join("data", "pretrained", "{arch}-synthetic.pt")


def load_backbone_weights(resnet, weights, arch):
    """Load 'imagenet', 'synthetic' or the state dict file `weights` into a torchvision ResNet."""
    name = f"ResNet-{arch[6:]}"
    if weights == "synthetic":
        path = PRETRAINED.format(arch=arch)
        if not os.path.isfile(path):
            raise UserError(f"weights 'synthetic': {path} is not built yet; `python pretrain.py"
                            f" --arch {arch}` builds it (a {name} pretrained on a synthetic set "
                            "of other identities, the offline stand-in for ImageNet)")
        weights = path
    if weights != "imagenet" and not os.path.isfile(weights):
        raise UserError(f"weights {weights!r}: expected 'imagenet', 'synthetic', 'none' or the "
                        f"path of a {name} state dict file")
    if weights == "imagenet":
        state = imagenet_state_dict(arch)
    else:
        state = load_checkpoint(weights)
    if isinstance(state, dict) and "paper" in state:  # a run's checkpoint: weights, config, log
        raise UserError(f"weights {weights} is {describe_checkpoint(state)}, not a {name} state "
                        "dict: to evaluate it, search or draw figures with it, give it to "
                        "--checkpoint")
    if isinstance(state, dict):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_weights(resnet, state, f"weights {weights}", f"a torchvision {name}")


def imagenet_state_dict(arch="resnet50"):
    """torchvision's IMAGENET1K_V1 weights of `arch`, from the torch hub cache or the network."""
    url = getattr(torchvision.models, f"ResNet{arch[6:]}_Weights").IMAGENET1K_V1.url
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except Exception as e:  # offline: URLError, socket errors, a half-written download...
        raise UserError(f"could not load the ImageNet ResNet-{arch[6:]} weights ({type(e).__name__}"
                        f": {e}). Offline, download {url} elsewhere and put it at {cache} (the "
                        "folder follows $TORCH_HOME), or pass its path instead of 'imagenet', or "
                        "use weights 'none' to start from random weights") from None


# --- Losses ---------------------------------------------------------------------------------------

def cross_entropy(logits, labels):
    """Softmax cross-entropy, AEA Eq. (2), (3), (4); AAA-Net Sec. 3.1 "softmax classification loss":

        p(t) = exp(v_t) / sum_{i=1..N} exp(v_i)                 Eq. (4)
        q(t) = 1 if t == y else 0                               Eq. (3)
        L_I  = - sum_t q(t) log p(t), averaged over the batch   Eq. (2)

    logits [B, N], labels [B] (class indices) -> a scalar. Written from the equations, not with
    PyTorch's F.cross_entropy or F.nll_loss. In fp32 (under autocast the logits arrive in bf16).
    log p(t) must stay finite for logits in the thousands: exp(1000) overflows and a probability
    below 1e-45 rounds to 0, so log p(t) is the logit minus the log of the sum of exponentials,
    the largest logit taken out of that sum first (F.log_softmax computes exactly this)."""
    # log p(t), Eq. (4); in fp32 under autocast: a softmax over hundreds of classes
    log_p = F.log_softmax(logits.float(), dim=1)                           # [B, N]
    # q(t), Eq. (3): one-hot of the label
    q = torch.zeros_like(log_p).scatter_(1, labels[:, None], 1.0)         # [B, N]
    return -(q * log_p).sum(dim=1).mean()                                 # L_I, Eq. (2)


def pairwise_euclidean(a, b):
    """Euclidean distances between the rows of a [n, d] and b [m, d] -> [n, m], one matmul."""
    d2 = (a * a).sum(dim=1)[:, None] + (b * b).sum(dim=1)[None, :] - 2.0 * (a @ b.t())
    # clamped: rounding can make d2 < 0, and sqrt's gradient at 0 is infinite
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(features, labels, margin, normalize=True):
    """Batch-hard triplet loss, AEA Eq. (5), (6), (7) [Hermans et al. 2017]:

        L_T  = [ d_ap + m - d_an ]_+                  Eq. (5), averaged over the anchors a
        d_ap = max_p || f(x_a) - f(x_p) ||_2          Eq. (6), p: same identity, p != a
        d_an = min_n || f(x_a) - f(x_n) ||_2          Eq. (7), n: another identity

    Every sample is an anchor, its hardest positive and negative searched inside the batch: hence
    batches of P identities x K images (data.PKSampler). normalize=True L2-normalises the features
    first ("these features are all normalized by L2 norm", AEA Sec. III-C): distances lie in
    [0, 2], the margin m on that scale. features [n, d], labels [n] -> scalar loss.
    The distances come from `pairwise_euclidean`, in fp32 with autocast turned off (bf16 would
    move small distances by ~20% and change which pair is the hardest). Choices (not in the
    paper): an anchor whose identity has no other sample in the batch has d_ap = 0, so its term is
    [m - d_an]_+, still positive when a negative lies within the margin; an anchor with no
    negative in the batch adds 0 (not NaN); the mean is over all n anchors, zeros included."""
    # fp32 under bf16 autocast: with unit-length features d^2 = 2 - 2 cos, and bf16's 8-bit
    # mantissa would move small distances by ~20%, changing which pair is the hardest
    with torch.autocast(features.device.type, enabled=False):
        features = features.float()
        if normalize:
            features = F.normalize(features, dim=1)
        dist = pairwise_euclidean(features, features)                     # [n, n]
    same = labels[:, None] == labels[None, :]                             # [n, n], diagonal too
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    # d_ap: farthest positive, Eq. (6). Choice (not in the paper): p != a, and no such p: d_ap = 0
    d_ap = dist.masked_fill(~same | eye, 0.0).amax(dim=1)
    # d_an: nearest negative, Eq. (7); +inf where there is none, so that anchor's loss is 0
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(d_ap + margin - d_an).mean()  # [d_ap + m - d_an]_+, Eq. (5)


# --- Optimiser and learning-rate schedule ---------------------------------------------------------

def make_sgd(params, lr, momentum=0.9, weight_decay=5e-4):
    """SGD (AAA-Net Sec. 4.2; AEA names none). Choice (not in the paper): re-ID baseline values."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def step_schedule(optimizer, every, gamma=0.1):
    """Every lr x gamma once per `every` epochs (stepped per epoch): AAA-Net Sec. 4.2's x0.1 every
    2 (or 3) epochs -> every=2. The lr of 0-based epoch e is lr x gamma^(e // every)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** (e // every))


# --- Device, seeding, mixed precision -------------------------------------------------------------

def pick_device(name="auto"):
    """'auto' (CUDA if there is a GPU, else the CPU), 'cpu', 'cuda' or 'cuda:N' -> a device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU on this "
                        "machine (use --device cpu or --device auto)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name; expected auto, cpu, cuda or "
                        "cuda:N") from None
    if device.type == "cpu":
        keep_freed_memory()
    return device


@functools.cache
def keep_freed_memory():
    """glibc keeps freed memory: a CPU step frees tens of MB that glibc would give back to the
    system, so that each next step page-faults on fresh pages (bench.py measures both ways).
    MMAP_THRESHOLD (-3) = 1 GiB, TRIM_THRESHOLD (-1) = 2 GiB - 1; the cost: the process keeps
    its peak memory."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        mmap_set = bool(libc.mallopt(-3, 1 << 30))
        trim_set = bool(libc.mallopt(-1, 2 ** 31 - 1))
        return mmap_set and trim_set
    return False


def seed_everything(seed):
    """Seed Python, numpy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device, precision="auto"):
    """A step's mixed precision: "auto" = bf16 autocast on CUDA, fp32 on the CPU; "bf16" = bf16
    on either; "fp32" = none (bf16 has fp32's exponent range: no loss scaling). fp32 on the CPU
    is slower there than bf16, but a resumed run ends bit-identical to an uninterrupted one."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model, device):
    """The model on `device`; on CUDA in channels_last (NHWC), which cuDNN reads without
    transposes."""
    if torch.device(device).type == "cuda":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


# --- One visible config per paper: a dataclass, its flags built from it ---------------------------

def field_comments(cls):
    """{field name: its trailing comment} read from the dataclass source: the flag's help."""
    source = inspect.getsource(cls)
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        field = re.match(r"\s*(\w+)\s*:", token.line)  # `name: T = x  # help`
        if field:
            comments[field.group(1)] = token.string.lstrip("# ").strip()
    return comments


def add_config_args(parser, cls, only=None, defaults=None):
    """A flag `--field-name` per dataclass field (or per one in `only`): its type, its default (or
    the one in `defaults`), its comment as help; bool: `--flag / --no-flag`, tuple: nargs="*"."""
    hints = typing.get_type_hints(cls)
    helps = field_comments(cls)
    for f in dataclasses.fields(cls):
        if only and f.name not in only:
            continue
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if typing.get_origin(kind) is typing.Union:  # Optional[X]: the flag takes an X
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()
        default = (defaults or {}).get(f.name, default)
        # argparse %-formats help texts: a comment such as "top R% pixels" needs its % doubled
        text = f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%")
        kw = dict(default=default, help=text)
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            kw.update(choices=choices, type=type(choices[0]))
        elif typing.get_origin(kind) in (tuple, list):
            kw.update(nargs="*", type=typing.get_args(kind)[0])
        else:
            kw["type"] = kind
        parser.add_argument(flag, **kw)
    return parser


def config_from_args(cls, args):
    """The dataclass `cls` holding the parsed flags `args` (lists become tuples)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def check_limits(cfg, limits):
    """Refuse the first value outside its interval, naming the flag: limits = {field: "[lo, hi)"}
    as in mathematics (inf allowed); a NaN lies outside every interval."""
    helps = field_comments(type(cfg)) if dataclasses.is_dataclass(cfg) else {}  # flags' help
    for name, interval in limits.items():
        value = getattr(cfg, name)
        # a bracket includes its end, a parenthesis leaves it out; NaN fails both comparisons
        left, lo, hi, right = re.fullmatch(r"([\[(])(.+), (.+)([\])])", interval).groups()
        above = value >= float(lo) if left == "[" else value > float(lo)
        below = value <= float(hi) if right == "]" else value < float(hi)
        if not (above and below):
            meaning = f" ({helps[name]})" if name in helps else ""
            raise UserError(f"--{name.replace('_', '-')} must lie in {interval}, got "
                            f"{value}{meaning}")


def check_padding(pad, height, width):
    """Refuse a --pad of the input's height or width or more: its random crop could then hold
    nothing but the zeros of the padding."""
    if pad >= min(height, width):
        raise UserError(f"--pad {pad} must be below the input's smaller side ({height}x{width} "
                        f"inputs: below {min(height, width)}); a larger padding can crop nothing "
                        "but zeros")


# --- Errors: one line naming the cause, exit status 2 ---------------------------------------------

class UserError(Exception):
    """Bad input (wrong path, flag or file) named in its message; `exit_on_user_error` prints it."""


def exit_on_user_error(main, argv=None):
    """main(argv); a UserError (or an OSError no check foresaw, named by the system) becomes
    `error: <message>` on stderr and exit status 2. Ctrl-C or SIGTERM (`stop_on_sigterm`) that
    reach here, in a command that is not a training run, print `stopped by SIGINT` (SIGTERM) and
    exit with the shell's status for the signal, 128 + its number: no traceback."""
    try:
        return main(argv)
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        name = str(stop) or "SIGINT"
        print(f"stopped by {name}", file=sys.stderr)
        sys.exit(128 + signal.Signals[name].value)


# --- Checkpoints: atomic writes, safe loads, random states ----------------------------------------

def save_checkpoint(path, state):
    """Write `state` (tensors and plain values only) to `path` atomically: a temporary file, fsync,
    rename, so a run killed mid-write (or a full disk) leaves the previous file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # disk full, Ctrl-C, ...: `path` is untouched, the temporary goes
        with contextlib.suppress(OSError):
            os.remove(tmp)
        # a full disk reaches torch.save's zip writer first: its RuntimeError chains the OSError
        causes = (e, e.__cause__, e.__context__)
        cause = next((c for c in causes if isinstance(c, OSError)), None)
        from_zip_writer = "PytorchStreamWriter" in str(e) or "inline_container" in str(e)
        if cause is None and not from_zip_writer:
            raise
        reason = (cause.strerror or str(cause)).lower() if cause else "the write failed"
        raise UserError(f"{reason} writing {path} (the previous file, if any, is untouched; "
                        f"free space on the disk of {folder}, or give another --out)") from None


def load_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True (no pickled code runs; other objects are refused)."""
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder; expected a checkpoint file in it (e.g. last.pt)")
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:  # torch.save writes a zip archive (before torch 1.6: a pickle)
        legacy = f.read(2) == b"\x80\x02"
    if not (zipfile.is_zipfile(path) or legacy):
        raise UserError(f"{path} is not a PyTorch checkpoint (not the zip archive torch.save "
                        "writes: another kind of file, or a truncated copy)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        pickled = re.search(r"GLOBAL (\S+)", str(e))  # what a pickle would call to load
        if pickled:
            raise UserError(f"refusing to load {path}: it holds a pickled Python object "
                            f"({pickled.group(1)}), and loading one could run code; a checkpoint "
                            "holds tensors and plain values") from None
        reason = str(e).split("WeightsUnpickler error: ")[-1].splitlines()[0]  # not the advice
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                        f"{reason}") from None


def load_weights(model, weights, path, what=None):
    """model.load_state_dict(weights), or one UserError naming `path` and the first misfit keys."""
    own = model.state_dict()
    if not isinstance(weights, dict):
        weights = {}
    wrong = {
        "missing": own.keys() - weights.keys(),
        "unexpected": weights.keys() - own.keys(),
        "of another shape": {k for k in own.keys() & weights.keys()
                             if getattr(weights[k], "shape", None) != own[k].shape},
    }
    if any(wrong.values()):
        misfits = [f"{kind}: {', '.join(sorted(keys)[:3])}" for kind, keys in wrong.items() if keys]
        raise UserError(f"{path}: the weights do not fit {what or type(model).__name__} "
                        f"({'; '.join(misfits)})")
    model.load_state_dict(weights)


def describe_checkpoint(ckpt):
    """What wrote a checkpoint, in words (for the errors of `check_checkpoint`)."""
    kind = ckpt.get("paper") if isinstance(ckpt, dict) else None
    if kind == "aea":
        return "an AEA checkpoint (aea.py)"
    if kind == "aaanet":
        stage = f" {ckpt['stage']}" if ckpt.get("stage") else ""
        return f"an AAA-Net{stage} checkpoint (aaanet.py)"
    if kind == "backbone":
        return "a backbone checkpoint (a plain ResNet with its input size)"
    return f"not a checkpoint of this project (paper={kind!r})"


def check_checkpoint(ckpt, path, paper, num_classes=None, classifier_key=None):
    """Refuse, saying what the file is and what was expected, another paper's checkpoint (or a
    foreign file), or one whose classifier_key weight has other than `num_classes` rows."""
    expected = describe_checkpoint({"paper": paper})
    if not isinstance(ckpt, dict) or ckpt.get("paper") != paper or "model" not in ckpt:
        raise UserError(f"{path} is {describe_checkpoint(ckpt)}; expected {expected}")
    if num_classes is None or classifier_key is None:
        return
    weight = ckpt["model"].get(classifier_key) if isinstance(ckpt["model"], dict) else None
    if weight is None:
        raise UserError(f"{path} has no {classifier_key}: not a complete {expected}")
    if weight.shape[0] != num_classes:
        raise UserError(f"{path} was trained on {weight.shape[0]} identities, but this dataset "
                        f"has {num_classes} training identities: give the --root (and "
                        "--dataset) the checkpoint was trained on")


def rng_state():
    """The random states of Python, numpy, torch and CUDA, as types `weights_only` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_keys = torch.from_numpy(keys.astype(np.int64))
    state = {"python": random.getstate(),
             "numpy": (kind, numpy_keys, pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Put back the random states `rng_state` saved."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_state(path, paper, config, may_differ=(), device=None):
    """The checkpoint to `--resume` from, checked: by `paper`, its config the same but for
    `may_differ` (each other difference named), --precision auto on the same device type."""
    if not os.path.isfile(path):
        raise UserError(f"--resume: there is no checkpoint {path} to continue from (start the run "
                        "without --resume, or give the --out of the run to continue)")
    state = load_checkpoint(path)
    check_checkpoint(state, path, paper)
    now = dataclasses.asdict(config)
    before = {}  # the checkpoint's config; a tuple flag comes back from the file as a list
    for k, v in state["config"].items():
        before[k] = tuple(v) if isinstance(v, list) else v
    differ = [f"--{k.replace('_', '-')} {before.get(k)!r} in the checkpoint, {now[k]!r} now"
              for k in now if k not in may_differ and before.get(k) != now[k]]
    if differ:
        raise UserError(f"--resume {path}: the run was started with other settings "
                        f"({'; '.join(differ)}); resume with the same flags")
    was = state.get("device_type")
    now_type = torch.device(device).type if device else None
    if now_type and was and now.get("precision") == "auto" and now_type != was:
        was_precision = "bf16" if was == "cuda" else "fp32"
        raise UserError(f"--resume {path}: the run trained on {was} with --precision auto "
                        f"({was_precision} there), which would switch on {now_type}. Resume "
                        f"with --device {was}, or start anew with a --precision")
    return state


def restore(ckpt, path, model, optimizer, schedule, generator):
    """--resume: put back what a paper's checkpoint dict holds for training to go on as if it
    had never stopped: the weights, the optimizer's and the lr schedule's states, every random
    state (`rng_state`) and the augmentation's generator."""
    load_weights(model, ckpt["model"], path)
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    set_rng_state(ckpt["rng"])
    generator.set_state(ckpt["aug_generator"])


def split_digest(paths, labels, root):
    """A short digest of a training split: each image's path under `root` and its label, in
    order. A checkpoint keeps it, so that --resume sees any change of the training files, even
    one that keeps their number."""
    digest = hashlib.sha256()
    for path, label in zip(paths, labels):
        digest.update(f"{os.path.relpath(path, root)}\t{int(label)}\n".encode())
    return digest.hexdigest()[:16]


def check_same_images(state, path, root, num_images, digest):
    """Refuse to resume a run on a training split other than its own: another number of images,
    or other files or labels (`split_digest`)."""
    if state["num_images"] != num_images:
        raise UserError(f"--resume {path}: the run trained on {state['num_images']} training "
                        f"images, the training split of {root} now has {num_images}; resume "
                        "on the run's own data")
    if "train_digest" not in state:
        raise UserError(f"--resume {path}: the checkpoint holds no digest of its training files, "
                        "so its split cannot be checked; start the run anew (without --resume)")
    if state["train_digest"] != digest:
        raise UserError(f"--resume {path}: the training split of {root} holds {num_images} "
                        "images as the run's did, but other files or identities (renamed, "
                        "replaced or moved images); resume on the run's own data")


def saved_results(results):
    """{row: rank_metrics} as a checkpoint holds it: each CMC curve a list of floats (loading
    with weights_only refuses numpy arrays)."""
    return {name: dict(r, cmc=np.asarray(r["cmc"]).tolist()) for name, r in results.items()}


# --- The output folder: its lock, the log, best.pt ------------------------------------------------

def hold_folder(folder):
    """Make `folder` this process's --out: create it, prove it writable, claim it with OUT/.lock
    holding the pid (a second run is refused); a killed holder's lock and temporary files
    (.last.pt.tmpPID) are taken over. Returns `release`, which removes the lock and the folders
    this call created if they are still empty; it also runs when the process exits."""
    lock = os.path.join(folder, ".lock")
    created = []  # the folders makedirs creates, the deepest first
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        created.append(path)
        path = os.path.dirname(path)

    def release():  # once; the lock only while it is this process's (or empty: never written)
        atexit.unregister(release)
        with contextlib.suppress(OSError), open(lock) as f:
            if f.read().strip() in ("", str(os.getpid())):
                os.remove(lock)
        for path in created:
            with contextlib.suppress(OSError):  # only empty folders go
                os.rmdir(path)
    atexit.register(release)
    try:
        os.makedirs(folder, exist_ok=True)
        claim_lock(lock, folder)
        remove_dead_temporaries(folder)
    except OSError as e:
        release()
        raise UserError(f"--out {folder}: cannot write there ({e.strerror}); give a folder you "
                        "can write to") from None
    return release


def claim_lock(lock, folder):
    """Write this process's pid into OUT/.lock, unless a running process holds it."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # one run wins
    except FileExistsError:
        # a pid, as this function writes it; anything else (bytes, a huge number) is no running run
        with open(lock, errors="replace") as f:
            holder = f.read(64).strip()
        if holder != str(os.getpid()) and pid_running(holder):
            raise UserError(f"--out {folder} is in use by another run (pid {holder}); wait "
                            f"for it to end, or give another --out (no such run: delete {lock})"
                            ) from None
        fd = os.open(lock, os.O_TRUNC | os.O_WRONLY)  # stale (killed), or this process's
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))


def remove_dead_temporaries(folder):
    """Remove the temporary files (.NAME.tmpPID, .NAME.linkPID) of processes that were killed."""
    for name in os.listdir(folder):
        tmp = re.fullmatch(r"\..+\.(?:tmp|link)(\d+)", name)
        file = os.path.join(folder, name)
        if tmp and not pid_running(tmp.group(1)) and os.path.isfile(file):
            os.remove(file)


def pid_running(pid):
    """Whether the process `pid` (a string: a lock file's text) exists."""
    if not pid.isdigit() or int(pid) <= 0:
        return False
    if os.name == "nt":  # os.kill would end the process there: not asked
        return True
    try:
        os.kill(int(pid), 0)  # signal 0 sends nothing, it asks
    except (ProcessLookupError, OverflowError):  # no such process; no such pid
        return False
    except PermissionError:  # another user's process
        return True
    return True


# the files a training run writes in its --out (tools.py plot adds curves.png)
RUN_FILES = re.compile(r"last\.pt|best\.pt|log\.csv|epoch_\d+\.pt|curves\.png")


def earlier_run(folder):
    """The names of the files an earlier run left in `folder` (RUN_FILES), sorted."""
    return sorted(name for name in listdir(folder) if RUN_FILES.fullmatch(name))


def clear_earlier_run(folder):
    """Remove an earlier run's files from `folder` before a new run writes its first epoch there,
    so that no old epoch_N.pt, best.pt or curves.png lies beside the new run's files."""
    for name in earlier_run(folder):
        os.remove(os.path.join(folder, name))


def write_log(folder, rows):
    """OUT/log.csv (written, then renamed): a row per dict, a column per key, 6-digit numbers;
    the loss terms first, then img/s, seconds and the scores."""
    path = os.path.join(folder, "log.csv")
    late = ("img/s", "seconds", "rank-1 ", "mAP ")  # after every loss term, even a late one
    columns = sorted(dict.fromkeys(k for r in rows for k in r), key=lambda k: k.startswith(late))
    tmp = os.path.join(folder, f".log.csv.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if type(v) is float else v for k, v in row.items()})
    os.replace(tmp, path)


def save_epoch(folder, checkpoint, loss):
    """After an epoch (or its evaluation): OUT/last.pt = `checkpoint` (atomically), OUT/log.csv =
    its "log", and OUT/best.pt = last.pt when the epoch's mean `loss` is the lowest so far. "Best"
    by the training loss: the datasets have no validation split, and the test queries choose
    nothing (the papers report their last epoch, last.pt)."""
    last = os.path.join(folder, "last.pt")
    save_checkpoint(last, checkpoint)
    # log.csv after last.pt: a run killed between the two writes it again on --resume
    write_log(folder, checkpoint["log"])
    if lowest_so_far(checkpoint["log"], loss):
        link_best(last)


def lowest_so_far(log, key):
    """Whether the last row of `log` has the lowest `key` of all rows (strictly below the rest)."""
    earlier = [row[key] for row in log[:-1]]
    return log[-1][key] < min(earlier, default=math.inf)


def link_best(last):
    """OUT/best.pt = OUT/last.pt, by a hard link (not a second write of ~460 MB), renamed into
    place; where the file system has no hard links, a copy."""
    folder = os.path.dirname(last)
    best = os.path.join(folder, "best.pt")
    tmp = os.path.join(folder, f".best.pt.link{os.getpid()}")
    try:
        # linked under a temporary name, then renamed over best.pt: never a missing best.pt
        os.link(last, tmp)
        os.replace(tmp, best)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        save_checkpoint(best, load_checkpoint(last))


# --- The progress line ----------------------------------------------------------------------------

class Progress:
    """A line every `every` steps, the only time the loss terms are read (one GPU sync a line):
    "epoch 3/100  lr 1e-02  iter 120/400  L_I1 2.3110  L_T 0.1820  | 41.3 img/s  ETA 00:01:08".
    A NaN or infinite term stops the run there (a UserError naming the step and the term)."""

    def __init__(self, total, prefix="", every=20, file=None, where=None):
        self.total = total
        self.prefix = prefix
        self.where = where or prefix.strip()  # what the NaN message names, e.g. "epoch 3/100"
        self.every = every
        self.file = file or sys.stdout
        self.step = 0
        self.images = 0
        self.sums = {}  # each term's sum over the steps read so far
        self.pending = []  # the terms of the steps since the last line, not read yet
        self.start = time.perf_counter()
        self.line_start = self.start
        self.line_images = 0

    def update(self, num_images, terms):
        """A step's loss terms (tensors); a line every `every` steps and at the last."""
        self.step += 1
        self.images += num_images
        # detached: keeping a loss tensor must not keep its whole autograd graph alive
        self.pending.append({k: v.detach() for k, v in terms.items()})
        if self.step % self.every == 0 or self.step == self.total:
            self.print_line()

    def print_line(self):
        """Read the pending steps' terms, check them, print their means and the speed."""
        first = self.step - len(self.pending) + 1  # the 1-based step of pending[0]
        line_sums = {}
        for j, terms in enumerate(self.pending):
            for k, v in terms.items():
                v = float(v)  # on a GPU, the only syncs of a training loop: once a line
                if not math.isfinite(v):
                    raise UserError(
                        f"{self.where} step {first + j}/{self.total}: the loss term "
                        f"{k} is {v}; the run stops here and the last checkpoint (written at "
                        "the end of the last epoch) is left untouched. A smaller --lr usually "
                        "helps.")
                line_sums[k] = line_sums.get(k, 0.0) + v
        for k, v in line_sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        now = time.perf_counter()
        rate = (self.images - self.line_images) / max(now - self.line_start, 1e-9)
        eta = (now - self.start) / self.step * (self.total - self.step)
        means = "  ".join(f"{k} {v / len(self.pending):.4f}" for k, v in line_sums.items())
        print(f"{self.prefix}iter {self.step}/{self.total}  {means}  | {rate:.1f} img/s  "
              f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", file=self.file, flush=True)
        self.pending = []
        self.line_start = now
        self.line_images = self.images

    def summary(self):
        """After the last step: each term's mean over the epoch, img/s and seconds."""
        seconds = time.perf_counter() - self.start
        means = {k: v / self.step for k, v in self.sums.items()}
        return {**means, "img/s": self.images / seconds, "seconds": seconds}


# --- Stop signals: Ctrl-C and SIGTERM stop a run; --resume goes on from its last.pt ---------------

def stop_on_sigterm():
    """Make SIGTERM raise KeyboardInterrupt("SIGTERM"), as Ctrl-C raises KeyboardInterrupt: a
    run stops the same way on both, wherever it is. Its checkpoints are written atomically, so
    last.pt is always a whole epoch."""
    def stop(signum, frame):
        # raised wherever the main thread is: in a step, an evaluation, a checkpoint's write
        raise KeyboardInterrupt(signal.Signals(signum).name)
    with contextlib.suppress(ValueError):  # not the main thread (a notebook's worker): no-op
        signal.signal(signal.SIGTERM, stop)


def report_stop(stop, folder):
    """After a KeyboardInterrupt `stop`: what the run's --out `folder` holds and the command that
    goes on from there (the command of this process, with --resume)."""
    name = str(stop) or "SIGINT"
    last = os.path.join(folder, "last.pt")
    if os.path.isfile(last):
        saved = last
    elif any(os.path.isfile(os.path.join(folder, sub, "last.pt")) for sub in listdir(folder)):
        saved = f"each last.pt under {folder}"  # a run of several stages (aaanet.py's demo)
    else:
        print(f"stopped by {name} before the first epoch ended; nothing to resume (run the same "
              "command again)", flush=True)
        return
    # the command of this process, as the user typed it, with --resume once
    argv = list(sys.argv)
    if "--resume" not in argv:
        argv.append("--resume")
    command = shlex.join(["python", os.path.basename(argv[0])] + argv[1:])
    print(f"stopped by {name}; {saved} holds the last epoch that ended (the epoch in progress is "
          f"redone). Resume with:\n  {command}", flush=True)


def listdir(folder):
    """os.listdir(folder), or nothing where there is no such folder."""
    try:
        return os.listdir(folder)
    except OSError:
        return []

"""What both papers share: the ResNet backbone, cross-entropy, the batch-hard triplet loss, SGD
and its schedule, configs as flags, a progress line, safe checkpoints, and `TrainingRun` (--out's
lock, checkpoints, --resume, stop signals, the NaN stop, OUT/log.csv with one row per epoch and
OUT/curves.png) around the paper file's training loop. It knows neither paper's networks.

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
  - Distances clamp ||a||^2 + ||b||^2 - 2ab at 1e-12 before the square root.
  - SGD momentum 0.9 and weight decay 5e-4 (AAA-Net names SGD without settings, AEA nothing).
  - `--precision auto`: bf16 autocast + channels_last on CUDA, fp32 on the CPU; losses and
    distances in fp32 under autocast. On the CPU glibc keeps freed memory (`keep_freed_memory`).
  - best.pt = the epoch of lowest mean training loss; a resumed run replays the interrupted
    epoch's batches without training on them; OUT/.lock holds a run's pid (`TrainingRun`).
"""

import argparse
import atexit
import contextlib
import csv
import ctypes
import dataclasses
import functools
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


class UserError(Exception):
    """Bad input (wrong path, flag or file) named in its message; `exit_on_user_error` prints it."""


def exit_on_user_error(main, argv=None):  # a UserError: `error: <message>` on stderr, exit 2
    try:
        return main(argv)
    except (UserError, OSError) as e:  # OSError: a fault no check foresaw, named by the system
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


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
    """Choice (not in the paper): glibc keeps freed memory: a CPU step frees 10-130 MB that glibc
    would munmap, so each step page-faults on fresh pages (bench.py measures both). MMAP_THRESHOLD
    (-3) = 1 GiB, TRIM_THRESHOLD (-1) = 2 GiB - 1; cost: the process keeps its peak memory."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 2 ** 31 - 1))
    return False


def seed_everything(seed):  # Python, numpy and torch (every CUDA device too)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device, precision="auto"):
    """A step's mixed precision: "auto" = bf16 autocast on CUDA, fp32 on the CPU; "bf16" = bf16
    on either; "fp32" = none (bf16 has fp32's exponent range: no loss scaling). Choice (not in
    the paper): fp32 on the CPU, slower than bf16 there but bit-identical on resume."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model, device):
    """Choice (not in the paper): channels_last (NHWC) on CUDA, read by cuDNN without transposes."""
    cuda = torch.device(device).type == "cuda"
    return model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)


# --- Backbone: torchvision's ResNet-50 (or 18, 34) with its stages reachable by name -------------

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # the papers' conv1, conv2_x..conv5_x
PAPER_STAGE_NAMES = dict(zip(("conv2_x", "conv3_x", "conv4_x", "conv5_x"), STAGES[1:]))
ARCHS = {"resnet18": (64, 64, 128, 256, 512), "resnet34": (64, 64, 128, 256, 512),  # channels
         "resnet50": (64, 256, 512, 1024, 2048)}  # of each stage in STAGES, per --arch


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


class Backbone(nn.Module):
    """ResNet-50 [He et al. 2016] (or `arch` resnet18 / resnet34) cut into its five stages, named
    as in torchvision, with `channels` {stage: C} (ResNet-18/34: 64, 64, 128, 256, 512):

      x [B, 3, H, W] -> conv1 [B, 64, H/4, W/4] -> layer1 [B, 256, H/4, W/4]
        -> layer2 [B, 512, H/8, W/8] -> layer3 [B, 1024, H/16, W/16] -> layer4 [B, 2048, H/32, W/32]

    `run(x, first, last)` runs a range of stages, so a paper module can stop at a middle layer,
    change the features and go on (AAA-Net's occlusion; AEA's attention). weights: 'imagenet'
    (IMAGENET1K_V1), 'none' (random init), or the path of a state dict of `arch` in torchvision's
    key names (the classifier `fc.*` is ignored). last_stride=1: layer4 is H/16, W/16."""

    def __init__(self, weights="imagenet", last_stride=2, arch="resnet50"):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"--arch {arch!r}: expected one of {', '.join(ARCHS)}")
        name, self.channels = f"ResNet-{arch[6:]}", dict(zip(STAGES, ARCHS[arch]))
        resnet = getattr(torchvision.models, arch)(weights=None)
        resnet.fc = nn.Identity()  # torchvision's ImageNet classifier: not used here
        if weights not in ("imagenet", "none") and not os.path.isfile(weights):
            raise UserError(f"weights {weights!r}: expected 'imagenet', 'none' or the path of a "
                            f"{name} state dict file")
        if weights != "none":
            state = imagenet_state_dict(arch) if weights == "imagenet" else load_checkpoint(weights)
            if isinstance(state, dict):
                state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            load_weights(resnet, state, f"weights {weights}", f"a torchvision {name}")
        if last_stride == 1:
            # AEA Sec. III-A: "remove the down-sampling of Conv5_X" -> conv5_x 16x8 at 256x128.
            # Choice (not in the paper): stride 1 in the shortcut and torchvision's strided 3x3 conv
            block = resnet.layer4[0]
            (block.conv2 if arch == "resnet50" else block.conv1).stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        # Choice (not in the paper): conv1 = the stem with its max-pool, torchvision's grouping
        self.conv1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4

    def run(self, x, first="conv1", last="layer4"):
        """Run stages `first`..`last` (inclusive; the papers' conv2_x..conv5_x work too) on x."""
        i, j = (STAGES.index(PAPER_STAGE_NAMES.get(s, s)) for s in (first, last))
        for name in STAGES[i:j + 1]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x):
        """The plain re-ID feature: layer4 average-pooled, [B, 2048] (ResNet-18/34: [B, 512])."""
        return self.run(x).mean(dim=(2, 3))


# --- Losses ---------------------------------------------------------------------------------------

def cross_entropy(logits, labels):
    """Softmax cross-entropy, AEA Eq. (2), (3), (4); AAA-Net Sec. 3.1 "softmax classification loss":

        p(t) = exp(v_t) / sum_{i=1..N} exp(v_i)                 Eq. (4)
        q(t) = 1 if t == y else 0                               Eq. (3)
        L_I  = - sum_t q(t) log p(t), averaged over the batch   Eq. (2)"""
    # log p(t), Eq. (4). Choice (not in the paper): fp32 under autocast, over hundreds of classes
    log_p = F.log_softmax(logits.float(), dim=1)                           # [B, N]
    # q(t), Eq. (3): one-hot of the label
    q = torch.zeros_like(log_p).scatter_(1, labels[:, None], 1.0)         # [B, N]
    return -(q * log_p).sum(dim=1).mean()                                 # L_I, Eq. (2)


def pairwise_euclidean(a, b):
    """Euclidean distances between the rows of a [n, d] and b [m, d] -> [n, m], one matmul."""
    d2 = (a * a).sum(dim=1)[:, None] + (b * b).sum(dim=1)[None, :] - 2.0 * (a @ b.t())
    # Choice (not in the paper): clamp, as rounding can make d2 < 0 and sqrt's gradient at 0 is inf
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(features, labels, margin, normalize=True):
    """Batch-hard triplet loss, AEA Eq. (5), (6), (7) [Hermans et al. 2017]:

        L_T  = [ d_ap + m - d_an ]_+                  Eq. (5), averaged over the anchors a
        d_ap = max_p || f(x_a) - f(x_p) ||_2          Eq. (6), p: same identity, p != a
        d_an = min_n || f(x_a) - f(x_n) ||_2          Eq. (7), n: another identity

    Every sample is an anchor, its hardest positive and negative searched inside the batch: hence
    batches of P identities x K images (data.PKSampler). normalize=True L2-normalises the features
    first ("these features are all normalized by L2 norm", AEA Sec. III-C): distances lie in
    [0, 2], the margin m on that scale. features [n, d], labels [n] -> scalar loss."""
    # Choice (not in the paper): fp32 under bf16 autocast: with unit-length features d^2 = 2 - 2
    # cos, and bf16's 8-bit mantissa would move small distances by ~20%, changing the hardest pair
    with torch.autocast(features.device.type, enabled=False):
        features = F.normalize(features.float(), dim=1) if normalize else features.float()
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


def step_schedule(optimizer, milestones, gamma=0.1):
    """Every lr x gamma at each epoch in `milestones` (stepped per epoch): AAA-Net Sec. 4.2's
    x0.1 every 2 (or 3) epochs -> milestones=range(2, epochs, 2)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, sorted(milestones), gamma=gamma)


# --- One visible config per paper: a dataclass, its flags built from it ---------------------------

def field_comments(cls):
    """{field name: its trailing comment} read from the dataclass source: the flag's help."""
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
    return {m.group(1): tok.string.lstrip("# ").strip() for tok in tokens  # `name: T = x  # help`
            if tok.type == tokenize.COMMENT and (m := re.match(r"\s*(\w+)\s*:", tok.line))}


def add_config_args(parser, cls, only=None, defaults=None):
    """A flag `--field-name` per dataclass field (or per one in `only`): its type, its default (or
    the one in `defaults`), its comment as help; bool: `--flag / --no-flag`, tuple: nargs="*"."""
    hints, helps = typing.get_type_hints(cls), field_comments(cls)
    for f in [f for f in dataclasses.fields(cls) if not only or f.name in only]:
        kind, flag = hints[f.name], "--" + f.name.replace("_", "-")
        if typing.get_origin(kind) is typing.Union:  # Optional[X]: the flag takes an X
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = (defaults or {}).get(f.name, default)
        # argparse %-formats help texts: a comment such as "top R% pixels" needs its % doubled
        kw = dict(default=default,
                  help=f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%"))
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            kw.update(choices=typing.get_args(kind), type=type(typing.get_args(kind)[0]))
        elif typing.get_origin(kind) in (tuple, list):
            kw.update(nargs="*", type=typing.get_args(kind)[0])
        else:
            kw["type"] = kind
        parser.add_argument(flag, **kw)
    return parser


def check_limits(cfg, limits):
    """Refuse the first value outside its interval, naming the flag: limits = {field: "[lo, hi)"}
    as in mathematics (inf allowed); a NaN lies outside every interval."""
    helps = field_comments(type(cfg)) if dataclasses.is_dataclass(cfg) else {}  # flags' help
    for name, interval in limits.items():
        value = getattr(cfg, name)
        left, lo, hi, right = re.fullmatch(r"([\[(])(.+), (.+)([\])])", interval).groups()
        above = value >= float(lo) if left == "[" else value > float(lo)
        below = value <= float(hi) if right == "]" else value < float(hi)
        if not (above and below):
            raise UserError(f"--{name.replace('_', '-')} must lie in {interval}, got {value}"
                            + (f" ({helps[name]})" if name in helps else ""))


def config_from_args(cls, args):  # the dataclass holding the parsed flags (lists as tuples)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --- Progress line --------------------------------------------------------------------------------

class Progress:
    """A line every `every` steps, the only time terms are read (one GPU sync per line), e.g.
    "epoch 3/100  lr 1e-02  iter 120/400  L_I1 2.3110  L_T 0.1820  | 41.3 img/s  ETA 00:01:08"."""

    def __init__(self, total, prefix="", every=20, file=None, where=None):
        self.total, self.prefix, self.every, self.file = total, prefix, every, file or sys.stdout
        self.where = where or prefix.strip()  # what the NaN message names, e.g. "epoch 3/100"
        self.i = self.images = self.last_images = self.resumed_at = 0  # resumed_at: not in the ETA
        self.pending, self.totals = [], {}  # totals: sums over the steps printed so far, `mean`
        self.start = self.last = time.perf_counter()

    def update(self, num_images, **terms):
        self.i, self.images = self.i + 1, self.images + num_images
        # detached: keeping a loss tensor must not keep its whole autograd graph alive
        self.pending.append({k: v.detach() if isinstance(v, torch.Tensor) else v
                             for k, v in terms.items()})
        if self.i % self.every == 0 or self.i == self.total:
            self.print_line()

    def check(self):
        """The pending steps' sums, read (one GPU sync); a NaN or inf one: a UserError."""
        sums, first = {}, self.i - len(self.pending) + 1  # first: pending[0]'s 1-based step
        for j, terms in enumerate(self.pending):
            for k, v in terms.items():
                if not math.isfinite(v := float(v)):
                    raise UserError(
                        f"{self.where} step {first + j}/{self.total}: the loss term {k} "
                        f"is {v}; the run stops here and the last checkpoint (written before "
                        "this step) is left untouched. A smaller --lr usually helps.")
                sums[k] = sums.get(k, 0.0) + v
        return sums

    def sums(self):  # each term's sum over the epoch so far, checked: a mid-epoch checkpoint's
        return {**self.totals, **{k: self.totals.get(k, 0.0) + v for k, v in self.check().items()}}

    def resume(self, steps, num_images, sums):  # go on with an epoch stopped after `steps` steps
        self.i, self.images, self.last_images = steps, num_images, num_images
        self.totals, self.resumed_at = dict(sums), steps
        self.start = self.last = time.perf_counter()  # the replayed steps are not timed

    def mean(self, key):  # term `key`'s mean over the steps printed so far (at the end: epoch)
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


# --- Checkpoints: atomic writes, safe loads, RNG state --------------------------------------------

def rng_state():
    """The random states of Python, numpy, torch and CUDA, as types `weights_only` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):  # what rng_state saved
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        cause = next((c for c in (e, e.__cause__, e.__context__) if isinstance(c, OSError)), None)
        if cause is not None or "PytorchStreamWriter" in str(e) or "inline_container" in str(e):
            reason = (cause.strerror or str(cause)).lower() if cause else "the write failed"
            raise UserError(f"{reason} writing {path} (the previous file, if any, is untouched; "
                            f"free space on the disk of {folder}, or give another --out)") from None
        raise


def write_log(path, rows):
    """OUT/log.csv (written, then renamed): a row per dict, a column per key, 6-digit numbers."""
    late = ("img/s", "seconds", "rank-1 ", "mAP ")  # after every loss term, even a late one
    tmp = os.path.join(os.path.dirname(path), f".log.csv.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, sorted(dict.fromkeys(k for r in rows for k in r),
                                     key=lambda k: k.startswith(late)))
        w.writeheader()
        w.writerows({k: f"{v:.6g}" if type(v) is float else v for k, v in r.items()} for r in rows)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True (no pickled code runs; other objects are refused)."""
    if not os.path.isfile(path):
        raise UserError(f"{path} is a folder; expected a checkpoint file in it (e.g. last.pt)"
                        if os.path.isdir(path) else f"checkpoint {path} does not exist")
    with open(path, "rb") as f:  # torch.save writes a zip archive (before torch 1.6: a pickle)
        legacy = f.read(2) == b"\x80\x02"
    if not (zipfile.is_zipfile(path) or legacy):
        raise UserError(f"{path} is not a PyTorch checkpoint (not the zip archive torch.save "
                        "writes: another kind of file, or a truncated copy)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        if what := re.search(r"GLOBAL (\S+)", str(e)):  # the class or function a pickle would call
            raise UserError(f"refusing to load {path}: it holds a pickled Python object "
                            f"({what.group(1)}), and loading one could run code; a checkpoint "
                            "holds tensors and plain values") from None
        reason = str(e).split("WeightsUnpickler error: ")[-1].splitlines()[0]  # not the advice
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                        f"{reason}") from None


def load_weights(model, weights, path, what=None):
    """model.load_state_dict(weights), or one UserError naming `path` and the first misfit keys."""
    own, weights = model.state_dict(), weights if isinstance(weights, dict) else {}
    wrong = {"missing": own.keys() - weights.keys(), "unexpected": weights.keys() - own.keys(),
             "of another shape": {k for k in own.keys() & weights.keys()
                                  if getattr(weights[k], "shape", None) != own[k].shape}}
    if any(wrong.values()):
        raise UserError(f"{path}: the weights do not fit {what or type(model).__name__} (" +
                        "; ".join(f"{kind}: {', '.join(sorted(keys)[:3])}"
                                  for kind, keys in wrong.items() if keys) + ")")
    model.load_state_dict(weights)


def check_checkpoint(ckpt, path, paper, num_classes=None, classifier_key=None):
    """Refuse, saying what the file is and what was expected, another paper's checkpoint (or a
    foreign file), or one whose classifier_key weight has other than `num_classes` rows."""
    def describe(c):  # what wrote a checkpoint, in words
        kind = c.get("paper") if isinstance(c, dict) else None
        stage = f" {c['stage']}" if kind == "aaanet" and c.get("stage") else ""
        return {"aea": "an AEA checkpoint (aea.py)", "aaanet": f"an AAA-Net{stage} checkpoint "
                "(aaanet.py)"}.get(kind, f"not a checkpoint of this project (paper={kind!r})")
    expected = describe({"paper": paper})
    if not isinstance(ckpt, dict) or ckpt.get("paper") != paper or "model" not in ckpt:
        raise UserError(f"{path} is {describe(ckpt)}; expected {expected}")
    if num_classes is not None and classifier_key is not None:
        weight = ckpt["model"].get(classifier_key) if isinstance(ckpt["model"], dict) else None
        if weight is None:
            raise UserError(f"{path} has no {classifier_key}: not a complete {expected}")
        if weight.shape[0] != num_classes:
            raise UserError(f"{path} was trained on {weight.shape[0]} identities, but this dataset "
                            f"has {num_classes} training identities: give the --root (and "
                            "--dataset) the checkpoint was trained on")


def resume_state(path, paper, config, may_differ=(), device=None):
    """The checkpoint to `--resume` from, checked: by `paper`, its config the same but for
    `may_differ` (each other difference named), --precision auto on the same device type."""
    if not os.path.isfile(path):
        raise UserError(f"--resume: there is no checkpoint {path} to continue from (start the run "
                        "without --resume, or give the --out of the run to continue)")
    state = load_checkpoint(path)
    check_checkpoint(state, path, paper)
    now = dataclasses.asdict(config)  # a field the checkpoint lacks (newer): its default
    before = {f.name: f.default for f in dataclasses.fields(config)}
    before.update({k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    differ = [f"--{k.replace('_', '-')} {before.get(k)!r} in the checkpoint, {now[k]!r} now"
              for k in now if k not in may_differ and before.get(k) != now[k]]
    if differ:
        raise UserError(f"--resume {path}: the run was started with other settings "
                        f"({'; '.join(differ)}); resume with the same flags")
    was, now_type = state.get("device_type"), torch.device(device).type if device else None
    if now_type and was and now.get("precision") == "auto" and now_type != was:
        raise UserError(f"--resume {path}: the run trained on {was} with --precision auto ("
                        f"{'bf16' if was == 'cuda' else 'fp32'} there), which would switch on "
                        f"{now_type}. Resume with --device {was}, or start anew with a --precision")
    return state


def hold_folder(folder):
    """Make `folder` this process's --out: create it, prove it writable, claim it with OUT/.lock
    holding the pid (a second run is refused); a killed holder's lock and temporaries
    (.last.pt.tmpPID) are taken over. `release` (run's end, or exit) removes new empty folders."""
    lock, path, created = os.path.join(folder, ".lock"), os.path.abspath(folder), []
    while not os.path.exists(path):  # the folders makedirs creates, the deepest first
        created, path = created + [path], os.path.dirname(path)

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
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # one run wins
        except FileExistsError:
            with open(lock) as f:
                holder = f.read().strip()
            if holder != str(os.getpid()) and pid_running(holder):
                raise UserError(f"--out {folder} is in use by another run (pid {holder}); wait "
                                f"for it to end, or give another --out (no such run: delete {lock})"
                                ) from None
            fd = os.open(lock, os.O_TRUNC | os.O_WRONLY)  # stale (killed), or this process's
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        for name in os.listdir(folder):  # temporary files of killed runs
            tmp, file = re.fullmatch(r"\..+\.(?:tmp|link)(\d+)", name), os.path.join(folder, name)
            if tmp and not pid_running(tmp.group(1)) and os.path.isfile(file):
                os.remove(file)
    except OSError as e:
        release()
        raise UserError(f"--out {folder}: cannot write there ({e.strerror}); give a folder you "
                        "can write to") from None
    return release


def pid_running(pid):  # whether the process `pid` (a string: a lock file's text) exists
    try:  # signal 0 sends nothing, it asks; on Windows os.kill would end the process: not asked
        with contextlib.suppress(PermissionError):  # another user's process
            os.kill(int(pid), 0) if os.name != "nt" else None
    except (ValueError, ProcessLookupError):  # not a pid, or no such process
        return False
    return pid.isdigit() and int(pid) > 0


# --- Long runs: the TrainingRun around a training loop --------------------------------------------

class TrainingRun:
    """What both training loops share, in small calls that leave the loop in the paper's file:

        run = TrainingRun("aea", cfg, cfg.out, RESUME_MAY_DIFFER, device, loss="L")
        first = run.start(model, optimizer, schedule, g, num_images, num_classes, key)
        with run:                                   # SIGINT / SIGTERM: finish the step, stop
            for epoch in range(first, run.epochs):  # cfg.epochs unless `epochs` is given
                for x, y in run.epoch(epoch, batches, steps):  # replays a stopped epoch's steps
                    run.log(len(y), training_step(model, optimizer, x, y, cfg))
                if run.stopped: return              # a signal: last.pt written mid-epoch
                schedule.step()
                if not run.end_epoch(): return      # last.pt, best.pt; False: a signal came

    A checkpoint holds weights, optimizer, schedule, config, random states, `results`, `log`, the
    position, g at that epoch's START and the `extra` entries; --resume replays the done steps'
    draws untrained (a CPU run ends bit-identical). A NaN loss stops it before any more writes."""

    def __init__(self, paper, cfg, folder, may_differ, device, loss, label="", epochs=None,
                 **extra):
        self.paper, self.cfg, self.loss, self.label, self.extra = paper, cfg, loss, label, extra
        self.epochs = epochs or cfg.epochs  # the run's epochs in all (AEA's B4: more)
        self.folder, self.release = folder, hold_folder(folder)  # before any data is read
        self.last, self.best = os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt")
        self.state = resume_state(self.last, paper, cfg, may_differ, device) if cfg.resume else None
        if self.state is None and os.path.isfile(self.last):
            print(f"note: {self.last} will be overwritten by this new run (--resume continues it)")
        self.results = {name: dict(r, cmc=r["cmc"].numpy())  # the table; CMC saved as a tensor
                        for name, r in (self.state or {}).get("results", {}).items()}
        self.finished = self.state is not None and self.state["epoch"] >= self.epochs
        self.best_loss, self.skip, self.skip_sums, self.skip_seconds = math.inf, 0, {}, 0.0
        self.rows = []  # OUT/log.csv: one dict per epoch done (`end_epoch`, `save_results`)
        self.requested, self.stopped, self.handlers, self.busy = None, False, {}, False

    def start(self, model, optimizer, schedule, generator, num_images, num_classes, classifier_key):
        """Remember what a checkpoint holds; on --resume load it back. Returns the first epoch."""
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.generator, self.num_images = generator, num_images
        if self.state is None:
            return 0
        state, path = self.state, self.last
        # the same identities and training images: the replay draws batches by index
        check_checkpoint(state, path, self.paper, num_classes, classifier_key)
        if state.get("num_images", num_images) != num_images:
            raise UserError(f"--resume {path}: the run trained on {state['num_images']} training "
                            f"images, the training split of {self.cfg.root} now has "
                            f"{num_images}; resume on the run's own data")
        load_weights(model, state["model"], path)
        optimizer.load_state_dict(state["optimizer"])
        try:  # KeyError: an lr schedule of another kind, from an older version of the code
            schedule.load_state_dict(state["schedule"])
        except KeyError:
            raise UserError(f"--resume {path}: its lr schedule is an older version's; start anew"
                            ) from None
        set_rng_state(state["rng"])
        generator.set_state(state["aug_generator"])
        self.skip, self.skip_sums = state.get("step", 0), state.get("epoch_sums", {})
        self.skip_seconds, self.rows = state.get("epoch_seconds", 0.0), state.get("log", [])
        write_log(os.path.join(self.folder, "log.csv"), self.rows)  # killed before writing it?
        self.best_loss = state.get("best_loss", math.inf)
        if state.get("is_best") and not (os.path.exists(self.best)
                                         and os.path.samefile(self.last, self.best)):
            self._link_best(state)  # killed after writing a best last.pt, before linking it
        self.extra.update({k: state[k] for k in self.extra if k in state})  # a paper's own entries
        self.state = {k: v for k, v in state.items() if k not in ("model", "optimizer")}  # loaded
        if state["epoch"] < self.epochs:
            print(f"{self.label}resuming {path} at epoch {state['epoch'] + 1} step {self.skip}",
                  flush=True)
        return state["epoch"]

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread (a notebook's worker): no-op
            self.handlers = {s: signal.signal(s, self._on_signal)
                             for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.handlers.items():
            signal.signal(s, handler)
        try:  # OUT/curves.png: the loss terms (and rank-1 / mAP) of log.csv by epoch
            if self.rows and exc[0] is not KeyboardInterrupt:
                import evaluate  # imported here: evaluate imports this module
                evaluate.plot_runs([self.folder], os.path.join(self.folder, "curves.png"))
        except Exception as e:  # no matplotlib, a full disk, ...: a note, the run is kept
            print(f"note: no curves.png ({e})", file=sys.stderr)
        finally:
            self.release()  # OUT/.lock: another run may use the folder now

    def _on_signal(self, signum, frame):
        if not self.busy or (self.requested is not None and signum == signal.SIGINT):
            raise KeyboardInterrupt  # an evaluation (last.pt is complete), a second Ctrl-C
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: finishing this step, then writing the checkpoint",
              file=sys.stderr, flush=True)

    def epoch(self, epoch, batches, steps):
        """Hand out epoch `epoch`'s (0-based) `steps` batches; a stop signal ends it after the
        current step, writing last.pt at (epoch, step) and setting `stopped`."""
        self.epoch_index, self.epoch_start, self.busy = epoch, self.generator.get_state(), True
        where = f"{self.label}epoch {epoch + 1}/{self.epochs}"
        self.lr = lr = self.optimizer.param_groups[0]["lr"]
        self.progress = Progress(steps, prefix=f"{where}  lr {lr:.0e}  ", where=where)
        batches = iter(batches)
        if self.skip:
            # Choice (not in the paper): the steps trained before the stop are drawn again (g moves
            # on as it did) but not trained; they keep their numbers and their part of the mean
            for _ in range(self.skip):
                size = len(next(batches)[1])
            self.progress.resume(self.skip, self.skip * size, self.skip_sums)
            self.skip = 0
        for batch in batches:
            yield batch
            if self.requested and self.progress.i < steps:
                # sums() checks the steps since the last line for NaN before anything is written
                self._save(epoch, self.progress.i, self.epoch_start, False,
                           epoch_sums=self.progress.sums(), epoch_seconds=self.seconds())
                self._stopped(f"at epoch {epoch + 1}/{self.epochs} step {self.progress.i}/{steps}")
                return

    def log(self, num_images, terms):  # a step's loss terms, to the progress line (checked)
        self.progress.update(num_images, **terms)

    def seconds(self):  # the epoch's training time so far, also before a stop and --resume
        return self.skip_seconds + time.perf_counter() - self.progress.start

    def end_epoch(self, keep_copy=False):
        """After the schedule's step: last.pt, best.pt if the epoch's mean loss is lowest so far,
        OUT/epoch_N.pt if `keep_copy`; False on a stop signal (else evaluate, `save_results`)."""
        done = self.epoch_index + 1
        loss = self.progress.mean(self.loss)  # the last step printed a line: all terms checked
        self.is_best, self.best_loss = loss < self.best_loss, min(loss, self.best_loss)
        (seconds, self.skip_seconds), terms = (self.seconds(), 0.0), self.progress.totals
        self.rows.append({"epoch": done, "lr": self.lr, **{k: self.progress.mean(k) for k in terms},
                          "img/s": self.progress.images / seconds, "seconds": seconds})
        state = self._save(done, 0, self.generator.get_state(), self.is_best)
        if keep_copy:
            save_checkpoint(os.path.join(self.folder, f"epoch_{done}.pt"), state)
        if self.requested and done < self.epochs:
            self._stopped(f"after epoch {done}/{self.epochs}")
            return False
        self.busy = False  # till now a signal waited for the step; now (an evaluation) it stops
        return True

    def save_results(self, scores):
        """After the epoch's evaluation: {metric: rank_metrics} into log.csv, last.pt again."""
        for metric, r in scores.items():
            self.rows[-1].update({f"rank-1 {metric}": 100 * float(r["cmc"][0]),
                                  f"mAP {metric}": 100 * float(r["mAP"])})
        self._save(self.epoch_index + 1, 0, self.generator.get_state(), self.is_best)

    def _save(self, epoch, step, aug_generator, is_best, **more):
        """last.pt at (epoch, step), and best.pt if `is_best`. Choice (not in either paper): "best"
        = the lowest mean training loss: the datasets have no validation split, and the test set's
        mAP would tune on the test set (the papers report their last epoch, last.pt)."""
        results = {k: dict(r, cmc=torch.as_tensor(np.asarray(r["cmc"])))
                   for k, r in self.results.items()}
        state = {"paper": self.paper, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "epoch": epoch, "step": step, "config": dataclasses.asdict(self.cfg),
                 "rng": rng_state(), "aug_generator": aug_generator,
                 "device_type": next(self.model.parameters()).device.type,
                 "num_images": self.num_images, "results": results, "log": self.rows,
                 **self.extra, **more,  # is_best: best.pt must be this (start() mends a cut link)
                 "best_loss": self.best_loss, "is_best": is_best}
        save_checkpoint(self.last, state)
        if is_best:
            self._link_best(state)
        write_log(os.path.join(self.folder, "log.csv"), self.rows)  # what last.pt holds
        return state

    def _link_best(self, state):
        """best.pt = last.pt by a hard link (not a 2nd write of ~460 MB), renamed into place."""
        tmp = os.path.join(self.folder, f".best.pt.link{os.getpid()}")
        try:
            os.link(self.last, tmp)
            os.replace(tmp, self.best)
        except OSError:  # a file system without hard links: write it again
            with contextlib.suppress(OSError):
                os.remove(tmp)
            save_checkpoint(self.best, state)

    def _stopped(self, where):  # after a stop signal: where, what was written, how to go on
        self.stopped = True
        argv = sys.argv + ["--resume"] * ("--resume" not in sys.argv)  # the same command
        print(f"stopped by {self.requested} {where}; wrote {self.last}. Resume with:\n  "
              f"{shlex.join(['python', os.path.basename(argv[0])] + argv[1:])}", flush=True)

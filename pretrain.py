"""The pretrained start: a backbone trained on a synthetic set of other people, the offline
stand-in for the ImageNet weights both papers start from.

    python pretrain.py                    # data/pretrained/resnet18-synthetic.pt, minutes on a CPU
    python pretrain.py --arch resnet50    # the same recipe for --arch resnet50 (a GPU's work)

Then `--weights synthetic` in aea.py and aaanet.py (and evaluate.py) loads it; the demos start
from it, and `python tools.py compare ... --start pretrained` builds it on first use.

The recipe (`RECIPE`): the pretraining set data/synthetic_pretrain (`PRETRAIN_SET`: seed 7, 600
training identities, 100 test identities to score it) is drawn by synthetic.py with another seed
than the benchmark data/synthetic (seed 0) and the validation set (seed 1), so it holds other
people; on it AEA's Baseline 1 (the basic network alone, cross-entropy + batch-hard triplet)
trains from random weights (64x32, P=16, lr 0.04, 15 epochs: `RECIPE`); its backbone is kept, in
torchvision's key names, and the heads are dropped: a run that starts from it gets new heads.

What it stands in for: ImageNet teaches a backbone edges, textures and object parts of a million
photographs; this start has seen 600 synthetic people. It is closer to pretraining on another
re-ID dataset than to ImageNet: the same kind of image, other identities. It gives both papers
what they assume, a backbone whose attention already falls on the person, without a download.

Cached like data/synthetic: data/pretrained/<arch>-synthetic.txt (written last) records the
recipe; a second run finds both files and returns; a file written with another recipe is
refused, naming it. Deterministic: the same recipe on the same machine and thread count writes
the same weights (the run's seed fixes weights, batches and augmentation); another CPU's
floating-point kernels may change the last digits.
"""
import argparse
import os
import time

import aea
import common
import synthetic
from common import UserError

# The pretraining set: other identities than the benchmark's (another seed draws other people),
# 4 times the benchmark's 150 training identities; the 100 test identities score the pretraining
PRETRAIN_SET = dict(root=os.path.join("data", "synthetic_pretrain"), seed=7, train_ids=600,
                    test_ids=100)
# Baseline 1 of aea.py on it, from random weights, at the demos' 64x32: P=16, lr 0.04 and its
# step at epoch 12 of 15 (4/5, as in the paper's schedule), crops padded by 2 px, no dropout, its
# own seed. A fixed recipe, not tuned: the start has only to be a backbone that has seen people
RECIPE = ["--variant", "b1", "--weights", "none", "--height", "64", "--width", "32", "--P", "16",
          "--lr", "0.04", "--pad", "2", "--dropout", "0", "--epochs", "15", "--lr-step", "12",
          "--seed", "7"]


def recipe_line(arch):
    """The line of data/pretrained/<arch>-synthetic.txt: what was trained, on what."""
    sizes = " ".join(f"{k}={v}" for k, v in PRETRAIN_SET.items())
    return f"pretrain.py version 1: {arch}, aea.py {' '.join(RECIPE)} on {sizes}\n"


def weights_to_torchvision(backbone_state):
    """common.Backbone's state dict -> torchvision ResNet key names: Backbone keeps the stem as
    conv1 = (conv1, bn1, relu, maxpool), torchvision as conv1 and bn1; layer1..layer4 agree."""
    renamed = {}
    for key, value in backbone_state.items():
        if key.startswith("conv1.0."):
            key = "conv1." + key[len("conv1.0."):]
        elif key.startswith("conv1.1."):
            key = "bn1." + key[len("conv1.1."):]
        renamed[key] = value.detach().cpu().clone()
    return renamed


def ensure_pretrained(arch="resnet18", device="auto"):
    """The pretrained start of `arch`: common.PRETRAINED, built if it is not there (the
    pretraining set too) -> its path."""
    path = common.PRETRAINED.format(arch=arch)
    record = path[:-len(".pt")] + ".txt"
    wanted = recipe_line(arch)
    if os.path.isfile(record):
        with open(record) as f:
            found = f.read()
        if found == wanted and os.path.isfile(path):
            return path
        if found != wanted:
            raise UserError(f"{record} records another recipe ('{found.strip()}', expected "
                            f"'{wanted.strip()}'): delete {path} and {record}, then run again")
    if arch not in common.ARCHS:
        raise UserError(f"--arch {arch!r}: expected one of {', '.join(common.ARCHS)}")
    root = synthetic.ensure_synthetic(**PRETRAIN_SET)
    out = os.path.join("runs", "pretrain", arch)
    argv = [*RECIPE, "--root", root, "--dataset", "synthetic", "--arch", arch, "--out", out,
            "--device", device]
    cfg, _ = aea.parse_config(argv)
    print(f"pretraining {arch} for --weights synthetic: {wanted.strip()}", flush=True)
    start = time.time()
    results = aea.train(cfg)
    model, _ = aea.model_from_checkpoint(common.load_checkpoint(os.path.join(out, "last.pt")))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    common.save_checkpoint(path, weights_to_torchvision(model.basic.backbone.state_dict()))
    scores = results[f"epoch {cfg.epochs}"]
    rank1 = 100 * float(scores["cmc"][0])
    mAP = 100 * float(scores["mAP"])
    # last, written whole (a temporary file renamed): its presence means a complete build
    tmp = f"{record}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(wanted)
    os.replace(tmp, record)
    print(f"pretrained start written to {path} in {time.time() - start:.0f} s; on the "
          f"pretraining set's own test identities rank-1 {rank1:.2f}, mAP {mAP:.2f}")
    return path


def main(argv=None):
    """python pretrain.py [--arch A] [--device D]: `ensure_pretrained`."""
    parser = argparse.ArgumentParser(prog="pretrain.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18", help=f"one of {', '.join(common.ARCHS)}")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    args = parser.parse_args(argv)
    path = common.PRETRAINED.format(arch=args.arch)
    there = os.path.isfile(path) and os.path.isfile(path[:-len(".pt")] + ".txt")
    ensure_pretrained(args.arch, args.device)
    if there:
        print(f"the pretrained start is already at {path} (its .txt records this recipe)")
    return path


if __name__ == "__main__":
    common.exit_on_user_error(main)  # a UserError becomes "error: <message>", exit status 2

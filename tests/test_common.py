"""Tests for common.py: each loss on a case worked by hand, the backbone's shapes and weights,
the schedule, the config flags, the progress line and the checkpoint safety rules."""

import argparse
import csv
import dataclasses
import io
import math
import os
import platform
import random
import shutil
import subprocess
import signal
import sys
import time
import typing
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import common
import data


# -----------------------------------------------------------------------------
# batch-hard triplet loss, AEA Eq. (5)-(7)

@pytest.mark.exercise(5)
def test_triplet_six_samples_by_hand():
    # Six 1-D features, three identities, margin m = 0.6, no normalisation:
    #   x = [0, 2, 3.5, 5, 7, 1.2], labels = [0, 0, 1, 1, 2, 2]
    # For each anchor: d_ap, the distance to its positive (Eq. (6)); d_an, the nearest of its
    # distances to the negatives (Eq. (7)); and its term [d_ap + m - d_an]_+:
    # anchor x    positive: d_ap  negatives          -> d_an         [d_ap + m - d_an]_+
    #   0    0    x=2:   2        3.5, 5, 7, 1.2     -> 1.2 (x=1.2)  2 + .6 - 1.2 = 1.4
    #   1    2    x=0:   2        1.5, 3, 5, 0.8     -> 0.8 (x=1.2)  2 + .6 - 0.8 = 1.8
    #   2    3.5  x=5:   1.5      3.5, 1.5, 3.5, 2.3 -> 1.5 (x=2)    1.5 + .6 - 1.5 = 0.6
    #   3    5    x=3.5: 1.5      5, 3, 2, 3.8       -> 2 (x=7)      1.5 + .6 - 2 = 0.1
    #   4    7    x=1.2: 5.8      7, 5, 3.5, 2       -> 2 (x=5)      5.8 + .6 - 2 = 4.4
    #   5    1.2  x=7:   5.8      1.2, 0.8, 2.3, 3.8 -> 0.8 (x=2)    5.8 + .6 - .8 = 5.6
    # L_T = mean = (1.4 + 1.8 + 0.6 + 0.1 + 4.4 + 5.6) / 6 = 13.9 / 6 = 2.31667
    x = torch.tensor([[0.0], [2.0], [3.5], [5.0], [7.0], [1.2]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = common.batch_hard_triplet_loss(x, labels, margin=0.6, normalize=False)
    assert loss.item() == pytest.approx(13.9 / 6, abs=1e-5)
    # Gradient w.r.t. x1 = 2, by hand (each active anchor's loss is d_ap - d_an + m):
    #   anchor 1: d_ap = x1 - x0 -> +1, d_an = x1 - x5 -> -1          net 0
    #   anchor 0: d_ap = x1 - x0                                       +1
    #   anchor 2: d_an = x2 - x1, enters with a minus sign             +1
    #   anchor 5: d_an = x1 - x5, enters with a minus sign             -1
    # dL/dx1 = (0 + 1 + 1 - 1) / 6 = 1/6; only the hardest pairs carry gradient.
    loss.backward()
    assert x.grad[1, 0].item() == pytest.approx(1 / 6, abs=1e-5)


@pytest.mark.exercise(5)
def test_triplet_normalises_features_first():
    # After L2 normalisation the four features are e1, e2, -e1, -e2 (lengths 2, 3, 1, 5 drop out).
    # labels [0, 0, 1, 1]: each anchor's positive is at distance sqrt(2), its negatives at 2 and
    # sqrt(2), so d_ap = d_an = sqrt(2) and every anchor's loss is exactly the margin: L_T = 0.3.
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, -5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert common.batch_hard_triplet_loss(x, labels, 0.3).item() == pytest.approx(0.3, abs=1e-5)
    # Without normalisation the raw lengths matter (d_ap, d_an; loss = d_ap + .3 - d_an):
    #   [2,0]: sqrt13 = 3.6056, 3 (to [-1,0])        -> 0.9056
    #   [0,3]: sqrt13 = 3.6056, sqrt10 = 3.1623       -> 0.7433
    #   [-1,0]: sqrt26 = 5.0990, 3 (to [2,0])         -> 2.3990
    #   [0,-5]: sqrt26 = 5.0990, sqrt29 = 5.3852      -> 0.0138      mean = 4.0617 / 4 = 1.0154
    raw = common.batch_hard_triplet_loss(x, labels, 0.3, normalize=False)
    assert raw.item() == pytest.approx(1.0154, abs=1e-4)


@pytest.mark.exercise(5)
def test_triplet_edge_cases():
    # An anchor with no other positive in the batch gets d_ap = 0: x = [0, 1, 5, 6], labels
    # [0, 1, 1, 2], m = 0.5. Anchor 0 (alone): d_ap = 0, d_an = 1 -> [0 + .5 - 1]_+ = 0; anchor 1:
    # d_ap = 4, d_an = 1 -> 3.5; anchor 2: d_ap = 4, d_an = 1 -> 3.5; anchor 3 (alone): d_ap = 0,
    # d_an = 1 -> 0. L_T = 7 / 4 = 1.75.
    x = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
    loss = common.batch_hard_triplet_loss(x, torch.tensor([0, 1, 1, 2]), 0.5, normalize=False)
    assert loss.item() == pytest.approx(1.75, abs=1e-5)
    # One identity only: no negatives anywhere, d_an = +inf, the loss is 0 (not NaN)
    assert common.batch_hard_triplet_loss(x, torch.zeros(4, dtype=torch.long), 0.5).item() == 0.0


@pytest.mark.exercise(5)
def test_triplet_no_positive_and_a_negative_inside_the_margin():
    # An anchor alone of its identity still has a loss when its nearest negative is closer than
    # the margin: x = [0, 0.2, 3], labels [0, 1, 1], m = 0.5.
    #   anchor 0 (alone): d_ap = 0, d_an = 0.2 (x=0.2)  -> [0 + .5 - .2]_+   = 0.3
    #   anchor 1:         d_ap = 2.8, d_an = 0.2 (x=0) -> [2.8 + .5 - .2]_+ = 3.1
    #   anchor 2:         d_ap = 2.8, d_an = 3 (x=0)   -> [2.8 + .5 - 3]_+  = 0.3
    # L_T = (0.3 + 3.1 + 0.3) / 3 = 3.7 / 3 = 1.23333 (anchor 0 dropped would give 3.4 / 3)
    x = torch.tensor([[0.0], [0.2], [3.0]])
    loss = common.batch_hard_triplet_loss(x, torch.tensor([0, 1, 1]), 0.5, normalize=False)
    assert loss.item() == pytest.approx(3.7 / 3, abs=1e-5)


@pytest.mark.exercise(5)
def test_triplet_is_fp32_under_bf16_autocast():
    # CPU autocast casts matmuls to bf16 as CUDA autocast does; the loss must not follow it.
    torch.manual_seed(0)
    f = torch.randn(32, 2560)
    f = f + 3 * torch.randn(8, 1, 2560).repeat(1, 4, 1).view(32, 2560)  # 8 ids x 4: small d_ap
    labels = torch.arange(8).repeat_interleave(4)
    # m = 1.2 keeps every anchor active (d_ap ~ 0.45, d_an ~ 1.4); computed in bf16 the loss
    # moves by ~8e-4 here (measured), in fp32 by nothing
    exact = common.batch_hard_triplet_loss(f, labels, 1.2)
    assert exact.item() > 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = common.batch_hard_triplet_loss(f, labels, 1.2)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(exact.item(), abs=1e-6)


@pytest.mark.exercise(5)
def test_triplet_easy_batch_is_zero_with_zero_gradient():
    # Two tight clusters far apart: d_ap = 0.1, d_an >= 9.9, so [0.1 + 0.3 - 9.9]_+ = 0 everywhere.
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1]], requires_grad=True)
    loss = common.batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), 0.3, normalize=False)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


# -----------------------------------------------------------------------------
# cross-entropy, AEA Eq. (2), (3), (4)

@pytest.mark.exercise(4)
def test_cross_entropy_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4] (Eq. (4)); label 1 -> q = [0, 1] (Eq. (3))
    # L = -ln(3/4) = 0.28768 (Eq. (2))
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert common.cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75),
                                                                                  abs=1e-6)
    # and PyTorch's own implementation agrees on a random batch
    z, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    assert torch.allclose(common.cross_entropy(z, y), F.cross_entropy(z, y), atol=1e-6)


@pytest.mark.exercise(4)
def test_cross_entropy_from_scratch_with_large_logits(monkeypatch):
    # From scratch: Eq. (2)-(4) written out, PyTorch's own loss made to raise here.
    # logits [1000, 0]: log p(t) = v_t - log(e^1000 + e^0) = v_t - 1000 (e^-1000 is nothing next
    # to 1), so label 1 gives L = 1000 and label 0 gives L = 0. Computed as exp and a division
    # e^1000 overflows (inf / inf = NaN); as log(softmax) p(1) = e^-1000 rounds to 0 and
    # log 0 = -inf: log p(t) must be v_t - log sum_i e^v_i with the largest v_i taken out first.
    def refused(*args, **kwargs):
        raise AssertionError("Exercise 4 is written from scratch: no F.cross_entropy/F.nll_loss")
    monkeypatch.setattr(F, "cross_entropy", refused)
    monkeypatch.setattr(F, "nll_loss", refused)
    logits = torch.tensor([[1000.0, 0.0], [1000.0, 0.0]])
    assert common.cross_entropy(logits, torch.tensor([1, 1])).item() == pytest.approx(1000.0)
    assert common.cross_entropy(logits, torch.tensor([0, 0])).item() == pytest.approx(0.0)
    assert common.cross_entropy(torch.tensor([[0.0, math.log(3.0)]]),
                                torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


# -----------------------------------------------------------------------------
# backbone

@pytest.fixture(scope="module")
def backbone():
    """A ResNet-50 Backbone with random weights (seed 0) in eval mode, built once for the module
    (about half a second); the tests only read it."""
    torch.manual_seed(0)
    return common.Backbone("none").eval()


def test_backbone_stage_shapes_and_run_ranges(backbone):
    net, x = backbone, torch.randn(2, 3, 64, 32)
    # 64x32 input: stem /4 -> 16x8, layer1 same, layer2 /2 -> 8x4, layer3 -> 4x2, layer4 -> 2x1
    expected = {"conv1": (64, 16, 8), "layer1": (256, 16, 8), "layer2": (512, 8, 4),
                "layer3": (1024, 4, 2), "layer4": (2048, 2, 1)}
    with torch.no_grad():
        f = x
        for name in common.STAGES:
            f = net.run(f, name, name)
            assert tuple(f.shape) == (2, *expected[name])
            assert f.shape[1] == net.channels[name]
        # cutting at a middle layer and going on from there gives the same output as one pass
        middle = net.run(x, "conv1", "layer2")
        assert torch.allclose(net.run(middle, "layer3", "layer4"), net.run(x), atol=1e-5)


def test_backbone_last_stride_one_keeps_conv5_resolution():
    # AEA: 256x128 input -> conv5_x 2048 x 16 x 8 with the down-sampling of conv5_x removed
    net = common.Backbone("none", last_stride=1).eval()
    with torch.no_grad():
        assert tuple(net.run(torch.randn(1, 3, 256, 128)).shape) == (1, 2048, 16, 8)


def test_resnet18_backbone_channels_last_stride_and_its_own_files(tmp_path):
    # --arch resnet18: BasicBlocks, stage channels 64, 64, 128, 256, 512; last_stride=1 moves
    # the stride of layer4's first conv (conv1 in a BasicBlock) and its shortcut: conv5_x at H/16
    net = common.Backbone("none", last_stride=1, arch="resnet18").eval()
    assert net.channels == dict(zip(common.STAGES, (64, 64, 128, 256, 512)))
    assert net.layer4[0].conv1.stride == net.layer4[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        assert tuple(net.run(torch.randn(1, 3, 64, 32)).shape) == (1, 512, 4, 2)
        assert net(torch.randn(2, 3, 64, 32)).shape == (2, 512)
        stride2 = common.Backbone("none", arch="resnet34").eval()
        assert tuple(stride2.run(torch.randn(1, 3, 64, 32)).shape) == (1, 512, 2, 1)
    # a ResNet-18 state dict loads as --arch resnet18; a ResNet-50 one is refused, named
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    common.Backbone(str(tmp_path / "r18.pth"), arch="resnet18")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(common.UserError, match="r50.pth: the weights do not fit a torchvision "
                       "ResNet-18 "):
        common.Backbone(str(tmp_path / "r50.pth"), arch="resnet18")
    with pytest.raises(common.UserError, match="--arch 'resnet101': expected one of resnet18"):
        common.Backbone("none", arch="resnet101")
    # offline, the ImageNet file of the chosen arch is the one named
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=OSError("no network")):
        with pytest.raises(common.UserError, match=r"ImageNet ResNet-18 weights.*"
                           r"resnet18-f37072fd\.pth.*checkpoints"):
            common.Backbone("imagenet", arch="resnet18")


def test_backbone_loads_a_state_dict_file(tmp_path):
    reference = torchvision.models.resnet50(weights=None)
    reference.layer4[2].bn3.running_mean.normal_()  # not the zeros of a fresh network
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    net = common.Backbone(str(path))
    assert torch.equal(net.conv1[0].weight, reference.conv1.weight)
    assert torch.equal(net.layer4[2].bn3.running_mean, reference.layer4[2].bn3.running_mean)
    # the whole network computes torchvision's ResNet-50 up to its pooled 2048-d feature
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), reference.eval()(x))
    # a state dict of another network is refused with the file named
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(common.UserError, match="other.pth: the weights do not fit a torchvision "
                       "ResNet-50 .missing: bn1.bias, bn1.num_batches_tracked, bn1.running_mean; "
                       "unexpected: weight"):
        common.Backbone(str(tmp_path / "other.pth"))


def test_backbone_refuses_other_weights_clearly(backbone, tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    # same names, other shapes
    with pytest.raises(common.UserError, match="r18.pth: the weights do not fit a "
                       "torchvision ResNet-50 .missing: layer1.0.bn3.bias, .*; of another shape: "
                       "layer1.0.conv1.weight, "):
        common.Backbone(str(tmp_path / "r18.pth"))
    with pytest.raises(common.UserError, match="expected 'imagenet', 'synthetic', 'none' or the "
                       "path"):
        common.Backbone("imagenett")
    net = backbone
    # the papers' names map onto torchvision's: conv2_x = layer1
    assert net.run(torch.zeros(1, 64, 8, 8), "conv2_x", "conv2_x").shape == (1, 256, 8, 8)


def test_a_training_checkpoint_given_as_weights_says_to_use_checkpoint(tmp_path):
    # last.pt of a run holds a model, its config, the optimizer...: not a ResNet state dict
    path = str(tmp_path / "last.pt")
    common.save_checkpoint(path, {"paper": "aea", "config": {}, "model": {}, "epoch": 1})
    with pytest.raises(common.UserError, match=f"weights {path} is an AEA checkpoint .aea.py., "
                       "not a ResNet-50 state dict: .* give it to --checkpoint"):
        common.Backbone(path)


def test_imagenet_weights_offline_says_where_to_put_the_file():
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=OSError("no network")):
        with pytest.raises(common.UserError, match=r"resnet50-0676ba61\.pth.*checkpoints"):
            common.Backbone("imagenet")


# -----------------------------------------------------------------------------
# device, seeding, autocast

def test_device_choice_and_autocast_on_cpu():
    if not torch.cuda.is_available():
        assert common.pick_device("auto") == torch.device("cpu")
        with pytest.raises(common.UserError, match="--device cuda"):
            common.pick_device("cuda")
    with pytest.raises(common.UserError, match="not a device name"):
        common.pick_device("tpu7")
    with common.autocast(torch.device("cpu")):  # "auto" is a no-op on CPU: fp32 stays fp32
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32
    with common.autocast("cpu", "bf16"):  # asked for explicitly, bf16 runs on the CPU too
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.bfloat16
    with common.autocast("cpu", "fp32"):
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32
    with pytest.raises(common.UserError, match="--precision 'fp16'"):
        common.autocast("cpu", "fp16")
    # prepare_model keeps NCHW on the CPU; to_device returns a tensor already in place as it is
    conv = common.prepare_model(torch.nn.Conv2d(3, 4, 3), "cpu")
    assert conv.weight.is_contiguous()
    t = torch.ones(3)
    assert data.to_device(t, "cpu") is t


def test_keep_freed_memory_sets_glibc_once():
    # glibc (Linux): mallopt returns 1 for both settings; the second call is remembered and does
    # not call mallopt again
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system")
    assert common.keep_freed_memory() is True
    with mock.patch("ctypes.CDLL") as cdll:
        assert common.keep_freed_memory() is True
    cdll.assert_not_called()


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()
    common.seed_everything(3)
    first = draw()
    common.seed_everything(3)
    assert draw() == first


# -----------------------------------------------------------------------------
# optimiser and schedule

def test_step_schedule_and_sgd():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = common.make_sgd([p], lr=0.1)
    sched = common.step_schedule(opt, every=2)  # AAA-Net: x0.1 every 2 epochs
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 5e-4


# -----------------------------------------------------------------------------
# config dataclass -> flags

@dataclasses.dataclass
class ToyConfig:
    margin: float = 0.3  # m in Eq. (5), Sec. IV-B
    epochs: int = 100  # Sec. IV-B
    dataset: typing.Literal["market1501", "duke"] = "market1501"  # which dataset
    flip: bool = False  # average with the mirrored image at test time
    milestones: tuple[int, ...] = (75,)  # lr x0.1 at these epochs
    R: float = 10.0  # top R% of the attention map erased
    resume: typing.Optional[str] = None  # checkpoint to continue from


def test_config_flags_from_dataclass():
    parser = common.add_config_args(argparse.ArgumentParser(), ToyConfig)
    assert common.config_from_args(ToyConfig, parser.parse_args([])) == ToyConfig()
    cfg = common.config_from_args(ToyConfig, parser.parse_args(
        ["--margin", "0.35", "--dataset", "duke", "--flip", "--milestones", "40", "70"]))
    assert cfg == ToyConfig(margin=0.35, epochs=100, dataset="duke", flip=True, milestones=(40, 70))
    help_text = parser.format_help()  # the field's comment is the flag's help, a % in it included
    assert "m in Eq. (5), Sec. IV-B" in help_text and "top R% of the attention map" in help_text
    resumed = common.config_from_args(ToyConfig, parser.parse_args(["--resume", "last.pt"]))
    assert resumed.resume == "last.pt"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "cuhk99"])


# -----------------------------------------------------------------------------
# progress line

@dataclasses.dataclass
class Limited:
    R: float = 10.0  # percent of pixels erased
    P: int = 8  # identities per batch


def test_check_limits_names_the_flag_and_its_meaning():
    limits = {"R": "(0, 100)", "P": "[2, inf)"}
    common.check_limits(Limited(), limits)
    common.check_limits(Limited(R=99.9, P=2), limits)  # "[2": 2 itself is inside
    for cfg, message in [(Limited(R=0.0), r"--R must lie in \(0, 100\), got 0.0 \(percent of"),
                         (Limited(R=100.0), r"--R must lie in \(0, 100\), got 100.0"),
                         (Limited(R=float("nan")), r"--R must lie in \(0, 100\), got nan"),
                         (Limited(P=1), r"--P must lie in \[2, inf\), got 1 \(identities"),
                         (Limited(P=float("inf")), r"--P must lie in \[2, inf\), got inf")]:
        with pytest.raises(common.UserError, match=message):
            common.check_limits(cfg, limits)


def test_progress_line_averages_the_terms():
    out = io.StringIO()
    progress = common.Progress(total=4, prefix="epoch 1/1  ", every=2, file=out)
    for loss in (1.0, 3.0, 5.0, 7.0):
        progress.update(32, {"L_T": torch.tensor(loss)})
    lines = out.getvalue().splitlines()
    # two lines: the means of (1, 3) and of (5, 7)
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/1  iter 2/4  L_T 2.0000")
    assert "img/s" in lines[0] and "ETA" in lines[0]
    assert "iter 4/4  L_T 6.0000" in lines[1]
    # the epoch's row of log.csv: the mean over all 4 steps, (1 + 3 + 5 + 7) / 4 = 4, and speed
    summary = progress.summary()
    assert list(summary) == ["L_T", "img/s", "seconds"]
    assert summary["L_T"] == pytest.approx(4.0)
    assert summary["img/s"] == pytest.approx(4 * 32 / summary["seconds"])


def test_progress_names_the_first_non_finite_step_and_term():
    # every=3: steps 1-3 print, steps 4-5 are pending; step 5's L_T is nan. The line at step 6
    # must name "step 5/6" and "L_T" (not L_I1, finite at step 5), and the epoch named by `where`
    out = io.StringIO()
    progress = common.Progress(total=6, prefix="epoch 2/9  lr 1e-02  ", every=3, file=out,
                               where="epoch 2/9")
    for loss in (1.0, 2.0, 3.0):
        progress.update(4, {"L_I1": torch.tensor(loss), "L_T": torch.tensor(0.5)})
    progress.update(4, {"L_I1": torch.tensor(1.0), "L_T": torch.tensor(0.5)})
    progress.update(4, {"L_I1": torch.tensor(1.0), "L_T": torch.tensor(float("nan"))})
    with pytest.raises(common.UserError, match=r"^epoch 2/9 step 5/6: the loss term L_T is nan"):
        progress.update(4, {"L_I1": torch.tensor(1.0), "L_T": torch.tensor(0.5)})
    progress = common.Progress(total=2, every=1, file=out)
    with pytest.raises(common.UserError, match=r"step 1/2: the loss term L is inf"):
        progress.update(4, {"L": torch.tensor(float("inf"))})  # every=1: the line raises at once


# -----------------------------------------------------------------------------
# checkpoints

def test_checkpoint_round_trip_with_rng_state(tmp_path):
    path = tmp_path / "run" / "last.pt"  # the folder is created
    common.seed_everything(1)
    state = {"paper": "backbone", "epoch": 3, "config": {"height": 64},
             "model": {"w": torch.arange(4.0)}, "rng": common.rng_state()}
    common.save_checkpoint(str(path), state)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = common.load_checkpoint(str(path))
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    common.set_rng_state(loaded["rng"])  # the generators continue exactly where they were saved
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    # torch.save pickles the object; loading it would run os.system
    torch.save({"model": Payload()}, path)
    with pytest.raises(common.UserError, match="refusing to load .*evil.pt: it holds a pickled "
                       "Python object .posix.system.") as error:
        common.load_checkpoint(str(path))
    assert "weights_only=False" not in str(error.value)  # never advised


def test_missing_corrupt_and_unwritable_checkpoints(tmp_path):
    with pytest.raises(common.UserError, match="does not exist"):
        common.load_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(common.UserError, match="is a folder; expected a checkpoint file in it"):
        common.load_checkpoint(str(tmp_path))
    good = tmp_path / "ok.pt"
    common.save_checkpoint(str(good), {"epoch": 1})
    # a truncated file, or random bytes: not the zip archive torch.save writes
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:40])
    (tmp_path / "random.pt").write_bytes(os.urandom(5000))
    for name in ("cut.pt", "random.pt"):
        with pytest.raises(common.UserError, match=f"{name} is not a PyTorch checkpoint"):
            common.load_checkpoint(str(tmp_path / name))
    # a zip whose record is damaged inside: torch's own error, named as unreadable
    broken = bytearray(good.read_bytes())
    start = broken.index(b"data.pkl") + 30
    broken[start:start + 20] = b"\xff" * 20
    (tmp_path / "broken.pt").write_bytes(bytes(broken))
    with pytest.raises(common.UserError, match="broken.pt is not a readable PyTorch checkpoint"):
        common.load_checkpoint(str(tmp_path / "broken.pt"))
    (tmp_path / "afile").write_text("x")  # a folder that cannot exist: its parent is a file
    with pytest.raises(common.UserError, match="writing .*afile/ck.pt"):
        common.save_checkpoint(str(tmp_path / "afile" / "ck.pt"), {"epoch": 1})


def test_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    # /dev/full answers every write with ENOSPC, as a full disk does; the temporary file is opened
    # there instead, so torch.save meets a real "No space left on device"
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    path = tmp_path / "last.pt"
    common.save_checkpoint(str(path), {"epoch": 1})
    def full_disk_open(name, mode):
        open(name, mode).close()  # the temporary file exists, as on a real disk, ...
        return open("/dev/full", mode)  # ... and every write into it fails with ENOSPC
    monkeypatch.setattr(common, "open", full_disk_open, raising=False)
    with pytest.raises(common.UserError, match=f"no space left on device writing {path}"):
        common.save_checkpoint(str(path), {"epoch": 2, "w": torch.zeros(100_000)})
    monkeypatch.undo()
    assert common.load_checkpoint(str(path)) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pt"]  # the temporary file removed


def test_checkpoints_of_torch_before_1_6_still_load(tmp_path):
    # torch.save's format before the zip archive (torchvision's older resnet50-19c8e357.pth)
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(common.load_checkpoint(str(path))["w"], torch.arange(3))


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    common.save_checkpoint(str(path), {"epoch": 1})
    with pytest.raises(Exception):
        common.save_checkpoint(str(path), {"epoch": 2, "bad": lambda: 0})  # cannot be pickled
    assert common.load_checkpoint(str(path)) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def read_log(folder):
    with open(os.path.join(folder, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_log_csv_puts_the_loss_terms_first_and_numbers_in_6_digits(tmp_path):
    # a term that appears late (L_I2 from the joint phase on) still comes before img/s, seconds
    # and the scores; floats get 6 significant digits; an empty cell where a row has no value
    rows = [{"epoch": 1, "lr": 0.01, "L_I1": 2.0, "img/s": 100.123456, "seconds": 3.0},
            {"epoch": 2, "lr": 0.01, "L_I1": 1.5, "L_I2": 1 / 3, "img/s": 99.0, "seconds": 3.5,
             "rank-1 euclidean": 12.5, "mAP euclidean": 10.0}]
    common.write_log(str(tmp_path), rows)
    written = read_log(tmp_path)
    assert list(written[0]) == ["epoch", "lr", "L_I1", "L_I2", "img/s", "seconds",
                                "rank-1 euclidean", "mAP euclidean"]
    assert written[0]["img/s"] == "100.123" and written[0]["L_I2"] == ""
    assert written[1]["L_I2"] == "0.333333" and written[1]["rank-1 euclidean"] == "12.5"
    assert os.listdir(tmp_path) == ["log.csv"]  # written, then renamed: no temporary left


def test_best_checkpoint_is_the_lowest_epoch_loss_by_a_hard_link(tmp_path):
    # epoch losses 3, 2, 2.5: the second epoch is the lowest so far, the third is not; a tie
    # with an earlier epoch does not move best.pt
    log = [{"L": 3.0}]
    assert common.lowest_so_far(log, "L")
    log.append({"L": 2.0})
    assert common.lowest_so_far(log, "L")
    log.append({"L": 2.5})
    assert not common.lowest_so_far(log, "L")
    log.append({"L": 2.0})
    assert not common.lowest_so_far(log, "L")
    last = str(tmp_path / "last.pt")
    common.save_checkpoint(last, {"epoch": 2})
    common.link_best(last)
    best = str(tmp_path / "best.pt")
    assert os.path.samefile(last, best)  # the same file, not a second copy
    common.save_checkpoint(last, {"epoch": 3})  # a new last.pt: best.pt keeps epoch 2
    assert common.load_checkpoint(best) == {"epoch": 2}
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]


def test_saved_results_load_with_weights_only(tmp_path):
    # a rank_metrics row holds a numpy CMC curve, which weights_only loading refuses: the
    # checkpoint holds it as a list of floats, and the table reads either
    results = {"epoch 1": {"cmc": np.array([0.5, 0.75, 1.0]), "mAP": 0.4, "mAP_official": 0.3,
                           "num_queries": 4, "num_skipped": 0}}
    path = str(tmp_path / "r.pt")
    common.save_checkpoint(path, {"results": common.saved_results(results)})
    loaded = common.load_checkpoint(path)["results"]
    assert loaded["epoch 1"]["cmc"] == [0.5, 0.75, 1.0] and loaded["epoch 1"]["mAP"] == 0.4
    assert isinstance(results["epoch 1"]["cmc"], np.ndarray)  # the caller's rows unchanged


def test_a_new_run_replaces_every_file_of_an_earlier_run(tmp_path):
    # what a run writes (last.pt, best.pt, log.csv, epoch_N.pt, tools.py plot's curves.png) is an
    # earlier run's; the lock, temporaries and the user's own files are not, and stay
    names = ["last.pt", "best.pt", "log.csv", "epoch_5.pt", "curves.png", ".lock", "notes.txt",
             "epoch_x.pt", "last.pt.bak"]
    for name in names:
        (tmp_path / name).write_text("x")
    earlier = ["best.pt", "curves.png", "epoch_5.pt", "last.pt", "log.csv"]
    assert common.earlier_run(str(tmp_path)) == earlier
    common.clear_earlier_run(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock", "epoch_x.pt", "last.pt.bak", "notes.txt"]
    assert common.earlier_run(str(tmp_path / "none")) == []


def test_a_stop_outside_a_training_run_is_one_line_with_the_signals_status(capsys):
    # Ctrl-C, or SIGTERM made a KeyboardInterrupt by stop_on_sigterm, in a command that is not a
    # training run (evaluate.py, tools.py): "stopped by ..." and 128 + the signal's number
    def stopped(argv):
        raise KeyboardInterrupt(*argv)
    for argv, status in (([], 130), (["SIGTERM"], 143)):
        with pytest.raises(SystemExit) as e:
            common.exit_on_user_error(stopped, argv)
        assert e.value.code == status
        name = argv[0] if argv else "SIGINT"
        assert capsys.readouterr().err == f"stopped by {name}\n"


def test_padding_must_be_below_the_input_side():
    common.check_padding(31, 64, 32)
    for pad in (32, 10**20):  # 32: a crop of the 32 px wide input could be all padding
        with pytest.raises(common.UserError, match=f"--pad {pad} must be below the input's "
                           "smaller side .64x32 inputs: below 32."):
            common.check_padding(pad, 64, 32)


def test_a_resumed_run_must_have_its_training_images(tmp_path):
    paths = ["data/train/0001_c1.jpg", "data/train/0002_c2.jpg"]
    digest = common.split_digest(paths, [0, 1], "data")
    state = {"num_images": 2, "train_digest": digest}
    common.check_same_images(state, "last.pt", "data", 2, digest)
    with pytest.raises(common.UserError, match="trained on 2 training images, the training "
                                               "split of data now has 3"):
        common.check_same_images(state, "last.pt", "data", 3, digest)
    # as many images, but one renamed, or two labels swapped: other digests, each refused
    renamed = common.split_digest([paths[0], "data/train/0003_c2.jpg"], [0, 1], "data")
    swapped = common.split_digest(paths, [1, 0], "data")
    assert len({digest, renamed, swapped}) == 3
    for other in (renamed, swapped):
        with pytest.raises(common.UserError, match="holds 2 images as the run's did, but other "
                                                   "files or identities"):
            common.check_same_images(state, "last.pt", "data", 2, other)
    # a checkpoint without a digest cannot be checked: refused, not resumed on any split
    with pytest.raises(common.UserError, match="holds no digest of its training files"):
        common.check_same_images({"num_images": 2}, "last.pt", "data", 2, digest)
    # the digest is of the paths under the root: the same split elsewhere is the same split
    moved = ["/elsewhere/data/train/0001_c1.jpg", "/elsewhere/data/train/0002_c2.jpg"]
    assert common.split_digest(moved, [0, 1], "/elsewhere/data") == digest


def test_sigterm_raises_keyboard_interrupt_and_the_stop_says_how_to_resume(tmp_path, capsys,
                                                                          monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    try:
        common.stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
            time.sleep(5)  # the handler runs first
    finally:
        signal.signal(signal.SIGTERM, before)
    monkeypatch.setattr(sys, "argv", ["/somewhere/aea.py", "--epochs", "3"])
    # nothing saved yet
    common.report_stop(KeyboardInterrupt(), str(tmp_path / "out"))
    assert "stopped by SIGINT before the first epoch ended; nothing to resume" in \
        capsys.readouterr().out
    # OUT/last.pt: the command with --resume added (once)
    common.save_checkpoint(str(tmp_path / "out" / "last.pt"), {"epoch": 1})
    common.report_stop(KeyboardInterrupt("SIGTERM"), str(tmp_path / "out"))
    printed = capsys.readouterr().out
    assert f"stopped by SIGTERM; {tmp_path / 'out' / 'last.pt'} holds the last epoch" in printed
    assert printed.endswith("Resume with:\n  python aea.py --epochs 3 --resume\n")
    # a run of stages: OUT/<stage>/last.pt
    monkeypatch.setattr(sys, "argv", ["aaanet.py", "--resume"])
    common.save_checkpoint(str(tmp_path / "demo" / "stage1" / "last.pt"), {"epoch": 1})
    common.report_stop(KeyboardInterrupt(), str(tmp_path / "demo"))
    printed = capsys.readouterr().out
    assert f"each last.pt under {tmp_path / 'demo'} holds" in printed
    assert printed.endswith("python aaanet.py --resume\n")


def test_checkpoint_identity_checks(tmp_path):
    state = {"paper": "aaanet", "stage": "stage1",
             "model": {"classifier.weight": torch.zeros(751, 8)}}
    with pytest.raises(common.UserError, match=r"x.pt is an AAA-Net stage1 checkpoint "
                                               r"\(aaanet.py\); expected an AEA checkpoint "
                                               r"\(aea.py\)"):
        common.check_checkpoint(state, "x.pt", "aea")
    with pytest.raises(common.UserError, match="not a checkpoint of this project"):
        common.check_checkpoint({"weight": torch.zeros(2)}, "x.pt", "aaanet")
    with pytest.raises(common.UserError,
                       match="trained on 751 identities, but this dataset has 702"):
        common.check_checkpoint(state, "x.pt", "aaanet", 702, "classifier.weight")
    # the right one passes
    common.check_checkpoint(state, "x.pt", "aaanet", 751, "classifier.weight")


def test_resume_state_refuses_other_settings(tmp_path):
    path = str(tmp_path / "last.pt")
    with pytest.raises(common.UserError, match="--resume: there is no checkpoint .*last.pt"):
        common.resume_state(path, "aea", ToyConfig())
    common.save_checkpoint(path, {"paper": "aea", "model": {},
                                  "config": dataclasses.asdict(ToyConfig())})
    assert common.resume_state(path, "aea", ToyConfig())["paper"] == "aea"
    # the milestones tuple comes back from the file as a tuple or list: both compare equal
    with pytest.raises(common.UserError, match=r"--margin 0.3 in the checkpoint, 0.5 now.*"
                                               r"--epochs 100 in the checkpoint, 50 now"):
        common.resume_state(path, "aea", ToyConfig(margin=0.5, epochs=50))
    # fields in may_differ (here the resume flag itself) are not compared
    assert common.resume_state(path, "aea", ToyConfig(resume="yes"), may_differ=("resume",))
    with pytest.raises(common.UserError, match="expected an AAA-Net"):
        common.resume_state(path, "aaanet", ToyConfig())
    # a config without a field the flags have: named as a difference
    common.save_checkpoint(path, {"paper": "aea", "model": {}, "config": {
        k: v for k, v in dataclasses.asdict(ToyConfig()).items() if k != "R"}})
    with pytest.raises(common.UserError, match="--R None in the checkpoint, 10.0 now"):
        common.resume_state(path, "aea", ToyConfig())
    # a run trained on CUDA with --precision auto (bf16 there) may not go on on the CPU (fp32)
    @dataclasses.dataclass
    class Auto:
        precision: str = "auto"
    common.save_checkpoint(path, {"paper": "aea", "model": {}, "config": {"precision": "auto"},
                                  "device_type": "cuda"})
    with pytest.raises(common.UserError,
                       match="trained on cuda with --precision auto.*--device cuda"):
        common.resume_state(path, "aea", Auto(), device="cpu")
    assert common.resume_state(path, "aea", Auto(), device="cuda:1")["device_type"] == "cuda"


def ended_pid():
    """The pid of a process that has ended (a killed run's, as a stale lock holds it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_out_folder_is_held_by_one_run(tmp_path):
    # created with its parents, claimed by this process's pid in OUT/.lock
    out = tmp_path / "new" / "run"
    release = common.hold_folder(str(out))
    assert (out / ".lock").read_text() == str(os.getpid())
    # released with nothing written: the folders it created go, tmp_path stays; a second release
    # (the run's end, then the process's exit) changes nothing
    release()
    assert not (tmp_path / "new").exists() and tmp_path.exists()
    release()
    # a lock that another process has taken since is never removed by this one's release
    out.mkdir(parents=True)
    release = common.hold_folder(str(out))
    (out / ".lock").write_text(str(os.getppid()))
    release()
    assert (out / ".lock").read_text() == str(os.getppid())
    shutil.rmtree(tmp_path / "new")
    # a live holder (the parent process of this test, say) is named and the folder refused
    out.mkdir(parents=True)
    (out / ".lock").write_text(str(os.getppid()))
    with pytest.raises(common.UserError, match=f"--out {out} is in use by another run "
                       f".pid {os.getppid()}.; wait for it to end, or give another --out"):
        common.hold_folder(str(out))
    # a holder that has ended: the lock is stale and taken over, and its temporaries (a
    # checkpoint killed mid-write, a best.pt link) removed; a live process's temporary stays
    dead = ended_pid()
    (out / ".lock").write_text(str(dead))
    for name in (f".last.pt.tmp{dead}", f".best.pt.link{dead}", f".last.pt.tmp{os.getppid()}",
                 "last.pt"):
        (out / name).write_bytes(b"x")
    release = common.hold_folder(str(out))
    assert sorted(os.listdir(out)) == [".last.pt.tmp" + str(os.getppid()), ".lock", "last.pt"]
    release()
    assert sorted(os.listdir(out)) == [".last.pt.tmp" + str(os.getppid()), "last.pt"]  # kept
    # a lock holding no pid any process can have (too large for the system) is stale too, and
    # so is one of bytes that are no text (a disk error, a hand edit)
    for junk in (b"9" * 30, bytes(range(256)) * 4):
        (out / ".lock").write_bytes(junk)
        release = common.hold_folder(str(out))
        assert (out / ".lock").read_text() == str(os.getpid())
        release()
    (tmp_path / "file").write_text("x")
    with pytest.raises(common.UserError, match="--out .*file/run: cannot write there"):
        common.hold_folder(str(tmp_path / "file" / "run"))

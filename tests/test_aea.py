"""Tests of aea.py: Eq. (1) and the top-R% erasing on hand-made tensors, the dynamic strategy (one
forward pass, no gradient through the erasing, the current weights every step), the feature sizes,
one training step of every variant, and a tiny run through training, checkpoint, reload,
evaluation."""
import copy
import csv
import dataclasses
import hashlib
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision

import aea
import common
import data
from conftest import REPO, assert_same_weights, run_python, stop_at_step_script
import evaluate
from common import UserError

H, W = 64, 32  # tiny inputs: conv2_x is 16x8, conv5_x (last stride 1) 4x2


# -----------------------------------------------------------------------------
# Eq. (1): the attention map

@pytest.mark.exercise(6)
def test_attention_map_eq1_by_hand():
    # Two channels of a 2x2 map; A = sum_c |M_c|^2, element-wise:
    #   M_0 = [[1, -2], [0, 3]]      M_1 = [[2, 1], [-1, 0]]
    #   A = [[1 + 4, 4 + 1], [0 + 1, 9 + 0]] = [[5, 5], [1, 9]]
    # The second image is 2 M: every square x4 -> [[20, 20], [4, 36]].
    M = torch.tensor([[[1.0, -2.0], [0.0, 3.0]], [[2.0, 1.0], [-1.0, 0.0]]])[None]  # [1, 2, 2, 2]
    A = aea.attention_map(torch.cat([M, 2 * M]))
    assert A.shape == (2, 2, 2)
    assert torch.equal(A[0], torch.tensor([[5.0, 5.0], [1.0, 9.0]]))
    assert torch.equal(A[1], torch.tensor([[20.0, 20.0], [4.0, 36.0]]))


@pytest.mark.exercise(6)
def test_attention_map_is_fp32_for_bf16_features():
    # Under autocast the features arrive in bf16 (8 significant bits): two channels 16 and 1 give
    # A = 256 + 1 = 257, which bf16 cannot hold (it rounds to 256). A is computed in fp32.
    M = torch.tensor([16.0, 1.0], dtype=torch.bfloat16).view(1, 2, 1, 1)
    A = aea.attention_map(M)
    assert A.dtype == torch.float32 and A.item() == 257.0


# -----------------------------------------------------------------------------
# The adversarial erasing operation: exactly the top round(R% of H*W) pixels

@pytest.mark.exercise(7)
def test_erase_top_exact_top_k_with_ties():
    # A 4x4 map at the image size (no resize), rows  0 5 5 0 / 5 5 0 5 / 0 0 9 0 / 0 0 0 0:
    # the 5s sit at row-major flat indices 1, 2, 4, 5 and 7, the 9 at index 10.
    # R = 25: k = round(25 * 16 / 100) = 4 -> the 9 (index 10), then three of the five 5s: the
    # lower indices win the tie -> 1, 2, 4. Indices 5 and 7 hold a 5 too and stay.
    # R = 10: k = round(1.6) = 2 -> indices 10 and 1.
    A = torch.zeros(4, 4)
    for i in (1, 2, 4, 5, 7):
        A.view(-1)[i] = 5.0
    A[2, 2] = 9.0
    # no zero before erasing
    images = torch.arange(2 * 3 * 16, dtype=torch.float32).view(2, 3, 4, 4) + 1
    out = aea.erase_top(images, torch.stack([A, A]), 25)
    erased = torch.zeros(16, dtype=torch.bool)
    erased[[1, 2, 4, 10]] = True
    erased = erased.view(1, 1, 4, 4).expand_as(images)
    # exactly those pixels, all 3 channels, set to 0; everything else untouched
    assert torch.equal(out[erased], torch.zeros(2 * 3 * 4))
    assert torch.equal(out[~erased], images[~erased])
    top = aea.salient_pixels(A[None], 10, (4, 4)).view(-1).nonzero().flatten().tolist()
    assert top == [1, 10]
    # the same tie rule for any batch: k pixels in every image
    per_image = aea.salient_pixels(torch.rand(5, 4, 4), 25, (4, 4)).sum(dim=(1, 2))
    assert per_image.tolist() == [4] * 5


@pytest.mark.exercise(7)
def test_salient_pixels_resizes_bilinearly():
    # A 2x2 map [[0, 0], [0, 1]] resized to 4x4 (bilinear, half-pixel centres): output index i
    # reads source coordinate (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1],
    # so the weight of source row/column 1 is w = [0, 0.25, 0.75, 1] and A_up[i, j] = w[i] * w[j]:
    #   row 3: [0, .25, .75, 1]   row 2: [0, .1875, .5625, .75]   row 1: [0, .0625, .1875, .25]
    # top 3 (R = 18.75, k = 3): 1 at (3, 3) = flat 15; 0.75 at (2, 3) = 11 and (3, 2) = 14
    # top 4 (R = 25): + 0.5625 at (2, 2) = 10
    # top 5 (R = 31.25): + one of the two 0.25 -- (1, 3) = 7 beats (3, 1) = 13 by index
    A = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    top = {R: aea.salient_pixels(A, R, (4, 4)).view(-1).nonzero().flatten().tolist()
           for R in (18.75, 25, 31.25)}
    assert top == {18.75: [11, 14, 15], 25: [10, 11, 14, 15], 31.25: [7, 10, 11, 14, 15]}


@pytest.mark.exercise(7)
def test_salient_pixels_half_pixel_centres_not_aligned_corners():
    # A 1x3 map [1, 0, 0.22] resized to 1x6. Half-pixel centres: output x reads source coordinate
    # (x + 0.5) * 3 / 6 - 0.5 = -0.25, 0.25, 0.75, 1.25, 1.75, 2.25, clamped to [0, 2]:
    #   [1, 0.75, 0.25, 0.055, 0.165, 0.22]  -> top 3 (R = 50): x = 0, 1, 2
    # Aligned corners would read x * 2 / 5 = 0, 0.4, 0.8, 1.2, 1.6, 2:
    #   [1, 0.6, 0.2, 0.044, 0.132, 0.22]    -> top 3: x = 0, 1, 5
    A = torch.tensor([[[1.0, 0.0, 0.22]]])
    top = aea.salient_pixels(A, 50, (1, 6)).view(-1).nonzero().flatten().tolist()
    assert top == [0, 1, 2]


@pytest.mark.exercise(7)
def test_salient_pixels_count_is_rounded_half_to_even():
    # k = R% of H*W rounded to the nearest integer, a half to the even one (Python's round):
    # on a 4x4 map of distinct values, R = 20 -> 3.2 -> k = 3 (not 4: no rounding up);
    # R = 15.625 -> 2.5 -> k = 2 (not 3: no rounding half up); R = 21.875 -> 3.5 -> k = 4.
    A = torch.arange(16.0).view(1, 4, 4)
    counts = {R: aea.salient_pixels(A, R, (4, 4)).sum().item() for R in (20, 15.625, 21.875)}
    assert counts == {20: 3, 15.625: 2, 21.875: 4}


def test_grey_level_mask_baseline3():
    # One 2x2 image, pixels (R, G, B) -> grey 0.299 R + 0.587 G + 0.114 B:
    #   (255, 0, 0) -> 76.2   (0, 255, 0) -> 149.7   (0, 0, 255) -> 29.1   (100, 100, 100) -> 100
    # R = 25 -> k = 1: pixel 1 (green); R = 50 -> k = 2: pixels 1 and 3
    img = torch.tensor([[255, 0, 0, 100], [0, 255, 0, 100], [0, 0, 255, 100]],
                       dtype=torch.uint8).view(1, 3, 2, 2)
    assert aea.fixed_erasing_masks(img, 25).view(-1).nonzero().flatten().tolist() == [1]
    assert aea.fixed_erasing_masks(img, 50).view(-1).nonzero().flatten().tolist() == [1, 3]
    # the cached erased copy holds the mean colour, which normalises to (almost) 0
    erased = aea.erase_uint8(img, aea.fixed_erasing_masks(img, 25))
    assert erased[0, :, 0, 1].tolist() == aea.MEAN_UINT8.tolist()
    assert torch.equal(erased[0, :, 1, 1], img[0, :, 1, 1])
    assert data.normalize(erased)[0, :, 0, 1].abs().max() < 0.01


# -----------------------------------------------------------------------------
# The networks of the tests: two ResNet-50s built once, a fresh copy for each test

@pytest.fixture(scope="module")
def tiny(synthetic_root):
    """The synthetic training split at 64x32, a PK sampler (P=2, K=2) and its labels."""
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    images = data.load_images(ds.train.paths, H, W)
    return ds, images, torch.as_tensor(ds.train.pids), data.PKSampler(ds.train.pids, 2, 2, seed=0)


@pytest.fixture(scope="module")
def reference(tiny):
    """AEA with random weights (seed 0) for the synthetic set's 8 identities, built once for the
    module: two ResNet-50s from scratch take about a second. Tests train `fresh` copies of it."""
    common.seed_everything(0)
    return aea.AEA(tiny[0].num_train_pids, "aea", "none")


def fresh(reference, variant="aea"):
    """A new network of `variant` that starts from the reference's weights (B1: its basic
    network alone), as `aea.AEA(N, variant, "none")` built after the same seed would. The same
    variant is a deep copy; another is built on the meta device (shapes only, no memory, no
    random draws) and then takes copies of the reference's tensors. The strict load checks
    that both have the same names and shapes."""
    if variant == reference.variant:
        return copy.deepcopy(reference)
    with torch.device("meta"):
        model = aea.AEA(reference.basic.FC_2.out_features, variant, "none")
    state = reference.state_dict()
    model.load_state_dict({k: state[k].clone() for k in model.state_dict()}, assign=True)
    assert not any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))
    return model


@pytest.fixture
def model(reference):
    """A fresh AEA network (basic and complementary) for one test."""
    return fresh(reference)


# -----------------------------------------------------------------------------
# Networks: sizes of the features

def test_feature_sizes(model, reference):
    x = torch.randn(4, 3, H, W)
    model.train()
    f, v, M_l = model.basic(x, "conv2_x")
    assert f.shape == (4, 2560) and v.shape == (4, 8)  # 8 identities
    assert M_l.shape == (4, 256, H // 4, W // 4)  # conv2_x: 256 x H/4 x W/4 (64x32 at 256x128)
    assert model.basic(x)[2] is None
    # conv5_x as the attention layer: the map is the last stage itself, 2048 x H/16 x W/16
    # (stride 1)
    assert model.basic(x, "conv5_x")[2].shape == (4, 2048, H // 16, W // 16)
    model.eval()
    with torch.no_grad():
        feat = model(x)
    assert feat.shape == (4, 5120)
    # concat, then L2-normalised
    assert torch.allclose(feat.norm(dim=1), torch.ones(4), atol=1e-5)
    # the concatenation is normalised as a whole, not each half: the halves keep their own
    # lengths
    with torch.no_grad():
        f_b, f_c = model.basic(x)[0], model.complementary(x)[0]
    whole = torch.nn.functional.normalize(torch.cat([f_b, f_c], 1), dim=1)
    assert torch.allclose(feat, whole, atol=1e-5)
    # B1 tests on the basic network alone (it has no complementary one), B2 on the complementary
    b1, b2 = fresh(reference, "b1").eval(), fresh(reference, "b2").eval()
    assert b1.complementary is None
    with torch.no_grad():
        assert b1(x).shape == (4, 2560)
        b2.complementary.load_state_dict(model.complementary.state_dict())
        assert torch.allclose(b2(x), torch.nn.functional.normalize(f_c, dim=1), atol=1e-5)


@pytest.mark.parametrize("variant", ["aea", "b2"])  # B3 and B4 build their networks as AEA does
def test_both_networks_start_from_one_backbone(variant, tmp_path):
    # Sec. IV-B: both networks are initialised from the same ResNet-50. From random weights the
    # complementary backbone is a copy of the basic one's draw (not a second draw); from a
    # weights file both hold the file's weights. The heads are new layers: drawn apart.
    torch.manual_seed(0)
    model = aea.AEA(8, variant, "none", arch="resnet18")
    basic = model.basic.backbone.state_dict()
    complementary = model.complementary.backbone.state_dict()
    assert basic.keys() == complementary.keys()
    assert all(torch.equal(basic[k], complementary[k]) for k in basic)
    assert not torch.equal(model.basic.FC_1[0].weight, model.complementary.FC_1[0].weight)
    assert not torch.equal(model.basic.FC_2.weight, model.complementary.FC_2.weight)
    # a copy, not shared tensors: training one leaves the other where it started
    with torch.no_grad():
        model.basic.backbone.conv1[0].weight.add_(1.0)
    assert not torch.equal(model.basic.backbone.conv1[0].weight,
                           model.complementary.backbone.conv1[0].weight)
    # a state dict file (here a random ResNet-18 in torchvision's key names): both networks
    # start from its weights
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "start.pt"
    torch.save(resnet.state_dict(), path)
    loaded = aea.AEA(8, variant, str(path), arch="resnet18")
    for net in (loaded.basic, loaded.complementary):
        assert torch.equal(net.backbone.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)


def test_resnet18_feature_sizes():
    # --arch resnet18: conv5_x has 512 channels (FC_1 and the stripe FCs take 512), but f is
    # 5 x 512 = 2560 whatever the backbone, as FC_1 and each stripe FC give 512
    common.seed_everything(0)
    model = aea.AEA(8, "aea", "none", arch="resnet18").eval()
    assert model.basic.FC_1[0].in_features == model.basic.part_fc[3][0].in_features == 512
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        f, v, M_l = model.basic(x, "conv2_x")
        assert (f.shape, v.shape, M_l.shape) == ((2, 2560), (2, 8), (2, 64, H // 4, W // 4))
        assert model.basic(x, "conv5_x")[2].shape == (2, 512, H // 16, W // 16)  # stride 1
        assert model(x).shape == (2, 5120)
    # its checkpoint is rebuilt as ResNet-18, a Baseline 1 ResNet-50's as ResNet-50
    config = dataclasses.asdict(aea.AEAConfig(arch="resnet18"))
    ckpt = {"paper": "aea", "model": model.state_dict(), "config": config}
    assert aea.model_from_checkpoint(ckpt)[0].basic.backbone.channels["layer4"] == 512
    common.seed_everything(0)
    ckpt["model"] = aea.AEA(8, "b1", "none").state_dict()
    ckpt["config"] = dict(config, arch="resnet50", variant="b1")
    assert aea.model_from_checkpoint(ckpt)[0].basic.FC_1[0].in_features == 2048


# -----------------------------------------------------------------------------
# The dynamic strategy: one forward pass, the current weights, no gradient through the erasing

def test_erasing_passes_no_gradient_to_the_basic_network(model):
    model.train()
    model.zero_grad(set_to_none=True)
    x, y = torch.randn(4, 3, H, W), torch.tensor([0, 0, 1, 1])
    _, _, M_l = model.basic(x, "conv2_x")
    assert M_l.requires_grad  # the basic network's activation, part of its graph
    x_erased = aea.adversarial_erasing(x, M_l, 10)
    assert not x_erased.requires_grad
    # k pixels per image
    assert int((x_erased == 0).all(dim=1).sum()) == 4 * round(10 * H * W / 100)
    # L_I2 reaches the complementary network only
    common.cross_entropy(model.complementary(x_erased)[1], y).backward()
    assert all(p.grad is None for p in model.basic.parameters())
    assert all(p.grad is not None for p in model.complementary.backbone.parameters())


def test_one_basic_forward_per_step_and_the_current_weights(model, monkeypatch):
    # The attention of every step must be the conv2_x output of the basic network's forward in
    # that step: count the passes through the basic network's stem, and compare what the erasing
    # receives with conv2_x recomputed from the weights of that moment.
    common.seed_everything(1)
    opt = common.make_sgd(model.parameters(), 0.05)
    cfg = aea.AEAConfig(height=H, width=W, P=2, K=2)
    x, y = torch.randn(4, 3, H, W), torch.tensor([0, 0, 1, 1])
    calls, received = {"basic": 0, "complementary": 0}, []

    def count(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)
    hooks = [getattr(model, n).backbone.conv1.register_forward_hook(count(n)) for n in calls]
    real = aea.adversarial_erasing

    def recording_erasing(x_, M_l, R):
        received.append(M_l.detach().clone())
        return real(x_, M_l, R)
    monkeypatch.setattr(aea, "adversarial_erasing", recording_erasing)
    model.train()
    expected = []
    for _ in range(2):
        with torch.no_grad():  # train mode: batch statistics
            expected.append(model.basic.backbone.run(x, "conv1", "conv2_x"))
        calls.update(basic=0, complementary=0)
        terms = aea.training_step(model, opt, x, y, cfg, joint=True)
        assert calls == {"basic": 1, "complementary": 1}  # no extra pass for the attention
        assert set(terms) == {"L_I1", "L_I2", "L_T", "L"}
    for h in hooks:
        h.remove()
    assert len(received) == 2
    for got, want in zip(received, expected):
        assert torch.allclose(got, want, atol=1e-5)
    # the step changed the basic network, so the second step's attention differs from the first
    A_1, A_2 = aea.attention_map(received[0]), aea.attention_map(received[1])
    assert not torch.allclose(A_1, A_2, atol=1e-4)
    # ... and so do the pixels it erases
    assert not torch.equal(aea.salient_pixels(A_1, 10, (H, W)), aea.salient_pixels(A_2, 10, (H, W)))


# -----------------------------------------------------------------------------
# Eq. (8): the total loss

@pytest.mark.exercise(8)
def test_eq8_total_loss_by_hand(monkeypatch):
    # The three terms replaced by known values (that still reach the networks' outputs, so the
    # step's backward pass runs): L_I1 = 1.5 (basic network), L_I2 = 3.0 (complementary),
    # L_T = 0.25. With alpha1 = 0.5 and alpha2 = 2:
    #   L = L_I1 + alpha1 * L_I2 + alpha2 * L_T = 1.5 + 0.5 * 3.0 + 2 * 0.25 = 3.5
    # Each term is returned as it is, for the log; --erasing random feeds the complementary
    # network a given batch (x_other), so the step needs no attention map.
    values = iter([1.5, 3.0])
    monkeypatch.setattr(common, "cross_entropy", lambda v, y: 0 * v.sum() + next(values))
    monkeypatch.setattr(common, "batch_hard_triplet_loss", lambda f, y, m: 0 * f.sum() + 0.25)
    cfg = aea.AEAConfig(height=H, width=W, P=2, K=2, alpha1=0.5, alpha2=2.0, erasing="random",
                        weights="none", arch="resnet18", precision="fp32")
    common.seed_everything(0)
    model = aea.AEA(2, weights="none", arch="resnet18").train()
    x, y = torch.randn(4, 3, H, W), torch.tensor([0, 0, 1, 1])
    terms = aea.training_step(model, common.make_sgd(model.parameters(), 0.01), x, y, cfg,
                              joint=True, x_other=x.flip(3))
    assert {k: v.item() for k, v in terms.items()} == pytest.approx(
        dict(L_I1=1.5, L_I2=3.0, L_T=0.25, L=3.5))


# -----------------------------------------------------------------------------
# Every variant: one training step on tiny synthetic data

# B3, B4 and --erasing fixed feed the complementary network an erase-once copy, the path that
# --erasing random takes in the training step too (their masks are tested above): slow, to keep
# the fast run under half a minute
VARIANTS = [("aea", "adversarial", True), ("aea", "adversarial", False), ("aea", "random", True),
            ("b1", "adversarial", False), ("b2", "adversarial", True), ("b2", "adversarial", False),
            *(pytest.param(*v, marks=pytest.mark.slow) for v in [
                ("aea", "fixed", True), ("b3", "adversarial", True), ("b4", "adversarial", True)])]


@pytest.mark.parametrize("variant, erasing, joint", VARIANTS)
def test_every_variant_trains_one_step(tiny, reference, variant, erasing, joint, monkeypatch):
    ds, images, labels, sampler = tiny
    cfg = aea.AEAConfig(height=H, width=W, P=2, K=2, variant=variant, erasing=erasing,
                        weights="none")
    common.seed_everything(0)
    model = fresh(reference, variant).train()
    opt = common.make_sgd(model.parameters(), cfg.lr)
    mode = aea.erasing_mode(cfg)
    erased = None
    if mode in ("grey", "fixed"):
        basic = None if mode == "grey" else model.basic
        erased_pixels = aea.fixed_erasing_masks(images, cfg.R, basic, cfg.attention_layer)
        erased = aea.erase_uint8(images, erased_pixels)
    g = torch.Generator().manual_seed(0)
    x, y, x_other = next(aea.epoch_batches(images, labels, sampler, g, cfg, joint, erased))
    assert x.shape == (4, 3, H, W) and (x_other is None) == (not joint or mode == "adversarial")
    # record the features the triplet loss sees
    seen = []
    real = common.batch_hard_triplet_loss

    def recording_triplet(f, lab, m):
        seen.append((f.shape, lab.tolist()))
        return real(f, lab, m)
    monkeypatch.setattr(common, "batch_hard_triplet_loss", recording_triplet)
    nets = [n for n in ("basic", "complementary") if getattr(model, n) is not None]
    before = {n: [p.detach().clone() for p in getattr(model, n).parameters()] for n in nets}
    terms = aea.training_step(model, opt, x, y, cfg, joint, x_other)
    assert torch.isfinite(torch.stack([v.detach() for v in terms.values()])).all()
    changed = {n: any(not torch.equal(a, b) for a, b in zip(ps, getattr(model, n).parameters()))
               for n, ps in before.items()}
    assert changed["basic"]
    if "complementary" in changed:
        # the warm-up gives the complementary network no step
        assert changed["complementary"] == joint
    # which loss terms, and L_T over which features (Eq. (8) and Sec. IV-C)
    if not joint and variant == "b2":
        # B2's basic network: cross-entropy only
        assert set(terms) == {"L_I1", "L"} and not seen
    elif not joint:
        assert set(terms) == {"L_I1", "L_T", "L"} and seen == [((4, 2560), y.tolist())]
    elif variant == "b2":
        # the erased images only
        assert set(terms) == {"L_I1", "L_I2", "L_T", "L"}
        assert seen == [((4, 2560), y.tolist())]
    else:
        # 2PK: the originals and the erased images
        assert set(terms) == {"L_I1", "L_I2", "L_T", "L"}
        assert seen == [((8, 2560), y.tolist() * 2)]


def test_separate_triplets_give_the_basic_network_baseline_1s_gradient(reference):
    # --triplet separate (a diagnostic, not the paper's): L_T = L_T(basic f, PK) +
    # L_T(complementary f, PK). The erasing is detached and the complementary network's loss
    # terms do not reach the basic one, so the basic network's gradient is Baseline 1's on the
    # same batch (L_I1 + its own PK triplet); with the shared 2PK triplet of Eq. (5) it is not:
    # there the erased images' features are positives and negatives of the originals
    torch.manual_seed(0)
    x = torch.randn(8, 3, H, W)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

    def basic_grads(variant, joint, triplet="shared"):
        model = fresh(reference)
        model.train()
        # dropout off and BatchNorm in eval: the same forward pass in every call
        for m in model.modules():
            if isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.eval()
        cfg = aea.AEAConfig(variant=variant, triplet=triplet, R=25.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step changes nothing
        aea.training_step(model, optimizer, x, y, cfg, joint)
        return [p.grad.clone() for p in model.basic.parameters()]
    b1 = basic_grads("b1", False)
    separate = basic_grads("aea", True, "separate")
    shared = basic_grads("aea", True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(b1, separate))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(b1, shared))
    # the flag applies where Eq. (5)'s triplet is shared: refused for B1 and B2
    for variant in ("b1", "b2"):
        with pytest.raises(UserError, match=f"--triplet separate applies to .*; {variant} has"):
            aea.parse_config(["--variant", variant, "--triplet", "separate"])


def test_views_score_each_half_and_the_concatenation(reference, monkeypatch):
    # the diagnostics' views: one subnetwork's f, or both concatenated, L2-normalised as the
    # test feature; "both" is AEA's test feature itself
    model = fresh(reference).eval()
    x = torch.randn(3, 3, H, W)
    with torch.no_grad():
        f_basic = model.basic(x)[0]
        f_complementary = model.complementary(x)[0]
        normalize = torch.nn.functional.normalize
        assert torch.allclose(aea.View(model, "basic")(x), normalize(f_basic, dim=1), atol=1e-6)
        assert torch.allclose(aea.View(model, "complementary")(x),
                              normalize(f_complementary, dim=1), atol=1e-6)
        assert torch.allclose(aea.View(model, "both")(x), model(x), atol=1e-6)
    # the rows a run adds: every view but its own test feature; none for Baseline 1
    scored = []
    fake = {"cmc": np.array([0.5]), "mAP": 0.4}

    def score(view, ds, cfg, device, cache):
        scored.append(view.part)
        return fake
    monkeypatch.setattr(aea, "score", score)
    rows = aea.score_views(model, None, aea.AEAConfig(), "cpu", {})
    assert list(rows) == ["basic half", "complementary half"]
    assert scored == ["basic", "complementary"]
    model.variant = "b2"
    rows = aea.score_views(model, None, aea.AEAConfig(variant="b2"), "cpu", {})
    assert list(rows) == ["basic half", "concatenation"]
    b1 = fresh(reference, "b1")
    assert aea.score_views(b1, None, aea.AEAConfig(variant="b1"), "cpu", {}) == {}


def test_fixed_erasing_keeps_originals_and_erased_copies_aligned(tiny):
    # The erased copy goes through the same flip and crop as its original: wherever the copy was
    # not erased the two augmented batches are equal, where it was erased the copy is ~0.
    ds, images, labels, sampler = tiny
    cfg = aea.AEAConfig(variant="b3", P=2, K=2)
    erased_pixels = aea.fixed_erasing_masks(images, 30)
    erased = aea.erase_uint8(images, erased_pixels)
    g = torch.Generator().manual_seed(3)
    batches = list(aea.epoch_batches(images, labels, sampler, g, cfg, True, erased))
    assert len(batches) == len(sampler)
    for x, y, x_other in batches:
        same = (x == x_other).all(dim=1)                       # [B, H, W]
        assert (x_other[~same[:, None].expand_as(x)].abs() < 0.01).all()
        # k = round(0.3 * 64 * 32) = 614 pixels erased per image; the crop (a shift of up to
        # 10 px) moves some out of the frame. Misaligned flips or crops would change nearly
        # every pixel.
        changed = (~same).sum(dim=(1, 2))
        assert ((changed > 0) & (changed <= 614)).all()
    # the originals are the same as without the erased copy: the twin does not consume draws of g
    g = torch.Generator().manual_seed(3)
    plain = list(aea.epoch_batches(images, labels, sampler, g, cfg, False))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, plain))


def test_pad_reaches_every_augmented_view(tiny, monkeypatch):
    # --pad is the padding of the originals' augmentation and of each second view's: the erased
    # twin (B3, B4, --erasing fixed) and REDA's independent view
    ds, images, labels, sampler = tiny
    pads, real = [], data.train_batches

    def recording(*args, **kwargs):
        pads.append(kwargs["pad"])
        return real(*args, **kwargs)
    monkeypatch.setattr(data, "train_batches", recording)
    views = {("aea", "adversarial", None): 1, ("b3", "adversarial", images): 2,
             ("aea", "random", None): 2}
    for (variant, erasing, erased), n in views.items():
        pads.clear()
        cfg = aea.AEAConfig(variant=variant, erasing=erasing, P=2, K=2, pad=4)
        g = torch.Generator().manual_seed(0)
        next(aea.epoch_batches(images, labels, sampler, g, cfg, True, erased))
        assert pads == [4] * n


# -----------------------------------------------------------------------------
# Flags: the paper's defaults, the demo's, per dataset; clear errors

def test_defaults_demo_and_per_dataset():
    cfg, demo = aea.parse_config([])
    assert demo and cfg.eval_untrained and cfg.out == os.path.join("runs", "aea", "demo")
    assert (cfg.root, cfg.dataset, cfg.weights, cfg.height, cfg.width, cfg.pad) == (
        "data/synthetic", "synthetic", "synthetic", 64, 32, aea.STARTS["pretrained"]["pad"])
    # the demo trains from the pretrained start, with that start's settings
    assert all(getattr(cfg, k) == v for k, v in aea.STARTS["pretrained"].items())
    cfg, demo = aea.parse_config(["--root", "somewhere", "--dataset", "cuhk03-labeled"])
    assert not demo
    assert (cfg.margin, cfg.R, cfg.weights, cfg.epochs, cfg.lr, cfg.lr_step) == (
        0.35, 20.0, "imagenet", 100, 0.01, 75)
    assert (cfg.height, cfg.width, cfg.P, cfg.K, cfg.warmup_epochs, cfg.attention_layer) == (
        256, 128, 8, 4, 10, "conv2_x")
    assert (cfg.dropout, cfg.alpha1, cfg.alpha2, cfg.variant, cfg.erasing, cfg.pad) == (
        0.5, 1.0, 1.0, "aea", "adversarial", 10)
    assert cfg.out == os.path.join("runs", "aea", "cuhk03-labeled-aea")
    cfg, _ = aea.parse_config(["--root", "d", "--dataset", "duke"])
    assert (cfg.margin, cfg.R) == (0.3, 10.0)
    # explicit flags win over the dataset's and the demo's values
    cfg, _ = aea.parse_config(["--root", "d", "--dataset", "cuhk03-detected", "--margin", "0.5",
                               "--R", "15"])
    assert (cfg.margin, cfg.R) == (0.5, 15.0)
    cfg, _ = aea.parse_config(["--epochs", "7", "--height", "96", "--width", "48",
                               "--variant", "b1"])
    assert (cfg.epochs, cfg.height, cfg.width, cfg.dataset) == (7, 96, 48, "synthetic")


def test_b4_schedule_is_baseline1s_then_aeas_joint_phase():
    # --epochs 4 --lr-step 3 --warmup-epochs 1, lr 0.01. Baseline 1's run: epochs 1-3 at 0.01,
    # epoch 4 (>= lr_step) at 0.001. Then AEA's joint phase, 4 - 1 = 3 epochs: AEA's joint epochs
    # are its epochs 2-4 (after 1 warm-up epoch): 0.01, 0.01, then 0.001 from AEA's epoch 4 (its
    # 0-based epoch 3 = lr_step), i.e. joint epoch 3 = lr_step - warmup_epochs + 1 (1-based)
    cfg = aea.AEAConfig(variant="b4", epochs=4, lr_step=3, warmup_epochs=1)
    assert aea.total_epochs(cfg) == 7 and aea.basic_alone_epochs(cfg) == 4
    lrs = [cfg.lr * aea.lr_factor(cfg, e) for e in range(7)]
    assert lrs == pytest.approx([.01, .01, .01, .001] + [.01, .01, .001])
    # AEA itself: 4 epochs, 1 basic alone, the same joint lrs; Baseline 1: the first 4 of B4
    same = dataclasses.replace(cfg, variant="aea")
    assert (aea.total_epochs(same), aea.basic_alone_epochs(same)) == (4, 1)
    assert [cfg.lr * aea.lr_factor(same, e) for e in range(1, 4)] == pytest.approx(lrs[4:])
    b1 = dataclasses.replace(cfg, variant="b1")
    assert [cfg.lr * aea.lr_factor(b1, e) for e in range(4)] == pytest.approx(lrs[:4])


def test_b4_erases_once_after_the_basic_schedule(synthetic_root, tmp_path, monkeypatch):
    # B4, --epochs 2 --lr-step 1 --warmup-epochs 1 (ResNet-18s): epochs 1-2 the basic network
    # alone (lr 0.01, 0.001), then the mask once from the trained basic network, then 1 joint
    # epoch on the erased copies at AEA's joint lr for its epoch 2: 0.001 (>= lr_step). The
    # steps are stubbed (no gradient, no change): only the order and the lrs are read
    seen, real = [], aea.fixed_erasing_masks

    def step(model, optimizer, x, y, cfg, joint, x_other=None):
        optimizer.step()  # a step without gradients changes nothing
        seen.append(("step", joint, x_other is not None, optimizer.param_groups[0]["lr"]))
        return {"L": torch.tensor(1.0)}

    def masks(images, R, basic=None, *args, **kwargs):
        seen.append(("mask", basic is not None))
        return real(images, R, basic, *args, **kwargs)
    monkeypatch.setattr(aea, "training_step", step)
    monkeypatch.setattr(aea, "fixed_erasing_masks", masks)
    aea.main(small_run(synthetic_root, tmp_path, "--variant", "b4", "--epochs", "2",
                       "--lr-step", "1", "--warmup-epochs", "1", "--arch", "resnet18"))
    basic, joint = ("step", False, False), ("step", True, True)  # 2 steps an epoch
    assert seen == [(*basic, 0.01)] * 2 + [(*basic, pytest.approx(0.001))] * 2 + [
        ("mask", True)] + [(*joint, pytest.approx(0.001))] * 2
    assert common.load_checkpoint(str(tmp_path / "last.pt"))["epoch"] == 3


@pytest.mark.parametrize("argv, message", [
    # R in (0, 100): both ends and beyond each; margin >= 0; lr > 0 (0 too is refused)
    (["--R", "0"], "--R must lie in (0, 100), got 0.0 (percent of pixels erased"),
    (["--R", "100"], "--R must lie in (0, 100)"), (["--R", "-5"], "--R must lie in (0, 100)"),
    (["--R", "150"], "--R must lie in (0, 100)"),
    (["--margin", "-0.1"], "--margin must lie in [0, inf)"),
    (["--lr", "-1"], "--lr must lie in (0, inf)"), (["--lr", "0"], "--lr must lie in (0, inf)"),
    (["--alpha1", "-1"], "--alpha1 must lie in [0, inf)"), (["--dataset", "duke"], "needs --root"),
    (["--variant", "b3", "--erasing", "random"], "applies to --variant aea and b2"),
    (["--epochs", "5", "--warmup-epochs", "5"], "--warmup-epochs 5 leaves no epoch"),
    # B4's joint phase is AEA's: --epochs - --warmup-epochs epochs after the basic schedule
    (["--variant", "b4", "--epochs", "5", "--warmup-epochs", "5"],
     "--warmup-epochs 5 leaves no epoch"),
    # B4's basic phase is Baseline 1's schedule: no flag of its own
    (["--b4-basic-epochs", "40"], "unrecognized arguments: --b4-basic-epochs"),
    (["--arch", "resnet101"], "--arch: invalid choice: 'resnet101'"),
    (["--P", "1"], "--P must lie in [2, inf), got 1 (identities per batch"),
    # the demo's 64x32 inputs: a padding of 32 or more can crop nothing but zeros; an input no GPU
    # holds; an integer argparse takes that int64 cannot hold
    (["--pad", "32"], "--pad 32 must be below the input's smaller side (64x32 inputs: below 32)"),
    (["--pad", str(10**20)], f"--pad {10**20} must be below the input's smaller side"),
    (["--height", "100000"], "--height must lie in [32, 1024], got 100000"),
    (["--width", str(10**20)], f"--width must lie in [16, 1024], got {10**20}")])
def test_bad_flags_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        common.exit_on_user_error(aea.main, argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_checkpoint_of_another_paper_or_unfitting_weights_is_refused(tmp_path):
    # an AAA-Net file: the message says what it is and what was expected, with the file's name
    other = str(tmp_path / "aaanet.pt")
    common.save_checkpoint(other, {"paper": "aaanet", "stage": "stage1", "model": {},
                                   "config": {}})
    with pytest.raises(UserError,
                       match="is an AAA-Net stage1 checkpoint .*; expected an AEA checkpoint"):
        aea.model_from_checkpoint(common.load_checkpoint(other), other)
    # an AEA file whose weights do not fit the network its config and identity count describe
    # (FC_2 with 4 rows, the rest missing): a UserError naming it
    bad = {"paper": "aea", "config": dataclasses.asdict(aea.AEAConfig()),
           "model": {"basic.FC_2.weight": torch.zeros(4, 2560)}}
    with pytest.raises(UserError, match="bad.pt: the weights do not fit AEA .missing: "
                       "basic.FC_1.0.bias, basic.FC_1.0.weight, basic.FC_1.1.bias"):
        aea.model_from_checkpoint(bad, "bad.pt")
    bad["config"]["no_such_flag"] = 1  # a config of another version of aea.py
    with pytest.raises(UserError, match="bad.pt: the config or weights do not fit"):
        aea.model_from_checkpoint(bad, "bad.pt")


def test_config_refuses_an_R_that_erases_nothing_and_a_seed_numpy_refuses():
    # salient_pixels erases k = round(R * H * W / 100) pixels. At 64x32 (2048 pixels): R = 0.02
    # gives round(0.41) = 0, refused; R = 0.03 gives round(0.61) = 1 pixel. The bound: R above
    # 50 / 2048 = 0.0244, where R * 2048 / 100 passes 0.5
    small = dict(height=64, width=32)
    with pytest.raises(UserError, match=r"--R 0.02 erases round\(0.02% of 64x32\) = 0 pixels: "
                       r"give --R above 0.0244"):
        aea.check_config(aea.AEAConfig(R=0.02, **small))
    aea.check_config(aea.AEAConfig(R=0.03, **small))
    assert aea.salient_pixels(torch.rand(1, 8, 4), 0.03, (64, 32)).sum() == 1
    # Baseline 1 and REDA never read R
    aea.check_config(aea.AEAConfig(R=0.02, variant="b1", **small))
    aea.check_config(aea.AEAConfig(R=0.02, erasing="random", warmup_epochs=0, **small))
    with pytest.raises(UserError, match=r"--seed must lie in \[0, 4294967295\], got -1 "):
        aea.check_config(aea.AEAConfig(seed=-1))


# -----------------------------------------------------------------------------
# End to end: train -> checkpoint -> evaluate.py reloads it

@pytest.mark.slow
def test_train_checkpoint_reload_evaluate(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    results = aea.main(["--root", synthetic_root, "--dataset", "synthetic",
                        "--height", str(H), "--width", str(W), "--epochs", "2",
                        "--warmup-epochs", "1", "--P", "4", "--K", "2", "--weights", "none",
                        "--device", "cpu", "--out", str(out), "--eval-untrained",
                        "--keep-every", "1"])
    printed = capsys.readouterr().out
    # every loss term logged: the warm-up epoch (basic alone), then Eq. (8)'s three terms
    assert "epoch 1/2  lr 1e-02  iter 2/2  L_I1" in printed
    assert "L_I2" not in printed.split("epoch 2/2")[0]
    assert all(t in printed.split("epoch 2/2")[1] for t in ("L_I1", "L_I2", "L_T"))
    # the untrained network, the last epoch, and each half of the 5120-d test feature alone
    assert list(results) == ["untrained", "epoch 2", "epoch 2, basic half",
                             "epoch 2, complementary half"]
    assert "untrained" in printed and "mAP (official)" in printed
    assert "epoch 2, complementary half" in printed
    ckpt = common.load_checkpoint(str(out / "last.pt"))
    assert ckpt["paper"] == "aea" and ckpt["epoch"] == 2 and ckpt["config"]["height"] == H
    assert os.path.isfile(out / "epoch_1.pt") and "aug_generator" in ckpt
    # log.csv: a row per epoch, the warm-up's term, then Eq. (8)'s, and the evaluation's scores
    with open(out / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert [(r["epoch"], r["L_I2"] == "", r["rank-1 euclidean"] == "") for r in log] == [
        ("1", True, True), ("2", False, False)]
    assert float(log[1]["rank-1 euclidean"]) == pytest.approx(100 * results["epoch 2"]["cmc"][0])
    assert ckpt["log"][1]["mAP euclidean"] == pytest.approx(100 * results["epoch 2"]["mAP"])
    # evaluate.py dispatches to aea.model_from_checkpoint and scores the 5120-d feature
    again = evaluate.main(["--checkpoint", str(out / "last.pt"), "--root", synthetic_root,
                           "--dataset", "synthetic", "--device", "cpu"])
    assert "euclidean" in capsys.readouterr().out
    assert again["euclidean"]["mAP"] == pytest.approx(results["epoch 2"]["mAP"], abs=1e-6)
    model, size = aea.model_from_checkpoint(ckpt)
    assert size == (H, W) and not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, H, W)).shape == (2, 5120)
    # the folder is free again, and holds the run's files only
    assert sorted(os.listdir(out)) == ["best.pt", "epoch_1.pt", "epoch_2.pt", "last.pt",
                                       "log.csv"]


@pytest.mark.slow
def test_a_run_from_a_weights_file_scores_random_weights_then_its_start(synthetic_root,
                                                                         tmp_path):
    # --eval-untrained from a weights file: two rows before training, the same network with
    # random weights, then the network the run starts from (the file's backbone in both halves,
    # new heads); the start row is the network of epoch 0, as evaluate.py scores it
    resnet = torchvision.models.resnet18(weights=None)
    start = tmp_path / "start.pt"
    torch.save(resnet.state_dict(), start)
    out = tmp_path / "run"
    results = aea.main(["--root", synthetic_root, "--dataset", "synthetic", "--arch", "resnet18",
                        "--height", str(H), "--width", str(W), "--epochs", "1",
                        "--warmup-epochs", "0", "--P", "4", "--K", "2", "--weights", str(start),
                        "--device", "cpu", "--out", str(out), "--eval-untrained"])
    assert list(results)[:2] == ["random weights", f"start: weights {start}"]
    assert results["random weights"]["mAP"] != results[f"start: weights {start}"]["mAP"]
    # the start: built as `train` builds it after seeding, then scored the same way
    common.seed_everything(0)
    model = aea.AEA(8, "aea", str(start), 0.5, "resnet18").eval()
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    again = evaluate.evaluate_model(model, ds, (H, W), "cpu")["euclidean"]
    assert again["mAP"] == pytest.approx(results[f"start: weights {start}"]["mAP"], abs=1e-6)


def small_run(root, out, *extra):
    """Flags of an in-process run on the conftest set (8 training identities): P=4 x K=2 -> 2
    steps an epoch."""
    return ["--root", root, "--dataset", "synthetic", "--height", str(H), "--width", str(W),
            "--P", "4", "--K", "2", "--weights", "none", "--device", "cpu", "--out", str(out),
            *extra]


def signal_at_call(monkeypatch, function_name, call, signum):
    """Wrap aea.<function_name> so that this process sends itself `signum` (a real signal) just
    before call number `call`: the run stops there (aea.main makes SIGTERM stop it as Ctrl-C
    does), before that call's work."""
    real, calls = getattr(aea, function_name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)
    monkeypatch.setattr(aea, function_name, wrapped)


@pytest.mark.slow
def test_b4_run_erases_once_saves_the_mask_and_resumes_with_it(synthetic_root, tmp_path,
                                                               monkeypatch, capsys):
    # B4 with --epochs 2 --warmup-epochs 0 (ResNet-18s): epochs 1-2 the basic network alone, then
    # the attention erasing computed once, then 2 - 0 joint epochs; the checkpoint holds the mask
    # bit-packed, one bit per pixel: [N, H, W / 8] with exactly k = round(10% of 64*32) = 205
    # bits set per image
    b4 = ["--variant", "b4", "--epochs", "2", "--warmup-epochs", "0", "--arch", "resnet18"]
    aea.main(small_run(synthetic_root, tmp_path / "b4", *b4))
    printed = capsys.readouterr().out
    assert "erasing fixed" in printed and "L_I2" in printed.split("epoch 3/4")[1]
    reference = common.load_checkpoint(str(tmp_path / "b4" / "last.pt"))
    packed = reference["erased"]
    n_train = len(data.load_dataset(synthetic_root, "synthetic", verbose=False).train)
    assert packed.shape == (n_train, H, W // 8)
    bits = np.unpackbits(packed.numpy(), axis=-1)
    assert (bits.reshape(n_train, -1).sum(axis=1) == 205).all()
    # The same run stopped by SIGTERM before step 7 = epoch 4, step 1 of 2: last.pt holds
    # epoch 3, the first joint epoch, with the mask computed at its start ...
    out = tmp_path / "stopped"
    flags = small_run(synthetic_root, out, *b4)
    signal_at_call(monkeypatch, "training_step", 7, signal.SIGTERM)
    assert aea.main(flags) is None
    printed = capsys.readouterr().out
    assert f"stopped by SIGTERM; {out / 'last.pt'} holds the last epoch that ended" in printed
    stopped = common.load_checkpoint(str(out / "last.pt"))
    assert stopped["epoch"] == 3
    assert torch.equal(stopped["erased"], packed)
    # ... and --resume takes the mask from the checkpoint (computing it again would fail here),
    # redoes epoch 4, and the run ends bit-identical to the uninterrupted one
    monkeypatch.undo()
    monkeypatch.setattr(aea, "fixed_erasing_masks",
                        lambda *a, **k: pytest.fail("the mask was computed again"))
    aea.main(flags + ["--resume"])
    assert f"resuming {out / 'last.pt'} at epoch 4" in capsys.readouterr().out
    assert_same_weights(common.load_checkpoint(str(out / "last.pt"))["model"], reference["model"])


@pytest.mark.slow
def test_a_run_stopped_in_its_last_evaluation_is_evaluated_on_resume(synthetic_root, tmp_path,
                                                                     monkeypatch, capsys):
    # B1, 1 epoch: SIGINT arrives as the final evaluation starts. last.pt holds the trained epoch
    # without a score; --resume trains nothing, evaluates, and writes the row into log.csv and
    # last.pt
    out = tmp_path / "run"
    flags = small_run(synthetic_root, out, "--variant", "b1", "--epochs", "1", "--arch",
                      "resnet18")
    signal_at_call(monkeypatch, "score", 1, signal.SIGINT)
    assert aea.main(flags) is None
    assert "stopped by SIGINT; " in capsys.readouterr().out
    stopped = common.load_checkpoint(str(out / "last.pt"))
    assert stopped["epoch"] == 1 and stopped["results"] == {}
    monkeypatch.undo()
    results = aea.main(flags + ["--resume"])
    printed = capsys.readouterr().out
    assert "iter" not in printed and "epoch 1 " in printed and list(results) == ["epoch 1"]
    final = common.load_checkpoint(str(out / "last.pt"))
    assert final["results"]["epoch 1"]["mAP"] == pytest.approx(results["epoch 1"]["mAP"])
    with open(out / "log.csv", newline="") as f:
        row = next(csv.DictReader(f))
    # (log.csv holds 6 significant digits)
    assert float(row["mAP euclidean"]) == pytest.approx(100 * results["epoch 1"]["mAP"], rel=1e-5)


# -----------------------------------------------------------------------------
# Checkpoints: best.pt, a NaN loss, refused resumes (in-process, B1 for speed)

@pytest.mark.slow
def test_best_checkpoint_is_the_epoch_with_the_lowest_mean_loss(synthetic_root, tmp_path,
                                                                monkeypatch):
    # 3 epochs of 2 steps; the logged total loss L is replaced by set values (the training
    # itself is untouched):  epoch 1: 4, 2 -> mean 3;  epoch 2: 0.5, 1.5 -> mean 1;
    # epoch 3: 0.25, 3.75 -> mean 2.
    # best.pt = epoch 2 (lowest MEAN; epoch 3 holds the lowest single step), last.pt = epoch 3.
    values, real = iter([4.0, 2.0, 0.5, 1.5, 0.25, 3.75]), aea.training_step
    monkeypatch.setattr(aea, "training_step",
                        lambda *a: dict(real(*a), L=torch.tensor(next(values))))
    out = tmp_path / "best"
    aea.main(small_run(synthetic_root, out, "--variant", "b1", "--epochs", "3"))
    best = common.load_checkpoint(str(out / "best.pt"))
    last = common.load_checkpoint(str(out / "last.pt"))
    assert (best["epoch"], last["epoch"]) == (2, 3)
    assert [row["L"] for row in last["log"]] == [3.0, 1.0, 2.0]


@pytest.mark.slow
def test_best_link_cut_by_a_stop_is_made_on_resume(synthetic_root, tmp_path, monkeypatch,
                                                   capsys):
    # B1, 1 epoch, stopped between writing last.pt and linking it as best.pt (its epoch is the
    # lowest so far): --resume makes the link before anything else
    out = tmp_path / "run"
    flags = small_run(synthetic_root, out, "--variant", "b1", "--epochs", "1", "--arch",
                      "resnet18")

    def cut(last):
        raise KeyboardInterrupt
    monkeypatch.setattr(common, "link_best", cut)
    assert aea.main(flags) is None
    assert "stopped by SIGINT" in capsys.readouterr().out
    assert (out / "last.pt").exists() and not (out / "best.pt").exists()
    monkeypatch.undo()
    aea.main(flags + ["--resume"])
    assert os.path.samefile(out / "last.pt", out / "best.pt")


@pytest.mark.slow
def test_a_signal_while_last_pt_is_written_keeps_the_previous_epoch_whole(synthetic_root,
                                                                         tmp_path, monkeypatch,
                                                                         capsys):
    # B1, 2 epochs: a real SIGTERM arrives when epoch 2's checkpoint is half written (the bytes
    # are in the temporary file, not yet renamed over last.pt). last.pt stays epoch 1's, whole;
    # the temporary is gone; the resume command is printed; --resume redoes epoch 2
    out = tmp_path / "run"
    flags = small_run(synthetic_root, out, "--variant", "b1", "--epochs", "2", "--arch",
                      "resnet18")
    real_save = torch.save
    saves = [0]

    def save_then_signal(state, f):
        real_save(state, f)
        saves[0] += 1
        if saves[0] == 2:  # epoch 1's last.pt, then epoch 2's
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(torch, "save", save_then_signal)
    assert aea.main(flags) is None
    assert (f"stopped by SIGTERM; {out / 'last.pt'} holds the last epoch that ended"
            in capsys.readouterr().out)
    assert common.load_checkpoint(str(out / "last.pt"))["epoch"] == 1
    # no temporary .last.pt.tmpPID (OUT/.lock: this process's, released when it exits)
    assert sorted(os.listdir(out)) == [".lock", "best.pt", "last.pt", "log.csv"]
    monkeypatch.undo()
    aea.main(flags + ["--resume"])
    assert f"resuming {out / 'last.pt'} at epoch 2" in capsys.readouterr().out
    assert common.load_checkpoint(str(out / "last.pt"))["epoch"] == 2


@pytest.mark.slow
def test_nan_loss_names_step_and_term_and_keeps_the_last_checkpoint(synthetic_root, tmp_path,
                                                                    monkeypatch, capsys):
    # B1, 2 epochs of 2 steps: L_T is computed once a step, so its 4th call is epoch 2, step 2.
    # That call returns NaN; the check at the epoch's last step finds step 1 finite, then in
    # step 2 L_I1 finite and L_T NaN -> "epoch 2/2 step 2/2: the loss term L_T is nan". last.pt
    # is still epoch 1's, byte for byte (its hash taken at the moment the NaN appears).
    out = tmp_path / "nan"
    real, calls, before = common.batch_hard_triplet_loss, [0], {}

    def nan_at_fourth(f, y, m):
        calls[0] += 1
        if calls[0] == 4:
            before["sha"] = hashlib.sha1((out / "last.pt").read_bytes()).hexdigest()
            return real(f, y, m) * float("nan")
        return real(f, y, m)
    monkeypatch.setattr(common, "batch_hard_triplet_loss", nan_at_fourth)
    with pytest.raises(SystemExit) as e:
        common.exit_on_user_error(aea.main, small_run(synthetic_root, out, "--variant", "b1",
                                                      "--epochs", "2"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: epoch 2/2 step 2/2: the loss term L_T is nan" in err
    assert hashlib.sha1((out / "last.pt").read_bytes()).hexdigest() == before["sha"]
    assert common.load_checkpoint(str(out / "last.pt"))["epoch"] == 1


# -----------------------------------------------------------------------------
# Resume and determinism through the real command line: subprocesses, real signals, on the CPU

# the conftest set's 8 training identities in batches of P=2 -> 4 steps an epoch
EPOCHS, STEPS = 2, 4


def cli_flags(root, out):
    """AEA (dynamic erasing), warm-up 1 epoch then 1 joint epoch, 64x32, random weights, CPU."""
    return ["--root", root, "--dataset", "synthetic", "--height", str(H), "--width", str(W),
            "--weights", "none", "--device", "cpu", "--epochs", str(EPOCHS),
            "--warmup-epochs", "1", "--P", "2", "--K", "2", "--out", out]


def load(path):
    """A checkpoint for reading in a test: memory-mapped, so a 460 MB file costs no copy."""
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)


def final_row(stdout):
    """The final table's row, e.g. 'epoch 2   0.00  40.00  70.00  16.09  10.51'."""
    return [line for line in stdout.splitlines() if line.startswith(f"epoch {EPOCHS} ")][-1]


@pytest.fixture(scope="module")
def reference_run(synthetic_root, tmp_path_factory):
    """The uninterrupted run that every resumed run must reproduce bit for bit: (out, stdout,
    model)."""
    out = str(tmp_path_factory.mktemp("reference"))
    done = run_python("aea.py", *cli_flags(synthetic_root, out))
    assert done.returncode == 0, done.stderr
    assert f"epoch {EPOCHS}/{EPOCHS}  lr 1e-02  iter {STEPS}/{STEPS}" in done.stdout
    return out, done.stdout, load(os.path.join(out, "last.pt"))["model"]


@pytest.mark.slow
def test_same_seed_twice_gives_identical_metrics_and_weights(reference_run, synthetic_root,
                                                             tmp_path):
    # run one after the other: side by side, two processes of 2 threads on 2 cores take 3x longer
    again = run_python("aea.py", *cli_flags(synthetic_root, str(tmp_path)))
    assert again.returncode == 0, again.stderr
    assert final_row(again.stdout) == final_row(reference_run[1])
    assert_same_weights(load(tmp_path / "last.pt")["model"], reference_run[2])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference_run, synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    last, best = tmp_path / "run" / "last.pt", tmp_path / "run" / "best.pt"
    script = tmp_path / "signal_at_step.py"
    script.write_text(SIGNAL_AT_STEP)
    # paused inside step 6 = epoch 2, step 2 of 4: epoch 1's last.pt is written, epoch 2 has
    # trained 1 step that no file holds; SIGKILL from outside gives it no chance to write anything
    env = {**os.environ, "STOP_AT": str(STEPS + 2), "STOP_SIGNAL": "PAUSE",
           "PAUSED_FILE": str(tmp_path / "paused")}
    proc = subprocess.Popen([sys.executable, str(script), *cli_flags(synthetic_root, out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (tmp_path / "paused").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    killed = load(last)
    # the kill landed during training: the last checkpoint is epoch 1's end, not the run's end
    assert killed["epoch"] == 1
    resumed = run_python("aea.py", *cli_flags(synthetic_root, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {last} at epoch 2" in resumed.stdout
    final = load(last)
    assert final["epoch"] == EPOCHS
    assert_same_weights(final["model"], reference_run[2])
    # the metrics too, and best.pt is the reference's epoch
    assert final_row(resumed.stdout) == final_row(reference_run[1])
    ref_best = load(os.path.join(reference_run[0], "best.pt"))
    assert load(best)["epoch"] == ref_best["epoch"]
    # log.csv: each epoch once, with the reference's losses and scores (times differ)
    timeless = [[{k: v for k, v in row.items() if k not in ("img/s", "seconds")} for row in log]
                for log in (final["log"], load(os.path.join(reference_run[0], "last.pt"))["log"])]
    assert [row["epoch"] for row in timeless[0]] == list(range(1, EPOCHS + 1))
    assert timeless[0] == timeless[1]
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, EPOCHS + 1))


# the stand-in for `python aea.py` that signals itself, or pauses, at a chosen step
# (conftest.stop_at_step_script)
SIGNAL_AT_STEP = stop_at_step_script("aea", "training_step")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_mid_epoch_exits_0_prints_resume_then_is_bit_identical(how, reference_run,
                                                                        synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    script = tmp_path / "signal_at_step.py"
    script.write_text(SIGNAL_AT_STEP)
    # the signal arrives just before step 6 = epoch 2, step 2 of 4: the run stops there, last.pt
    # holds epoch 1 (the epoch in progress is redone on --resume), and the run exits 0
    stopped = run_python(str(script), *cli_flags(synthetic_root, out),
                         env={**os.environ, "STOP_AT": str(STEPS + 2), "STOP_SIGNAL": how})
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped by {how}; {last} holds the last epoch that ended" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    assert load(last)["epoch"] == 1
    assert not (tmp_path / "run" / ".lock").exists()  # the folder is free again
    # the printed command, run as printed (python -> this interpreter), finishes the run
    argv = shlex.split(stopped.stdout.split("Resume with:\n")[1].splitlines()[0])
    assert argv[:2] == ["python", "aea.py"] and argv[-1] == "--resume"
    resumed = run_python(*argv[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {last} at epoch 2" in resumed.stdout
    # epoch 2 redone from the random states saved at epoch 1's end: the same weights, bit for bit
    final = load(last)
    assert final["epoch"] == EPOCHS
    assert_same_weights(final["model"], reference_run[2])


@pytest.mark.slow
def test_resume_refuses_changed_flags_and_other_files(reference_run, synthetic_root, tmp_path,
                                                      capsys):
    def error(argv):
        with pytest.raises(SystemExit) as e:
            common.exit_on_user_error(aea.main, argv)
        assert e.value.code == 2
        return capsys.readouterr().err

    # another --lr than the run was started with: named, with both values
    err = error(cli_flags(synthetic_root, reference_run[0]) + ["--lr", "0.02", "--resume"])
    assert "--lr 0.01 in the checkpoint, 0.02 now" in err and "resume with the same flags" in err
    # nothing to resume
    err = error(cli_flags(synthetic_root, str(tmp_path / "none")) + ["--resume"])
    assert "--resume: there is no checkpoint" in err
    # AAA-Net's last.pt in --out: what it is, what was expected
    other = tmp_path / "other"
    common.save_checkpoint(str(other / "last.pt"),
                           {"paper": "aaanet", "stage": "stage1", "model": {}, "config": {}})
    err = error(cli_flags(synthetic_root, str(other)) + ["--resume"])
    assert (f"{other / 'last.pt'} is an AAA-Net stage1 checkpoint (aaanet.py); "
            "expected an AEA checkpoint") in err
    # an AEA last.pt with this run's flags but a classifier for 5 identities; the data has 8
    cfg, _ = aea.parse_config(cli_flags(synthetic_root, str(tmp_path / "five")))
    common.save_checkpoint(str(tmp_path / "five" / "last.pt"),
                           {"paper": "aea", "config": dataclasses.asdict(cfg), "epoch": 1,
                            "model": {"basic.FC_2.weight": torch.zeros(5, 2560)}})
    err = error(cli_flags(synthetic_root, str(tmp_path / "five")) + ["--resume"])
    assert "was trained on 5 identities, but this dataset has 8 training identities" in err
    # the finished reference run, resumed: it says so, returns its stored table and trains
    # nothing
    results = aea.main(cli_flags(synthetic_root, reference_run[0]) + ["--resume"])
    printed = capsys.readouterr().out
    assert f"already holds all {EPOCHS} epochs" in printed and "iter" not in printed
    # the last epoch's row and each half of its test feature
    assert list(results) == [f"epoch {EPOCHS}", f"epoch {EPOCHS}, basic half",
                             f"epoch {EPOCHS}, complementary half"]
    assert final_row(printed) == final_row(reference_run[1])

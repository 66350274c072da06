"""Tests for aaanet.py: the 4x4 grid occlusion and the difficult sample (Algorithm 1), Eq. (2)-(4)
on cases worked by hand, the two masks of stage 3, what each stage's step may and may not change,
the three stages end to end through the command line on tiny synthetic data, and the
checkpoints: resume after SIGKILL and SIGINT bit-identical to an uninterrupted run, NaN, refused
files and flags."""

import copy
import dataclasses
import io
import math
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision

import aaanet
import common
import data
from conftest import REPO, assert_same_weights, run_python, stop_at_step_script
import evaluate

# tiny inputs everywhere: 64x32 images give f_r 512x8x4 after conv3_x
H, W = 64, 32


@pytest.fixture(scope="module")
def tiny_model():
    """tiny_model(point) -> a fresh AAANet for 4 identities with the random weights of seed 0,
    8 attention channels. A ResNet-50 from scratch takes about half a second, so each point's
    network is built once for the module and every call returns a deep copy of it, with the
    global generator put back where the build left it: the dropout draws of a test are those of
    a network built just before it."""
    built = {}

    def make(point="conv3_x"):
        if point not in built:
            torch.manual_seed(0)
            network = aaanet.AAANet(4, point, dropout=0.5, attention_channels=8, weights="none")
            built[point] = network, torch.get_rng_state()
        network, rng = built[point]
        torch.set_rng_state(rng)
        return copy.deepcopy(network)
    return make


def tiny_batch(B=4, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, H, W, generator=g), torch.arange(B) % num_classes


# -----------------------------------------------------------------------------
# Algorithm 1 steps 1-2: the 16 masks

@pytest.mark.parametrize("size", [(8, 8), (7, 5), (4, 4), (9, 6), (28, 28), (14, 7)])
@pytest.mark.exercise(9)
def test_grid_masks_partition_the_map(size):
    Hf, Wf = size
    kept = aaanet.grid_masks(Hf, Wf)
    assert kept.shape == (16, Hf, Wf) and kept.dtype == torch.bool
    occluded = ~kept
    # every position is zeroed in exactly one of the 16 copies
    assert (occluded.sum(dim=0) == 1).all()
    for k in range(16):
        ys, xs = occluded[k].nonzero(as_tuple=True)
        # with H, W >= 4 no cell is empty, and each cell is a full rectangle
        assert len(ys) > 0
        assert len(ys) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


@pytest.mark.exercise(9)
def test_grid_cells_when_the_size_is_not_a_multiple_of_4():
    # Row y lies in cell row floor(4y / H). H = 7: y = 0..6 -> 0, 0, 1, 1, 2, 2, 3, so the cell rows
    # hold 2, 2, 2, 1 feature rows. W = 5: x = 0..4 -> 0, 0, 1, 2, 3: 2, 1, 1, 1 columns.
    occluded = ~aaanet.grid_masks(7, 5)
    expected_rows = [[0, 1], [2, 3], [4, 5], [6]]
    expected_cols = [[0, 1], [2], [3], [4]]
    for k in range(16):
        ys, xs = occluded[k].nonzero(as_tuple=True)
        # cell k: row k // 4, column k % 4
        assert sorted(set(ys.tolist())) == expected_rows[k // 4]
        assert sorted(set(xs.tolist())) == expected_cols[k % 4]
    # cell 0 = rows 0-1 x columns 0-1 (4 positions); cell 15 = row 6 x column 4 (1 position)
    assert occluded[0].sum() == 4 and occluded[15].sum() == 1


@pytest.mark.exercise(9)
def test_grid_smaller_than_4_leaves_empty_cells():
    # 3 x 3: y = 0, 1, 2 -> cell rows floor(0) = 0, floor(4/3) = 1, floor(8/3) = 2; cell row 3 and
    # cell column 3 get nothing. So the 9 cells with row < 3 and column < 3 hold one position each,
    # the 7 others (k = 3, 7, 11, 12, 13, 14, 15) are empty: those copies equal the map.
    occluded = ~aaanet.grid_masks(3, 3)
    assert (occluded.sum(dim=0) == 1).all()
    sizes = occluded.sum(dim=(1, 2)).tolist()
    assert [k for k, n in enumerate(sizes) if n == 0] == [3, 7, 11, 12, 13, 14, 15]
    assert all(n == 1 for k, n in enumerate(sizes) if k not in (3, 7, 11, 12, 13, 14, 15))


@pytest.mark.exercise(9)
def test_grid_cells_at_6_and_14_and_other_grids():
    # The floor rule, row y in cell row floor(4y / H):
    #   H = 6:  y = 0..5 -> 0, 0, 1, 2, 2, 3: cell rows of 2, 1, 2, 1 rows
    #   H = 14: y = 0..13 -> 0 0 0 0, 1 1 1, 2 2 2 2, 3 3 3: cell rows of 4, 3, 4, 3 rows
    # (cutting 6 into 2, 2, 1, 1 or 14 into 4, 4, 3, 3, the larger pieces first, is another rule)
    for size, expected in [(6, [[0, 1], [2], [3, 4], [5]]),
                           (14, [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13]])]:
        occluded = ~aaanet.grid_masks(size, size)
        for k in range(16):
            ys, xs = occluded[k].nonzero(as_tuple=True)
            assert sorted(set(ys.tolist())) == expected[k // 4]
            assert sorted(set(xs.tolist())) == expected[k % 4]
    # grid = 2 on a 4 x 3 map: rows floor(2y / 4) = 0, 0, 1, 1; columns floor(2x / 3) = 0, 0, 1.
    # 4 masks, 1 = kept, 0 = the occluded cell (row k // 2, column k % 2):
    kept = aaanet.grid_masks(4, 3, grid=2).int().tolist()
    assert kept == [[[0, 0, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1]],
                    [[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]],
                    [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]],
                    [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]]]


@pytest.mark.exercise(9)
def test_grid_occlusions_are_the_masked_copies():
    f = torch.randn(2, 3, 7, 5)
    copies = aaanet.grid_occlusions(f)
    assert copies.shape == (2, 16, 3, 7, 5)
    kept = aaanet.grid_masks(7, 5).float()
    for k in range(16):
        torch.testing.assert_close(copies[:, k], f * kept[k])
    # each position is zero in exactly one copy, so the 16 copies add up to 15 f
    torch.testing.assert_close(copies.sum(dim=1), 15 * f)


# -----------------------------------------------------------------------------
# Algorithm 1 steps 3-4: the difficult sample, and M_occ

@pytest.mark.exercise(10)
def test_hardest_copy_is_the_argmin_of_the_true_class_probability():
    # f_r is 4x4, so cell k is the single position k. Both images hold the values 0..15 (position k
    # holds k). A stand-in for the rest of the network: logits = [s / 100, 0], s = sum of the map.
    # Copy k removes the value k: s = 120 - k.
    #   image 0, label 0: p = sigmoid((120 - k) / 100), lowest for the largest k: k = 15,
    #     p = sigmoid(1.05) = 1 / (1 + e^-1.05) = 1 / 1.3499 = 0.7408
    #   image 1, label 1: p = 1 - sigmoid((120 - k) / 100), lowest for the smallest k: k = 0,
    #     p = 1 / (1 + e^1.2) = 1 / 4.3201 = 0.2315
    f_r = torch.arange(16.0).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    y = torch.tensor([0, 1])
    calls = []

    def logits_of(f):
        calls.append(f.shape[0])
        s = f.sum(dim=(1, 2, 3))
        return torch.stack([s / 100, torch.zeros_like(s)], dim=1)

    k, p = aaanet.hardest_occlusion(logits_of, f_r, y)
    assert k.tolist() == [15, 0]
    assert p.shape == (2, 16)
    assert p[0, 15].item() == pytest.approx(0.7408, abs=1e-4)
    assert p[1, 0].item() == pytest.approx(0.2315, abs=1e-4)
    assert calls == [32]  # all 2 x 16 copies in ONE batched pass
    # chunked (one image per pass): the same answer, in two passes of 16
    calls.clear()
    k2, p2 = aaanet.hardest_occlusion(logits_of, f_r, y, chunk=1)
    assert k2.tolist() == [15, 0] and calls == [16, 16]
    torch.testing.assert_close(p2, p)


@pytest.mark.exercise(10)
def test_hardest_occlusion_on_a_2x2_grid_in_uneven_chunks():
    # grid = 2 on a 2x2 map: 4 copies, copy k removes position k. Three images holding 0, 1, 2, 3
    # (image b: b times that), logits = [s / 100, 0] as above, s = the copy's sum:
    #   label 0 (images 0, 2): p_k = sigmoid(s_k / 100), lowest for the largest removed value:
    #     k = 3 (image 0 is all 0: every copy ties at p = 1/2, the first, k = 0, is taken)
    #   label 1 (image 1): p_k = 1 - sigmoid((6 - k) / 100), lowest at k = 0
    # chunk = 2: passes of 2 and then 1 image, 8 and 4 copies.
    f_r = torch.arange(4.0).view(1, 1, 2, 2) * torch.arange(3.0).view(3, 1, 1, 1)
    calls = []

    def logits_of(f):
        calls.append(f.shape[0])
        s = f.sum(dim=(1, 2, 3))
        return torch.stack([s / 100, torch.zeros_like(s)], dim=1)

    k, p = aaanet.hardest_occlusion(logits_of, f_r, torch.tensor([0, 1, 0]), grid=2, chunk=2)
    assert k.tolist() == [0, 0, 3] and p.shape == (3, 4) and calls == [8, 4]
    assert p[1].tolist() == pytest.approx([1 - 1 / (1 + math.exp(-(6 - j) / 100))
                                           for j in range(4)])


@pytest.mark.exercise(10)
def test_hardest_occlusion_takes_no_gradient():
    f_r = torch.randn(2, 3, 4, 4, requires_grad=True)
    conv = torch.nn.Conv2d(3, 5, 1)
    k, p = aaanet.hardest_occlusion(lambda f: conv(f).mean(dim=(2, 3)), f_r, torch.tensor([1, 2]))
    assert not p.requires_grad and k.shape == (2,)


@pytest.mark.exercise(11)
def test_occlusion_map_by_hand():
    # C = 2 channels, v = 1..16 on the 4x4 map, channel 0 = v, channel 1 = -v: the channel mean
    # of |f| is v.
    # Copy k = 15 zeroes position (3, 3), the value 16; the largest remaining response is 15, so
    # M_occ = v / 15 with 0 at (3, 3): M_occ[0, 0] = 1/15, M_occ[3, 2] = 15/15 = 1.
    v = torch.arange(1.0, 17.0).view(4, 4)
    f_r = torch.stack([v, -v])[None]                                   # [1, 2, 4, 4]
    M_occ = aaanet.occlusion_map(f_r, torch.tensor([15]))
    assert M_occ.shape == (1, 4, 4)
    assert M_occ[0, 3, 3].item() == 0.0
    assert M_occ[0, 0, 0].item() == pytest.approx(1 / 15)
    assert M_occ[0, 3, 2].item() == pytest.approx(1.0)
    torch.testing.assert_close(M_occ[0].flatten()[:15], v.flatten()[:15] / 15)
    # the second reading: 0 on the chosen cell, 1 elsewhere
    binary = aaanet.occlusion_map(f_r, torch.tensor([5]), reading="binary")
    expected = torch.ones(1, 4, 4)
    expected[0, 1, 1] = 0.0                                            # cell 5: row 1, column 1
    torch.testing.assert_close(binary, expected)


@pytest.mark.exercise(11)
def test_occlusion_map_per_image_and_other_grids():
    # Each image over its own maximum: images v and 10 v (v = 1..16 on 4x4, copy 15) give the
    # same M_occ, v / 15 with 0 at (3, 3). An all-zero map gives M_occ = 0, not NaN (0 / 0).
    v = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    M_occ = aaanet.occlusion_map(torch.cat([v, 10 * v]), torch.tensor([15, 15]))
    torch.testing.assert_close(M_occ[1], M_occ[0])
    assert M_occ[1, 3, 2].item() == pytest.approx(1.0)
    assert torch.equal(aaanet.occlusion_map(torch.zeros(1, 2, 4, 4), torch.tensor([3])),
                       torch.zeros(1, 4, 4))
    # grid = 2: copy 1 occludes cell row 0, cell column 1: rows 0-1, columns 2-3 of the 4x4 map
    binary = aaanet.occlusion_map(v, torch.tensor([1]), grid=2, reading="binary")
    expected = torch.ones(1, 4, 4)
    expected[0, :2, 2:] = 0.0
    torch.testing.assert_close(binary, expected)


# -----------------------------------------------------------------------------
# Eq. (2), (3), (4)

@pytest.mark.exercise(12)
def test_attention_loss_eq2_by_hand():
    # L_att = sum |(max(M, 0) - M_occ) * M|, image 0:
    #   M = 1,   M_occ = 0.5: (1 - 0.5) * 1     = 0.5
    #   M = -2,  M_occ = 1:   (0 - 1) * (-2)    = 2
    #   M = 0.5, M_occ = 0:   (0.5 - 0) * 0.5   = 0.25
    #   M = 3,   M_occ = 1:   (3 - 1) * 3       = 6        -> 8.75
    # image 1: M = 0 everywhere -> 0
    M_att = torch.tensor([[[1.0, -2.0], [0.5, 3.0]], [[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    M_occ = torch.tensor([[[0.5, 1.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    L_att = aaanet.attention_loss(M_att, M_occ)
    assert L_att.tolist() == pytest.approx([8.75, 0.0])
    # gradient of image 0: where M > 0 the term is (M - m) M -> 2M - m; where M < 0 it is
    # |-m M| = m |M|
    #   1 -> 2 - 0.5 = 1.5;  -2 -> d(-1 * M)/dM = -1;  0.5 -> 2 * 0.5 = 1;  3 -> 6 - 1 = 5
    L_att.sum().backward()
    torch.testing.assert_close(M_att.grad[0], torch.tensor([[1.5, -1.0], [1.0, 5.0]]))


@pytest.mark.exercise(12)
def test_attention_loss_below_the_target_counts_positive():
    # 0 < M_att < M_occ makes the product negative: M = 0.5, M_occ = 1 -> (0.5 - 1) * 0.5 = -0.25;
    # the L1 norm counts its absolute value: L_att = 0.25 (+ 2 for M = -2, M_occ = 1 as above)
    M_att = torch.tensor([[[0.5, -2.0]]])
    M_occ = torch.tensor([[[1.0, 1.0]]])
    assert aaanet.attention_loss(M_att, M_occ).tolist() == pytest.approx([2.25])


@pytest.mark.exercise(13)
def test_regularization_loss_eq3_by_hand():
    # L_r = log(1 + exp(-||M||_1)):
    #   ||M||_1 = ln 3 -> log(1 + 1/3) = log(4/3) = 0.287682
    #   ||M||_1 = 0    -> log 2 = 0.693147
    #   ||M||_1 = 200  -> e^-200 ~ 1e-87: 0, and finite (no overflow in exp)
    M_att = torch.zeros(3, 2, 2)
    M_att[0, 0, 0] = math.log(3)
    M_att[2] = torch.tensor([[-100.0, 50.0], [0.0, -50.0]])
    L_r = aaanet.regularization_loss(M_att)
    assert L_r.tolist() == pytest.approx([0.287682, 0.693147, 0.0], abs=1e-6)


@pytest.mark.exercise(13)
def test_regularization_loss_mean_by_hand_and_the_sum_at_28x28():
    # --l-r-norm mean: M = [[1, -1], [2, 0]] -> mean |M| = (1 + 1 + 2 + 0) / 4 = 1,
    # L_r = log(1 + e^-1) = 0.313262 (the printed sum, 4, gives log(1 + e^-4) = 0.018150)
    M_att = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]])
    assert aaanet.regularization_loss(M_att, "mean").item() == pytest.approx(0.313262, abs=1e-6)
    assert aaanet.regularization_loss(M_att, "sum").item() == pytest.approx(0.018150, abs=1e-6)
    # at the paper's 28x28 with |M_att| ~ 1 the sum is ~784: L_r and its gradient are exactly 0;
    # the mean (~1) keeps both: d/dM = -sigmoid(-1) sign(M) / 784 per position
    M_att = (torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0)) + 0.5)
    M_att.requires_grad_()
    aaanet.regularization_loss(M_att, "sum").sum().backward()
    assert (M_att.grad == 0).all()
    M_att.grad = None
    L_r = aaanet.regularization_loss(M_att, "mean")
    L_r.sum().backward()
    assert L_r.item() > 0.2 and (M_att.grad < 0).all()
    expected = -torch.sigmoid(-M_att.detach().mean()) / 784
    torch.testing.assert_close(M_att.grad, expected.expand(1, 28, 28))


@pytest.mark.exercise(14)
def test_adversarial_gate_eq4_some_pass_some_do_not():
    # omega = 0.04; p_bf - p_af = 0.1 (passes), 0.02 (fails), -0.1 (fails), 0.05 (passes)
    # per sample lambda1 L_r + lambda2 L_att with (0.3, 1.7):
    #   sample 0: 0.3 * 1 + 1.7 * 10 = 17.3;  sample 3: 0.3 * 4 + 1.7 * 40 = 69.2
    # L = (17.3 + 0 + 0 + 69.2) / 4 = 21.625 (averaged over the whole batch)
    p_bf = torch.tensor([0.9, 0.5, 0.3, 0.6])
    p_af = torch.tensor([0.8, 0.48, 0.4, 0.55])
    L_r = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    L_att = torch.tensor([10.0, 20.0, 30.0, 40.0], requires_grad=True)
    loss, gate = aaanet.adversarial_loss(L_r, L_att, p_bf, p_af, 0.3, 1.7, 0.04)
    assert gate.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert loss.item() == pytest.approx(21.625)
    # only the samples that pass carry gradient: dL/dL_att = 1.7 / 4 = 0.425,
    # dL/dL_r = 0.3 / 4 = 0.075
    loss.backward()
    assert L_att.grad.tolist() == pytest.approx([0.425, 0.0, 0.0, 0.425])
    assert L_r.grad.tolist() == pytest.approx([0.075, 0.0, 0.0, 0.075])


@pytest.mark.exercise(14)
def test_adversarial_gate_at_omega_is_shut():
    # the drop must exceed omega: p_bf - p_af = 0.25 (exact in binary) = omega -> shut; 0.5 ->
    # open. The gate is a float 0/1 tensor (the training step logs its mean):
    #   L = (0 + 0.5 * 2 + 1 * 20) / 2 = 10.5
    p_bf = torch.tensor([0.75, 0.75])
    p_af = torch.tensor([0.5, 0.25])
    L_r = torch.tensor([1.0, 2.0])
    L_att = torch.tensor([10.0, 20.0])
    loss, gate = aaanet.adversarial_loss(L_r, L_att, p_bf, p_af, 0.5, 1.0, 0.25)
    assert gate.dtype == torch.float32 and gate.tolist() == [0.0, 1.0]
    assert loss.item() == pytest.approx(10.5)


# -----------------------------------------------------------------------------
# Algorithm 2 step 1: the masks

def test_attention_mask_by_hand():
    # relu(M) = [0, 0, 1, 2, 3, 4]; min-max -> [0, 0, .25, .5, .75, 1]; above 0.5 -> the last two
    # are occluded (0 in the 0-1 mask), the rest kept (1)
    M_att = torch.tensor([[[-1.0, 0.0, 1.0], [2.0, 3.0, 4.0]]])
    assert aaanet.attention_mask(M_att, 0.5).tolist() == [[[True, True, True],
                                                           [True, False, False]]]
    assert aaanet.attention_mask(M_att, 0.2).tolist() == [[[True, True, False],
                                                           [False, False, False]]]
    # a map with no positive value occludes nothing
    assert aaanet.attention_mask(-torch.ones(1, 2, 3)).all()


def test_attention_aware_occlusion_by_hand():
    # f_r one channel [[2, 4], [6, 8]], M_att [[-1, 1], [2, 3]]: relu [[0, 1], [2, 3]], min-max
    # -> A = [[0, 1/3], [2/3, 1]]; above 0.5 occluded: kept [[1, 1], [0, 0]].
    # features: f_r * kept = [[2, 4], [0, 0]]; attention-aware: f_r * A * kept = [[0, 4/3], [0, 0]]
    f_r = torch.tensor([[[[2.0, 4.0], [6.0, 8.0]]]])
    M_att = torch.tensor([[[-1.0, 1.0], [2.0, 3.0]]], requires_grad=True)
    kept = aaanet.attention_mask(M_att, 0.5)
    assert kept.tolist() == [[[True, True], [False, False]]]
    assert aaanet.occluded_maps(f_r, M_att, kept).tolist() == [[[[2.0, 4.0], [0.0, 0.0]]]]
    f_af = aaanet.occluded_maps(f_r, M_att, kept, "attention-aware")
    torch.testing.assert_close(f_af, torch.tensor([[[[0.0, 4 / 3], [0.0, 0.0]]]]))
    assert not f_af.requires_grad  # A carries no gradient to the attention branch


def test_response_mask_top_third_with_ties():
    # channel means [[5, 1, 5], [2, 9, 0], [5, 3, 4]]; round(9 / 3) = 3 positions: 9 (position 4),
    # then three 5s tie (positions 0, 2, 6): the lower indices 0 and 2 win. 0 = occluded.
    means = torch.tensor([[5.0, 1.0, 5.0], [2.0, 9.0, 0.0], [5.0, 3.0, 4.0]])
    # [1, 2, 3, 3], channel mean = means
    f_r = torch.stack([means + 1, means - 1])[None]
    kept = aaanet.response_mask(f_r)
    assert kept.tolist() == [[[False, True, False], [True, False, True], [True, True, True]]]
    # exactly round(h * w / 3) positions per image: 7 x 5 -> round(11.67) = 12
    assert ((~aaanet.response_mask(torch.rand(3, 4, 7, 5))).sum(dim=(1, 2)) == 12).all()


# -----------------------------------------------------------------------------
# What each stage's step changes

def snapshot(module):
    """Copies of every parameter and buffer (BatchNorm running statistics too)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(module, before):
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def test_stage2_step_moves_only_the_attention_branch(tiny_model):
    model, (x, y) = tiny_model(), tiny_batch()
    optimizer = common.make_sgd(model.freeze_for("stage2"), lr=0.1)
    backbone, classifier = snapshot(model.backbone), snapshot(model.classifier)
    attention = snapshot(model.attention)
    terms = aaanet.training_step(model, optimizer, "stage2", x, y, aaanet.Config())
    # frozen: no parameter, no BatchNorm running mean/var, not even num_batches_tracked moved
    assert changed(model.backbone, backbone) == set()
    assert changed(model.classifier, classifier) == set()
    assert all(p.grad is None for p in model.backbone.parameters())
    # the attention branch learned: every weight, and its own BatchNorm statistics (train mode)
    assert changed(model.attention, attention) == set(attention)
    assert set(terms) == {"L_adv", "L_att", "L_r", "p_hard"}
    # Eq. (1)
    assert terms["L_adv"].item() == pytest.approx(terms["L_att"].item() + terms["L_r"].item(),
                                                  rel=1e-5)


def test_stage2_binary_m_occ_variant_runs(tiny_model):
    model, (x, y) = tiny_model(), tiny_batch()
    model.freeze_for("stage2")
    cfg = aaanet.Config(m_occ="binary")
    with torch.no_grad():
        f_r = model.middle(x)
    M_occ, _ = aaanet.occlusion_target(model, f_r, y, cfg)
    # 8x4 map, cells of 2x1: each M_occ is 1 except exactly 2 positions
    assert set(M_occ.unique().tolist()) == {0.0, 1.0}
    assert ((M_occ == 0).sum(dim=(1, 2)) == 2).all()
    optimizer = common.make_sgd(model.freeze_for("stage2"), lr=0.1)
    assert torch.isfinite(aaanet.training_step(model, optimizer, "stage2", x, y, cfg)["L_adv"])


# conv3_x (the default) and conv5_x (no stage after f_r) in the fast run, all four in the full one
@pytest.mark.parametrize("point", [p if p in ("conv3_x", "conv5_x") else
                                   pytest.param(p, marks=pytest.mark.slow) for p in aaanet.POINTS])
def test_stage3_step_moves_everything(tiny_model, point):
    # Table 3: every occlusion point. omega = -1 (outside the flags' range; set here directly) makes
    # every sample pass the gate, so the attention branch gets Eq. (4)'s gradient; momentum and
    # weight decay 0, so whatever moves moved because of a gradient.
    model, (x, y) = tiny_model(point=point), tiny_batch()
    optimizer = common.make_sgd(model.freeze_for("stage3"), lr=0.1, momentum=0, weight_decay=0)
    before = snapshot(model)
    cfg = dataclasses.replace(aaanet.Config(point=point), omega=-1.0)
    terms = aaanet.training_step(model, optimizer, "stage3", x, y, cfg)
    moved = changed(model, before)
    # every parameter and every BatchNorm statistic, backbone, classifier and attention branch
    # (the pooled stages after conv5_x do not exist when f_r is conv5_x itself, nothing is left out)
    assert moved == set(before)
    assert terms["gate_pass"].item() == 1.0 and terms["gate_batches"].item() == 1.0
    # the grid probe ran in eval mode and gave the training mode back
    assert model.backbone.training
    expected = terms["L_ce_bf"] + terms["L_ce_af"] + terms["L_gate"]
    assert terms["L"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_stage3_gate_closed_leaves_the_attention_branch_alone(tiny_model):
    # omega = 0.99: no sample of an untrained network loses 0.99 of true-class probability, the gate
    # is shut, Eq. (4) adds nothing, and the hard mask passes no gradient to M_att: the attention
    # branch's weights stay (its BatchNorm statistics still move, it ran in train mode)
    model, (x, y) = tiny_model(), tiny_batch()
    optimizer = common.make_sgd(model.freeze_for("stage3"), lr=0.1, momentum=0, weight_decay=0)
    before = snapshot(model.attention)
    terms = aaanet.training_step(model, optimizer, "stage3", x, y, aaanet.Config(omega=0.99))
    assert terms["gate_pass"].item() == 0.0 and terms["L_gate"].item() == 0.0
    assert terms["gate_batches"].item() == 0.0
    statistics = {k for k in before if "running" in k or "num_batches" in k}
    assert changed(model.attention, before) == statistics


def test_stage3_logs_the_share_of_samples_and_of_batches_the_gate_opens_for(tiny_model,
                                                                              monkeypatch):
    # Eq. (4)'s gate set by hand: open for sample 1 of 4 -> gate_pass = 1/4 (the share of
    # samples), gate_batches = 1 (it opened for at least one sample of the batch); shut for all
    # -> 0 and 0. Over an epoch of these two batches the log's means are gate_pass
    # (0.25 + 0) / 2 = 0.125 and gate_batches (1 + 0) / 2 = 0.5: half the batches
    gates = [torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.zeros(4)]

    def gate_by_hand(L_r, L_att, p_bf, p_af, lambda1, lambda2, omega):
        gate = gates.pop(0)
        return (gate * (lambda1 * L_r + lambda2 * L_att)).mean(), gate
    monkeypatch.setattr(aaanet, "adversarial_loss", gate_by_hand)
    model, (x, y) = tiny_model(), tiny_batch()
    model.freeze_for("stage3")
    progress = common.Progress(2, file=io.StringIO())
    logged = []
    with torch.no_grad():
        for _ in range(2):
            _, terms = aaanet.stage3_loss(model, x, y, aaanet.Config())
            logged.append((terms["gate_pass"].item(), terms["gate_batches"].item()))
            progress.update(len(y), terms)
    assert logged == [(0.25, 1.0), (0.0, 0.0)]
    summary = progress.summary()
    assert summary["gate_pass"] == pytest.approx(0.125)
    assert summary["gate_batches"] == pytest.approx(0.5)


def test_stage3_attention_aware_stream_trains_and_passes_no_gradient_to_m_att(tiny_model):
    # --occlude attention-aware: with the gate shut (omega 0.99), the attention branch's weights
    # stay, as with the plain occlusion: the product f_r * A * mask passes it no gradient
    model, (x, y) = tiny_model(), tiny_batch()
    optimizer = common.make_sgd(model.freeze_for("stage3"), lr=0.1, momentum=0, weight_decay=0)
    before, backbone = snapshot(model.attention), snapshot(model.backbone)
    cfg = aaanet.Config(omega=0.99, occlude="attention-aware")
    terms = aaanet.training_step(model, optimizer, "stage3", x, y, cfg)
    assert terms["gate_pass"].item() == 0.0 and math.isfinite(terms["L_ce_af"].item())
    statistics = {k for k in before if "running" in k or "num_batches" in k}
    assert changed(model.attention, before) == statistics
    assert changed(model.backbone, backbone) == set(backbone)


def test_stage3_response_mask_variant_occludes_a_third(tiny_model):
    # Table 4: 8x4 f_r -> round(32 / 3) = 11 positions occluded per image
    model, (x, y) = tiny_model(), tiny_batch()
    optimizer = common.make_sgd(model.freeze_for("stage3"), lr=0.01)
    cfg = aaanet.Config(mask_source="response")
    terms = aaanet.training_step(model, optimizer, "stage3", x, y, cfg)
    assert terms["occluded"].item() == pytest.approx(11 / 32)


def test_forward_is_the_pooled_2048_feature(tiny_model):
    model, (x, _) = tiny_model(), tiny_batch()
    model.eval()
    with torch.no_grad():
        f_r = model.middle(x)
        assert f_r.shape == (4, 512, 8, 4)
        assert model.attention_map(f_r).shape == (4, 8, 4)
        g = model(x)
        assert g.shape == (4, 2048)
        # the unoccluded image through all of ResNet-50
        torch.testing.assert_close(g, model.backbone(x))
        assert model.logits_from_middle(f_r).shape == (4, 4)


def test_resnet18_network_gives_512_d_features():
    # --arch resnet18: f_r after conv3_x has 128 channels (the attention branch's input), the
    # pooled feature g and the classifier's input 512
    torch.manual_seed(0)
    model = aaanet.AAANet(4, "conv3_x", attention_channels=8, weights="none", arch="resnet18")
    model.eval()
    assert model.attention[0].in_channels == 128 and model.classifier.in_features == 512
    with torch.no_grad():
        x = tiny_batch()[0]
        assert model.middle(x).shape == (4, 128, 8, 4) and model(x).shape == (4, 512)
    # rebuilt from its checkpoint as ResNet-18; a checkpoint older than --arch as ResNet-50
    ckpt = {"paper": "aaanet", "stage": "stage1", "model": model.state_dict(),
            "config": dataclasses.asdict(aaanet.resolve(aaanet.Config(
                root="x", attention_channels=8, arch="resnet18"), "stage1"))}
    assert aaanet.model_from_checkpoint(ckpt)[0].classifier.in_features == 512
    del ckpt["config"]["arch"]
    with pytest.raises(common.UserError, match="do not fit AAANet"):
        aaanet.model_from_checkpoint(ckpt)  # ResNet-18 weights into the default ResNet-50


def test_resolve_fills_the_paper_defaults_per_stage():
    cfg = aaanet.Config(root="somewhere", dataset="duke")
    s1, s2, s3 = (aaanet.resolve(cfg, s) for s in aaanet.STAGE_NAMES)
    # Sec. 4.2
    assert (s1.lr, s1.lr_step, s2.lr, s2.lr_step, s3.lr, s3.lr_step) == (
        0.001, 2, 0.0001, 3, 0.0001, 3)
    assert s1.dropout == 0.6 and aaanet.resolve(aaanet.Config(root="x"), "stage1").dropout == 0.5
    assert (s1.init, s2.init, s3.init) == (
        "", "runs/aaanet/stage1/last.pt", "runs/aaanet/stage2/last.pt")
    response = dataclasses.replace(cfg, mask_source="response")
    assert aaanet.resolve(response, "stage3").init == "runs/aaanet/stage1/last.pt"
    for bad, message in [(dict(omega=-0.1), "--omega"), (dict(lr=-1.0), "--lr"),
                         (dict(threshold=1.5), "--threshold"), (dict(lambda1=-1.0), "--lambda1"),
                         (dict(root=""), "--root is required"),
                         (dict(eval_metrics=("bogus",)), "--eval-metrics")]:
        with pytest.raises(common.UserError, match=message):
            aaanet.resolve(dataclasses.replace(cfg, **bad), "stage3")


def test_resolve_refuses_a_grid_finer_than_f_r_and_a_negative_seed(tiny_model):
    # f_r after conv3_x is the input / 8, rounded up at each stride: 40x33 -> 5x5. Grid 5 gives
    # every cell one position; grid 6 would leave cells empty, grid 100 makes 10,000 copies
    cfg = aaanet.Config(root="x", height=40, width=33)
    assert tiny_model("conv3_x").middle(torch.zeros(1, 3, 40, 33)).shape[-2:] == (5, 5)
    aaanet.resolve(dataclasses.replace(cfg, grid=100), "stage1")  # stage 1 never occludes
    for stage in ("stage2", "stage3"):  # both run Algorithm 1's grid (stage 3: Eq. (4)'s M_occ)
        aaanet.resolve(dataclasses.replace(cfg, grid=5), stage)
        for grid in (6, 100):
            with pytest.raises(common.UserError, match=rf"--grid {grid} is finer than f_r's 5x5 "
                               r"map \(--point conv3_x, 40x33 inputs\): give --grid 5 or less"):
                aaanet.resolve(dataclasses.replace(cfg, grid=grid), stage)
    with pytest.raises(common.UserError, match=r"--seed must lie in \[0, 4294967295\], got -1"):
        aaanet.resolve(dataclasses.replace(cfg, seed=-1), "stage1")


def test_init_must_have_what_the_stage_inherits(tmp_path):
    # stage 3 inherits stage 2's input size and attention branch (point, width, the grid and the
    # M_occ reading it learned from); stage 2, and stage 1 going on from a stage 1, inherit stage
    # 1's input size. Each difference is named with the --init's value, before any weight is
    # loaded (model=None is never touched).
    trained = aaanet.Config(root="x", height=128, width=64)  # f_r 16x8: every grid here fits
    for stage, previous in (("stage1", "stage1"), ("stage2", "stage1"), ("stage3", "stage2")):
        path = str(tmp_path / f"{previous}.pt")
        common.save_checkpoint(path, {"paper": "aaanet", "stage": previous, "model": {
            "classifier.weight": torch.zeros(3, 2048)}, "config": dataclasses.asdict(trained),
            "epoch": trained.epochs})
        changes = [(dict(height=96), "--height 128"), (dict(width=48), "--width 64"),
                   (dict(arch="resnet18"), "--arch resnet50")]
        if stage == "stage3":
            changes += [(dict(attention_channels=32), "--attention-channels 64"),
                        (dict(point="conv4_x"), "--point conv3_x"), (dict(grid=2), "--grid 4"),
                        (dict(m_occ="binary"), "--m-occ response")]
        for change, named in changes:
            cfg = aaanet.resolve(dataclasses.replace(trained, init=path, **change), stage)
            with pytest.raises(common.UserError, match=re.escape(
                    f"--init {path} was trained with {named}; {stage} inherits them")):
                aaanet.load_init(None, cfg, stage, 3)


def test_init_must_be_a_finished_stage(tmp_path):
    # a stage 1 stopped after 3 of its 10 epochs (Ctrl-C, a cluster's time limit) is not the
    # baseline stage 2 fine-tunes: refused, with the way to finish it, before any weight is read
    cfg = aaanet.Config(root="x", height=128, width=64)
    path = str(tmp_path / "stage1.pt")
    common.save_checkpoint(path, {"paper": "aaanet", "stage": "stage1", "model": {
        "classifier.weight": torch.zeros(3, 2048)}, "config": dataclasses.asdict(cfg), "epoch": 3})
    for stage in ("stage2", "stage1"):  # stage 1 going on from it too (the compare's control)
        resolved = aaanet.resolve(dataclasses.replace(cfg, init=path), stage)
        with pytest.raises(common.UserError, match=re.escape(f"--init {path}: that stage1 run "
                                                             "stopped after epoch 3 of its 10")):
            aaanet.load_init(None, resolved, stage, 3)


def test_stage1_goes_on_from_a_finished_stage1_only(tmp_path):
    # stage 1 with --init: the baseline (backbone and classifier) of a finished stage 1, the
    # attention branch left as drawn (stage 1 does not use it); a stage 2 checkpoint is refused
    torch.manual_seed(0)
    trained = aaanet.AAANet(4, attention_channels=8, weights="none", arch="resnet18")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # unlike any fresh draw
    cfg = aaanet.Config(root="x", height=64, width=32, arch="resnet18", attention_channels=8)
    path = str(tmp_path / "stage1.pt")
    common.save_checkpoint(path, {"paper": "aaanet", "stage": "stage1", "epoch": cfg.epochs,
                                  "config": dataclasses.asdict(cfg),
                                  "model": trained.state_dict()})
    resolved = aaanet.resolve(dataclasses.replace(cfg, init=path), "stage1")
    assert resolved.init == path  # as given: stage 1 has no previous stage to default to
    fresh = aaanet.AAANet(4, attention_channels=8, weights="none", arch="resnet18")
    drawn = snapshot(fresh.attention)
    aaanet.load_init(fresh, resolved, "stage1", 4)
    loaded = fresh.state_dict()
    for k, v in trained.state_dict().items():
        if k.startswith("attention."):
            assert torch.equal(loaded[k], drawn[k[len("attention."):]]), k
        else:
            assert torch.equal(loaded[k], v), k
    common.save_checkpoint(path, {"paper": "aaanet", "stage": "stage2", "epoch": cfg.epochs,
                                  "config": dataclasses.asdict(cfg),
                                  "model": trained.state_dict()})
    with pytest.raises(common.UserError, match=re.escape(
            f"--init {path} is a stage2 checkpoint; stage1 starts from stage1")):
        aaanet.load_init(fresh, resolved, "stage1", 4)


# -----------------------------------------------------------------------------
# The stages' budgets, the compare's rows and their diagnostics

def test_lr_steps_by_hand_and_as_the_schedule_steps():
    # 3 epochs of 5 steps, lr 0.1 x0.1 every 2 epochs: epochs 0 and 1 at 0.1, epoch 2 at 0.01
    #   0.1 * 5 + 0.1 * 5 + 0.01 * 5 = 0.5 + 0.5 + 0.05 = 1.05
    assert aaanet.lr_steps(3, 0.1, 2, 5) == pytest.approx(1.05)
    # gamma 0.5, 1 step per epoch, lr 1 every epoch: 1 + 0.5 + 0.25 = 1.75
    assert aaanet.lr_steps(3, 1.0, 1, 1, gamma=0.5) == pytest.approx(1.75)
    # the lr the training loop's SGD holds at each step (common.step_schedule, stepped per
    # epoch), summed over the steps: the same
    weight = torch.zeros(1, requires_grad=True)
    optimizer = common.make_sgd([weight], lr=0.01)
    schedule = common.step_schedule(optimizer, 3, 0.1)
    total = 0.0
    for epoch in range(7):
        total += 4 * optimizer.param_groups[0]["lr"]  # 4 steps per epoch
        optimizer.step()
        schedule.step()
    assert total == pytest.approx(aaanet.lr_steps(7, 0.01, 3, 4))


def test_stage_budget_beside_the_papers_share(monkeypatch):
    # The paper (Sec. 4.2), per step per epoch (they cancel in the share), 10 epochs each:
    #   stage 1, lr 0.001 x0.1 every 2: 0.001 * 2 * (1 + 0.1 + 0.01 + 0.001 + 0.0001) = 0.0022222
    #   stages 2 and 3, lr 0.0001 x0.1 every 3: 0.0001 * (3 * (1 + 0.1 + 0.01) + 1 * 0.001)
    #     = 0.0001 * 3.331 = 0.0003331
    #   share: 0.0003331 / 0.0022222 = 0.1499, "15.0%"
    # DEMO_STAGES set here, 5 steps per epoch:
    #   stage 1, 2 epochs lr 0.1 x0.1 every 1: 5 * (0.1 + 0.01) = 0.55
    #   stage 2, 1 epoch lr 0.1: 5 * 0.1 = 0.5 -> 0.5 / 0.55 = 90.9%
    #   stage 3, 4 epochs lr 0.01 x0.1 every 2: 5 * (0.01 + 0.01 + 0.001 + 0.001) = 0.11 -> 20.0%
    monkeypatch.setattr(aaanet, "DEMO_STAGES", {"stage1": dict(epochs=2, lr=0.1, lr_step=1),
                                                "stage2": dict(epochs=1, lr=0.1, lr_step=1),
                                                "stage3": dict(epochs=4, lr=0.01, lr_step=2)})
    paper = "paper 15.0% (10 epochs, lr 0.0001 x0.1 every 3, Sec. 4.2)"
    assert aaanet.stage_budget(5) == [
        "lr x steps (each SGD step's lr, summed over a stage; 5 steps per epoch here, equal steps "
        "per epoch in the paper) as a share of stage 1's:",
        f"  stage2: demo 90.9% (1 epochs, lr 0.1 x0.1 every 1), {paper}",
        f"  stage3: demo 20.0% (4 epochs, lr 0.01 x0.1 every 2), {paper}"]
    # the control row follows DEMO_STAGES too: stage 2's 1 + stage 3's 4 epochs, stage 3's lr
    assert aaanet.continued_schedule() == dict(epochs=5, lr=0.01, lr_step=2)


def test_the_demo_is_the_pretrained_starts_row_and_its_stages_near_the_papers_share():
    # the demo trains as the compare's pretrained start: its weights, padding and stage-1 lr
    pretrained = aaanet.STARTS["pretrained"]
    assert (aaanet.DEMO["weights"], aaanet.DEMO["pad"]) == (pretrained["weights"],
                                                            pretrained["pad"])
    assert aaanet.DEMO_STAGES["stage1"]["lr"] == pretrained["stage1_lr"]
    # stages 2 and 3 long enough to matter: each within 10-20% of stage 1's lr x steps, as the
    # paper's 15% (37 steps per epoch, the demo's; the share does not depend on it)
    for line in aaanet.stage_budget(37)[1:]:
        share = float(line.split("demo ")[1].split("%")[0])
        assert 10 <= share <= 20, line


def test_continued_row_is_stage1_again_for_the_epochs_of_stages_2_and_3(monkeypatch, tmp_path):
    # compare_run with train_stage recorded, not run: which stage each row trains, from where,
    # on which schedule. Row folders as tools.py names them: OUT/<row>/seed<seed>
    stages = {"stage1": dict(epochs=7, lr=0.05, lr_step=5),
              "stage2": dict(epochs=2, lr=0.002, lr_step=1),
              "stage3": dict(epochs=3, lr=0.003, lr_step=2)}
    monkeypatch.setattr(aaanet, "DEMO_STAGES", stages)
    calls = []

    def record(cfg, stage, ds, images):
        calls.append((stage, cfg))
        return None, {"euclidean": f"{stage} scores"}
    monkeypatch.setattr(aaanet, "train_stage", record)
    # as the first run of the compare on data/synthetic read it
    loaded = {"asked": "data/synthetic", "root": "data", "ds": "the dataset", "images": {}}
    spec = {label: that for label, that, _ in aaanet.COMPARE}
    out = tmp_path / "cmp"
    shared = str(out / "Stage_1" / "seed3" / "stage1" / "last.pt")

    def run(label, start="random", settings=None):
        calls.clear()
        folder = str(out / label.replace(", ", "_").replace(" ", "_") / "seed3")
        results = aaanet.compare_run(spec[label], 3, folder, "cpu", False, loaded,
                                     "data/synthetic", start, settings)
        return results, [(stage, cfg.init, cfg.epochs, cfg.lr, cfg.lr_step, cfg.weights,
                          cfg.eval_metrics) for stage, cfg in calls]

    # the control: stage 1's training from the Stage 1 row's network of seed 3, for stage 2's 2
    # + stage 3's 3 epochs at stage 3's lr and lr step, scored under the demo's metrics
    results, trained = run("Stage 1, continued", "pretrained")
    # (the control's schedule is stage 3's: the start's stage-1 lr does not reach it)
    assert trained == [("stage1", shared, 2 + 3, 0.003, 2, "synthetic", aaanet.DEMO_METRICS)]
    assert results == {"euclidean": "stage1 scores"} and calls[0][1].seed == 3
    assert calls[0][1].dropout == aaanet.DEMO["dropout"] and calls[0][1].point == "conv3_x"
    # the Stage 1 row: from the start's weights, on stage 1's schedule at the start's lr
    pretrained_lr = aaanet.STARTS["pretrained"]["stage1_lr"]
    random_lr = aaanet.STARTS["random"]["stage1_lr"]
    assert run("Stage 1", "pretrained")[1] == [("stage1", "", 7, pretrained_lr, 5, "synthetic",
                                                 aaanet.DEMO_METRICS)]
    assert run("Stage 1")[1] == [("stage1", "", 7, random_lr, 5, "none", aaanet.DEMO_METRICS)]
    # --set: a stage's schedule or a Config field over the demo's, in every row; the control
    # follows the stages trained: 2 + 4 epochs when stage 3 trains 4
    settings = {"stage3.epochs": "4", "stage1.lr": "0.02", "dropout": "0.3"}
    assert run("Stage 1, continued", settings=settings)[1][0][2] == 2 + 4
    assert calls[0][1].dropout == 0.3
    assert run("Stage 1", settings=settings)[1][0][3] == 0.02
    for key in ("stage4.lr", "stage1.speed", "speed"):
        with pytest.raises(common.UserError, match=f"--set {re.escape(key)}=1: expected a field"):
            run("Stage 1", settings={key: "1"})
    with pytest.raises(common.UserError, match="--set stage1.lr=fast: expected a number"):
        run("Stage 1", settings={"stage1.lr": "fast"})
    # the Stage 3 row: stage 2 from the Stage 1 row, then stage 3 from its own stage 2 ("":
    # resolve fills in OUT/stage2/last.pt), scored after stage 3 only
    assert run("Stage 3")[1] == [("stage2", shared, 2, 0.002, 1, "none", ()),
                                 ("stage3", "", 3, 0.003, 2, "none", aaanet.DEMO_METRICS)]
    assert ("Stage 3", "Stage 1, continued",
            "a control, not the paper's: the same extra epochs") in aaanet.CLAIMS


def test_run_diagnostics_reads_stage3s_log_epoch_by_epoch(tmp_path):
    # a stage 3 log.csv as train_stage writes it (common.write_log): a row per epoch, the
    # scores only on the last one
    folder = tmp_path / "Stage_3" / "seed0"
    (folder / "stage3").mkdir(parents=True)
    (folder / "stage3" / "log.csv").write_text(
        "epoch,lr,L,gate_pass,gate_batches,L_r,img/s,seconds,rank-1 euclidean\n"
        "1,0.001,4.1,0.0625,0.5,0.693147,30.1,12.5,\n"
        "2,0.001,3.9,0,0,0.25,31.0,12.1,41.5\n")
    assert aaanet.run_diagnostics(str(folder)) == {
        "gate_pass, epoch 1": 0.0625, "gate_batches, epoch 1": 0.5, "L_r, epoch 1": 0.693147,
        "gate_pass, epoch 2": 0.0, "gate_batches, epoch 2": 0.0, "L_r, epoch 2": 0.25}
    # a row without stage 3 (Stage 1, its control): nothing
    (tmp_path / "Stage_1" / "seed0" / "stage1").mkdir(parents=True)
    assert aaanet.run_diagnostics(str(tmp_path / "Stage_1" / "seed0")) == {}
    # a log without the gate_batches column: nothing, rather than a part
    (folder / "stage3" / "log.csv").write_text("epoch,lr,L,gate_pass,L_r\n1,0.001,4.1,0.5,0.7\n")
    assert aaanet.run_diagnostics(str(folder)) == {}


# -----------------------------------------------------------------------------
# End to end: the three stages through the command line

TINY = ["--dataset", "synthetic", "--height", str(H), "--width", str(W), "--pad", "3",
        "--batch-size", "8", "--epochs", "1", "--weights", "none", "--device", "cpu"]


@pytest.fixture(scope="module")
def three_stages(synthetic_root, tmp_path_factory):
    """stage1 (with Table 5's random erasing), stage2, stage3, and Table 4's stage3 from stage 1."""
    out = str(tmp_path_factory.mktemp("aaanet"))
    flags = TINY + ["--root", synthetic_root, "--out", out]
    results = {"stage1": aaanet.main(["stage1", *flags, "--random-erasing", "0.5",
                                      "--eval-metrics", "euclidean"])[1],
               "stage2": aaanet.main(["stage2", *flags])[1],
               "stage3": aaanet.main(["stage3", *flags, "--eval-metrics", "euclidean",
                                      "xqda"])[1]}
    aaanet.main(["stage3", *flags, "--mask-source", "response", "--out", out + "/table4",
                 "--init", out + "/stage1/last.pt", "--eval-metrics"])
    return out, results


@pytest.mark.slow
def test_three_stages_write_complete_checkpoints(three_stages):
    out, results = three_stages
    assert list(results["stage1"]) == ["euclidean"] and results["stage2"] == {}
    assert list(results["stage3"]) == ["euclidean", "xqda"]
    for stage, lr, lr_step in [("stage1", 0.001, 2), ("stage2", 0.0001, 3), ("stage3", 0.0001, 3)]:
        ckpt = common.load_checkpoint(f"{out}/{stage}/last.pt")
        assert ckpt["paper"] == "aaanet" and ckpt["stage"] == stage and ckpt["epoch"] == 1
        assert {"model", "optimizer", "schedule", "rng", "aug_generator", "config"} <= set(ckpt)
        # the config is saved resolved: the paper's lr and decay for the stage, dropout for
        # synthetic
        config = ckpt["config"]
        assert (config["lr"], config["lr_step"], config["dropout"]) == (lr, lr_step, 0.5)
    assert common.load_checkpoint(f"{out}/stage1/last.pt")["config"]["random_erasing"] == 0.5
    s1, s2, s3 = (common.load_checkpoint(f"{out}/{s}/last.pt")["model"] for s in aaanet.STAGE_NAMES)
    # stage 2 froze the baseline (weights and BatchNorm statistics) and trained the attention
    # branch
    for k in s1:
        if k.startswith("attention."):
            continue
        assert torch.equal(s1[k], s2[k]), k
    assert not torch.equal(s2["attention.0.weight"], s3["attention.0.weight"])
    # stage 3 trained the baseline too
    assert not torch.equal(s2["backbone.conv1.0.weight"], s3["backbone.conv1.0.weight"])
    table4 = common.load_checkpoint(f"{out}/table4/stage3/last.pt")
    assert table4["config"]["mask_source"] == "response"
    # each stage's log.csv: its epoch, its total loss, and the scores of the stages that evaluate
    for stage, metrics in [("stage1", ["euclidean"]), ("stage2", []),
                           ("stage3", ["euclidean", "xqda"])]:
        row, = common.load_checkpoint(f"{out}/{stage}/last.pt")["log"]
        assert row["epoch"] == 1 and aaanet.TOTAL_LOSS[stage] in row
        for m in metrics:
            assert row[f"rank-1 {m}"] == pytest.approx(100 * results[stage][m]["cmc"][0])
        assert not any(k.startswith("rank-1") for k in row) or metrics
        assert os.path.isfile(f"{out}/{stage}/log.csv")


@pytest.mark.slow
def test_evaluate_cli_loads_the_stage3_checkpoint(three_stages, synthetic_root, capsys):
    out, results = three_stages
    r = evaluate.main(["--checkpoint", f"{out}/stage3/last.pt", "--root", synthetic_root,
                       "--dataset", "synthetic", "--metric", "euclidean", "--device", "cpu"])
    table = capsys.readouterr().out
    assert "euclidean" in table and "queries evaluated" in table
    # evaluate.py scores the same network the stage command scored at its end
    assert r["euclidean"]["mAP"] == pytest.approx(results["stage3"]["euclidean"]["mAP"])
    model, size = aaanet.model_from_checkpoint(common.load_checkpoint(f"{out}/stage3/last.pt"))
    assert size == (H, W) and not model.training
    assert model(torch.zeros(2, 3, H, W)).shape == (2, 2048)


def assert_exit_2(cases, capsys):
    """Each (argv, message): `python aaanet.py <argv>` exits with status 2 and says `message`."""
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            aaanet.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err, argv


@pytest.mark.slow  # the command end to end
def test_errors_exit_2_with_the_cause(synthetic_root, tmp_path, capsys):
    aea = str(tmp_path / "aea.pt")
    common.save_checkpoint(aea, {"paper": "aea", "config": {}, "model": {}})
    flags = TINY + ["--root", synthetic_root, "--out", str(tmp_path)]
    assert_exit_2([(["stage1", *TINY], "--root is required"),
                   (["stage2", *flags], "does not exist"),
                   (["stage2", *flags, "--init", aea],
                    "is an AEA checkpoint (aea.py); expected an AAA-Net checkpoint"),
                   (["nonsense"], "unknown command 'nonsense'"),
                   (["figure"], "python tools.py figure aaanet")], capsys)


@pytest.mark.slow
def test_checkpoints_of_another_stage_exit_2(three_stages, synthetic_root, tmp_path, capsys):
    out, _ = three_stages
    flags = TINY + ["--root", synthetic_root, "--out", str(tmp_path)]
    assert_exit_2([(["stage3", *flags, "--init", f"{out}/stage1/last.pt"],
                    "--mask-source response"),
                   # (conv4_x's f_r is 4x2 at 64x32: --grid 2 fits it, and differs too)
                   (["stage3", *flags, "--init", f"{out}/stage2/last.pt", "--point", "conv4_x",
                     "--grid", "2"], "was trained with --point conv3_x, --grid 4; stage3 inherits")
                   ], capsys)


# -----------------------------------------------------------------------------
# Checkpoints, resume and stop signals

# the resume runs: stage 1, 3 epochs. The fixture set has 44 training images (conftest's
# SYNTHETIC_SIZES), so batches of 8 give 44 // 8 = 5 steps per epoch, 15 in all.
EPOCHS, STEPS = 3, 5


def stage1_flags(root, out):
    return ["stage1", "--root", root, "--dataset", "synthetic", "--height", str(H),
            "--width", str(W), "--weights", "none", "--device", "cpu", "--batch-size", "8",
            "--epochs", str(EPOCHS), "--eval-metrics", "--out", out]


def run_stage1(root, out, *extra):
    """`python aaanet.py stage1 ...` in a subprocess, as a user runs it."""
    return run_python("aaanet.py", *stage1_flags(root, out), *extra)


def weights(path):
    return common.load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def reference_run(synthetic_root, tmp_path_factory):
    """The uninterrupted stage-1 run every resumed run must reproduce bit for bit:
    (out, stdout)."""
    out = str(tmp_path_factory.mktemp("reference"))
    done = run_stage1(synthetic_root, out)
    assert done.returncode == 0, done.stderr
    assert f"{STEPS} batches of 8 per epoch" in done.stdout
    return out, done.stdout


# the stand-in for `python aaanet.py` that stops at a chosen step
# (conftest.stop_at_step_script)
STOP_AT_STEP = stop_at_step_script("aaanet", "training_step")


def stop_at_step(tmp_path, root, out, step, how, **popen_args):
    """Start the stand-in above on `python aaanet.py stage1 ...` (a Popen; the caller waits)."""
    script = tmp_path / "stop_at_step.py"
    script.write_text(STOP_AT_STEP)
    env = {**os.environ, "STOP_AT": str(step), "STOP_SIGNAL": how,
           "PAUSED_FILE": str(tmp_path / "paused")}
    return subprocess.Popen([sys.executable, str(script), *stage1_flags(root, out)], cwd=REPO,
                            env=env, **popen_args)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference_run, synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    last = tmp_path / "run" / "stage1" / "last.pt"
    # paused inside step 8 = epoch 2, step 3 of 5: epoch 1's last.pt is written, epoch 2 has
    # trained 2 steps that no file holds; SIGKILL from outside gives it no chance to write
    # anything
    proc = stop_at_step(tmp_path, synthetic_root, out, STEPS + 3, "PAUSE",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (tmp_path / "paused").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    assert proc.wait(timeout=60) == -9  # killed, not finished
    assert common.load_checkpoint(str(last))["epoch"] == 1
    # the same command with --resume, as a user would type it after a crash
    resumed = run_stage1(synthetic_root, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"stage1 resuming {last} at epoch 2" in resumed.stdout
    final = common.load_checkpoint(str(last))
    assert final["epoch"] == EPOCHS
    assert_same_weights(final["model"], weights(f"{reference_run[0]}/stage1/last.pt"))


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused_until_the_first_ends(synthetic_root, tmp_path):
    # two `aaanet.py stage1 --out OUT` at once: the second exits 2 naming the first's pid and
    # leaves its files alone; once the first is gone (SIGKILL: no clean-up of any kind), its lock
    # is stale and the next run takes the folder over
    out = str(tmp_path / "run")
    first = stop_at_step(tmp_path, synthetic_root, out, STEPS + 2, "PAUSE",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (tmp_path / "paused").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    last = tmp_path / "run" / "stage1" / "last.pt"
    written = last.read_bytes()  # epoch 1's, the first run is paused inside epoch 2
    second = run_stage1(synthetic_root, out)
    assert second.returncode == 2
    assert f"--out {out}/stage1 is in use by another run (pid {first.pid})" in second.stderr
    assert last.read_bytes() == written
    first.kill()
    assert first.wait(timeout=60) == -9
    third = run_stage1(synthetic_root, out)
    assert third.returncode == 0, third.stderr
    assert common.load_checkpoint(str(last))["epoch"] == EPOCHS


@pytest.mark.slow
def test_sigint_mid_epoch_exits_0_prints_resume_then_is_bit_identical(reference_run,
                                                                      synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    # SIGINT arrives before step 7 = epoch 2, step 2 of 5: the run stops there, last.pt holds
    # epoch 1 (epoch 2 is redone on --resume), and the run exits 0
    proc = stop_at_step(tmp_path, synthetic_root, out, STEPS + 2, "SIGINT",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    last = tmp_path / "run" / "stage1" / "last.pt"
    assert f"stopped by SIGINT; {last} holds the last epoch that ended" in stdout
    assert common.load_checkpoint(str(last))["epoch"] == 1
    assert common.load_checkpoint(str(tmp_path / "run" / "stage1" / "best.pt"))["epoch"] == 1
    # the printed command, run as printed (python -> this interpreter), finishes the run
    command = stdout.split("Resume with:\n")[1].splitlines()[0].strip()
    argv = shlex.split(command)
    assert argv[:3] == ["python", "aaanet.py", "stage1"] and argv[-1] == "--resume"
    resumed = run_python(*argv[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert f"stage1 resuming {last} at epoch 2" in resumed.stdout
    # epoch 2 redone from the random states saved at epoch 1's end: the same weights
    assert common.load_checkpoint(str(last))["epoch"] == EPOCHS
    assert_same_weights(weights(str(last)), weights(f"{reference_run[0]}/stage1/last.pt"))


@pytest.mark.slow
def test_best_checkpoint_is_the_epoch_with_the_lowest_mean_loss(reference_run):
    out, stdout = reference_run
    # with 5 steps per epoch (< Progress's 20), each epoch prints one line, at its last step,
    # whose L_ce is the mean over the whole epoch, e.g.
    # "stage1 epoch 2/3 ... iter 5/5  L_ce 2.4130  | ..."
    means = [float(line.split("L_ce ")[1].split()[0]) for line in stdout.splitlines()
             if f"iter {STEPS}/{STEPS}" in line]
    assert len(means) == EPOCHS
    best = common.load_checkpoint(f"{out}/stage1/best.pt")
    last = common.load_checkpoint(f"{out}/stage1/last.pt")
    # the checkpoint's log holds the same epoch means, unrounded: two epochs may print the same
    # 4 decimals, and the lowest is read there
    logged = [row["L_ce"] for row in last["log"]]
    assert logged == pytest.approx(means, abs=1e-4)
    assert best["epoch"] == 1 + logged.index(min(logged))
    # best.pt is a whole checkpoint of that epoch: the same weights as last.pt when it is the
    # last one
    if best["epoch"] == EPOCHS:
        assert_same_weights(best["model"], last["model"])
    else:
        assert not torch.equal(best["model"]["classifier.weight"],
                               last["model"]["classifier.weight"])


@pytest.mark.slow
def test_resume_refuses_changed_flags_and_other_files(reference_run, synthetic_root, tmp_path,
                                                      capsys):
    out = reference_run[0]
    before = os.path.getmtime(f"{out}/stage1/last.pt")
    # a changed flag: the resolved lr was 0.001 (stage 1's default, Sec. 4.2)
    with pytest.raises(SystemExit) as e:
        aaanet.main([*stage1_flags(synthetic_root, out), "--lr", "0.01", "--resume"])
    assert e.value.code == 2
    assert "--lr 0.001 in the checkpoint, 0.01 now" in capsys.readouterr().err
    # another paper's checkpoint where last.pt should be
    common.save_checkpoint(str(tmp_path / "stage1" / "last.pt"),
                           {"paper": "aea", "config": {}, "model": {}})
    with pytest.raises(SystemExit) as e:
        aaanet.main([*stage1_flags(synthetic_root, str(tmp_path)), "--resume"])
    assert e.value.code == 2
    assert ("is an AEA checkpoint (aea.py); expected an AAA-Net checkpoint (aaanet.py)"
            in capsys.readouterr().err)
    # nothing to resume
    with pytest.raises(SystemExit):
        aaanet.main([*stage1_flags(synthetic_root, str(tmp_path / "empty")), "--resume"])
    assert "there is no checkpoint" in capsys.readouterr().err
    # a finished run resumed: says so, trains nothing, exits normally
    aaanet.main([*stage1_flags(synthetic_root, out), "--resume"])
    assert f"already holds all {EPOCHS} epochs" in capsys.readouterr().out
    assert os.path.getmtime(f"{out}/stage1/last.pt") == before


@pytest.mark.slow
def test_same_seed_twice_gives_identical_metrics_and_weights(three_stages, synthetic_root,
                                                             tmp_path):
    # three_stages' stage 1, run again with the same flags and seed 0 into another folder
    out, results = three_stages
    flags = TINY + ["--root", synthetic_root, "--out", str(tmp_path)]
    again = aaanet.main(["stage1", *flags, "--random-erasing", "0.5",
                         "--eval-metrics", "euclidean"])[1]
    # every rank of the CMC curve and both mAPs, exactly
    first = results["stage1"]["euclidean"]
    second = again["euclidean"]
    assert second.keys() == first.keys() and np.array_equal(second["cmc"], first["cmc"])
    assert all(second[k] == first[k] for k in first if k != "cmc")
    assert_same_weights(weights(f"{tmp_path}/stage1/last.pt"), weights(f"{out}/stage1/last.pt"))


@pytest.fixture
def tiny_demo(synthetic_root, monkeypatch, tmp_path_factory):
    """The demo's settings on the tiny fixture set: batches of 8, one epoch per stage; its
    weights synthetic: a random ResNet-18 state dict (seed 1) in torchvision's key names where
    common.PRETRAINED points, the stand-in for `python pretrain.py`'s file. Returns its path."""
    monkeypatch.setattr(data, "demo_dataset", lambda root="data/synthetic": synthetic_root)
    monkeypatch.setattr(aaanet, "DEMO", {**aaanet.DEMO, "batch_size": 8})
    monkeypatch.setattr(aaanet, "DEMO_STAGES",
                        {s: {**v, "epochs": 1} for s, v in aaanet.DEMO_STAGES.items()})
    folder = tmp_path_factory.mktemp("pretrained")
    monkeypatch.setattr(common, "PRETRAINED", str(folder / "{arch}-synthetic.pt"))
    with torch.random.fork_rng(devices=[]):  # the tests' own draws stay as they are
        torch.manual_seed(1)
        state = torchvision.models.resnet18().state_dict()
    path = str(folder / "resnet18-synthetic.pt")
    common.save_checkpoint(path, state)
    return path


# the demo's table: its networks, in order, each under its metrics
DEMO_ROWS = ("random weights", "start: weights synthetic", "stage1", "stage3")


def table_rows(printed):
    """The row names of the demo's table in its printed output (5 numbers follow each name)."""
    table = printed[printed.index("network, metric"):].splitlines()[1:]
    return [line.rsplit(None, 5)[0] for line in table[:len(DEMO_ROWS) * 3]]


def test_demo_scores_random_weights_then_the_start_of_stage1(tiny_demo, monkeypatch, tmp_path,
                                                             capsys):
    # the demo with every training step a no-op and the evaluation recorded, not run: its rows
    # are the networks it means. Stage 1 changes nothing here, so its last.pt is the network
    # stage 1 started from, which the "start" row must have scored
    def no_step(model, optimizer, stage, x, y, cfg):
        optimizer.step()  # no gradient: nothing moves (the lr schedule sees a step)
        return {aaanet.TOTAL_LOSS[stage]: torch.tensor(1.0)}
    scored = []

    def record(model, ds, size, device, metrics, images=None, precision="auto"):
        scored.append(snapshot(model))
        return {m: {"cmc": np.full(10, 0.5), "mAP": 0.25, "mAP_official": 0.25,
                    "num_queries": 5, "num_skipped": 0} for m in metrics}
    monkeypatch.setattr(aaanet, "training_step", no_step)
    monkeypatch.setattr(evaluate, "evaluate_model", record)
    results = aaanet.main(["demo", "--out", str(tmp_path), "--device", "cpu"])
    assert list(results) == list(DEMO_ROWS)
    printed = capsys.readouterr().out
    lines = printed[printed.index("demo: "):].splitlines()  # after the dataset's summary
    assert lines[0].startswith("demo: resnet18, weights synthetic (the stand-in for ImageNet that "
                               "`python pretrain.py` builds), 64x32 inputs, batch 8, stage1 1 "
                               "epochs lr 0.01")
    # the budget lines once, after it: the fixture set's 44 training images, 44 // 8 = 5 steps
    assert lines[1:4] == aaanet.stage_budget(5)
    assert printed.count(lines[1]) == 1
    assert table_rows(printed) == [f"{n} {m}" for n in DEMO_ROWS for m in aaanet.DEMO_METRICS]
    random_weights, start, stage1, _ = scored  # stage 3's: the fourth
    # the start: the pretrained backbone (torchvision's names: Backbone's conv1.0 is conv1) and
    # exactly the network stage 1 trained from
    pretrained = common.load_checkpoint(tiny_demo)
    assert torch.equal(start["backbone.conv1.0.weight"], pretrained["conv1.weight"])
    assert torch.equal(start["backbone.layer3.1.conv2.weight"],
                       pretrained["layer3.1.conv2.weight"])
    assert_same_weights(start, weights(f"{tmp_path}/stage1/last.pt"))
    assert_same_weights(stage1, start)
    # random weights: another backbone, drawn apart from the run's draws, so that the seeded draws
    # after it (the start's new classifier and attention branch) are what they would be without it
    assert not torch.equal(random_weights["backbone.conv1.0.weight"], pretrained["conv1.weight"])
    for k in start:
        if not k.startswith("backbone."):
            assert torch.equal(random_weights[k], start[k]), k


@pytest.mark.slow
def test_demo_prints_one_table_and_resumes(tiny_demo, monkeypatch, tmp_path, capsys):
    # the demo's code path on the tiny fixture set, one epoch per stage
    results = aaanet.main(["demo", "--out", str(tmp_path), "--device", "cpu"])
    assert list(results) == list(DEMO_ROWS)
    assert table_rows(capsys.readouterr().out) == [f"{n} {m}" for n in DEMO_ROWS
                                                   for m in ("euclidean", "xqda", "kissme")]
    # Ctrl-C before stage 2's 2nd step (stage 1 has 5 steps): stage 2 has no epoch to save, and
    # stage 3 does not run
    calls = [0]
    real_step = aaanet.training_step

    def counting_train_step(*args):
        calls[0] += 1
        if calls[0] == STEPS + 2:
            raise KeyboardInterrupt  # what Ctrl-C raises
        return real_step(*args)

    monkeypatch.setattr(aaanet, "training_step", counting_train_step)
    stopped = tmp_path / "stopped"
    assert aaanet.main(["demo", "--out", str(stopped), "--device", "cpu"]) is None
    assert f"stopped by SIGINT; each last.pt under {stopped} holds" in capsys.readouterr().out
    assert os.listdir(stopped / "stage1") and not (stopped / "stage2" / "last.pt").exists()
    assert not (stopped / "stage3").exists()
    # --resume: stage 1 is complete (loaded, not trained), stage 2 starts again, stage 3 runs;
    # the table is the uninterrupted demo's, exactly
    resumed = aaanet.main(["--resume", "--out", str(stopped), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "stage1/last.pt already holds all 1 epochs" in printed
    assert calls[0] == 3 * STEPS + 2  # stage 1's 5 steps, stage 2's 1 + 1 + 5, stage 3's 5
    for name in results:
        for metric in results[name]:
            again, first = resumed[name][metric], results[name][metric]
            assert np.array_equal(again["cmc"], first["cmc"]), (name, metric)
            assert again["mAP"] == first["mAP"], (name, metric)
    for stage in ("stage2", "stage3"):
        assert_same_weights(weights(f"{stopped}/{stage}/last.pt"),
                            weights(f"{tmp_path}/{stage}/last.pt"))


@pytest.mark.slow
def test_nan_loss_names_step_and_term_and_keeps_the_last_checkpoint(synthetic_root, tmp_path,
                                                                    monkeypatch, capsys):
    # stage 1 for 2 epochs; the loss is made NaN at step 7 = epoch 2, step 2 (of 5). Epoch 1's
    # last.pt and best.pt exist by then; the run must stop at epoch 2's line (its last step)
    # naming step 2 and L_ce, and write nothing.
    folder = tmp_path / "stage1"
    calls, saved, real_loss = [0], {}, aaanet.stage1_loss

    def nan_at_step_7(model, x, y, cfg):
        calls[0] += 1
        loss, terms = real_loss(model, x, y, cfg)
        if calls[0] == STEPS + 2:
            saved.update({name: (folder / name).read_bytes() for name in ("last.pt", "best.pt")})
            loss = loss * float("nan")
        return loss, {"L_ce": loss}

    monkeypatch.setattr(aaanet, "stage1_loss", nan_at_step_7)
    with pytest.raises(SystemExit) as e:
        aaanet.main(["stage1", *TINY, "--root", synthetic_root, "--out", str(tmp_path),
                     "--epochs", "2", "--eval-metrics"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "stage1 epoch 2/2" in err and f"step 2/{STEPS}: the loss term L_ce is nan" in err
    # the NaN weights trained on to the epoch's line, which stopped the run
    assert calls[0] == 2 * STEPS
    assert {name: (folder / name).read_bytes() for name in ("last.pt", "best.pt")} == saved
    assert common.load_checkpoint(str(folder / "last.pt"))["epoch"] == 1


@pytest.mark.slow  # the command end to end
def test_bad_flags_exit_2_naming_the_flag(synthetic_root, tmp_path, capsys):
    flags = TINY + ["--root", synthetic_root, "--out", str(tmp_path)]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases = [(["stage3", *flags, "--omega", "-0.5"], "--omega must lie in [0, 1), got -0.5"),
             (["stage3", *flags, "--lambda1", "-1"], "--lambda1 must lie in [0, inf), got -1.0"),
             (["stage3", *flags, "--lambda2", "-0.1"], "--lambda2 must lie in [0, inf)"),
             (["stage1", *flags, "--lr", "0"], "--lr must lie in (0, inf), got 0.0"),
             (["stage1", *flags, "--lr", "-0.01"], "--lr must lie in (0, inf), got -0.01"),
             # numbers beyond any real run: a padding of the whole 32 px wide input, more images
             # per occlusion pass than a batch holds, an input or a branch no GPU holds
             (["stage1", *flags, "--pad", "32"], "--pad 32 must be below the input's smaller "
              f"side ({H}x{W} inputs: below 32)"),
             (["stage1", *flags, "--occlusion-chunk", str(10**20)],
              f"--occlusion-chunk {10**20}: expected at most --batch-size 8 images per pass"),
             (["stage1", *flags, "--height", "100000"], "--height must lie in [32, 1024]"),
             (["stage2", *flags, "--attention-channels", "100000"],
              "--attention-channels must lie in [1, 2048], got 100000"),
             (["stage1", *flags, "--out", str(blocker / "run")],
              f"--out {blocker}/run/stage1: cannot write there")]  # the stage's own folder
    assert_exit_2(cases, capsys)  # --dataset and --device: test_errors.py, for both papers


@pytest.mark.slow
def test_init_with_another_number_of_identities_is_refused(three_stages, synthetic_root,
                                                           tmp_path, capsys):
    # three_stages' stage 1 with its classifier cut from 8 to 5 identities
    out, _ = three_stages
    ckpt = common.load_checkpoint(f"{out}/stage1/last.pt")
    for k in ("classifier.weight", "classifier.bias"):
        ckpt["model"][k] = ckpt["model"][k][:5]
    common.save_checkpoint(str(tmp_path / "five.pt"), ckpt)
    with pytest.raises(SystemExit) as e:
        aaanet.main(["stage2", *TINY, "--root", synthetic_root, "--out", str(tmp_path),
                     "--init", str(tmp_path / "five.pt")])
    assert e.value.code == 2
    assert ("was trained on 5 identities, but this dataset has 8 training identities"
            in capsys.readouterr().err)

"""Tests of bench.py: the whole benchmark on tiny sizes (every row there, every number positive
and finite; slow), the stage-2 floor's FLOP count, and the conventional pipeline it compares
against makes the same images as data.augment."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import aaanet
import bench
import data

H, W = 64, 32  # tiny inputs


@pytest.mark.slow
def test_bench_tiny_run_has_every_row(synthetic_root, monkeypatch):
    # The conftest dataset (8 training identities, about 40 images): AEA batches of P=2 x K=2 at
    # 64x32, AAA-Net batches of 4 at 32x32 (f_r after conv3_x is 4x4, one feature per grid
    # cell), one timed round, a 20 x 100 ranking problem. On the CPU the table has one row per
    # quantity below.
    cfg, quick = bench.parse_config([
        "--root", synthetic_root, "--height", "64", "--width", "32", "--P", "2", "--K", "2",
        "--aaa-size", "32", "--aaa-batch", "4", "--loader-batch", "8", "--workers", "1",
        "--repeats", "1", "--feature-images", "8", "--feature-batch", "4",
        "--queries", "20", "--gallery", "100", "--distractors", "10", "--test-ids", "10",
        "--rerank-queries", "20", "--rerank-gallery", "100", "--device", "cpu"])
    assert not quick
    # every floor of FLOORS, the GPU's included, must be looked up under a name the run passes to
    # check(): a key spelt differently from the row (once "AAA stage 1" for "train: AAA stage 1")
    # would print no verdict on the machine it is meant for
    asked, check = set(), bench.check
    monkeypatch.setattr(bench, "check",
                        lambda row, value, device: asked.add(row) or check(row, value, device))
    rows, table = bench.run(cfg)
    assert set(bench.FLOORS["cpu"]) <= asked and set(bench.FLOORS["cuda"]) <= asked, asked
    assert bench.check("train: AAA stage 1", 3000.0, torch.device("cuda")) == "floor >= 2500: met"
    names = [r[0] for r in rows]
    assert names == [
        "data: cache build (load_images)", "data: ours, augmentation from the cache",
        "data: conventional (PIL + torchvision)", "ours / conventional",
        "train: B1", "train: AEA", "train: AAA stage 1", "train: AAA stage 2",
        "train: AAA stage 3",
        "AEA / B1 (keep_freed_memory)", "attention + erasing / AEA step", "stage 2 / stage 1",
        "stage-2 floor / stage 1 (timed)", "stage-2 floor / stage 1 (FLOPs)", "stage 3 / stage 1",
        "AEA epoch (from the AEA row)", "AEA / B1 (glibc default malloc)",
        "features: AEA test feature",
        "fast_rank_metrics", "numpy per-row argsort (yardstick)", "fast_rank_metrics / argsort",
        "fast_rank_metrics: extra host memory", "re-ranking: ours",
        "re-ranking: numpy transcription", "peak memory (max RSS)"]
    row = {r[0]: r for r in rows}
    for name, value, unit, *_ in rows:
        assert name in table
        # the extra memory of a 20 x 100 problem may round to nothing: 0 is a true reading there
        if name == "fast_rank_metrics: extra host memory":
            assert math.isfinite(value) and value >= 0, value
        else:
            assert math.isfinite(value) and value > 0, (name, value)
    # every ratio row carries its floor's verdict; the image counts are the dataset's
    floors = ("AEA / B1", "stage 2 / stage 1", "ours / conventional", "fast_rank_metrics")
    assert all("met" in r[-1] for r in rows if r[0].split(" (")[0] in floors)
    n_train = len(data.load_dataset(synthetic_root, "synthetic", verbose=False).train)
    assert f"{n_train} images of 8 ids" in rows[0][3]
    # the features row: 8 images of the 5120-d AEA test feature (2 x 2560)
    assert "8 images at 64x32, 5120-d" in row["features: AEA test feature"][3]
    # the parts timed beside the steps: the erasing is a part of the AEA step (a share below
    # 100%); the stage-2 floor's rest runs on 4 x 16 = 64 copies; the counted floor is about
    # 3x stage 1 (test_stage2_floor_flops)
    assert row["attention + erasing / AEA step"][1] < 100
    assert "the rest on 64 copies" in row["stage-2 floor / stage 1 (timed)"][3]
    assert 2 < row["stage-2 floor / stage 1 (FLOPs)"][1] < 5
    assert "input not counted" in row["fast_rank_metrics: extra host memory"][3]


@pytest.mark.slow  # counts the FLOPs of three ResNet-50 passes
def test_stage2_floor_flops():
    # At 32x32 with batch 2 and 8 identities: f_r (conv1..conv3_x) is 2 x 512 x 4 x 4, and the
    # rest (conv4_x, conv5_x, pool, FC) runs on 2 x 16 = 32 occluded copies of it. The rest's
    # FLOPs do not depend on the values, so they are exactly 16x the rest on the 2 plain maps;
    # a stage-1 forward + backward is 2-3x its forward (the backward computes the gradients of
    # the weights and of the inputs, the first convolution's input excepted).
    cfg, _ = bench.parse_config(["--aaa-size", "32", "--aaa-batch", "2"])
    f_r, rest, stage1 = bench.stage2_floor_flops(cfg, 8)
    with torch.device("meta"):
        model = aaanet.AAANet(8, "conv3_x", weights="none").eval()
        x = torch.empty(2, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model.logits_from_middle(model.middle(x))
    with torch.no_grad(), FlopCounterMode(display=False) as middle:
        model.middle(x)
    forward = plain.get_total_flops()
    assert f_r == middle.get_total_flops() > 0
    assert rest == 16 * (forward - f_r)
    assert 2 * forward < stage1 <= 3 * forward


def test_quick_and_flags():
    # --quick swaps in the small sizes; a flag given explicitly still wins; a zero size is refused
    cfg, quick = bench.parse_config(["--quick", "--repeats", "5"])
    assert quick and cfg.height == 128 and cfg.aaa_batch == 8 and cfg.repeats == 5
    cfg, quick = bench.parse_config([])
    sizes = (cfg.height, cfg.width, cfg.P * cfg.K, cfg.aaa_size, cfg.aaa_batch)
    assert not quick and sizes == (256, 128, 32, 224, 32)
    with pytest.raises(bench.UserError, match="--repeats"):
        bench.parse_config(["--repeats", "0"])


def _image_files(root, n):
    """The first n training images of a dataset folder."""
    return data.load_dataset(root, "synthetic", verbose=False).train.paths[:n]


def test_conventional_pipeline_same_resize_normalise_flip(synthetic_root):
    # With no pad, no crop and no erasing, both pipelines are resize (PIL bilinear, both) ->
    # normalise -> maybe mirror. E.g. a red value of 255 becomes (1 - 0.485) / 0.229 = 2.2489 in
    # both. data.augment mirrors each sample with p = 0.5 from its generator, so each of ours
    # must equal torchvision's output with the flip forced on (p=1) or off (p=0), to float
    # rounding; with 10 images and seed 0 both cases occur (the chance that all 10 flip alike is
    # 2 / 2^10).
    paths = _image_files(synthetic_root, 10)
    ours = data.augment(data.load_images(paths, H, W), torch.Generator().manual_seed(0), pad=0,
                        random_erasing=0.0)
    flipped, plain = (bench.conventional_transform(H, W, pad=0, random_erasing=0.0, flip=p)
                      for p in (1.0, 0.0))
    mirrored = []
    for x, path in zip(ours, paths):
        with Image.open(path) as img:
            a, b = flipped(img.convert("RGB")), plain(img.convert("RGB"))
        assert a.shape == b.shape == x.shape == (3, H, W)
        assert not torch.allclose(a, b)  # a drawn person is not left-right symmetric
        d_flip, d_plain = (x - a).abs().max().item(), (x - b).abs().max().item()
        assert min(d_flip, d_plain) < 1e-5, (d_flip, d_plain)
        mirrored.append(d_flip < d_plain)
    assert any(mirrored) and not all(mirrored)


def test_conventional_pipeline_same_pad_colour_and_erasing(tmp_path):
    # A white image (255 everywhere; a constant JPEG decodes exactly): after normalising every pixel
    # is white = (1 - MEAN) / STD = (2.2489, 2.4286, 2.6400). Padding 10 + a random crop shifts
    # mean-colour borders in, and random erasing (p = 1) sets a rectangle of 2-40% of the image
    # to 0. Ours pads and erases with exactly 0; torchvision pads with the uint8 mean colour
    # (124, 116, 104), i.e. (124/255 - 0.485) / 0.229 = 0.0056 (and -0.0049, 0.0082): within
    # 0.01 of 0. So in both, every pixel is white or ~0, and every image has at least 2% ~0 pixels
    # (the erased rectangle) and at most the shifted-in border, 1 - (54/64)(22/32) = 0.42, plus
    # the rectangle, 0.40 and the rounding of its sides (<= 0.017 here): < 0.84. A black pad (-2.1)
    # or a random erasing value would fail the first check.
    path = str(tmp_path / "white.jpg")
    Image.new("RGB", (W, H), (255, 255, 255)).save(path, quality=90)
    white = ((1 - torch.tensor(data.MEAN)) / torch.tensor(data.STD)).view(3, 1, 1)
    ours = data.augment(data.load_images([path] * 16, H, W), torch.Generator().manual_seed(0),
                        pad=10, random_erasing=1.0)
    transform = bench.conventional_transform(H, W, pad=10, random_erasing=1.0)
    torch.manual_seed(0)  # torchvision's transforms draw from the global generator
    with Image.open(path) as img:
        theirs = torch.stack([transform(img.convert("RGB")) for _ in range(16)])
    for batch in (ours, theirs):
        assert batch.shape == (16, 3, H, W)
        near_zero = (batch.abs() < 0.01).all(1)                      # [16, H, W]
        is_white = ((batch - white).abs() < 1e-4).all(1)
        assert bool((near_zero | is_white).all())
        frac = near_zero.float().mean(dim=(1, 2)).numpy()
        assert np.all(frac >= 0.02) and np.all(frac < 0.84), frac

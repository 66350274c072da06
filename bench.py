"""
bench.py: how fast both papers' code runs on this machine, in one table (as nanoGPT's bench.py).

    python bench.py            # the full run: Market-1501-sized synthetic data, the papers' batches
    python bench.py --quick    # small sizes, about 1.5 minutes on a 2-core CPU
    python bench.py -h         # every size is a flag

What each row times (medians over --repeats rounds after one warm-up round, unless it says
otherwise):
  data: cache build        `data.load_images` over every training image: open the JPEG, decode,
                           resize to HxW, write into one uint8 tensor (what a training run does
                           once).
  data: ours, augmentation one shuffled pass over the uint8 cache in batches of --loader-batch,
                           `data.train_batches` -> `data.augment` (flip, pad 10 + random crop,
                           normalise, random erasing p=0.5) on the training device; img/s from the
                           first batch's arrival to the end of the pass.
  data: conventional       the same augmentations the usual way: a torch Dataset that opens the
                           JPEG with PIL on every access, torchvision transforms (Resize,
                           RandomHorizontalFlip, Pad, RandomCrop, ToTensor, Normalize,
                           RandomErasing), a DataLoader with --workers processes (0 = one per
                           core), batch --loader-batch; timed the same way.
  train: B1, AEA           `aea.training_step` (forward, the losses of Eq. (8), backward, SGD) on
                           P x K batches from the training data path (`aea.epoch_batches`); B1 =
                           the basic network alone (joint=False), AEA = both networks with the
                           dynamic erasing.
  train: AAA stage 1/2/3   `AAANet.freeze_for(stage)`, then `aaanet.training_step`, on batches of
                           `aaanet.epoch_batches` (epoch after epoch over a cache of only 4
                           batches' images at the AAA-Net size: the speed is the same).
                           Every training step's time excludes its batch; the batch's own time
                           (index the cache + augment) is the "data" part, reported as a share of
                           data + step.
  attention + erasing      `aea.adversarial_erasing(x, M_l, R)` alone (the map of Eq. (1), its top
                           R% erased) on one AEA batch, M_l = the basic network's conv2_x output
                           computed once without gradient; timed in the training rows' rounds and
                           shown as a share of the AEA step.
  stage-2 floor (timed)    what a stage-2 step cannot avoid, run as stage 2 runs it (eval mode, no
                           gradient) on one batch: f_r of the B images (`AAANet.middle`) + the rest
                           of the network on their B*16 occluded copies (`AAANet.logits_from_middle`
                           of `aaanet.grid_occlusions(f_r)`, f_r computed once); timed in the
                           training rows' rounds, over the stage-1 step.
  stage-2 floor (FLOPs)    the same two parts over a stage-1 forward + backward, in the FLOPs that
                           torch's FlopCounterMode counts (convolutions and matrix products).
  AEA / B1 without / with  the same two steps, once with glibc's default malloc (measured first,
                           before anything calls `common.keep_freed_memory`, or in a fresh child
                           process when something already has) and once with it (the training
                           rows). CPU only.
  AEA epoch                derived, not timed: ceil(ids / P) batches x the AEA row's (step + data).
  features                 `evaluate.extract_features` of the AEA test feature (both networks, eval
                           mode) on --feature-images cached images, batches of --feature-batch; one
                           warm-up batch.
  fast_rank_metrics        `evaluate.fast_rank_metrics`, the counting version that evaluation calls
                           (the same numbers as the textbook `evaluate.rank_metrics`, which sorts
                           every row), on a random Q x G distance matrix with Market-like pids and
                           cameras (on the GPU when there is one); it returns CPU numbers, so its
                           time includes the GPU's work.
  numpy argsort            the yardstick: numpy's per-row `np.argsort` of the same matrix on the
                           CPU, one call (what any sort-based ranking pays at the least), and the
                           ratio fast_rank_metrics / argsort.
  rank memory              fast_rank_metrics' peak extra host memory, on the CPU: ru_maxrss after
                           one call minus the RSS just before it (/proc/self/statm), the input
                           matrix not counted, after a small call that pays the one-time costs.
                           ru_maxrss is the high-water mark of the whole process: a call that
                           stays below an earlier peak leaves it unchanged, and the difference is
                           then only an upper bound (the row says so).
  re-ranking: ours         `evaluate.re_ranking` (k-reciprocal re-ranking, Zhong et al. CVPR 2017;
                           k1=20, k2=6, lambda=0.3) on a random Market-like problem: the
                           Euclidean distances (q_g, q_q, g_g, computed once) of --rerank-queries +
                           --rerank-gallery L2-normalised 2048-d features drawn around identity
                           centres (`rerank_problem`). One call on the CPU, in a fresh child
                           process (spawn) that builds the problem, makes a small call that pays
                           the one-time costs, records its RSS (/proc/self/statm), makes the call
                           and reads ru_maxrss: seconds, and the peak extra host memory, the
                           inputs not counted (`rerank_call`). A fresh process per row, so neither
                           row's high-water mark is the other's.
  re-ranking: numpy transcription
                           tests/rerank_reference.py, the official Python code of the paper step
                           for step (full argsort, a Python loop per image, dense float32 V), on
                           the same problem, measured the same way in its own child process; its
                           detail gives the ratio transcription / ours.
  peak memory              CPU: the process's max RSS (ru_maxrss) over the whole run; CUDA: per
                           training row, torch.cuda.max_memory_allocated during that row's steps.
On CUDA every training row runs twice: fp32 in NCHW, and bf16 autocast + channels_last
(`common.prepare_model`), the training default there. The data part is timed with the GPU
synchronised before and after it, so its share is an upper bound: a training loop does not wait.

Choices (not in either paper; this file is no paper's):
  - The synthetic set has 751 training identities, 5 cameras and 1..9 images per camera
    (`synthetic.make_synthetic`), about 17.5 images per identity against Market-1501's 17.2,
    and only one test identity: no row here reads the query or gallery images.
  - The AAA-Net rows use the paper's 224x224 with batch 32 (its Config default): img/s then
    compares directly with the AEA rows' batch of 32.
  - The data-path rows use random erasing p=0.5, the most work the training path can be asked
    for (AEA's originals and AAA-Net's default use none; Table 6's REDA and Table 5's baseline
    use 0.5).
  - The attention + erasing and stage-2 floor rows time one fixed batch (and M_l, f_r computed
    once from it): what they time does not depend on which images are in it.
  - The FLOPs are counted on the meta device (tensors with shapes and no data): the count is
    the same as on any device, and it computes nothing.
  - The re-ranking problem: one identity per 21 gallery images (Market-1501: 15913 / 750),
    queries and gallery drawing theirs uniformly; a feature is its identity's centre plus noise
    of the same size (both standard normal), then L2-normalised, so an image's nearest
    neighbours are mostly its own identity's and the k-reciprocal sets expand.
  - fast_rank_metrics' extra memory is measured first of all, before the data cache and the
    training rows, so that its peak can rise above the process's earlier ones (ru_maxrss
    cannot be reset).
"""
import argparse
import concurrent.futures
import dataclasses
import datetime
import itertools
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import typing

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import aaanet
import aea
import common
import data
import evaluate
import synthetic
from common import UserError


@dataclasses.dataclass
class BenchConfig:
    root: str = "data/bench_market"  # synthetic training set, written once and reused (git-ignored)
    train_ids: int = 751  # training identities (Market-1501: 751)
    cameras: int = 5  # cameras of make_synthetic; each identity is seen by 2..cameras of them
    max_per_camera: int = 9  # images per identity and camera: 1..this (~17.5 per identity)
    height: int = 256  # AEA input height (AEA Sec. IV-B)
    width: int = 128  # AEA input width
    P: int = 8  # identities per AEA batch (AEA Sec. IV-B)
    K: int = 4  # images per identity in an AEA batch
    aaa_size: int = 224  # AAA-Net input, square (AAA-Net Sec. 4.2)
    aaa_batch: int = 32  # AAA-Net batch (aaanet.Config's default)
    aaa_point: typing.Literal[aaanet.POINTS] = "conv3_x"  # AAA-Net's middle layer f_r (Table 3)
    loader_batch: int = 32  # batch of both data-path rows
    workers: int = 0  # DataLoader worker processes of the conventional pipeline (0: one per core)
    repeats: int = 3  # timed rounds of the training rows (+ one warm-up) and of fast_rank_metrics
    feature_images: int = 256  # images whose AEA test feature is extracted
    feature_batch: int = 128  # batch of the feature extraction
    queries: int = 3368  # the ranking problem: Market-1501's query images
    gallery: int = 15913  # Market-1501's gallery without junk
    distractors: int = 2798  # gallery images with pid 0
    test_ids: int = 750  # identities of the query set
    rerank_queries: int = 3368  # the re-ranking problem: Market-1501's query images
    rerank_gallery: int = 15913  # the re-ranking problem: Market-1501's gallery without junk
    device: str = "auto"  # auto (CUDA if present), cpu, cuda or cuda:N
    seed: int = 0  # seeds the synthetic data, the weights, the batches, the (re-)ranking problems


# --quick: small everything, about 1.5 minutes on 2 CPU cores (the full run: about 22); the
# ranking problem keeps its Market-1501 size (a few seconds with the argsort yardstick), the
# re-ranking problem does not (at Market's size its numpy transcription takes minutes and GBs).
QUICK = dict(root="data/bench_quick", train_ids=64, height=128, width=64, P=4, K=4,
             aaa_size=112, aaa_batch=8, repeats=2, feature_images=32, feature_batch=32,
             rerank_queries=300, rerank_gallery=1500)

# The floors at the full run's sizes, {row: (bound, "<=" or ">=")}: on the 2-core CPU, and on one
# H100/H200 GPU (an AEA epoch over the Market-sized set, AAA-Net stage 1, features, ranking).
# The re-ranking rows run on the CPU on every machine, so their floors are the CPU's everywhere.
FLOORS = {"cpu": {"AEA / B1": (2.2, "<="), "stage 2 / stage 1": (3.6, "<="),
                  "ours / conventional": (5.0, ">="), "fast_rank_metrics": (1.0, "<="),
                  "re-ranking: transcription / ours": (5.0, ">="),
                  "re-ranking: ours, extra GB": (4.0, "<=")},
          "cuda": {"AEA epoch": (10.0, "<="), "train: AAA stage 1": (2500.0, ">="),
                   "features": (5000.0, ">="), "fast_rank_metrics": (0.05, "<=")}}


def parse_config(argv):
    """Flags -> BenchConfig; --quick swaps in the QUICK sizes (flags given explicitly still win)."""
    parser = argparse.ArgumentParser(
        prog="bench.py", description="Time the data path, the training steps of both papers, "
        "feature extraction and the ranking metrics on this machine; one table.")
    quick = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
    parser.add_argument("--quick", action="store_true", help="small sizes: " + quick)
    common.add_config_args(parser, BenchConfig)
    if parser.parse_args(argv).quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    cfg = common.config_from_args(BenchConfig, args)
    # bad sizes fail here, with the flag's name, not minutes later inside a measurement;
    # every size and count is >= 1, except these three
    bad = [f.name for f in dataclasses.fields(cfg)
           if type(f.default) is int and getattr(cfg, f.name) < 1
           and f.name not in ("seed", "workers", "distractors")]
    if bad:
        raise UserError(f"--{bad[0].replace('_', '-')} must be >= 1, got {getattr(cfg, bad[0])}")
    if cfg.workers < 0 or not 0 <= cfg.distractors < cfg.gallery:
        raise UserError(f"--workers must be >= 0 and --distractors in [0, --gallery), got "
                        f"{cfg.workers} and {cfg.distractors}")
    return cfg, args.quick


# -----------------------------------------------------------------------------
# Timing and memory helpers

def clock(device):
    """perf_counter after the device has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_rounds(jobs, repeats, device):
    """Each job is (next_batch, step): one round calls every job once, in order, timing
    next_batch() ("data") and step(*batch) ("step") apart. Interleaved rounds, so that a slow
    spell of a shared machine hits every job alike; round 0 warms up (allocations, kernel choice)
    and is dropped. Returns {job: {"data": median s, "step": median s, "peak": max CUDA bytes
    allocated (0 on CPU)}}."""
    times = {name: [] for name in jobs}
    peak = dict.fromkeys(jobs, 0)
    for r in range(repeats + 1):
        for name, (next_batch, step) in jobs.items():
            if device.type == "cuda":
                # per job: the peak of this job's own step, not of the largest job before it
                torch.cuda.reset_peak_memory_stats(device)
            # clock() synchronises CUDA, so "data" is the batch's own work and "step" the step's;
            # in training the two overlap on a GPU (the data path is queued while the step runs),
            # so data / (data + step) is an upper bound of the time the GPU waits for data
            t0 = clock(device)
            batch = next_batch()
            t1 = clock(device)
            step(*batch)
            t2 = clock(device)
            if device.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device))
            if r:
                times[name].append((t1 - t0, t2 - t1))
    return {name: {"data": statistics.median(d for d, _ in t),
                   "step": statistics.median(s for _, s in t), "peak": peak[name]}
            for name, t in times.items()}


def pass_rate(batches, device):
    """img/s of one pass over `batches` (pairs x, y), from the first batch's arrival to the end:
    the steady state, without worker start-up or the first batch's one-off costs."""
    it = iter(batches)
    next(it)  # the first batch pays for workers starting / the first allocations: not timed
    start, n = clock(device), 0
    for x, _ in it:
        n += len(x)
    return n / (clock(device) - start)


def rss_bytes():
    """The process's resident set size now (Linux: /proc/self/statm's second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes():
    """The process's peak resident set size so far (ru_maxrss, which Linux gives in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def ranking_problem(cfg):
    """A random ranking problem with Market-1501-like labels: (dist float32 [Q, G], q_pids,
    g_pids, q_cams, g_cams), all on the CPU. Query and gallery people draw their pid from
    1..test_ids (each id about G / ids times in the gallery), the last `distractors` gallery items
    are pid 0, cameras are uniform over 6: about 14.5 true matches per query at Market's sizes
    (3368 x 15913, 751 ids, 6 cameras)."""
    g = torch.Generator().manual_seed(cfg.seed)
    Q, G, ids, cams = cfg.queries, cfg.gallery, cfg.test_ids, 6
    q_pids = torch.randint(1, ids + 1, (Q,), generator=g)
    q_cams = torch.randint(0, cams, (Q,), generator=g)
    g_pids = torch.cat([torch.randint(1, ids + 1, (G - cfg.distractors,), generator=g),
                        torch.zeros(cfg.distractors, dtype=torch.long)])
    g_cams = torch.randint(0, cams, (G,), generator=g)
    dist = torch.rand(Q, G, generator=g)  # float32 like Euclidean distances
    return dist, q_pids, g_pids, q_cams, g_cams


def rank_memory(cfg):
    """(bytes, exact): fast_rank_metrics' peak host memory on the CPU above the process's RSS just
    before a call on the whole problem, its input matrix not counted. ru_maxrss is the whole
    process's high-water mark: when the call raises it, the call's own peak is known exactly;
    when it does not, that peak lies somewhere below the mark, and mark - RSS before is only an
    upper bound."""
    dist, q_pids, g_pids, q_cams, g_cams = ranking_problem(cfg)
    # a small call first (64 queries): the first call's one-time costs (thread pools, code loaded
    # on first use) are not the function's memory
    evaluate.fast_rank_metrics(dist[:64], q_pids[:64], g_pids, q_cams[:64], g_cams)
    # RSS before the mark: the mark (a maximum that includes the RSS of its moment) is then >= it
    before, mark = rss_bytes(), max_rss_bytes()
    evaluate.fast_rank_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    after = max_rss_bytes()
    # never below 0: the kernel's RSS counts can be a few pages off, and a call cannot use less
    return max(after - before, 0), after > mark


def rerank_problem(cfg):
    """The re-ranking rows' problem: (q_g, q_q, g_g), float32 CPU tensors, the Euclidean distances
    between --rerank-queries and --rerank-gallery Market-like features: 2048-d, each its
    identity's centre plus noise of the same size (both standard normal), L2-normalised; one
    identity per 21 gallery images. The distances are computed a chunk of rows at a time, so that
    building them peaks little above the three matrices themselves."""
    g = torch.Generator().manual_seed(cfg.seed)
    Q, G, dim = cfg.rerank_queries, cfg.rerank_gallery, 2048
    ids = max(1, G // 21)
    pids = torch.randint(0, ids, (Q + G,), generator=g)
    centres = torch.randn(ids, dim, generator=g)
    feats = torch.randn(Q + G, dim, generator=g).add_(centres[pids])
    feats /= feats.norm(dim=1, keepdim=True)
    query, gallery = feats[:Q], feats[Q:]

    def distances(a, b):  # [len(a), len(b)], 1024 rows of a at a time
        out = torch.empty(len(a), len(b))
        for start in range(0, len(a), 1024):
            out[start:start + 1024] = common.pairwise_euclidean(a[start:start + 1024], b)
        return out
    return distances(query, gallery), distances(query, query), distances(gallery, gallery)


def rerank_call(cfg, which):
    """Run in a fresh child process (spawn): builds `rerank_problem`, then one call of `which`,
    "ours" (`evaluate.re_ranking`, on the tensors) or "transcription" (tests/rerank_reference.py,
    on the same memory as numpy arrays) -> (seconds, peak extra bytes, exact).

    The extra bytes are ru_maxrss after the call minus the RSS just before it, the inputs not
    counted; a small call on a corner of the problem first pays the one-time costs (code loaded
    on first use, thread pools). As in `rank_memory`: exact when the call raised the process's
    high-water mark, else (the building peaked higher) only an upper bound."""
    if which == "ours":
        re_ranking = evaluate.re_ranking
    else:
        # the transcription lives with the tests it is the yardstick of
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))
        import rerank_reference
        re_ranking = rerank_reference.re_ranking
    q_g, q_q, g_g = rerank_problem(cfg)
    if which != "ours":
        q_g, q_q, g_g = q_g.numpy(), q_q.numpy(), g_g.numpy()  # no copy
    re_ranking(q_g[:50, :200], q_q[:50, :50], g_g[:200, :200])  # the one-time costs
    before, mark = rss_bytes(), max_rss_bytes()
    start = time.perf_counter()
    re_ranking(q_g, q_q, g_g)
    secs = time.perf_counter() - start
    after = max_rss_bytes()
    return secs, max(after - before, 0), after > mark


def rerank_rows(cfg):
    """The two re-ranking rows at --rerank-queries x --rerank-gallery: ours and the numpy
    transcription of the official code, each measured by `rerank_call` in a fresh process (spawn:
    nothing inherited, its own ru_maxrss), on the CPU whatever the device of the other rows."""
    spawn = multiprocessing.get_context("spawn")
    rerank = {}
    for which in ("ours", "transcription"):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            rerank[which] = pool.submit(rerank_call, cfg, which).result()
    (ours, ours_extra, ours_exact), (theirs, theirs_extra, theirs_exact) = rerank.values()

    def extra(n, exact):  # in GB (10^9 bytes), or its upper bound
        return f"peak extra host memory {'' if exact else 'AT MOST '}{n / 1e9:.2f} GB"
    problem = f"Q={cfg.rerank_queries} x G={cfg.rerank_gallery}, k1=20, k2=6, lambda=0.3, CPU"
    cpu = torch.device("cpu")
    return [("re-ranking: ours", ours, "s",
             f"evaluate.re_ranking, {problem}; {extra(ours_extra, ours_exact)}",
             check("re-ranking: ours, extra GB", ours_extra / 1e9, cpu)),
            ("re-ranking: numpy transcription", theirs, "s",
             f"tests/rerank_reference.py; {extra(theirs_extra, theirs_exact)}; "
             f"transcription / ours = {theirs / ours:.1f}x",
             check("re-ranking: transcription / ours", theirs / ours, cpu))]


def on_device(model, device, precision):
    """bf16 rows: the training default (`common.prepare_model`: channels_last on CUDA); fp32:
    NCHW."""
    model = common.prepare_model(model, device) if precision == "bf16" else model.to(device)
    return model.train()


# -----------------------------------------------------------------------------
# The jobs: each paper's training step fed by its own data path, and the parts timed beside it

def aea_jobs(cfg, images, labels, num_classes, device, precision):
    """On one AEA model: ({"B1": job, "AEA": job}, {"attention + erasing": job}, the model).
    Each step draws its next P x K batch from `aea.epoch_batches`; B1's step uses the basic
    network alone. The erasing job times `aea.adversarial_erasing` on one batch."""
    common.seed_everything(cfg.seed)
    # random weights: the speed of a step does not depend on them, and no ImageNet file is needed
    model = on_device(aea.AEA(num_classes, "aea", "none"), device, precision)
    optimizer = common.make_sgd(model.parameters(), 0.01)
    run = aea.AEAConfig(height=cfg.height, width=cfg.width, P=cfg.P, K=cfg.K, weights="none")
    run = dataclasses.replace(run, precision=precision)
    # B1 = the basic network alone (L_I1 + L_T); AEA = Eq. (8) with the dynamic erasing
    variants = {"B1": (dataclasses.replace(run, variant="b1"), False), "AEA": (run, True)}
    steps = {}
    for name, (c, joint) in variants.items():
        sampler = data.PKSampler(labels.cpu().numpy(), cfg.P, cfg.K, cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)

        def batches(c=c, joint=joint, sampler=sampler, g=g):  # the training's epochs 0, 1, 2, ...
            for epoch in itertools.count():
                sampler.set_epoch(epoch)
                yield from aea.epoch_batches(images, labels, sampler, g, c, joint)

        def step(x, y, x_other, c=c, joint=joint):
            aea.training_step(model, optimizer, x, y, c, joint, x_other)
        stream = batches()
        # x_other is None here (dynamic erasing, and B1 has no complementary input)
        steps[name] = (lambda stream=stream: next(stream), step)
    # attention + erasing alone, on one AEA batch: M_l, layer l's output of the basic network
    # (conv2_x), computed once without gradient (the AEA step takes it from its own forward)
    sampler = data.PKSampler(labels.cpu().numpy(), cfg.P, cfg.K, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x, _, _ = next(aea.epoch_batches(images, labels, sampler, g, run, True))
    with torch.no_grad(), common.autocast(device, precision):
        M_l = model.basic.backbone.run(x, "conv1", run.attention_layer)

    def erase(x, M_l):  # under the step's autocast, as `aea.training_step` calls it
        with common.autocast(device, precision):
            aea.adversarial_erasing(x, M_l, run.R)
    return steps, {"attention + erasing": (lambda: (x, M_l), erase)}, model


def aaa_jobs(cfg, images, labels, num_classes, device, precision):
    """On one AAA-Net: ({"AAA stage 1": job, ...}, {"stage-2 floor: f_r": job, "stage-2 floor:
    rest": job}). Each stage's step sets what the stage freezes (`AAANet.freeze_for`) and takes
    an SGD step with the stage's own optimizer over the parameters it trains, on the next batch
    of one stream of epochs (`aaanet.epoch_batches`, as `aaanet.train_stage` draws them)."""
    common.seed_everything(cfg.seed)
    run = aaanet.Config(height=cfg.aaa_size, width=cfg.aaa_size, batch_size=cfg.aaa_batch,
                        point=cfg.aaa_point, precision=precision)
    model = aaanet.AAANet(num_classes, run.point, 0.5, run.attention_channels, "none")
    model = on_device(model, device, precision)
    # one optimizer per stage over the parameters that stage trains (stage 2: the attention
    # branch); freeze_for also undoes stage 2's freezing when it is called for another stage
    optimizers = {stage: common.make_sgd(model.freeze_for(stage), 1e-4)
                  for stage in aaanet.STAGE_NAMES}
    g = torch.Generator().manual_seed(cfg.seed)

    def batches():  # epoch after epoch: shuffled passes, the last incomplete batch dropped
        for _ in itertools.count():
            yield from aaanet.epoch_batches(images, labels, g, run)
    stream = batches()  # one stream for the three stages: each step draws the next batch

    def step(stage, x, y):  # the stage's modes and frozen parts (microseconds), then its step
        model.freeze_for(stage)
        aaanet.training_step(model, optimizers[stage], stage, x, y, run)
    steps = {f"AAA stage {k}": (lambda: next(stream), lambda x, y, s=stage: step(s, x, y))
             for k, stage in enumerate(aaanet.STAGE_NAMES, 1)}

    # the floor of a stage-2 step, what it runs however cheap its attention branch: f_r of the B
    # images and the rest of the network on their B*16 occluded copies (Algorithm 1 steps 1-3),
    # on one batch, run as `aaanet.stage2_loss` runs them (frozen parts: eval mode, no gradient)
    @torch.no_grad()
    def as_stage2(part, *args):
        model.eval()
        with common.autocast(device, precision):
            out = part(*args)
        model.train()  # the next step's freeze_for sets each stage's modes from here
        return out

    x, y = next(aaanet.epoch_batches(images, labels, torch.Generator().manual_seed(cfg.seed), run))
    f_r = as_stage2(model.middle, x)  # the second part's input, computed once

    def probe(f_r):  # Algorithm 1 steps 2-4 as stage 2 runs them: the B*G copies through the rest
        return aaanet.hardest_occlusion(model.logits_from_middle, f_r, y, run.grid,
                                        run.occlusion_chunk)
    floor = {"stage-2 floor: f_r": (lambda: (x,), lambda x: as_stage2(model.middle, x)),
             "stage-2 floor: rest": (lambda: (f_r,), lambda f: as_stage2(probe, f))}
    return steps, floor


def stage2_floor_flops(cfg, num_classes):
    """FLOPs (torch's FlopCounterMode: convolutions and matrix products) of the stage-2 floor's
    two parts, f_r of the B images and the rest of the network on their B*16 occluded copies,
    and of a stage-1 forward + backward, at the AAA-Net rows' sizes: (f_r, rest, stage 1).
    Counted on the meta device: its tensors have shapes and no data, so nothing is computed."""
    run = aaanet.Config(height=cfg.aaa_size, width=cfg.aaa_size, batch_size=cfg.aaa_batch,
                        point=cfg.aaa_point)
    with torch.device("meta"):
        model = aaanet.AAANet(num_classes, run.point, 0.5, run.attention_channels, "none")
        x = torch.empty(cfg.aaa_batch, 3, cfg.aaa_size, cfg.aaa_size)
        y = torch.zeros(cfg.aaa_batch, dtype=torch.long)
    model.freeze_for("stage1")
    with FlopCounterMode(display=False) as stage1:
        aaanet.stage1_loss(model, x, y, run)[0].backward()
    model.eval()  # stage 2's frozen parts, without gradient
    with torch.no_grad(), FlopCounterMode(display=False) as middle:
        f_r = model.middle(x)
    with torch.no_grad(), FlopCounterMode(display=False) as rest:  # Algorithm 1 steps 2-4
        aaanet.hardest_occlusion(model.logits_from_middle, f_r, y, run.grid, run.occlusion_chunk)
    return middle.get_total_flops(), rest.get_total_flops(), stage1.get_total_flops()


def load_train(cfg, height, width, count=None, device=torch.device("cpu")):
    """(uint8 cache [N, 3, height, width] on `device`, labels [N] on `device`, identities, decode
    seconds) of the first `count` training images (all of them by default)."""
    ds = data.load_dataset(cfg.root, "synthetic", verbose=False)
    # the first `count` images in name order: the AAA-Net rows cycle over a few batches only
    paths, pids = ds.train.paths[:count], ds.train.pids[:count]
    # the cache build row times exactly this: decoding and resizing, not the name parsing above
    start = time.perf_counter()
    images = data.load_images(paths, height, width)
    secs = time.perf_counter() - start
    return images.to(device), torch.as_tensor(pids).to(device), ds.num_train_pids, secs


def aea_b1_glibc_default(cfg, cache=None):
    """Median B1 and AEA step seconds (fp32, CPU) with glibc's default malloc. Must run where
    nothing has called `common.keep_freed_memory` yet (the setting cannot be undone in a
    process)."""
    # in a child process the cache is decoded again (a 1.2 GB tensor is not worth pickling over)
    images, labels, num_classes, _ = cache or load_train(cfg, cfg.height, cfg.width)
    # the same steps and rounds as the training rows, so the two AEA / B1 ratios compare directly
    steps, _, _ = aea_jobs(cfg, images, labels, num_classes, torch.device("cpu"), "fp32")
    t = time_rounds(steps, cfg.repeats, torch.device("cpu"))
    return t["B1"]["step"], t["AEA"]["step"]


# -----------------------------------------------------------------------------
# The conventional pipeline: PIL + torchvision transforms + DataLoader workers

def conventional_transform(height, width, pad=10, random_erasing=0.5, flip=0.5):
    """torchvision's version of `data.augment` on a PIL image: resize, flip, pad + random crop,
    to tensor, normalise, random erasing. The pad fill is the mean colour and the erased value 0
    after normalising, and random erasing draws from the same area and aspect ranges as
    `data._erasing_boxes` (torchvision: aspects log-uniform, 10 tries), so the two pipelines do
    the same kind of work per image."""
    mean_colour = tuple(round(255 * m) for m in data.MEAN)  # 0 once normalised
    return T.Compose([
        T.Resize((height, width)),  # PIL bilinear, as data.load_images
        T.RandomHorizontalFlip(flip),
        T.Pad(pad, fill=mean_colour),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(data.MEAN, data.STD),
        T.RandomErasing(random_erasing, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=0),
    ])


class ConventionalDataset(torch.utils.data.Dataset):
    """Image i: opened and decoded from its JPEG on every access, then `conventional_transform`."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        # the work a conventional pipeline repeats every epoch: open, decode, convert, transform
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


# -----------------------------------------------------------------------------
# The benchmark

def machine():
    """One line: the CPU (or GPU), the core count, torch, the date."""
    # Linux names the CPU model in /proc/cpuinfo; platform.processor() is often empty there
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads); {gpu}; "
            f"torch {torch.__version__}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def check(row, value, device):
    """'floor <= 2.2: met' (or NOT met) for a row with a floor in FLOORS on this device, else ''."""
    # the floors differ by device (CPU ratios; GPU rates), and rows without a floor say nothing
    if row not in FLOORS[device.type]:
        return ""
    bound, op = FLOORS[device.type][row]
    met = value <= bound if op == "<=" else value >= bound
    return f"floor {op} {bound:g}: {'met' if met else 'NOT met'}"


def row_tag(precision, device):
    """The suffix of a training row's name: nothing on the CPU (fp32 only), the precision on
    CUDA."""
    if device.type == "cpu":
        return ""
    return " [fp32 NCHW]" if precision == "fp32" else " [bf16 + channels_last]"


def run(cfg):
    """Measure everything; returns (rows, table): rows = [(name, value, unit, detail, ...)],
    table = the text."""
    # rows: (name, value, unit, detail, floor verdict); the table is printed from them in order
    rows = []
    # 0. fast_rank_metrics' extra host memory, first of all: ru_maxrss is a high-water mark,
    # and once the cache and the training rows have run it is theirs (its row comes in 6.)
    rank_extra, rank_extra_exact = rank_memory(cfg)
    # 1. the data: written once, reused (the folder is ignored by git)
    synthetic.ensure_synthetic(cfg.root, any_dataset=True, seed=cfg.seed,
                               train_ids=cfg.train_ids, test_ids=1, cameras=cfg.cameras,
                               max_per_camera=cfg.max_per_camera, junk=0, distractors=0)
    # cache build: every training image decoded and resized once (the device is not chosen yet:
    # pick_device would apply keep_freed_memory before the glibc-default measurement below)
    cpu_cache = load_train(cfg, cfg.height, cfg.width)
    images_cpu, labels_cpu, num_classes, secs = cpu_cache
    N = len(images_cpu)
    if N < max(2 * cfg.loader_batch, cfg.aaa_batch, cfg.P * cfg.K):
        raise UserError(f"{cfg.root} holds {N} training images: too few for two batches of "
                        f"--loader-batch {cfg.loader_batch}, one of --aaa-batch {cfg.aaa_batch} "
                        "and one of P x K")
    rows.append(("data: cache build (load_images)", N / secs, "img/s",
                 f"{N} images of {num_classes} ids, JPEG decode + resize to "
                 f"{cfg.height}x{cfg.width}, {secs:.1f} s"))
    # 2. AEA / B1 with glibc's default malloc, first: in this process if nothing has applied
    # keep_freed_memory yet, else in a fresh interpreter (spawn, not fork: a fork inherits the
    # setting). Decided without pick_device, which would apply the setting; on CUDA the host
    # allocator does not serve the activations, so the row is CPU-only
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    without, where = None, "in this process, first"
    if not cuda:
        if not common.keep_freed_memory.cache_info().currsize:
            without = aea_b1_glibc_default(cfg, cpu_cache)
        else:
            where = "in a fresh child process (keep_freed_memory had run here)"
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                without = pool.submit(aea_b1_glibc_default, cfg).result()
    device = common.pick_device(cfg.device)  # on the CPU: keep_freed_memory from here on
    # 3. the data path: ours (cache on the training device, augment there) vs the conventional
    # one. Ours: the cache on the training device (as aea.train / aaanet.train_stage keep it),
    # one shuffled pass in batches of --loader-batch through the training path itself
    images, labels = images_cpu.to(device), labels_cpu.to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    order = [o.tolist() for o in torch.randperm(N, generator=g).split(cfg.loader_batch)]
    ours = pass_rate(data.train_batches(images, labels, order, g, random_erasing=0.5), device)
    # theirs: the same images from their JPEG files, one worker process per core (the usual
    # setting), shuffled by the DataLoader; the batches stay on the CPU (a GPU copy is ours alone)
    workers = cfg.workers or os.cpu_count()
    ds = data.load_dataset(cfg.root, "synthetic", verbose=False)
    transform = conventional_transform(cfg.height, cfg.width)
    loader = torch.utils.data.DataLoader(
        ConventionalDataset(ds.train.paths, ds.train.pids, transform),
        batch_size=cfg.loader_batch, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(cfg.seed))
    theirs = pass_rate(loader, torch.device("cpu"))
    rows.append(("data: ours, augmentation from the cache", ours, "img/s",
                 f"train_batches on {device.type}: flip, pad 10 + crop, normalise, erasing "
                 f"p=0.5; batch {cfg.loader_batch}"))
    rows.append(("data: conventional (PIL + torchvision)", theirs, "img/s",
                 f"Dataset + transforms, DataLoader {workers} workers, batch {cfg.loader_batch}"))
    rows.append(("ours / conventional", ours / theirs, "x",
                 check("ours / conventional", ours / theirs, device)))
    # 4. the training steps, and the parts timed beside them, of every precision
    precisions = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
    aaa_n = cfg.aaa_batch * 4  # the AAA rows decode only these: 4 batches, cycled
    aaa_images, aaa_labels, _, _ = load_train(cfg, cfg.aaa_size, cfg.aaa_size, aaa_n, device)
    steps, parts, feature_model = {}, {}, None
    for p in precisions:
        tag = row_tag(p, device)
        a_steps, a_parts, feature_model = aea_jobs(cfg, images, labels, num_classes, device, p)
        s_steps, s_parts = aaa_jobs(cfg, aaa_images, aaa_labels, num_classes, device, p)
        steps.update({name + tag: job for name, job in {**a_steps, **s_steps}.items()})
        parts.update({name + tag: job for name, job in {**a_parts, **s_parts}.items()})
    # all in the same interleaved rounds: B1, AEA, AAA stages 1-3, then the erasing and the
    # stage-2 floor's two parts (x 2 precisions on CUDA)
    t = time_rounds({**steps, **parts}, cfg.repeats, device)
    for name in steps:
        r = t[name]
        aaa = name.startswith("AAA")
        B = cfg.aaa_batch if aaa else cfg.P * cfg.K
        size = f"{cfg.aaa_size}x{cfg.aaa_size}" if aaa else f"{cfg.height}x{cfg.width}"
        memory = f", peak {r['peak'] / 2**20:.0f} MiB" if device.type == "cuda" else ""
        # img/s of training = images / (step + its batch's data path), both medians
        rate = B / (r["data"] + r["step"])
        share = 100 * r["data"] / (r["data"] + r["step"])
        rows.append((f"train: {name}", rate, "img/s",
                     f"batch {B} at {size}: step {r['step'] * 1000:.0f} ms + data "
                     f"{r['data'] * 1000:.1f} ms ({share:.1f}% of it){memory}",
                     check("train: " + name.split(" [")[0], rate, device)))
    # the ratio rows, per precision: the floors compare step times, not img/s
    G = aaanet.Config().grid ** 2  # occluded copies per image
    # (f_r, rest, stage 1): counted once, the same in every precision
    flops = stage2_floor_flops(cfg, num_classes)
    for p in precisions:
        tag = row_tag(p, device)
        s = {name[:-len(tag) or None]: r["step"] for name, r in t.items() if name.endswith(tag)}
        ms = {name: f"{secs * 1000:.0f} ms" for name, secs in s.items()}
        kept = " (keep_freed_memory)" if device.type == "cpu" else ""
        rows.append(("AEA / B1" + kept + tag, s["AEA"] / s["B1"], "x",
                     check("AEA / B1", s["AEA"] / s["B1"], device)))
        rows.append(("attention + erasing / AEA step" + tag,
                     100 * s["attention + erasing"] / s["AEA"], "%",
                     f"adversarial_erasing alone {ms['attention + erasing']} of the AEA step's "
                     f"{ms['AEA']}"))
        rows.append(("stage 2 / stage 1" + tag, s["AAA stage 2"] / s["AAA stage 1"], "x",
                     check("stage 2 / stage 1", s["AAA stage 2"] / s["AAA stage 1"], device)))
        floor = s["stage-2 floor: f_r"] + s["stage-2 floor: rest"]
        rows.append(("stage-2 floor / stage 1 (timed)" + tag, floor / s["AAA stage 1"], "x",
                     f"eval, no grad: f_r of {cfg.aaa_batch} images {ms['stage-2 floor: f_r']} + "
                     f"the rest on {cfg.aaa_batch * G} copies {ms['stage-2 floor: rest']} = "
                     f"{floor * 1000:.0f} ms; stage 1 {ms['AAA stage 1']}"))
        if p == precisions[0]:  # counted, not timed: no precision in its name
            f_r, rest, stage1 = (f / 1e9 for f in flops)
            rows.append(("stage-2 floor / stage 1 (FLOPs)", (f_r + rest) / stage1, "x",
                         f"f_r {f_r:.1f} + the rest {rest:.1f} GFLOP, no grad, vs stage 1 "
                         f"forward + backward {stage1:.1f} GFLOP (FlopCounterMode)"))
        rows.append(("stage 3 / stage 1" + tag, s["AAA stage 3"] / s["AAA stage 1"], "x", ""))
        # an AEA epoch is ceil(#ids / P) PK batches (data.PKSampler), each one AEA step + batch
        batches = -(-num_classes // cfg.P)
        epoch = batches * (t["AEA" + tag]["data"] + t["AEA" + tag]["step"])
        rows.append(("AEA epoch (from the AEA row)" + tag, epoch, "s",
                     f"{batches} P x K batches of this set x (step + data); "
                     f"100 epochs: {epoch * 100 / 60:.0f} min",
                     check("AEA epoch", epoch, device)))
    if without is not None:
        rows.append(("AEA / B1 (glibc default malloc)", without[1] / without[0], "x",
                     f"B1 {without[0]:.2f} s, AEA {without[1]:.2f} s per step, {where}",
                     check("AEA / B1", without[1] / without[0], device)))
    # 5. feature extraction: the AEA test feature (both networks, eval mode) of cached images
    batches = images_cpu[:cfg.feature_images].split(cfg.feature_batch)
    evaluate.extract_features(feature_model, batches[:1], device)  # warm-up: one batch
    start = clock(device)
    feats = evaluate.extract_features(feature_model, batches, device)
    secs = clock(device) - start
    rows.append(("features: AEA test feature", len(feats) / secs, "img/s",
                 f"{len(feats)} images at {cfg.height}x{cfg.width}, {feats.shape[1]}-d, "
                 f"batch {cfg.feature_batch}", check("features", len(feats) / secs, device)))
    # 6. the ranking metrics on a Market-sized problem: fast_rank_metrics, what evaluation calls
    dist, q_pids, g_pids, q_cams, g_cams = ranking_problem(cfg)
    # on the GPU when there is one; the labels stay on the CPU, as in evaluation
    dist_on_device = dist.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(cfg.repeats + 1):  # the first call warms up
        start = clock(device)
        evaluate.fast_rank_metrics(dist_on_device, q_pids, g_pids, q_cams, g_cams)
        times.append(clock(device) - start)
    secs = statistics.median(times[1:])
    detail = f"Q={cfg.queries} x G={cfg.gallery} on {device.type}"
    if device.type == "cuda":
        extra = torch.cuda.max_memory_allocated(device) - cuda_before
        detail += f", peak extra CUDA memory {extra / 2**20:.0f} MiB"
    rows.append(("fast_rank_metrics", secs, "s", detail,
                 check("fast_rank_metrics", secs, device)))
    # the yardstick: numpy's per-row argsort, what a ranking by sorting pays at the least
    start = time.perf_counter()
    np.argsort(dist.numpy(), axis=1)
    argsort = time.perf_counter() - start
    rows.append(("numpy per-row argsort (yardstick)", argsort, "s",
                 "the same matrix on the CPU, one call"))
    rows.append(("fast_rank_metrics / argsort", secs / argsort, "x",
                 "both on the CPU" if device.type == "cpu" else
                 f"fast_rank_metrics on {device.type}, argsort on the CPU"))
    # measured in 0.: exact when the call raised the process's high-water mark, else a bound
    how = ("on the CPU, before any other row: ru_maxrss after one call - RSS before"
           if rank_extra_exact else "AT MOST: the call stayed below the process's earlier peak "
           "RSS (ru_maxrss), so only this bound is known")
    matrix = dist.numel() * dist.element_size() / 2**20
    rows.append(("fast_rank_metrics: extra host memory", rank_extra / 2**20, "MiB",
                 f"{how}; the {matrix:.0f} MiB input not counted"))
    # 7. re-ranking: ours and the numpy transcription of the official code, in child processes
    rows += rerank_rows(cfg)
    # 8. memory: ru_maxrss is in KiB on Linux; it covers every row of the run, not one of them
    rows.append(("peak memory (max RSS)", max_rss_bytes() / 2**20, "MiB",
                 "the whole process, all rows (the re-ranking rows' child processes aside)"
                 + ("" if device.type == "cpu" else "; per-row CUDA peaks above")))
    return rows, format_table(rows)


def format_table(rows):
    """rows -> aligned text: name, value (3 significant figures, at least the integer part), unit,
    and the row's details then its floor's verdict (a row is (name, value, unit, detail, ...),
    empty parts skipped)."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'row':<{width}}  {'value':>9}  {'unit':<5}  detail"]
    for name, value, unit, *parts in rows:
        detail = "; ".join(p for p in parts if p)
        text = f"{value:.0f}" if value >= 100 else f"{value:.3g}"
        lines.append(f"{name:<{width}}  {text:>9}  {unit:<5}  {detail}")
    return "\n".join(lines)


def main(argv=None):
    """python bench.py [--quick] [flags]: print the machine line, the sizes and the table."""
    cfg, quick = parse_config(sys.argv[1:] if argv is None else argv)
    print(f"machine: {machine()}")
    print(f"bench.py{' --quick' if quick else ''}: data {cfg.root}, AEA {cfg.P}x{cfg.K} at "
          f"{cfg.height}x{cfg.width}, AAA-Net batch {cfg.aaa_batch} at "
          f"{cfg.aaa_size}x{cfg.aaa_size}, timed rounds: {cfg.repeats} + 1 warm-up"
          + ("; the floors are for the full run's sizes" if quick else ""), flush=True)
    start = time.perf_counter()
    rows, table = run(cfg)
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    common.exit_on_user_error(main)

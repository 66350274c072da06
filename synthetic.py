"""The synthetic re-ID dataset: people drawn with numpy into the Market-1501 layout and naming, so
that both papers' demos and the tests run on a CPU without downloading a dataset.

    python synthetic.py                        # data/synthetic, the demos' dataset
    python synthetic.py --root DIR --seed 1    # another folder, another draw
    python synthetic.py --train-ids 50 ...     # other sizes: every size flag in -h

The command writes the dataset when ROOT holds none, says it is already there when
ROOT/synthetic.txt records the same arguments, and refuses a ROOT that holds another dataset
(`error: ...`, exit status 2); then it prints `data.load_dataset`'s table. So
`python synthetic.py && python aea.py` works in a fresh clone and every time after. The demos
find the dataset with `data.demo_dataset`: the core modules never import this file.

What is drawn (`_render`): a 128x64 image, Market-1501's size, of one camera's scene (wall,
floor) with a person over it: clothing colours from a shared palette, a pattern, sleeves,
trousers / shorts / skirt, shoes, hat, backpack, handbag, hair and build (`_identity`), with
jitter of position, scale, stride, front or back view and mirroring. The person fills the frame
as in a detector's crop (`FRAMINGS`; `person_shares` counts the pixels it covers), so that the
papers' "erase R% of the image" erases about 2R% of the person, as on Market-1501;
`--framing loose` draws a smaller, thinner figure in a loose frame. Each camera (`_camera`)
multiplies every pixel by its gain and tint, the person's too, and about half the cameras are
blurry: the same shirt reads as another colour in another camera, the change re-ID must see
through.

Why: a model must use more than the one most salient region, what AEA's adversarial erasing
and AAA-Net's attention-guided occlusion train for:
- Look-alike families: every run of `lookalikes` identities of a split wears the first one's
  upper garment (colours, pattern, sleeves), the largest and most salient region, and differs
  only below the waist, in shoes, bags, hat, hair and build. A network that reads the torso
  alone confuses a query with its look-alikes.
- Occluders: every other image has one, over the torso (a sign, a passer-by), over the legs and
  shoes (a car, a bench), or a vertical band (a pole): a network that relies on one region fails
  where it is hidden.
- Junk (pid -1, gallery only): half are fragments of test identities (a top or bottom third,
  stretched), half bare background, as Market-1501's poor detections.
- Distractors (pid 0000, gallery only): half are people seen once and never queried, half bare
  background (false detections).
- Query: one image from every camera where a test identity has 2+ images, so every query has a
  match in another camera.

Determinism: one numpy generator, seeded by --seed, draws everything in a fixed order, so a
seed gives the same bytes with the same Pillow (the demos' scores depend on it: reordering a
draw changes the whole dataset). ROOT/synthetic.txt (`data.SYNTHETIC_ARGS`), written last,
records the arguments.
"""
import argparse
import contextlib
import errno
import inspect
import os
import re
import shutil
import time

import numpy as np
from PIL import Image

from common import UserError, exit_on_user_error, pid_running
# data's split folder names, and its folder checks that name the folder in their errors
from data import SYNTHETIC_ARGS, _SPLITS, _is_folder, _listdir, load_dataset

# -----------------------------------------------------------------------------
# Drawing one image

_H = 128  # Market-1501's native image height
_W = 64   # and width
_YY, _XX = np.mgrid[0:_H, 0:_W].astype(np.float32)  # pixel row / column grids, [H, W] each
# 16 clothing colours (RGB): with tens of identities many share a shirt colour, so identity
# lies in the combination (upper, lower, pattern, accessories, build), not in one colour.
_PALETTE = np.array([[30, 30, 35], [225, 225, 220], [128, 128, 128], [30, 40, 110],
                     [50, 100, 200], [190, 40, 40], [110, 25, 35], [40, 130, 60],
                     [110, 110, 50], [220, 190, 60], [200, 180, 140], [110, 70, 40],
                     [220, 140, 170], [110, 60, 140], [230, 120, 40], [40, 140, 140]],
                    dtype=np.float32)
_SKIN = np.array([[235, 200, 170], [200, 150, 115], [150, 100, 70], [95, 65, 45]], dtype=np.float32)
_HAIR = np.array([[20, 20, 20], [90, 55, 30], [200, 170, 100], [150, 150, 150]], dtype=np.float32)


def _identity(rng, family=None):
    """One person's appearance, fixed across all their images.

    pattern: 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks (period in figure
    heights); lower_kind: 0 trousers, 1 shorts, 2 skirt; build: width factor; height: size factor.
    family: another identity whose upper garment (colours, pattern, sleeves) this one wears: a
    look-alike that differs only below the waist, in shoes, bags, hat, hair and build.
    """
    def colour():  # a palette colour, shifted a little per identity
        return _PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, 10, 3)

    def maybe(p):  # an accessory's colour, or None when the person has none
        return colour() if rng.random() < p else None
    # the values draw from rng in the order written: reordering them changes the whole dataset
    person = dict(upper=colour(), upper2=colour(), pattern=rng.integers(4),
                  period=rng.uniform(0.03, 0.07), long_sleeves=rng.random() < 0.5, lower=colour(),
                  lower_kind=rng.integers(3), skin=_SKIN[rng.integers(len(_SKIN))],
                  hair=_HAIR[rng.integers(len(_HAIR))], shoes=colour(), hat=maybe(0.35),
                  backpack=maybe(0.4), handbag=maybe(0.35), build=rng.uniform(0.85, 1.15),
                  height=rng.uniform(0.9, 1.05))
    if family is not None:  # the most salient cue, the upper garment, copied from the family
        upper_garment = ("upper", "upper2", "pattern", "period", "long_sleeves")
        person.update({k: family[k] for k in upper_garment})
    return person


def _camera(rng):
    """One camera's scene: wall/floor colours and texture, illumination, framing, sharpness.

    gain and tint multiply every pixel, the person's too: the same shirt reads as a different
    colour in another camera, the cross-camera change re-ID models must see through.
    """
    def muted():  # a grey level plus a little colour: scenes are duller than clothes
        return rng.uniform(60, 190) + rng.uniform(-35, 35, 3)
    # the values draw from rng in the order written
    return dict(wall=muted(), floor=muted(), horizon=rng.uniform(0.55, 0.8),
                panel=rng.uniform(6, 20), gain=rng.uniform(0.7, 1.25),
                tint=rng.uniform(0.85, 1.15, 3), scale=rng.uniform(0.85, 1.0),
                blurry=rng.random() < 0.5)


# How the person sits in the frame. detector: as in a detector's crop (Market-1501's boxes are
# fitted to the person, then resized to 128x64): the figure spans about 0.94 of the height
# whatever the camera's distance or the person's size, centred within 2 px, and is drawn 1.3
# times wider than its proportions in figure heights, as a clothed body seen in a 1:2 box is.
# loose: a thinner figure 0.86 of the height, scaled by the camera's distance and the person's
# size, placed within 5 px.
FRAMINGS = {"detector": dict(height=0.94, sized=False, shift_x=2, shift_y=2, widen=1.3),
            "loose": dict(height=0.86, sized=True, shift_x=5, shift_y=4, widen=1.0)}


def _render(rng, cam, person=None, framing="detector"):
    """One 128x64 RGB uint8 image: the camera's background, the person (if any), maybe an
    occluder -> (image [H, W, 3] uint8, person [H, W] bool: the pixels the person covers, under
    any occluder; all False without a person).

    Parts are painted back to front, each a boolean mask over the pixel grid: a later part covers
    an earlier one. Sizes are in figure heights with roughly a real body's proportions: head
    0-0.16, torso 0.16-0.52, arms to 0.54, legs 0.5-1 with shoes from 0.94. `framing`: a key of
    FRAMINGS.
    """
    frame = FRAMINGS[framing]
    # background: wall above a horizon that wanders a little per image, floor below
    horizon = (cam["horizon"] + rng.uniform(-0.04, 0.04)) * _H
    panels = np.floor((_XX + rng.uniform(0, cam["panel"])) / cam["panel"]) % 2     # wall texture
    wall = cam["wall"] * (1 - 0.12 * panels[..., None])                            # [H, W, 3]
    img = np.where((_YY < horizon)[..., None], wall, cam["floor"])
    covered = np.zeros((_H, _W), dtype=bool)  # the person's pixels, part by part
    if person is not None:
        p = person
        # viewpoint jitter: figure height s (px), centre cx, top edge; mirrored half of the time
        size_jitter = rng.uniform(0.93, 1.07)
        s = _H * frame["height"] * size_jitter
        if frame["sized"]:  # a loose frame shows the camera's distance and the person's size
            s = _H * frame["height"] * cam["scale"] * p["height"] * size_jitter
        cx = _W / 2 + rng.uniform(-frame["shift_x"], frame["shift_x"])
        top = (_H - s) / 2 + rng.uniform(-frame["shift_y"], frame["shift_y"])
        side = rng.choice([-1.0, 1.0])
        # horizontal, in figure heights (head: no build); widened as FRAMINGS says
        uh = side * (_XX - cx) / (s * frame["widen"])
        u = uh / p["build"]                   # body parts scale with the build
        v = (_YY - top) / s                   # 0 at the top of the head, 1 at the soles
        back = rng.random() < 0.5             # seen from behind: hair over the head, backpack shows
        stride = rng.uniform(0, 0.06)         # the feet spread while walking
        # legs and shoes: two bars whose centres move apart towards the feet
        leg_x = 0.045 + stride * np.clip((v - 0.5) / 0.45, 0, 1)
        legs = (np.abs(np.abs(u) - leg_x) < 0.042) & (v > 0.5) & (v < 1.0)
        # skin shows below v = bare: trousers never (2 > 1), shorts from the knee, skirt's legs
        bare = {0: 2.0, 1: 0.68, 2: 0.5}[int(p["lower_kind"])]
        img[legs] = np.where((v[legs] > bare)[:, None], p["skin"], p["lower"])
        covered |= legs
        if p["lower_kind"] == 2:
            skirt = (v > 0.48) & (v < 0.72) & (np.abs(u) < 0.11 + 0.12 * (v - 0.48))
            img[skirt] = p["lower"]
            covered |= skirt
        img[legs & (v > 0.94)] = p["shoes"]
        # arms at the sides of the torso; short sleeves end at v = 0.28, hands below v = 0.5
        arms = (np.abs(u) > 0.115) & (np.abs(u) < 0.16) & (v > 0.17) & (v < 0.54)
        img[arms] = p["skin"]
        covered |= arms
        img[arms & (v < (0.5 if p["long_sleeves"] else 0.28))] = p["upper"]
        # torso, tapering to the waist, with the identity's pattern in the second colour
        torso = (np.abs(u) < 0.125 - 0.03 * (v - 0.16) / 0.36) & (v > 0.16) & (v < 0.52)
        img[torso] = p["upper"]
        covered |= torso
        hstripe = np.floor(v / p["period"]) % 2 == 1
        vstripe = np.floor(u / p["period"]) % 2 == 1
        pattern = [np.zeros_like(torso), hstripe, vstripe, hstripe ^ vstripe][int(p["pattern"])]
        img[torso & pattern] = p["upper2"]
        if p["backpack"] is not None:    # a block from behind, two straps from the front
            if back:
                pack = (np.abs(u) < 0.09) & (v > 0.19) & (v < 0.42)
            else:
                pack = (np.abs(np.abs(u) - 0.06) < 0.012) & (v > 0.16) & (v < 0.34)
            img[pack] = p["backpack"]
            covered |= pack
        # head: an ellipse of skin, hair on top (the whole head from behind), maybe a hat
        head = (uh / 0.06) ** 2 + ((v - 0.085) / 0.075) ** 2 < 1
        img[head] = p["skin"]
        covered |= head
        img[head & ((v < 0.05) | back)] = p["hair"]
        if p["hat"] is not None:
            hat = (v > -0.005) & (v < 0.04) & (np.abs(uh) < 0.07)
            img[hat] = p["hat"]
            covered |= hat
        if p["handbag"] is not None:     # on one side; that side flips with the mirroring
            handbag = (u > 0.16) & (u < 0.26) & (v > 0.44) & (v < 0.58)
            img[handbag] = p["handbag"]
            covered |= handbag
    if rng.random() < 0.5:
        # an occluder on every other image, hiding one body region: a pole (a vertical band), a
        # low object (car, bench) over the legs and shoes, or a sign / passer-by over the torso
        kind = rng.integers(3)
        x0 = _W * rng.uniform(-0.3, 0.2)
        if kind == 0:
            x0 = rng.uniform(0, _W - 6)
            box = (_XX >= x0) & (_XX < x0 + rng.uniform(6, 16))
        else:
            y0 = _H * (rng.uniform(0.55, 0.75) if kind == 1 else rng.uniform(0.1, 0.25))
            y1 = _H if kind == 1 else y0 + _H * rng.uniform(0.25, 0.4)
            width = _W * rng.uniform(0.7, 1.1)
            box = (_YY > y0) & (_YY < y1) & (_XX >= x0) & (_XX < x0 + width)
        img[box] = rng.uniform(30, 220, 3)
    # illumination: the camera's gain and tint, a little per-image flicker, then sensor noise
    flicker = rng.uniform(0.9, 1.1)
    noise = rng.normal(0, 4, img.shape)
    img = img * cam["gain"] * cam["tint"] * flicker + noise
    return np.clip(img, 0, 255).astype(np.uint8), covered


def person_shares(framing="detector", n=300, seed=0):
    """The share of the frame (0..1) the person covers in each of n renders of n people drawn
    as the dataset draws them (`_identity`, `_camera`), in `framing`: the erasing papers' R% of
    the image is R / share % of the person."""
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(n):
        cam = _camera(rng)
        _, covered = _render(rng, cam, _identity(rng), framing)
        shares.append(covered.mean())
    return np.array(shares)


# -----------------------------------------------------------------------------
# Writing the dataset

# The range of each size: cameras >= 2, for every identity needs a second camera for a
# cross-camera match; at most 9999 identities (4-digit pids); the upper ends keep a dataset
# within hours of drawing and the file names' numbers (c1..c99) within what data.py reads
SIZE_LIMITS = dict(train_ids=(1, 9998), test_ids=(1, 9998), cameras=(2, 99),
                   max_per_camera=(1, 99), junk=(0, 99999), distractors=(0, 99999),
                   lookalikes=(1, 9999))


def make_synthetic(root, seed=0, train_ids=150, test_ids=200, cameras=6, max_per_camera=3,
                   junk=50, distractors=50, lookalikes=3, framing="detector"):
    """Write a synthetic re-ID dataset in the Market-1501 layout and naming; return root.

    Each identity (train_ids for training, test_ids others for query/gallery, as in Market-1501)
    is seen by 2..`cameras` cameras, 1..max_per_camera images in each; identities come in
    look-alike families of `lookalikes`; `junk` pid -1 and `distractors` pid 0000 images join the
    gallery (what each is and why: the module docstring). Defaults: 2864 images (1202 train,
    517 query, 1145 gallery). The same arguments write the same bytes (with the same Pillow).
    ROOT/synthetic.txt records the arguments (`ensure_synthetic` compares them).
    ROOT must be new or empty (empty split folders are replaced). The dataset is drawn into
    ROOT/.tmp<pid> and its split folders moved into ROOT once complete, synthetic.txt last:
    after a failure (disk full, Ctrl-C) ROOT holds no part of a dataset (and is gone if this
    call created it).
    """
    sizes = dict(train_ids=train_ids, test_ids=test_ids, cameras=cameras,
                 max_per_camera=max_per_camera, junk=junk, distractors=distractors,
                 lookalikes=lookalikes)
    if framing not in FRAMINGS:
        raise UserError(f"--framing {framing!r}: expected one of {', '.join(FRAMINGS)}")
    for name, value in sizes.items():
        low, high = SIZE_LIMITS[name]
        if not low <= value <= high:
            raise UserError(f"--{name.replace('_', '-')} must lie in [{low}, {high}], got {value}")
    if train_ids + test_ids > 9999:  # pids are 4 digits
        raise UserError(f"--train-ids {train_ids} + --test-ids {test_ids}: expected at most 9999 "
                        "identities in all (the file names' 4-digit pids)")
    # numpy's generators take seeds >= 0; checked here, before anything is written
    if not 0 <= seed <= 2**32 - 1:
        raise UserError(f"--seed must lie in [0, 2**32 - 1], got {seed}")
    if os.path.lexists(root) and not _is_folder(root):
        raise UserError(f"{root} is not a folder; give make_synthetic a new or empty --root")
    _remove_dead_temporaries(root)  # a killed make_synthetic's .tmp<pid> is not content
    # refuse to mix with (or delete) what is there: a dataset must come from one seed. Empty
    # split folders hold nothing to lose: they are replaced.
    entries = sorted(_listdir(root)) if _is_folder(root) else []
    for entry in entries:
        path = os.path.join(root, entry)
        if entry not in _SPLITS.values() or not _is_folder(path) or _listdir(path):
            raise UserError(f"{root} is not empty (it holds {entry}); give make_synthetic a "
                            "new or empty --root")
    created = not os.path.exists(root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root} for the synthetic dataset: {e.strerror}") from None
    # drawn into ROOT/.tmp<pid>, each split folder moved into ROOT at the end, so that a failure
    # leaves no partial dataset; renames inside one folder, so an empty mount point or "." as
    # ROOT works too
    tmp = os.path.join(root, f".tmp{os.getpid()}")
    try:
        _draw_synthetic(tmp, seed, train_ids, test_ids, cameras, max_per_camera, junk,
                        distractors, lookalikes, framing)
        args = dict(seed=seed, train_ids=train_ids, test_ids=test_ids, cameras=cameras,
                    max_per_camera=max_per_camera, junk=junk, distractors=distractors,
                    lookalikes=lookalikes, framing=framing)
        with open(os.path.join(tmp, SYNTHETIC_ARGS), "w") as f:
            f.write(_synthetic_line(args))
        # synthetic.txt moves last: its presence in ROOT means a complete dataset
        for split in [*_SPLITS.values(), SYNTHETIC_ARGS]:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(root, split))  # an empty split folder given with ROOT
            os.rename(os.path.join(tmp, split), os.path.join(root, split))
        os.rmdir(tmp)
    except BaseException as e:  # UserError, Ctrl-C, ...: no partial dataset is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot move the synthetic dataset into {root}: {e.strerror}"
                            ) from None
        raise
    return root


def _synthetic_line(args):
    """The line of ROOT/synthetic.txt: the generator's version and its arguments."""
    words = " ".join(f"{k}={v}" for k, v in args.items())
    return "make_synthetic version 3: " + words + "\n"


def _remove_dead_temporaries(root):
    """Remove the temporary folders ROOT/.tmp<pid> whose process no longer runs (make_synthetic
    killed before it could clean up); those of running processes stay."""
    with contextlib.suppress(OSError):  # no ROOT yet, or one we may not list: nothing to do
        for entry in os.listdir(root):
            m = re.fullmatch(r"\.tmp(\d+)", entry)
            if m and not pid_running(m.group(1)):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _draw_synthetic(folder, seed, train_ids, test_ids, cameras, max_per_camera, junk,
                    distractors, lookalikes, framing):
    """The dataset make_synthetic describes, drawn and written into the new folder `folder`."""
    for split in _SPLITS.values():
        try:
            os.makedirs(os.path.join(folder, split))
        except OSError as e:
            raise UserError(f"cannot create {os.path.join(folder, split)} for the synthetic "
                            f"dataset: {e.strerror}") from None
    rng = np.random.default_rng(seed)
    cams = [_camera(rng) for _ in range(cameras)]
    # raw pids: distinct, in 1..9999 and not contiguous, so that relabelling to 0..N-1 is tested
    pids = rng.choice(np.arange(1, 10000), train_ids + test_ids, replace=False)
    # look-alike families: within each split, every run of `lookalikes` identities wears the
    # first one's upper garment, so the torso alone cannot tell them apart
    people = {}
    for n, pid in enumerate(pids.tolist()):
        place = n if n < train_ids else n - train_ids  # n's place in its own split
        first = n - place % lookalikes                 # its family's first identity
        family = people[int(pids[first])] if first < n else None
        people[pid] = _identity(rng, family)
    frame = [0] * cameras  # a running frame number per camera keeps every name unique

    def write(split, pid, c, person):
        """Render one image of `person` (None: background only) in camera c, save it in `split`."""
        frame[c] += int(rng.integers(1, 50))
        # Market naming: 4-digit pid (junk "-1" unpadded), 1-based camera, sequence 1, frame, box 01
        label = "-1" if pid == -1 else f"{pid:04d}"
        name = f"{label}_c{c + 1}s1_{frame[c]:06d}_01.jpg"
        img, _ = _render(rng, cams[c], person, framing)
        if pid == -1 and person is not None:     # junk fragment: a top or bottom third, stretched
            third = img[:_H // 3] if rng.random() < 0.5 else img[-_H // 3:]
            img = np.asarray(Image.fromarray(third).resize((_W, _H), Image.BILINEAR))
        im = Image.fromarray(img)
        if cams[c]["blurry"]:                    # half the resolution, scaled back up
            im = im.resize((_W // 2, _H // 2), Image.BILINEAR).resize((_W, _H), Image.BILINEAR)
        path = os.path.join(folder, _SPLITS[split], name)
        try:
            im.save(path, quality=90)
        except OSError as e:  # disk full, folder removed under us; make_synthetic removes folder
            if e.errno == errno.ENOSPC:
                raise UserError(f"no space left on device writing the synthetic dataset into "
                                f"{os.path.dirname(folder)} (nothing of it was kept)") from None
            raise UserError(f"cannot write {path}: {e}") from None

    # the first train_ids identities go to training, the rest to query + gallery
    for n, pid in enumerate(people):
        # seen by 2..cameras cameras, 1..max_per_camera images in each
        seen = rng.choice(cameras, rng.integers(2, cameras + 1), replace=False)
        counts = rng.integers(1, max_per_camera + 1, len(seen))
        # cameras that give a query image: those with 2+ images (one stays in the gallery)
        queried = set(seen[counts >= 2].tolist()) or {int(seen[0])}
        for c, k in zip(seen.tolist(), counts.tolist()):
            for j in range(k):
                if n < train_ids:
                    split = "train"
                else:
                    split = "query" if j == 0 and c in queried else "gallery"
                write(split, int(pid), c, people[pid])
    test = list(people)[train_ids:]
    for _ in range(junk):
        # a fragment of a test identity (Market's junk: poor boxes of real people), or background
        who = people[test[rng.integers(len(test))]] if rng.random() < 0.5 else None
        write("gallery", -1, int(rng.integers(cameras)), who)
    for _ in range(distractors):
        # a passer-by seen only once (a new identity), or a false detection of background
        who = _identity(rng) if rng.random() < 0.5 else None
        write("gallery", 0, int(rng.integers(cameras)), who)


def ensure_synthetic(root="data/synthetic", any_dataset=False, **sizes):
    """The synthetic dataset at `root`, written if it is not there; return root.

    Used as it is when all three split folders hold files and ROOT/synthetic.txt says it was
    written with these arguments (`make_synthetic`'s defaults for those not given); a dataset
    written with other arguments (or by another version) is refused, naming both: a demo's
    numbers hold for one dataset. any_dataset=True takes whatever dataset is there (bench.py
    times, it does not score). Otherwise `make_synthetic(root, **sizes)` writes it, and refuses
    a half-filled folder rather than patching it up.
    """
    folders = [os.path.join(root, s) for s in _SPLITS.values()]
    if all(_is_folder(f) and _listdir(f) for f in folders):
        if any_dataset:
            return root
        bound = inspect.signature(make_synthetic).bind(root, **sizes)
        bound.apply_defaults()
        wanted = _synthetic_line({k: v for k, v in bound.arguments.items() if k != "root"})
        args_file = os.path.join(root, SYNTHETIC_ARGS)
        with contextlib.suppress(OSError), open(args_file) as f:
            if f.read() == wanted:
                return root
        raise UserError(f"{root} holds a dataset not written by this synthetic.py with the "
                        f"arguments asked for ({args_file} should read '{wanted.strip()}'); "
                        f"delete {root} and run again")
    print(f"writing the synthetic dataset to {root}")
    return make_synthetic(root, **sizes)


# -----------------------------------------------------------------------------
# Command line

# the size flags mirror make_synthetic's keyword arguments; defaults come from its signature
SIZES = {"seed": "the same seed writes the same bytes",
         "train_ids": "identities in bounding_box_train",
         "test_ids": "identities in query + bounding_box_test",
         "cameras": "number of cameras, >= 2",
         "max_per_camera": "images of one identity in one camera: 1..this",
         "junk": "pid -1 images in the gallery",
         "distractors": "pid 0000 images in the gallery",
         "lookalikes": "identities per family sharing an upper garment"}


def main(argv=None):
    """python synthetic.py [--root DIR] [--seed N] [--train-ids N] ... : `ensure_synthetic`, then
    the dataset's table."""
    parser = argparse.ArgumentParser(
        description="Write the synthetic re-ID dataset in the Market-1501 layout, unless it is "
                    "there already.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", default="data/synthetic",
                        help="the dataset's folder: written if it holds no dataset, used if it "
                             "holds this one (ROOT/synthetic.txt), refused if it holds another")
    defaults = inspect.signature(make_synthetic).parameters
    for k, text in SIZES.items():
        parser.add_argument("--" + k.replace("_", "-"), type=int, default=defaults[k].default,
                            help=text)
    parser.add_argument("--framing", choices=FRAMINGS, default=defaults["framing"].default,
                        help="how the person fills the frame: detector (a detector's crop) or "
                             "loose (a smaller, thinner figure)")
    args = parser.parse_args(argv)
    sizes = {k: getattr(args, k) for k in [*SIZES, "framing"]}
    args_file = os.path.join(args.root, SYNTHETIC_ARGS)
    # ensure_synthetic returns on a ROOT that holds synthetic.txt only when the file records
    # these arguments: it refuses other arguments, and make_synthetic refuses a ROOT that holds
    # anything but empty split folders
    there = os.path.exists(args_file)
    start = time.time()
    ensure_synthetic(args.root, **sizes)
    if there:
        print(f"the synthetic dataset is already at {args.root} ({args_file} records these "
              "arguments)")
    else:
        print(f"wrote a synthetic dataset in {time.time() - start:.1f} s")
    load_dataset(args.root, "synthetic")
    median = np.median(person_shares(args.framing))
    print(f"{args.framing} framing: the person covers a median {100 * median:.1f}% of the frame "
          "(300 renders)")


if __name__ == "__main__":
    exit_on_user_error(main)  # a UserError becomes "error: <message>", exit status 2

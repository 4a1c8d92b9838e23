"""Train the click-conditioned nerve network of mmstream.kernels.csa_net on ../shared/data/usgra-seg.

Needs torch (training only: ``pip install -e ".[train]"``, or just the CPU wheel, ``pip install torch
--index-url https://download.pytorch.org/whl/cpu``). For one ensemble member ``--member M``: one
network per fold of ``tools/train_csa.py``'s folds by image (trained without that fold: its
predictions on the fold are held out) and one on every image:

- ``--fold-dir`` (default ``build/csa_net``, not in git): ``k{K}/fold{f}_m{M}.npz``, used by
  ``tools/train_csa.py`` to fit the candidate score on held-out network features and by
  ``tools/accuracy_nerve.py --cv`` to evaluate held-out images;
- ``src/mmstream/data/``: the network trained on every image, for the shipped members
  (``mmstream.kernels.csa_net.SHIPPED[M]``).

Training: per component, a ``CROP_PX`` square around the seed at ``1/POOL`` scale (the image and
the expert mask are area-downsampled once), augmented with scale (+-15 %), left-right flip, seed
jitter (+-4 px) and grey gain/offset; binary cross-entropy + soft Dice; AdamW with a one-cycle
schedule, ``--epochs`` epochs of batches of 16. Batch norm is folded into the convolutions on
export. Runs on the CPU: 7-9 min per network on one thread (four levels, 2026-11-27), about 45 min
for all six; with one thread a retrained network is bit-for-bit the one before (checked for fold 0,
three and four levels: maximum difference 0.0).

Each network's seed is its fold index (``all``: K) plus 100 M. The shipped ensemble is members 0
and 1; the README's member 2 (``--member 2 --only fold0,fold1,fold2,fold3,fold4``) measures the
spread over seeds.

Usage: python tools/train_csa_net.py --member M [--epochs 100] [--folds 5] [--only fold0,...,all]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_nerve as acc  # noqa: E402
from accuracy_nerve import folds_by_image  # noqa: E402

from mmstream.kernels import csa_net  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "src" / "mmstream" / "data"
FOLD_DIR = ROOT / "build" / "csa_net"
BATCH = 16
LR = 3e-3


def build_net():
    import torch.nn as nn
    import torch.nn.functional as F
    from torch import cat

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))  # fmt: skip

    class UNet(nn.Module):
        def __init__(self, ch=csa_net.CHANNELS):
            super().__init__()
            self.levels = len(ch)
            self.e1 = block(2, ch[0])
            for k in range(1, len(ch)):
                setattr(self, f"e{k + 1}", block(ch[k - 1], ch[k]))
                setattr(self, f"d{k}", block(ch[k] + ch[k - 1], ch[k - 1]))
            self.out = nn.Conv2d(ch[0], 1, 1)

        def forward(self, x):
            skips = [self.e1(x)]
            for k in range(2, self.levels + 1):
                skips.append(getattr(self, f"e{k}")(F.max_pool2d(skips[-1], 2)))
            y = skips.pop()
            for k in range(self.levels - 1, 0, -1):
                y = getattr(self, f"d{k}")(cat([F.interpolate(y, scale_factor=2.0), skips.pop()], 1))
            return self.out(y)

    return UNet()


def export(net) -> dict[str, np.ndarray]:
    """Parameters with batch norm folded, named as :func:`mmstream.kernels.csa_net.layer_shapes`."""
    out = {}
    for name in {n.split(".")[0] for n in csa_net.layer_shapes() if n[0] in "ed"}:
        seq = getattr(net, name)
        for i, k in enumerate((0, 3)):
            conv, bn = seq[k], seq[k + 1]
            s = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
            b = (bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
            out[f"{name}.{i}.weight"] = (conv.weight.detach().numpy() * s[:, None, None, None]).astype(np.float32)
            out[f"{name}.{i}.bias"] = b.astype(np.float32)
    out["out.weight"] = net.out.weight.detach().numpy().reshape(1, -1).astype(np.float32)
    out["out.bias"] = net.out.bias.detach().numpy().astype(np.float32)
    return out


def prepare(comps):
    """Per component: (image / POOL (area), mask / POOL (area), seed_rc)."""
    fac = csa_net.POOL
    small = {}
    items = []
    for c in comps:
        if c["img"] not in small:
            small[c["img"]] = cv2.resize(c["grey"], None, fx=1 / fac, fy=1 / fac,
                                         interpolation=cv2.INTER_AREA).astype(np.float32)  # fmt: skip
        m = cv2.resize(c["mask"].astype(np.float32), None, fx=1 / fac, fy=1 / fac, interpolation=cv2.INTER_AREA)
        items.append((small[c["img"]], m, np.array(c["truth"]["seed_rc"], float)))
    return items


def _warp(img, seed_rc, scale, flip):
    """NET_SIDE square of ``img`` (at 1/POOL scale) centred on ``seed_rc`` (image px); one network
    px is ``scale`` px of ``img``."""
    n = csa_net.NET_SIDE
    # image px u is px (u - h) / POOL of img (area blocks, h = (POOL - 1) / 2) and network px
    # (u - r0 - h) / POOL at run time (net_input's crop starts CROP_PX / 2 before the seed's
    # pixel): the seed is at network px c0 + 1 / (2 POOL) in both when cr = seed / POOL - 0.5
    cr, cc = seed_rc[0] / csa_net.POOL - 0.5, seed_rc[1] / csa_net.POOL - 0.5
    c0 = (n - 1) / 2
    sc = -scale if flip else scale
    m = np.array([[sc, 0, cc - sc * c0], [0, scale, cr - scale * c0]], np.float64)
    return cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip


def sample(item, rng):
    """One augmented (input (2, n, n), target (1, n, n)) pair."""
    g, m, seed = item
    scale = float(np.exp(rng.uniform(-0.15, 0.15)))
    flip = bool(rng.random() < 0.5)
    s = seed + rng.uniform(-4, 4, 2)
    pg, pm = _warp(g, s, scale, flip), _warp(m, s, scale, flip)
    gain = float(np.exp(rng.uniform(-0.2, 0.2)))
    x = ((pg * gain + rng.uniform(-10, 10) - csa_net.GREY_CENTRE) / csa_net.GREY_SCALE).astype(np.float32)
    return np.stack([x, csa_net._seed_channel()]), pm[None]


def train(items, epochs: int, seed: int, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(items) / BATCH))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.15)
    net.train()
    for ep in range(epochs):
        order = rng.permutation(len(items))
        total = 0.0
        for b in range(0, len(order), BATCH):
            xs, ys = zip(*(sample(items[i], rng) for i in order[b : b + BATCH]))
            x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            logit = net(x)
            p = torch.sigmoid(logit)
            inter = (p * y).sum((1, 2, 3))
            soft_dice = (2 * inter + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
            loss = F.binary_cross_entropy_with_logits(logit, y) + (1 - soft_dice).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(xs)
        if ep % 10 == 0 or ep == epochs - 1:
            log(f"  epoch {ep} loss {total / len(items):.4f}")
    net.eval()
    return net


def fold_paths(fold_dir: Path, k: int, member: int) -> list[Path]:
    """Files of the K fold networks of ensemble member ``member``: ``fold_dir/k{K}/fold{f}_m{M}.npz``."""
    return [fold_dir / f"k{k}" / f"fold{f}_m{member}.npz" for f in range(k)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", default="", help="comma list of fold0..fold{K-1}, all (default: every one)")
    ap.add_argument("--fold-dir", type=Path, default=FOLD_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: bit-for-bit repeatable)")
    ap.add_argument("--member", type=int, required=True, help="ensemble member (seeds + 100 M)")
    args = ap.parse_args(argv)
    jobs = [f"fold{f}" for f in range(args.folds)] + ["all"]
    unknown = sorted(set(filter(None, args.only.split(","))) - set(jobs))
    if args.folds < 2 or unknown:
        ap.error(f"--folds must be >= 2 and --only a subset of {jobs} (unknown: {unknown})")
    wanted = [j for j in jobs if not args.only or j in args.only.split(",")]
    if args.member < 0 or ("all" in wanted and args.member >= len(csa_net.SHIPPED)):
        ap.error(f"--member must be >= 0, and < {len(csa_net.SHIPPED)} (csa_net.SHIPPED) to train 'all'")
    import torch
    torch.set_num_threads(args.threads)
    comps = acc.load_components(acc.require_data())
    fold = folds_by_image(comps, args.folds)
    items = prepare(comps)
    paths = fold_paths(args.fold_dir, args.folds, args.member)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for job in wanted:
        t0 = time.time()
        f = -1 if job == "all" else int(job[4:])
        seed = (args.folds if job == "all" else f) + 100 * args.member
        net = train([items[i] for i in np.flatnonzero(fold != f)], args.epochs, seed)
        path = DATA_DIR / csa_net.SHIPPED[args.member] if job == "all" else paths[f]
        np.savez(path, **export(net))
        csa_net.load_net(path)  # the file must pass the run-time checks
        print(f"{job}: {time.time() - t0:.0f} s -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End to end: a small CNN trained with PyTorch's dropout and with fastdrop's, at equal p.

    python -m bench.train_cnn                 # CPU-friendly default (under a minute on 2 cores)
    python -m bench.train_cnn --epochs 300 --width 64 --channels-last   # bigger, e.g. on a GPU

The model is built from torch.nn layers (Dropout2d after each conv block, Dropout before
the classifier); the fastdrop run is the same model, same initial weights and same batch
order, after ``fastdrop.replace_dropout``. The task is made to overfit: few training
images, 30% of their labels wrong. Three runs:

- torch p=0: no dropout, the baseline that overfits;
- torch p=P and fastdrop p=P: what dropout buys (a smaller train/held-out gap), and
  whether the swap changes it (it should not, beyond the noise of different masks).

Columns: time per training step (median), peak memory (GPU: torch.cuda.max_memory_allocated;
CPU: n/a), bytes autograd saves for backward per step (all layers; dropout's share is what
fastdrop removes), final train and held-out loss (eval mode), their gap, held-out accuracy,
and the squared norm of the weights: of all conv and linear layers, and of the linear
layers alone (|W_fc|^2). The conv weights feed BatchNorm, which makes the loss blind to
their scale, so their norm says little about regularization; the classifier's does.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastdrop


def make_data(n_train, n_test, classes, size, label_noise, seed):
    """Class templates plus heavy pixel noise; a fraction of training and test labels is random."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes, 3, size // 4, size // 4, generator=g)
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = templates[y] + 1.5 * torch.randn(n, 3, size, size, generator=g)
        flip = torch.rand(n, generator=g) < label_noise
        y = torch.where(flip, torch.randint(0, classes, (n,), generator=g), y)
        return x, y

    return draw(n_train), draw(n_test)


def make_model(width, classes, p, size):
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2), nn.Dropout2d(p)]

    return nn.Sequential(*block(3, width), *block(width, 2 * width), nn.Flatten(),
                         nn.Linear(2 * width * (size // 4) ** 2, 4 * width), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(4 * width, classes))


def squared_weight_norm(model, kinds=(nn.Conv2d, nn.Linear)):
    return sum(float((m.weight.detach().double() ** 2).sum()) for m in model.modules() if isinstance(m, kinds))


def saved_bytes(model, x, y):
    """Bytes autograd keeps for backward in one training forward (distinct storages)."""
    storages = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), y)
    return sum(storages.values())


def evaluate(model, x, y, batch):
    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch])
            loss += float(F.cross_entropy(out, y[i:i + batch], reduction="sum"))
            correct += float((out.argmax(1) == y[i:i + batch]).sum())
    model.train()
    return loss / len(x), correct / len(x)


def train(name, model, data, args, device):
    (xtr, ytr), (xte, yte) = data
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=0.0)
    order = torch.Generator().manual_seed(args.seed)  # same batch order for every run
    torch.manual_seed(args.seed)  # torch's masks; fastdrop's CPU seeds are drawn from it too
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    model.train()
    for _ in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=order)
        for i in range(0, len(xtr), args.batch):
            idx = perm[i:i + args.batch].to(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    saved = saved_bytes(model, xtr[:args.batch], ytr[:args.batch]) / 2**20
    tr_loss, _ = evaluate(model, xtr, ytr, 512)
    te_loss, te_acc = evaluate(model, xte, yte, 512)
    warm = times[min(5, len(times) - 1):]
    return dict(run=name, step_ms=1e3 * statistics.median(warm), peak_mib=peak, saved_mib=saved,
                train_loss=tr_loss, test_loss=te_loss, gap=te_loss - tr_loss, test_acc=te_acc,
                w2=squared_weight_norm(model), w2_fc=squared_weight_norm(model, nn.Linear))


def table(rows):
    cols = [("run", "run", "{}"), ("step_ms", "ms/step", "{:.2f}"), ("peak_mib", "peak MiB", "{:.1f}"),
            ("saved_mib", "saved-for-bwd MiB", "{:.2f}"), ("train_loss", "train loss", "{:.3f}"),
            ("test_loss", "held-out loss", "{:.3f}"), ("gap", "gap", "{:.3f}"),
            ("test_acc", "held-out acc", "{:.3f}"), ("w2", "|W|^2", "{:.1f}"), ("w2_fc", "|W_fc|^2", "{:.1f}")]
    cells = [[h for _, h, _ in cols]] + [[("n/a" if r[k] is None else f.format(r[k])) for k, _, f in cols]
                                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=float, default=0.5, help="drop probability of every dropout layer")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--train", type=int, default=256, help="training images (few: the task overfits)")
    ap.add_argument("--test", type=int, default=2048, help="held-out images")
    ap.add_argument("--label-noise", type=float, default=0.3)
    ap.add_argument("--size", type=int, default=16, help="image side")
    ap.add_argument("--width", type=int, default=16, help="channels of the first conv block")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default: torch's); 1 steadies timings on a busy machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    (xtr, ytr), (xte, yte) = make_data(args.train, args.test, 10, args.size, args.label_noise, args.seed)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    data = tuple((x.to(device, memory_format=fmt), y.to(device)) for x, y in ((xtr, ytr), (xte, yte)))

    torch.manual_seed(args.seed)
    base = make_model(args.width, 10, args.p, args.size).to(device, memory_format=fmt)  # every run starts here
    no_drop = copy.deepcopy(base)
    for m in no_drop.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0
    runs = [("torch p=0", no_drop), (f"torch p={args.p}", copy.deepcopy(base)),
            (f"fastdrop p={args.p}", fastdrop.replace_dropout(copy.deepcopy(base)))]

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"# train_cnn: {dev_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.train} train / {args.test} held-out images {args.size}x{args.size}, label noise "
          f"{args.label_noise}, width {args.width}, {args.epochs} epochs of batch {args.batch}"
          f"{', channels-last' if args.channels_last else ''}")
    rows = []
    for name, model in runs:
        rows.append(train(name, model, data, args, device))
        print(f"# done: {name}", flush=True)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()

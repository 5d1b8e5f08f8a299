"""One training step of small real models, PyTorch's dropout vs fastdrop's, side by side.

    python -m bench.train_step            # CPU: a small CNN and a transformer block
    python -m bench.train_step --steps 50

Each model is built from torch.nn layers; the fastdrop copy is the same model (same weights)
after ``fastdrop.replace_dropout``. Steps alternate between the two copies (forward, backward,
SGD step on one fixed batch), so both see the same machine load; the table gives the median
time per step and the ratio fastdrop / torch (lower is better).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastdrop


def small_cnn(p=0.1):
    """VGG-style: conv blocks with Dropout2d, a classifier with Dropout (CIFAR-sized input)."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout2d(p),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.Flatten(),
                         nn.Dropout(p), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(p), nn.Linear(256, 10))


class Block(nn.Module):
    """A pre-norm transformer block (GPT-2 style) with its four dropouts as modules."""

    def __init__(self, dim=256, heads=4, p=0.1):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn_drop, self.resid_drop1 = nn.Dropout(p), nn.Dropout(p)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(p))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        att = self.attn_drop(att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1))
        x = x + self.resid_drop1(self.proj((att @ v).transpose(1, 2).reshape(b, t, d)))
        return x + self.mlp(self.ln2(x))


def models():
    """name -> (model, input batch, loss function)."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    tokens = torch.randn(8, 128, 256, generator=g)
    return {
        "cnn (32x3x32x32)": (small_cnn(), images, lambda out: F.cross_entropy(out, labels)),
        "transformer block (8x128x256)": (nn.Sequential(Block(), Block()), tokens, lambda out: out.square().mean()),
    }


def step(model, opt, x, loss_fn):
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x)).backward()
    opt.step()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per copy (after 3 warm-up steps)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps each, interleaved")
    print(f"{'model':<32}{'torch ms':>10}{'fastdrop ms':>13}{'ratio':>8}")
    for name, (model, x, loss_fn) in models().items():
        copies = {"torch": model.train(), "fastdrop": fastdrop.replace_dropout(copy.deepcopy(model)).train()}
        opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in copies.items()}
        times = {k: [] for k in copies}
        for i in range(args.steps + 3):
            for k, m in copies.items():
                t0 = time.perf_counter()
                step(m, opts[k], x, loss_fn)
                if i >= 3:
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{name:<32}{med['torch']:>10.2f}{med['fastdrop']:>13.2f}{med['fastdrop'] / med['torch']:>8.2f}")


if __name__ == "__main__":
    main()

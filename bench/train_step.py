"""One training step of real models, PyTorch's dropout vs fastdrop's, side by side.

    python -m bench.train_step            # CPU: a small CNN and a transformer block
    python -m bench.train_step --steps 50
    python -m bench.train_step --device cuda --csv train_step.csv      # the real models, 3 modes
    python -m bench.train_step --device cuda --models gpt2,vit --modes eager,compile --budget 300
    python -m bench.train_step --device cpu --quick --modes eager      # rehearse the real set

Each model is two copies with the same weights: as built (PyTorch's dropout) and
``fastdrop.replace_dropout`` of a deep copy. Steps alternate between the copies (A, B, A, B),
so both see the same machine load; ratios are fastdrop / torch (lower is better).

Small set (without --device cuda, --models, --modes or --quick): a VGG-style CNN and two
transformer blocks built from torch.nn, SGD on one fixed batch, 3 warm-up steps, median time.

Real set (--device cuda, or any of --models, --modes, --quick), random weights, nothing
downloaded: timm vit_base_patch16_224 (batch 64, every dropout rate and drop path 0.1; where
timm fuses attention, its attention dropout stays in scaled_dot_product_attention for both
copies), torchvision convnext_tiny (64, channels-last, stochastic depth 0.1), Hugging Face
GPT-2 124M (8 x 1024 tokens, eager attention, so that its attention dropout is a dropout call)
and torchvision efficientnet_b0 (128). A step: bf16 autocast forward and loss (cross-entropy on
random labels; next-token loss), backward, AdamW, zero_grad. The fastdrop copy's steps run
inside ``fastdrop.patched()``, so F.dropout calls in model code reach fastdrop too. Modes:
eager, compile (torch.compile of the model), reduce-overhead (the same with CUDA graphs; CUDA
only). Runs go mode by mode, every model eager first, so a --budget cut keeps the cheap rows;
each run builds fresh copies and compiles in its warm-up steps. Columns: median step time
(host wall time between synchronizes) and, in brackets, GPU-busy time per step: the union of
the kernels' intervals in torch.profiler over --profile-steps more steps per copy, so that
idle gaps count as idle (NaN, with a note, when the profiler recorded no kernel). Peak:
torch.cuda.max_memory_allocated over the copy's timed steps; both copies stay on the GPU, so
each peak includes the other copy's weights and AdamW state (part of "resident", the memory
held between steps). Notes under a row flag graph breaks, compiling in the timed steps and
skipped CUDA graphs. A model whose package is not importable is skipped, with the reason;
--quick without a GPU rehearses on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import gc
import importlib
import inspect
import math
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch import nn

import fastdrop

COLUMNS = ("model", "input", "mode", "torch_ms", "torch_busy_ms", "fastdrop_ms", "fastdrop_busy_ms", "ratio",
           "busy_ratio", "torch_peak_gib", "fastdrop_peak_gib", "resident_gib")
GIB = 2 ** 30


class Rows:
    """The --csv file, written a row at a time so that a run cut short keeps what it measured."""

    def __init__(self, path):
        self.file = open(path, "w", newline="") if path else None
        if self.file:
            self.writer = csv.writer(self.file)
            self.add(**{c: c for c in COLUMNS})

    def add(self, **row):
        if self.file:
            self.writer.writerow([_cell(row.get(c)) for c in COLUMNS])
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def _cell(v):
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


# The small set: today's CPU models, run as before.

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


def small_models():
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


def run_small(steps, rows):
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {steps} steps each, interleaved")
    print(f"{'model':<32}{'torch ms':>10}{'fastdrop ms':>13}{'ratio':>8}")
    for name, (model, x, loss_fn) in small_models().items():
        copies = {"torch": model.train(), "fastdrop": fastdrop.replace_dropout(copy.deepcopy(model)).train()}
        opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in copies.items()}
        times = {k: [] for k in copies}
        for i in range(steps + 3):
            for k, m in copies.items():
                t0 = time.perf_counter()
                step(m, opts[k], x, loss_fn)
                if i >= 3:
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{name:<32}{med['torch']:>10.2f}{med['fastdrop']:>13.2f}{med['fastdrop'] / med['torch']:>8.2f}")
        model_name, _, shape = name.partition(" (")
        rows.add(model=model_name, input=shape.rstrip(")"), mode="eager", torch_ms=med["torch"],
                 fastdrop_ms=med["fastdrop"], ratio=med["fastdrop"] / med["torch"])


# The real set.

def _import(name):
    """(module, None) or (None, why not). torchvision built for another torch raises OSError or
    RuntimeError on import, not ImportError, so everything counts as not importable."""
    try:
        return importlib.import_module(name), None
    except Exception as e:
        return None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


def _vision(model, batch, size, device, channels_last=False):
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device, generator=g)
    labels = torch.randint(0, 1000, (batch,), device=device, generator=g)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return (model.to(device, memory_format=layout), (x.contiguous(memory_format=layout),),
            lambda out: F.cross_entropy(out, labels), f"{batch}x3x{size}x{size}")


def vit(device, quick):
    timm = importlib.import_module("timm")
    from timm.models.vision_transformer import VisionTransformer
    rates = dict(drop_rate=0.1, drop_path_rate=0.1, attn_drop_rate=0.1, proj_drop_rate=0.1)
    # Older timm has no proj_drop_rate: pass the rates this timm's ViT takes.
    taken = inspect.signature(VisionTransformer).parameters
    kw = {k: v for k, v in rates.items() if k in taken}
    batch, size = (8, 64) if quick else (64, 224)
    if quick:
        kw.update(depth=2, img_size=size)
    return _vision(timm.create_model("vit_base_patch16_224", pretrained=False, **kw), batch, size, device)


def convnext(device, quick):
    models = importlib.import_module("torchvision.models")
    batch, size = (8, 64) if quick else (64, 224)
    return _vision(models.convnext_tiny(weights=None), batch, size, device, channels_last=True)


def efficientnet(device, quick):
    models = importlib.import_module("torchvision.models")
    batch, size = (8, 64) if quick else (128, 224)
    return _vision(models.efficientnet_b0(weights=None), batch, size, device)


def gpt2(device, quick):
    transformers = importlib.import_module("transformers")
    # use_cache=False: a training step needs no key/value cache.
    # --quick: 2 layers, 256 wide, a 4096-token vocabulary: the same code paths at a size a CPU
    # without native bfloat16 steps through in seconds (the full 50257 x 768 head took minutes there).
    small = {"n_layer": 2, "n_embd": 256, "n_head": 4, "vocab_size": 4096, "bos_token_id": 0, "eos_token_id": 0}
    cfg = transformers.GPT2Config(use_cache=False, attn_implementation="eager", **(small if quick else {}))
    model = transformers.GPT2LMHeadModel(cfg)
    # With sdpa the attention dropout would be fused in the attention kernel, out of fastdrop's reach.
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    batch, length = (2, 128) if quick else (8, 1024)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), device=device,
                        generator=torch.Generator(device).manual_seed(0))

    def loss(out):
        return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    return model.to(device), (ids,), loss, f"{batch}x{length}" + (", 2 layers, 256 wide" if quick else "")


# name -> (package to import, what it is, builder(device, quick) -> (model, inputs, loss, input shape))
REAL = {
    "vit": ("timm", "timm vit_base_patch16_224", vit),
    "convnext": ("torchvision", "torchvision convnext_tiny", convnext),
    "gpt2": ("transformers", "transformers GPT-2 124M", gpt2),
    "efficientnet": ("torchvision", "torchvision efficientnet_b0", efficientnet),
}
MODES = ("eager", "compile", "reduce-overhead")


def union_length(spans):
    """Length covered by (start, end) intervals, overlaps counted once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _is_kernel(evt):
    """A kernel on a CUDA device: not a CPU op, a copy, a memset, a synchronization, nor the GPU
    side of a record_function range (those span the gaps between kernels)."""
    dt = getattr(evt, "device_type", None)
    if dt != torch.autograd.DeviceType.CUDA and str(getattr(dt, "name", dt)).split(".")[-1].upper() != "CUDA":
        return False
    kind = getattr(evt, "activity_type", None)
    if kind:  # kineto's category where this torch passes it on: "kernel" for kernels
        return "kernel" in str(kind).lower()
    return not getattr(evt, "is_user_annotation", False) and not evt.name.startswith(("Memcpy", "Memset")) \
        and "Sync" not in evt.name


def gpu_busy_ms(run, steps):
    """GPU-busy ms per step over ``steps`` calls of ``run``; NaN when the profiler saw no kernel."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        torch.cuda.synchronize()
    spans = [(e.time_range.start, e.time_range.end) for e in prof.events() if _is_kernel(e)]
    return union_length(spans) / 1e3 / steps if spans else math.nan  # profiler times are in us


def _counter(group, key):
    """torch.compile's running count (graphs compiled, CUDA graphs skipped); 0 where it has none."""
    try:
        from torch._dynamo.utils import counters
        return counters[group][key]
    except Exception:
        return 0


def run_real_one(name, mode, args, device):
    """One (model, mode): the row's values, and notes to print under it."""
    cuda, notes = device == "cuda", []
    torch._dynamo.reset()  # else every earlier run's copies count toward the recompile limit
    torch.manual_seed(0)
    model, inputs, loss_fn, shape = REAL[name][2](device, args.quick)
    model.train()
    copies = {"torch": model, "fastdrop": fastdrop.replace_dropout(copy.deepcopy(model))}
    # The fastdrop copy runs with PyTorch's dropout functions routed to fastdrop; torch's without.
    within = {"torch": contextlib.nullcontext, "fastdrop": fastdrop.patched}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in copies.items()}
    fns = {k: m if mode == "eager" else torch.compile(m, mode=None if mode == "compile" else mode)
           for k, m in copies.items()}

    def train_step(k):
        if mode == "reduce-overhead":  # CUDA graphs reuse output memory: the last step's outputs are dead
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn(fns[k](*inputs))
        loss.backward()
        opts[k].step()
        opts[k].zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    graphs, skips = {k: 0 for k in copies}, _counter("inductor", "cudagraph_skips")
    for _ in range(args.warmup):
        for k in copies:
            before = _counter("stats", "unique_graphs")
            with within[k]():
                train_step(k)
            graphs[k] += _counter("stats", "unique_graphs") - before
    sync()
    if max(graphs.values()) > 1:  # more than one graph per copy: graph breaks or recompiles
        notes.append(f"graphs compiled in warm-up: torch {graphs['torch']}, fastdrop {graphs['fastdrop']}")
    resident = torch.cuda.memory_allocated() / GIB if cuda else None
    compiled = _counter("stats", "unique_graphs")
    times, peaks = {k: [] for k in copies}, {k: 0 for k in copies}
    for _ in range(args.steps):
        for k in copies:
            with within[k]():  # switched outside the timed span: patching is not the model's cost
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                sync()
                t0 = time.perf_counter()
                train_step(k)
                sync()
                times[k].append(time.perf_counter() - t0)
            if cuda:
                peaks[k] = max(peaks[k], torch.cuda.max_memory_allocated())
    if _counter("stats", "unique_graphs") != compiled:
        notes.append(f"{_counter('stats', 'unique_graphs') - compiled} graphs compiled in the timed steps")
    if mode == "reduce-overhead" and _counter("inductor", "cudagraph_skips") != skips:
        notes.append(f"CUDA graphs skipped {_counter('inductor', 'cudagraph_skips') - skips} times "
                     "(the log's 'skipping cudagraphs' lines say why)")
    busy = {k: None for k in copies}
    if cuda and args.profile_steps > 0:
        for k in copies:
            def run(k=k):
                with within[k]():
                    train_step(k)
            try:
                busy[k] = gpu_busy_ms(run, args.profile_steps)
                if math.isnan(busy[k]):
                    notes.append(f"GPU-busy ({k}) is NaN: the profiler recorded no CUDA kernel")
            except Exception as e:  # the profiler (CUPTI) can be missing or refuse; the timings stand
                busy[k] = math.nan
                notes.append(f"GPU-busy ({k}) is NaN: the profiler failed: {type(e).__name__}: {e}")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    row = dict(model=name, input=shape, mode=mode, torch_ms=med["torch"], fastdrop_ms=med["fastdrop"],
               ratio=_ratio(med), torch_busy_ms=busy["torch"], fastdrop_busy_ms=busy["fastdrop"],
               busy_ratio=_ratio(busy), resident_gib=resident,
               torch_peak_gib=peaks["torch"] / GIB if cuda else None,
               fastdrop_peak_gib=peaks["fastdrop"] / GIB if cuda else None)
    return row, notes


def _ratio(d):
    return None if None in d.values() else d["fastdrop"] / d["torch"]


def _ms(t, busy):
    return f"{t:.2f}" + ("" if busy is None else f" [{busy:.2f}]")


def _num(v, spec):
    return "n/a" if v is None else format(v, spec)


def print_header():
    print(f"{'model':<30}{'mode':<17}{'torch ms [busy]':>18}{'fastdrop ms [busy]':>21}{'ratio':>7}"
          f"{'busy ratio':>11}{'peak GiB torch':>15}{'peak GiB fastdrop':>18}{'resident GiB':>13}")


def print_row(r):
    label = f"{r['model']} ({r['input']})"
    print(f"{label:<30}{r['mode']:<17}{_ms(r['torch_ms'], r['torch_busy_ms']):>18}"
          f"{_ms(r['fastdrop_ms'], r['fastdrop_busy_ms']):>21}{r['ratio']:>7.2f}"
          f"{_num(r['busy_ratio'], '.2f'):>11}{_num(r['torch_peak_gib'], '.2f'):>15}"
          f"{_num(r['fastdrop_peak_gib'], '.2f'):>18}{_num(r['resident_gib'], '.2f'):>13}", flush=True)


def run_real(args, rows):
    """Returns the number of runs that failed."""
    t_start = time.monotonic()
    cuda = args.device == "cuda"
    versions = [f"torch {torch.__version__}"]
    for pkg in ("triton", "timm", "torchvision", "transformers"):
        mod, why = _import(pkg)
        versions.append(f"{pkg} {getattr(mod, '__version__', '?')}" if mod else f"{pkg} not importable")
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(", ".join(versions))
    busy = f"; GPU-busy over {args.profile_steps} profiled steps" if cuda and args.profile_steps > 0 else ""
    print(f"device: {where}; {args.warmup} warm-up, {args.steps} timed steps per copy, interleaved{busy}")
    names = []
    for name in args.models:
        pkg, what, _ = REAL[name]
        mod, why = _import(pkg)
        if mod is None:
            print(f"skipped {name} ({what}): {pkg} not importable: {why}")
        else:
            names.append(name)
    modes = list(args.modes)
    if not cuda and "reduce-overhead" in modes:
        print("skipped mode reduce-overhead: CUDA graphs need --device cuda")
        modes.remove("reduce-overhead")
    print_header()
    failed, over_budget = 0, []
    for mode in modes:  # mode by mode: a --budget cut leaves every model's cheaper rows
        for name in names:
            if args.budget is not None and time.monotonic() - t_start > args.budget:
                over_budget.append(f"{name}/{mode}")
                continue
            try:
                row, notes = run_real_one(name, mode, args, args.device)
            except Exception as e:  # one model failing (compile error, out of memory) leaves the others
                failed += 1
                print(f"{name} ({mode}) FAILED: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}",
                      flush=True)
                traceback.print_exc()
            else:
                rows.add(**row)
                print_row(row)
                for note in notes:
                    print(f"    note: {note}")
            gc.collect()  # the copies, their optimizers and compiled graphs go before the next run builds
            if cuda:
                torch.cuda.empty_cache()
    if over_budget:
        print(f"budget of {args.budget:.0f} s spent: skipped {', '.join(over_budget)}")
    print(f"total {time.monotonic() - t_start:.0f} s")
    return failed


def _names(text, known, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown or text!r}; known: {', '.join(known)}")
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="cuda: the real set; cpu (default): the small set, unless --models/--modes/--quick")
    ap.add_argument("--models", type=lambda s: _names(s, REAL, "model"), default=None,
                    help=f"real models, comma-separated (default: all of {','.join(REAL)})")
    ap.add_argument("--modes", type=lambda s: _names(s, MODES, "mode"), default=None,
                    help=f"comma-separated (default: {','.join(MODES)}; reduce-overhead on CUDA only)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per copy (default: 20 on cuda, 10 on cpu; the small set warms up 3)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="real set: warm-up steps per copy, compiling in them (default: 5 on cuda, 2 on cpu)")
    ap.add_argument("--profile-steps", type=int, default=3,
                    help="real set on cuda: profiled steps per copy for the GPU-busy time (0: none)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds: no (model, mode) run starts after this much time")
    ap.add_argument("--quick", action="store_true",
                    help="tiny configurations (2-layer ViT and GPT-2, 64-pixel images, small batches)")
    ap.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = ap.parse_args(argv)
    real = args.device == "cuda" or args.models is not None or args.modes is not None or args.quick
    if args.device == "cuda" and not torch.cuda.is_available():
        if not args.quick:
            ap.error("--device cuda: torch.cuda.is_available() is False here")
        print("no CUDA device here: --quick rehearses on the CPU")
        args.device = "cpu"
    args.device = args.device or "cpu"
    cuda = args.device == "cuda"
    args.steps = args.steps or (20 if cuda else 10)
    args.warmup = (5 if cuda else 2) if args.warmup is None else args.warmup
    args.models, args.modes = args.models or list(REAL), args.modes or list(MODES)
    rows = Rows(args.csv)
    try:
        failed = run_real(args, rows) if real else run_small(args.steps, rows)
    finally:
        rows.close()
    if args.csv:
        print(f"wrote {args.csv}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Markdown performance tables from the benchmark's CSV files.

    python -m bench.report [DIR]     # print the tables of DIR's CSV files (default: bench/results/)
    python -m bench.report bench/out # the tables of your own `make bench` run
    python -m bench.report --write   # regenerate bench/results/README.md from bench/results/*.csv

Per CSV file: the speed-up of fastdrop over PyTorch eager at every size measured, the variants'
speed-ups, and the bandwidth of every provider at the largest size. A device's full run
(<device>.csv) is used over its quick run (<device>-quick.csv). ``speedup_text`` is the same
summary as aligned text: ``python -m bench.microbench`` ends with it.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"  # the committed records (bench.microbench --record)
RESULTS_README = RESULTS / "README.md"
WRITE_COMMAND = "python -m bench.report --write"
PROVIDERS = ("fastdrop", "torch", "torch.compile", "copy")
MODES = ("forward", "backward", "forward+backward")
DTYPE_ORDER = ("fp32", "bf16", "fp16")

# What a table cannot say about the run it comes from, by file name. Facts about how and with
# which version of fastdrop each record was made.
NOTES = {
    "NVIDIA_H200.csv": (
        "One run of `bench/gpu_check.sh` (its benchmark stage: `python -m bench.microbench --full`) "
        "on an earlier version of fastdrop (the record was committed in 522f74e), before the CPU "
        "path's C++ loops and before the Triton kernels' launch from C++, which is not yet measured "
        "on a GPU. The logs of that run are in [gpu_check-NVIDIA_H200/](gpu_check-NVIDIA_H200/); its "
        "test stage ran out of time at about a third of the test suite. At small sizes each call's host "
        "cost, not the GPU, decides its time."),
    "cpu-AMD_EPYC-quick.csv": (
        "`python -m bench.microbench --record` (quick sweep) with one C++ operator for every call "
        "(fastdrop/csrc: the seed drawn in C++, C++ autograd nodes, the loops built for the machine's "
        "instruction set, here AVX2)."),
    "cpu-Intel_R_Xeon_R_Processor-quick.csv": (
        "`python -m bench.microbench --record` (quick sweep) with an earlier version's C++ CPU loops, "
        "before the operator family (the record was committed in d746c72)."),
}

# Which fastdrop each record measured, for the list at the top.
VERSIONS = {
    "NVIDIA_H200.csv": "an earlier version of fastdrop (522f74e)",
    "cpu-AMD_EPYC-quick.csv": "fastdrop with the C++ operator family",
    "cpu-Intel_R_Xeon_R_Processor-quick.csv": "an earlier version of fastdrop (d746c72)",
}

INTRO = """\
# Benchmark results

The records of `python -m bench.microbench --record` (and of `bench/gpu_check.sh` on a GPU), one
CSV file per machine, with a plot of each beside it. Each section below names the machine, the
versions of torch and triton, the date and the number of threads of its record. Records of an
earlier version of fastdrop say so.

How to read the tables:

- **speed-up** = PyTorch eager's median time / fastdrop's, on the same machine in the same run:
  above 1, fastdrop is faster; below 1, slower. PyTorch eager is `F.dropout` for dropout itself,
  and for each variant what a PyTorch user writes for it (`F.dropout2d`, timm's `drop_path`
  formula, `x * F.dropout(ones)` for a noise shape, `F.alpha_dropout`, `residual + F.dropout(x)`).
- **forward**: the dropout call; **backward**: its backward on a graph built beforehand;
  **forward+backward**: both.
- **GB/s**: effective bandwidth, the same byte count for every provider: each pass reads one
  tensor and writes one (2 x itemsize x elements; forward+backward is two passes). In brackets:
  the percentage of a plain copy's speed, the copy measured in the same run.
- **saved bytes/elem**: what autograd keeps for backward per element (measured with
  `saved_tensors_hooks`). fastdrop keeps none: its backward regenerates the mask from the seed.
  On CPU, PyTorch's dropout keeps a float noise tensor of the input's dtype; on CUDA, a 1-byte
  mask.
- fastdrop's backward regenerates the mask (the Philox words) where PyTorch's multiplies by a
  stored one: where the words cost more than the multiply, its backward alone is slower.
- On CPU, each case's providers are timed in alternating rounds, so that the drift of a small
  shared machine falls on all of them alike. Single cases can still be bimodal: a fresh output
  of 32 MiB or more is sometimes faulted in 4 KiB pages instead of huge pages.

`make bench` writes its CSV and plot into `bench/out/` (ignored by git); `python -m bench.report
bench/out` prints the same tables for them.
"""


def pick_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.csv"))
    names = {f.name for f in files}
    return [f for f in files if not (f.stem.endswith("-quick") and f.stem[:-6] + ".csv" in names)]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _size(n) -> str:
    return f"2^{int(n).bit_length() - 1}"


def _ratio(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _dtypes(rows) -> list[str]:
    seen = dict.fromkeys(r["dtype"] for r in rows)
    return [d for d in DTYPE_ORDER if d in seen] + [d for d in seen if d not in DTYPE_ORDER]


def speedup_grid(rows) -> tuple[list[list[str]], list[list[str]]]:
    """fastdrop's speed-up over PyTorch eager: (plain, variants) as rows of cells, headers first.

    plain: one row per size, one column per (mode, dtype). variants: one row per (variant, size),
    one column per dtype (their forward). Works on CSV rows (strings) and on the benchmark's own.
    """
    fd = [r for r in rows if r["provider"] == "fastdrop"]
    dtypes = _dtypes(fd)
    got = {(r["mode"], int(r["numel"]), r["dtype"]): _num(r["speedup_vs_eager"]) for r in fd}
    plain_modes = [m for m in MODES if any(k[0] == m for k in got)]
    plain = []
    if plain_modes:
        plain.append(["elements"] + [m for m in plain_modes for _ in dtypes])
        plain.append([""] + [d for _ in plain_modes for d in dtypes])
        for n in sorted({k[1] for k in got if k[0] in MODES}):
            plain.append([_size(n)] + [_ratio(got.get((m, n, d), math.nan))
                                       for m in plain_modes for d in dtypes])
    variants = []
    # Variant rows are "<variant> forward"; in the order first measured, each size ascending.
    order = list(dict.fromkeys(m.rsplit(" ", 1)[0] for m, _, _ in got if m not in MODES))
    keys = sorted({(m.rsplit(" ", 1)[0], n) for m, n, _ in got if m not in MODES},
                  key=lambda k: (order.index(k[0]), k[1]))
    if keys:
        variants.append(["variant", "elements"] + dtypes)
        for v, n in keys:
            variants.append([v, _size(n)] + [_ratio(got.get((f"{v} forward", n, d), math.nan))
                                             for d in dtypes])
    return plain, variants


def _markdown(grid: list[list[str]], header_rows: int) -> list[str]:
    if header_rows == 2:  # mode over dtype: one header row naming both
        head = [grid[0][0]] + [f"{m} {d}" for m, d in zip(grid[0][1:], grid[1][1:])]
    else:
        head = grid[0]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in grid[header_rows:]]
    return out


def _aligned(grid: list[list[str]], header_rows: int, group: int) -> list[str]:
    """Plain text columns; with two header rows the first names a group of ``group`` columns."""
    body = grid[header_rows - 1:]
    # Leading label columns: elements (two header rows), or variant and elements (one).
    lead = [max(len(row[i]) for row in grid) for i in range(1 if header_rows == 2 else 2)]
    width = max(6, max(len(c) for row in body for c in row[len(lead):]))

    def line(row, first=None):
        text = "  ".join(c.ljust(w) for c, w in zip(first or row[:len(lead)], lead))
        cells = row[len(lead):]
        for start in range(0, len(cells), group):
            text += "   " + " ".join(c.rjust(width) for c in cells[start:start + group])
        return text.rstrip()

    lines = []
    if header_rows == 2:  # the mode of each group, centred over its columns
        spans = grid[0][1::group]
        text = " " * lead[0]
        for name in spans:
            text += "   " + name.center(group * width + group - 1)
        lines.append(text.rstrip())
        lines.append(line(grid[1], first=[grid[0][0]]))
        body = grid[2:]
    for row in body:
        lines.append(line(row))
    return lines


def speedup_text(rows) -> str:
    """The benchmark's closing summary, as aligned text ('' when there is nothing to show)."""
    plain, variants = speedup_grid(rows)
    if not plain and not variants:
        return ""
    out = ["Speed-up of fastdrop over PyTorch eager on this machine = PyTorch's median time / fastdrop's:",
           ">1 means fastdrop is faster, <1 that it is slower."]
    if plain:
        n_dtypes = len(_dtypes([r for r in rows if r["provider"] == "fastdrop"]))
        out += ["", "dropout (against F.dropout):"] + _aligned(plain, 2, n_dtypes)
    if variants:
        out += ["", "the variants, forward (against what a PyTorch user writes for each):"]
        out += _aligned(variants, 1, 1)
    return "\n".join(out) + "\n"


def cell(row) -> str:
    return f"{float(row['gbps']):.3g} ({float(row['pct_roofline']):.0f}%)" if row else "not measured"


def machine_line(rows: list[dict]) -> str:
    first = rows[0]
    return (f"**{first['device']}**: torch {first['torch']}, triton {first['triton']}, {first['date']}, "
            f"{first['threads']} threads, p={first['p']}.")


def bandwidth_table(rows: list[dict]) -> list[str]:
    """Every provider's bandwidth at the largest size measured for each dtype and mode."""
    out = ["| dtype | mode | elements | " + " | ".join(PROVIDERS)
           + " | fastdrop speed-up | saved bytes/elem (fastdrop / eager) |",
           "|---" * (len(PROVIDERS) + 5) + "|"]
    by_key = {(r["dtype"], r["mode"], int(r["numel"]), r["provider"]): r for r in rows}
    saved = {(r["dtype"], r["provider"]): f"{float(r['saved_bytes_per_elem']):g}" for r in rows}
    for dt, mode in dict.fromkeys((r["dtype"], r["mode"]) for r in rows):
        n = max(int(r["numel"]) for r in rows if (r["dtype"], r["mode"]) == (dt, mode))
        got = {p: by_key.get((dt, mode, n, p)) for p in PROVIDERS}
        fd, eager = got["fastdrop"], got["torch"]
        speedup = f"{float(fd['speedup_vs_eager']):.2f}x" if fd and eager else "-"
        # Measured for dropout itself only (the variants' rows leave it empty).
        kept = " / ".join(saved.get((dt, p), "-") for p in ("fastdrop", "torch")) if mode in MODES else "-"
        out.append(f"| {dt} | {mode} | {_size(n)} | "
                   + " | ".join(cell(got[p]) for p in PROVIDERS) + f" | {speedup} | {kept} |")
    return out


def report(folder: Path = RESULTS) -> str:
    """The tables of every CSV file in ``folder``, as printed by ``python -m bench.report [DIR]``."""
    parts = ["Speed-up: PyTorch eager's median time / fastdrop's (>1: fastdrop is faster). Bandwidth in GB/s "
             "(in brackets: % of a plain copy measured in the same run); bytes per pass = 2 x itemsize x "
             "elements for every provider (forward+backward: two passes)."]
    for path in pick_files(folder):
        rows = read_rows(path)
        if rows:
            parts.append(section(path, rows, notes=folder.resolve() == RESULTS.resolve()))
    return "\n\n".join(parts) + "\n"


def section(path: Path, rows: list[dict], notes: bool = True) -> str:
    """The tables of one record; ``notes``: add what NOTES says of it (bench/results/ only)."""
    png = path.with_suffix(".png")
    plot = f" ([plot]({png.name}))" if png.is_file() else ""
    out = [f"## {rows[0]['device']}", "", f"From [{path.name}]({path.name}){plot}. " + machine_line(rows)]
    if notes and path.name in NOTES:
        out += ["", NOTES[path.name]]
    plain, variants = speedup_grid(rows)
    if plain:
        out += ["", "Speed-up of fastdrop over `F.dropout` (>1: fastdrop is faster), by size and pass:",
                ""]
        out += _markdown(plain, 2)
    if variants:
        out += ["", "The variants, forward: speed-up over what a PyTorch user writes for each:", ""]
        out += _markdown(variants, 1)
    out += ["", "Bandwidth in GB/s (% of a plain copy) at the largest size measured:", ""]
    out += bandwidth_table(rows)
    return "\n".join(out)


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def results_readme(folder: Path = RESULTS) -> str:
    """The text of bench/results/README.md."""
    records = [(path, rows) for path in pick_files(folder) if (rows := read_rows(path))]
    records.sort(key=lambda rec: rec[1][0]["date"], reverse=True)  # the newest first
    index = ["Records, newest first:", ""] + [
        f"- [{rows[0]['device']}](#{_anchor(rows[0]['device'])}): {rows[0]['date']}, torch {rows[0]['torch']}"
        + (f", {VERSIONS[path.name]}" if path.name in VERSIONS else "") + f" ([{path.name}]({path.name}))"
        for path, rows in records]
    parts = [f"<!-- Generated by `{WRITE_COMMAND}` from the CSV files in this folder; "
             "do not edit by hand. -->",
             INTRO.rstrip(), "\n".join(index)]
    parts += [section(path, rows) for path, rows in records]
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--write"]:
        RESULTS_README.write_text(results_readme(RESULTS))
        print(f"wrote {RESULTS_README}")
    elif args and args[0].startswith("-"):
        sys.exit(__doc__)
    else:
        sys.stdout.write(report(Path(args[0]) if args else RESULTS))


if __name__ == "__main__":
    main()

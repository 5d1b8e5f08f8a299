"""Markdown performance tables from bench/results/*.csv.

    python -m bench.report [DIR]              # print them (default: bench/results/)
    python -m bench.report bench/out          # the tables of your own `make bench` run
    python -m bench.report --readme README.md # write bench/results/ tables between README's markers

One table per device, at the largest size measured for each dtype and mode. A device's
full run (<device>.csv) is used over its quick run (<device>-quick.csv).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from .microbench import RESULTS

PROVIDERS = ("fastdrop", "torch", "torch.compile", "copy")


def pick_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.csv"))
    names = {f.name for f in files}
    return [f for f in files if not (f.stem.endswith("-quick") and f.stem[:-6] + ".csv" in names)]


def cell(row) -> str:
    return f"{float(row['gbps']):.3g} ({float(row['pct_roofline']):.0f}%)" if row else "not measured"


def table(rows: list[dict]) -> str:
    first = rows[0]
    out = [f"**{first['device']}**: torch {first['torch']}, triton {first['triton']}, {first['date']}, "
           f"{first['threads']} threads, p={first['p']}.", "",
           "| dtype | mode | elements | " + " | ".join(PROVIDERS)
           + " | fastdrop vs eager | saved bytes/elem (fastdrop / eager) |",
           "|---" * (len(PROVIDERS) + 5) + "|"]
    by_key = {(r["dtype"], r["mode"], int(r["numel"]), r["provider"]): r for r in rows}
    saved = {(r["dtype"], r["provider"]): f"{float(r['saved_bytes_per_elem']):g}" for r in rows}
    for dt, mode in dict.fromkeys((r["dtype"], r["mode"]) for r in rows):
        n = max(int(r["numel"]) for r in rows if (r["dtype"], r["mode"]) == (dt, mode))
        got = {p: by_key.get((dt, mode, n, p)) for p in PROVIDERS}
        fd, eager = got["fastdrop"], got["torch"]
        speedup = f"{float(fd['speedup_vs_eager']):.2f}x" if fd and eager else "-"
        kept = " / ".join(saved.get((dt, p), "-") for p in ("fastdrop", "torch"))
        out.append(f"| {dt} | {mode} | 2^{n.bit_length() - 1} | "
                   + " | ".join(cell(got[p]) for p in PROVIDERS) + f" | {speedup} | {kept} |")
    return "\n".join(out)


def report(folder: Path = RESULTS) -> str:
    parts = ["Effective bandwidth in GB/s (in brackets: % of a plain copy measured in the same run). "
             "Bytes per pass = 2 x itemsize x elements for every provider (forward+backward: two passes)."]
    for path in pick_files(folder):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            parts.append(table(rows))
    return "\n\n".join(parts) + "\n"


def update_readme(readme: Path, folder: Path = RESULTS) -> None:
    """Replace the text between README's bench.report markers with the tables."""
    text = readme.read_text()
    head, rest = text.split("<!-- bench.report -->\n", 1)
    _, tail = rest.split("<!-- /bench.report -->", 1)
    readme.write_text(f"{head}<!-- bench.report -->\n{report(folder)}<!-- /bench.report -->{tail}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--readme"]:  # python -m bench.report --readme README.md
        update_readme(Path(args[1]))
    else:
        sys.stdout.write(report(Path(args[0]) if args else RESULTS))

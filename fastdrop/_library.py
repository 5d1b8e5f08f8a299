"""fastdrop's C++ operators (``fastdrop/csrc``): built once for this machine and torch, cached,
verified before each load, loaded at the first call that needs them.

    python -m fastdrop.build        # build now (make's set-up does), instead of at the first call

**The cache.** ``$FASTDROP_CACHE``, else ``$XDG_CACHE_HOME/fastdrop``, else ``~/.cache/fastdrop``
(the home folder from ``$HOME``, else the password database); a relative path is taken from the
working folder. Where that folder cannot be written, a build goes to ``fastdrop-<uid>`` in the
system's temporary folder (only where it is this user's alone: that folder is shared), with one
warning.

**The key.** A build is named by what decides its binary: the C++ sources, torch's version and
C++ ABI, the compiler command, the flags, the instruction-set form (x86-64-v4, -v3 or plain,
the best this CPU runs, capped by ``$FASTDROP_CPU_ISA``) and whether torch has CUDA. Paths are
not part of it, so every environment with the same torch shares one build.

**Loading.** A build's record (``<name>.json``) gives its library's file, size and SHA-256,
written after the library was built and loaded. A library is loaded only when it matches its
record; otherwise, or where loading it fails, it is rebuilt once under a fresh file name (so a
process still using the old file is not disturbed) and the warning carries the loader's reason.
Loading imports neither ``torch.utils.cpp_extension`` nor setuptools.

**Building.** Under a lock on the cache folder (concurrent first calls build once; the others
wait and load), the sources are compiled in parallel under a timeout (``$FASTDROP_BUILD_TIMEOUT``
seconds, default 300), with ``$CXX`` (split as the shell splits it) or ``c++``, in a scratch
folder that the next build removes if this one is interrupted. The process that builds says so,
once. Where no build is possible, one warning says why and the same bits come from the torch-ops
path (``fastdrop.backends.reference``): correct, slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

CSRC = Path(__file__).with_name("csrc")
HEADERS = ("ops.h", "kernels.h", "loops.h", "launch.h")
ISA_FLAGS = {"x86-64-v4": ["-march=x86-64-v4"], "x86-64-v3": ["-march=x86-64-v3"], "plain": []}
# x86-64 microarchitecture levels by /proc/cpuinfo's flags (v3 adds these to v2, v4 these to v3)
_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave", "sse4_1", "sse4_2", "ssse3", "popcnt"}
_V4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}

_lock = threading.Lock()
_state = {"tried": False, "inline": False, "library": None}
ops = None  # the loaded operators (_Ops), once loaded; None before, or where they cannot be


class _Ops:
    """The C++ operators' callables (an OpOverload's ``_op``: no Python frame per call)."""

    def __init__(self):
        ns = torch.ops.fastdrop
        self.dropout = ns.dropout.default._op
        self.dropout_ = ns.dropout_.default._op
        self.dropout_add = ns.dropout_add.default._op
        self.keep_mask = ns.keep_mask.default._op
        self.namespace = ns


# ---- where and what ------------------------------------------------------------------------------

def cache_dir() -> Path:
    given = os.environ.get("FASTDROP_CACHE")
    if given:
        if given == "~" or given.startswith("~/"):  # expanduser would take HOME="" for "/"
            given = str(_home()) + given[1:]
        return Path(given).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "fastdrop"
    return _home() / ".cache" / "fastdrop"


def _home() -> Path:
    home = os.environ.get("HOME")
    if home and os.path.isabs(home):
        return Path(home)
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # no entry for this uid (some containers)
        return Path(tempfile.gettempdir())


def machine_isa() -> str:
    """The best instruction-set form this CPU runs, capped by $FASTDROP_CPU_ISA (plain, x86-64-v3)."""
    best = "plain"
    if os.uname().machine == "x86_64":
        try:
            flags = set()
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            flags = set()
        if _V3 <= flags:
            best = "x86-64-v4" if _V4 <= flags else "x86-64-v3"
    cap = os.environ.get("FASTDROP_CPU_ISA", "")
    order = list(ISA_FLAGS)[::-1]  # plain, v3, v4
    if cap in order and order.index(cap) < order.index(best):
        return cap
    return best


def compiler() -> list:
    return shlex.split(os.environ.get("CXX", "")) or ["c++"]


def _torch_dirs():
    root = Path(torch.__file__).parent
    return [root / "include", root / "include" / "torch" / "csrc" / "api" / "include"], root / "lib"


def has_cuda_part() -> bool:
    """Whether the build links torch's CUDA library (a CUDA build of torch)."""
    return torch.version.cuda is not None and (_torch_dirs()[1] / "libtorch_cuda.so").exists()


def has_launch() -> bool:
    """Whether the build has the C++ CUDA launch: where torch has CUDA, or where
    $FASTDROP_CUDA_LAUNCH=1 asks for it (its tests, on a machine without a GPU)."""
    return torch.version.cuda is not None or os.environ.get("FASTDROP_CUDA_LAUNCH") == "1"


def units(isa: str, cuda: bool, launch: bool = False):
    """(source, flags) per translation unit, and the link flags: only what this machine runs (the
    CUDA parts where torch has CUDA). Paths (include and library folders) are added when
    building: they are not part of the key."""
    common = ["-std=c++20", "-fPIC", "-w", "-ffp-contract=off",  # no FMA: PyTorch's rounding
              f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    if cuda:
        common.append("-DFASTDROP_CUDA")
    # Longest first, so that the last to start is short: the glue is mostly torch's headers, and
    # at -O1 its calls cost what they cost at -O2 (bench.host_cost) while it builds sooner.
    out = [
        ("autograd.cpp", ["-O1", *common]),
        # ATen's parallel_for is inline OpenMP code: with -fopenmp it runs on the libgomp torch has
        # loaded (same soname), that is on PyTorch's own threads.
        ("ops.cpp", ["-O1", "-fopenmp", *common]),
    ]
    if launch or cuda:
        out.append(("cuda_launch.cpp", ["-O1", *common]))
    if cuda:
        out.append(("cuda.cpp", ["-O1", *common]))
    # The loops: the machine's instruction set, vectorized; no torch headers; two halves by dtype.
    loops = ["-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", *ISA_FLAGS[isa], *common]
    out += [("kernels16.cpp", loops), ("kernels.cpp", loops)]
    if launch or cuda:
        out.append(("launch.cpp", ["-O2", *common]))
    libs = ["-ltorch_cpu", "-lc10"] + (["-ltorch_cuda", "-lc10_cuda"] if cuda else [])
    if torch.backends.openmp.is_available():
        libs.append("-lgomp")
    return out, libs


def build_key(isa: str, cuda: bool, launch: bool) -> tuple:
    """(name, key): the build's file name stem, readable, and the hash of what decides the binary."""
    h = hashlib.sha256()
    tus, libs = units(isa, cuda, launch)
    for name in sorted({src for src, _ in tus} | set(HEADERS)):
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    material = [torch.__version__, torch.version.git_version, str(torch._C._GLIBCXX_USE_CXX11_ABI),
                str(torch.version.cuda), compiler(), tus, libs, isa, cuda]
    h.update(json.dumps(material, sort_keys=True).encode())
    version = "".join(c if c.isalnum() or c == "." else "_" for c in torch.__version__)
    kind = "-cuda" if cuda else "-launch" if launch else ""
    return f"fastdrop-torch{version}-{isa}{kind}", h.hexdigest()[:16]


# ---- verify and load -----------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(record: Path):
    """The library a record names, if it is there and matches the record; else None."""
    try:
        rec = json.loads(record.read_text())
        lib = record.parent / rec["library"]
        if lib.stat().st_size == rec["size"] and _sha256(lib) == rec["sha256"]:
            return lib
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _dlopen(lib: Path):
    try:
        torch.ops.load_library(str(lib))
    except OSError as e:  # torch's says only "Could not load this library": the loader's reason is its cause
        raise OSError(f"{lib.name} did not load: {e.__cause__ or e}") from None


def _ready(lib: Path) -> _Ops:
    """The operators of ``lib``, loaded (AttributeError where it holds none)."""
    loaded = _Ops()
    if _state["inline"]:
        torch.ops.fastdrop._set_inline(True)
    _state["library"] = lib
    return loaded


def load():
    """The operators, built if needed and loaded at first need; None (after one warning that says
    why) where they cannot be. Thread-safe: other threads see them once they are complete."""
    global ops
    if _state["tried"]:
        return ops
    with _lock:
        if _state["tried"]:
            return ops
        try:
            loaded = _load()
        except Exception as e:  # noqa: BLE001 - any failure leaves the torch-ops path, which is always there
            loaded = None
            warnings.warn(f"fastdrop: the C++ operators are not available ({type(e).__name__}: "
                          f"{str(e).strip()[-2000:]}); dropout runs on torch ops instead (same bits, slower)",
                          RuntimeWarning, stacklevel=3)
        ops = loaded
        _state["tried"] = True  # published last: a thread that sees it sees ops complete
    return ops


def _load():
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"fastdrop's C++ operators are built on Linux only (this is {sys.platform})")
    isa, cuda, launch = machine_isa(), has_cuda_part(), has_launch()
    name, key = build_key(isa, cuda, launch)
    folder = cache_dir()
    record = folder / f"{name}-{key}.json"
    lib = _verified(record)
    reason = None
    if lib is not None:
        try:
            _dlopen(lib)
            return _ready(lib)
        except (OSError, AttributeError) as e:  # does not load, or is not ours: rebuild once, to a fresh name
            reason = str(e) if isinstance(e, OSError) else f"{lib.name} holds no fastdrop operators ({e})"
    folder = _writable(folder)
    record = folder / f"{name}-{key}.json"
    try:
        loaded = _ready(_build(folder, name, key, isa, cuda, launch, record, failed=lib if reason else None))
    except Exception as e:  # the one warning says why the cached library was not used, too
        if reason is None:
            raise
        raise RuntimeError(f"{reason}; rebuilding it failed: {type(e).__name__}: {e}") from None
    if reason:
        warnings.warn(f"fastdrop: {reason}; rebuilt the C++ operators as {_state['library'].name}", RuntimeWarning,
                      stacklevel=4)
    return loaded


def set_launch(path: str) -> None:
    """How CUDA calls launch the Triton kernels: "cpp" (from C++, once a launch key is checked) or
    "python" (Triton's own launch, every call); bench.host_cost compares the two."""
    if path not in ("cpp", "python"):
        raise ValueError(f"launch must be 'cpp' or 'python', but got {path!r}")
    if load() is not None and has_launch():
        torch.ops.fastdrop._set_launch(path == "cpp")


def _writable(folder: Path) -> Path:
    """The cache folder, or where it cannot be written, one in the temporary folder (one warning)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return folder
    except OSError as e:
        fallback = Path(tempfile.gettempdir()) / f"fastdrop-{os.getuid()}"
        fallback.mkdir(mode=0o700, exist_ok=True)
        # The temporary folder is shared: a library in a folder another user can write would run as this one.
        st = fallback.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise RuntimeError(f"the cache folder {folder} cannot be written ({e.strerror or e}), and {fallback} "
                               f"is not a folder of this user's that only it can write (set FASTDROP_CACHE)") from None
        warnings.warn(f"fastdrop: the cache folder {folder} cannot be written ({e.strerror or e}); building the "
                      f"C++ operators into {fallback} instead (set FASTDROP_CACHE to choose)", RuntimeWarning,
                      stacklevel=4)
        return fallback


# ---- build ---------------------------------------------------------------------------------------

def build() -> Path:
    """Build (or find) the library for this machine and torch and load it, as the first call would
    (rebuilt where it does not load); its path. Raises where it cannot be built."""
    global ops
    with _lock:
        if ops is None:
            ops = _load()
            _state["tried"] = True
    return _state["library"]


def _build(folder, name, key, isa, cuda, launch, record, *, failed=None):
    """Build under the folder's lock, unless another process built while this one waited; load.
    ``failed``: the library that matched the record and did not load (not to be loaded again)."""
    import fcntl  # Unix's

    with open(folder / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait for it, then load it
        lib = _verified(record)
        if lib is not None and lib != failed:  # built by another process while this one waited
            _dlopen(lib)
            return lib
        # Holding the lock, no build runs: whatever an interrupted one left goes.
        for old in folder.glob("build-*"):
            shutil.rmtree(old, ignore_errors=True)
        for old in folder.glob("*.tmp"):
            old.unlink(missing_ok=True)
        print(f"fastdrop: building the C++ operators for torch {torch.__version__} ({isa}"
              f"{', CUDA' if cuda else ''}) into {folder} (once; about 15 s on 2 cores)", file=sys.stderr, flush=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=folder))
        try:
            out = _compile(scratch, isa, cuda, launch)
            size, digest = out.stat().st_size, _sha256(out)
            lib = folder / f"{name}-{key}-{digest[:8]}{os.getpid() % 10000:04d}.so"
            os.replace(out, lib)
            _dlopen(lib)  # the record is written only for a library that loads
            tmp = record.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"library": lib.name, "size": size, "sha256": digest, "torch": torch.__version__,
                                       "isa": isa, "cuda": cuda, "compiler": compiler(),
                                       "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
            os.replace(tmp, record)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for old in folder.glob(f"{name}-{key}-*.so"):  # earlier libraries of this key: unlinked, not rewritten
            if old != lib:
                old.unlink(missing_ok=True)
    return lib


def _timeout() -> float:
    try:
        return float(os.environ.get("FASTDROP_BUILD_TIMEOUT", "300"))
    except ValueError:
        return 300.0


def _compile(scratch: Path, isa: str, cuda: bool, launch: bool) -> Path:
    """Compile the translation units in parallel (longest first), link; the library's path."""
    cxx = compiler()
    if shutil.which(cxx[0]) is None:
        raise RuntimeError(f"no C++ compiler: {cxx[0]!r} was not found (set CXX to one)")
    includes, libdir = _torch_dirs()
    inc = [f"-I{p}" for p in includes] + [f"-I{CSRC}"]
    tus, libs = units(isa, cuda, launch)
    deadline = time.monotonic() + _timeout()
    jobs = [(cxx + flags + inc + ["-c", str(CSRC / src), "-o", str(scratch / (src + ".o"))], src,
             scratch / (src + ".log")) for src, flags in tus]
    _run_all(jobs, deadline, max(1, min(len(jobs), os.cpu_count() or 1)))
    out = scratch / "fastdrop.so"
    link = cxx + ["-shared", *(str(scratch / (src + ".o")) for src, _ in tus), "-o", str(out), f"-L{libdir}", *libs]
    _run_all([(link, "link", scratch / "link.log")], deadline, 1)
    return out


def _run_all(jobs, deadline, width):
    """Run compiler commands, at most ``width`` at a time; all killed at the deadline or at the
    first failure."""
    pending, running = list(jobs), []
    try:
        while pending or running:
            while pending and len(running) < width:
                cmd, what, log = pending.pop(0)
                with open(log, "wb") as out:
                    try:
                        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
                    except OSError as e:
                        raise RuntimeError(f"{cmd[0]} could not run: {e}") from None
                running.append((proc, what, log))
            time.sleep(0.02)
            for job in list(running):
                proc, what, log = job
                if proc.poll() is None:
                    continue
                running.remove(job)
                if proc.returncode != 0:
                    text = Path(log).read_text(errors="replace")
                    raise RuntimeError(f"{proc.args[0]} failed on {what} (exit {proc.returncode}):\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the C++ build took longer than {_timeout():.0f} s (FASTDROP_BUILD_TIMEOUT) "
                                   f"and was stopped")
    finally:
        for proc, _, _ in running:  # a failure or the deadline: the rest stop too, with their children
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            proc.wait()


# ---- forked children -----------------------------------------------------------------------------

def _after_fork_in_child():
    # libgomp's thread team does not survive fork(): the child's calls run inline, whether the
    # library was loaded before the fork (its own pthread_atfork handler says so too) or after.
    _state["inline"] = True
    if ops is not None:
        torch.ops.fastdrop._set_inline(True)


os.register_at_fork(after_in_child=_after_fork_in_child)

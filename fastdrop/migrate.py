"""An existing model onto fastdrop: module swaps, a report of what was left and why, and a
switch that routes PyTorch's functional dropout to fastdrop in unmodified code.

torchvision's ``StochasticDepth`` and timm's ``DropPath`` are recognised by their class's
qualified name and attributes: neither package is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import torch
from torch import nn

from . import functional
from ._args import FLOAT_DTYPES
from .modules import (AlphaDropout, Dropout, Dropout1d, Dropout2d, Dropout3d, DropPath, FeatureAlphaDropout,
                      NoiseDropout, StochasticDepth)

_FASTDROP_MODULES = (AlphaDropout, Dropout, Dropout1d, Dropout2d, Dropout3d, DropPath, FeatureAlphaDropout,
                     NoiseDropout, StochasticDepth)

# Exact torch.nn types only: a user subclass may have its own forward.
_SWAPS = {
    nn.Dropout: Dropout,
    nn.Dropout1d: Dropout1d,
    nn.Dropout2d: Dropout2d,
    nn.Dropout3d: Dropout3d,
    nn.AlphaDropout: AlphaDropout,
    nn.FeatureAlphaDropout: FeatureAlphaDropout,
}


# Third-party classes by qualified name, with the attributes their forward reads. Their
# semantics (checked against the real classes where installed, and against copies of their
# forward in tests/test_migrate.py):
#   torchvision.ops.StochasticDepth(p, mode): "row" one Bernoulli(1-p) per sample, "batch" one
#     for the whole input; kept scaled by 1/(1-p); p == 1 gives zeros.
#   timm DropPath(drop_prob, scale_by_keep=True): one bit per sample; kept scaled by
#     1/(1-drop_prob) if scale_by_keep. Before timm 0.6 there was no scale_by_keep (it scaled).
def _timm_drop_path(m):
    return DropPath(m.drop_prob, getattr(m, "scale_by_keep", True))


_THIRD_PARTY = {  # qualified name -> (fastdrop class, attributes read, build)
    "torchvision.ops.stochastic_depth.StochasticDepth": (
        StochasticDepth, ("p", "mode"), lambda m: StochasticDepth(m.p, m.mode)),
    "timm.layers.drop.DropPath": (DropPath, ("drop_prob",), _timm_drop_path),
    "timm.models.layers.drop.DropPath": (DropPath, ("drop_prob",), _timm_drop_path),
}

FUSED = "stays fused in the attention kernel"
SDPA_FUSED = f"p goes to scaled_dot_product_attention(dropout_p=...): {FUSED}"
PATCHED_NOTE = "routed to fastdrop by fastdrop.patch()"
UNUSED = ("not called in a training forward: its parent uses its p elsewhere (scaled_dot_product_attention, "
          "F.dropout) or not")


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_fastdrop(module) -> bool:
    """Whether ``module`` is one of fastdrop's dropout modules (their repr is torch's/timm's)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"is_fastdrop(): expected an nn.Module, but got {type(module).__name__}")
    return isinstance(module, _FASTDROP_MODULES)


def _classify(m):
    """(action, detail, make) for one module: action is "fastdrop" (already fastdrop's),
    "replace" (make() builds its fastdrop module) or "left" (detail says why); None if it
    has no dropout of its own."""
    cls = type(m)
    if isinstance(m, _FASTDROP_MODULES):
        return "fastdrop", "", None
    if cls in _SWAPS:
        return "replace", _qualname(_SWAPS[cls]), lambda: _SWAPS[cls](m.p, m.inplace)
    known = _THIRD_PARTY.get(_qualname(cls))
    if known is not None and all(hasattr(m, a) for a in known[1]):
        return "replace", _qualname(known[0]), lambda: known[2](m)
    if isinstance(m, nn.modules.dropout._DropoutNd):
        base = next(c for c in cls.__mro__ if c in _SWAPS)
        own = "with its own forward" if cls.forward is not base.forward else "(it may add state or behaviour)"
        return "left", (f"a subclass of torch.nn.{base.__name__} {own}: not swapped; the F.* dropout its "
                        f"forward calls is {PATCHED_NOTE}"), None
    if cls.__name__ in ("DropPath", "StochasticDepth"):
        return "left", (f"not a known {cls.__name__} (timm's, torchvision's): its forward is its own; "
                        f"fastdrop.DropPath / fastdrop.StochasticDepth are drop-ins for those"), None
    if isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
        return "left", (f"internal dropout p={m.dropout}: F.dropout when need_weights=True, {PATCHED_NOTE}; "
                        "with need_weights=False (as nn.TransformerEncoderLayer calls it) its "
                        f"{SDPA_FUSED}"), None
    if isinstance(m, nn.RNNBase) and m.dropout > 0:
        return "left", (f"dropout p={m.dropout} between layers runs inside ATen's fused {cls.__name__} op: "
                        "stays with PyTorch"), None
    return None


@dataclasses.dataclass(frozen=True)
class ReportLine:
    """One class of module in a model: what fastdrop did with it, or why not."""

    cls: str  # the class as found in the model, qualified
    action: str  # "replaced", "fastdrop" (already fastdrop's), "left" or "unused" (not called)
    names: tuple  # qualified names of its modules in the model ("" is the model itself)
    detail: str  # the fastdrop class it became, or why it was left alone

    def __str__(self) -> str:
        what = {"replaced": f"-> {self.detail}", "fastdrop": "fastdrop's"}.get(self.action, self.detail)
        return f"{self.action:8} {len(self.names):4} x {self.cls} {what}"


class DropoutReport(tuple):
    """``ReportLine`` s, one per class; ``str()`` prints one line per class."""

    def __str__(self) -> str:
        return "\n".join(str(line) for line in self) if self else "no dropout modules"

    __repr__ = __str__

    @property
    def replaced(self) -> DropoutReport:
        return DropoutReport(line for line in self if line.action == "replaced")

    @property
    def left(self) -> DropoutReport:
        return DropoutReport(line for line in self if line.action == "left")


def _report(found) -> DropoutReport:
    """found: (name, action, cls, detail) per module, grouped into one line per (class, action)."""
    lines = {}
    for name, action, cls, detail in found:
        key = (cls, action, detail)
        lines.setdefault(key, []).append(name)
    return DropoutReport(ReportLine(_qualname(cls), action, tuple(names), detail)
                         for (cls, action, detail), names in lines.items())


def dropout_report(model: nn.Module, *example_args, **example_kwargs) -> DropoutReport:
    """What ``model`` holds: fastdrop's modules, modules ``replace_dropout`` would swap
    (action "replaced", detail their fastdrop class), and modules whose dropout stays with
    PyTorch or needs ``fastdrop.patch()``, with the reason.

    Given example inputs, it also runs one training forward of ``model(*example_args,
    **example_kwargs)`` (under no_grad; training modes, buffers and the RNG state are put
    back) and adds what only a run shows, per calling class: dropout called as a function
    (action "left": PyTorch's unless patched), ``scaled_dot_product_attention(dropout_p > 0)``
    (action "left": fused in the attention kernel) and dropout modules never called
    (action "unused", as when their p goes to scaled_dot_product_attention instead).
    """
    found = []
    for name, m in model.named_modules():
        c = _classify(m)
        if c is not None:
            action, detail, _ = c
            found.append((name, "replaced" if action == "replace" else action, type(m), detail))
    if example_args or example_kwargs:
        found += _observe(model, example_args, example_kwargs)
    return _report(found)


_FUNCTIONAL_DROPOUT = {getattr(torch.nn.functional, n) for n in (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")} | {
    getattr(torch, n + s) for n in ("dropout", "alpha_dropout", "feature_alpha_dropout", "feature_dropout")
    for s in ("", "_")}


def _p_of(func, args, kwargs):
    """(p, training) of a functional dropout call, with PyTorch's names and defaults."""
    if func.__module__ == "torch":  # the bindings: (input, p, train), all required
        names, defaults = ("p", "train"), (None, None)
    else:
        names = ("p", "training")
        defaults = (0.5, func.__name__ not in ("alpha_dropout", "feature_alpha_dropout"))
    p = args[1] if len(args) > 1 else kwargs.get(names[0], defaults[0])
    training = args[2] if len(args) > 2 else kwargs.get(names[1], defaults[1])
    return p, training


class _Seen(torch.overrides.TorchFunctionMode):
    """Functional dropout and SDPA calls, by the innermost module running."""

    def __init__(self, stack):
        super().__init__()
        self.stack, self.calls = stack, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = None
        if func is torch.nn.functional.scaled_dot_product_attention:
            p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
            if p > 0:
                what = f"calls scaled_dot_product_attention(dropout_p={p}) in its forward: {FUSED}"
        elif func in _FUNCTIONAL_DROPOUT:
            p, training = _p_of(func, args, kwargs)
            if training and p > 0:
                what = (f"calls {func.__module__}.{func.__name__}(p={p}) in its forward: "
                        f"PyTorch's dropout; {PATCHED_NOTE}")
        if what is not None and self.stack:
            self.calls.setdefault(what, {})[self.stack[-1][0]] = self.stack[-1][1]
        return func(*args, **kwargs)


def _observe(model, args, kwargs):
    names = {id(m): name for name, m in model.named_modules()}
    stack, called, handles = [], set(), []

    def pre(m, _):
        stack.append((names[id(m)], m))
        called.add(id(m))

    def post(m, _, __):
        stack.pop()

    modes = {m: m.training for m in model.modules()}
    buffers = {b: b.detach().clone() for b in model.buffers()}
    devices = sorted({b.device.index or 0 for b in list(model.parameters()) + list(buffers)
                      if b.device.type == "cuda"})
    seen = _Seen(stack)
    try:
        for m in model.modules():
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post, always_call=True)]
        model.train()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), seen:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers.items():
                b.copy_(saved)
    # Callers that are dropout modules themselves have their line already.
    found = [(name, "left", type(m), what) for what, callers in seen.calls.items()
             for name, m in callers.items() if _classify(m) is None]
    for name, m in model.named_modules():
        c = _classify(m)
        if c is not None and c[0] != "left" and id(m) not in called:
            found.append((name, "unused", type(m), UNUSED))
    return found


def replace_dropout(model: nn.Module, *, report: bool = False):
    """Swap every dropout module of ``model`` for fastdrop's; returns the model.

    Swaps ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout``
    (exact types), torchvision's ``StochasticDepth`` and timm's ``DropPath``, each keeping its
    parameters and training mode; a module shared by several parents stays shared. ``model``
    itself is returned swapped if it is one of them. Hooks registered on the old modules are
    not carried over. With ``report=True`` returns ``(model, DropoutReport)``: per class, what
    was replaced, and what was left alone and why.
    """
    swapped, found = {}, []

    def swap(name, m):
        c = _classify(m)
        if c is None or id(m) in swapped:
            return swapped.get(id(m), m)
        action, detail, make = c
        found.append((name, "replaced" if action == "replace" else action, type(m), detail))
        new = m
        if action == "replace":
            new = make()
            new.train(m.training)
        swapped[id(m)] = new
        return new

    root = swap("", model)
    if root is model:
        for parent_name, parent in list(model.named_modules()):
            # _modules, not named_children(): that yields a child held twice by one parent once.
            for name, child in list(parent._modules.items()):
                if child is None:
                    continue
                new = swap(f"{parent_name}.{name}" if parent_name else name, child)
                if new is not child:
                    setattr(parent, name, new)
    return (root, _report(found)) if report else root


# ---- the switch: PyTorch's functional dropout routed to fastdrop ---------------------------

def _routable(input) -> bool:
    # Plain tensors of the dtypes and devices fastdrop runs on. Tensor subclasses with their
    # own __torch_function__ (DTensor, ...) and other dtypes keep PyTorch's dropout.
    return (type(input) in (torch.Tensor, nn.Parameter) and input.dtype in FLOAT_DTYPES
            and input.device.type in ("cpu", "cuda", "meta"))


def _nn(name, fd):
    """A torch.nn.functional dropout: fastdrop's function of the same signature."""
    orig = getattr(torch.nn.functional, name)
    training_default = name not in ("alpha_dropout", "feature_alpha_dropout")  # PyTorch's defaults

    def routed(input, p=0.5, training=training_default, inplace=False):
        if _routable(input):
            return fd(input, p, training, inplace)
        return orig(input, p, training, inplace)

    routed.__name__, routed.__qualname__, routed.__doc__ = orig.__name__, orig.__qualname__, orig.__doc__
    return orig, routed


def _aten(name, fd, inplace):
    """A torch.* dropout (the C++ binding, ``input, p, train``)."""
    orig = getattr(torch, name)

    def routed(input, p, train):
        if _routable(input):
            return fd(input, p, train, inplace)
        return orig(input, p, train)

    routed.__name__, routed.__qualname__, routed.__doc__ = name, name, orig.__doc__
    return orig, routed


def _targets():
    F = torch.nn.functional
    nn_fns = {"dropout": functional.dropout, "dropout1d": functional.dropout1d, "dropout2d": functional.dropout2d,
              "dropout3d": functional.dropout3d, "alpha_dropout": functional.alpha_dropout,
              "feature_alpha_dropout": functional.feature_alpha_dropout}
    out = [(F, name, *_nn(name, fd)) for name, fd in nn_fns.items()]
    aten_fns = {"dropout": functional.dropout, "alpha_dropout": functional.alpha_dropout,
                "feature_alpha_dropout": functional.feature_alpha_dropout, "feature_dropout": functional.feature_dropout}
    for name, fd in aten_fns.items():
        out.append((torch, name, *_aten(name, fd, False)))
        out.append((torch, name + "_", *_aten(name + "_", fd, True)))
    return out


_lock = threading.Lock()
_patched = None  # the (module, name, original, routed) list while patched
_wanted = {"patch": False, "blocks": 0}  # patch() on; patched() blocks running, in any thread


def _dynamo_tables_from_pytorch() -> None:
    # torch.compile builds its table of torch functions once per process, from the torch
    # namespace as it is at that moment (its first import, or its first compile). Built while
    # patched, it took the routed functions for PyTorch's own: graphs called them as opaque
    # functions, and after unpatching PyTorch's own dropout could not be traced at all
    # (fullgraph=True failed on torch.dropout). So it is built here, before patching: the
    # first patch imports torch._dynamo (about 1 s), once per process.
    try:
        from torch._dynamo import trace_rules
    except ImportError:  # no torch.compile in this torch/Python: nothing to keep right
        return
    table = getattr(trace_rules, "get_torch_obj_rule_map", None)
    if table is not None:
        table()


def _overrides_tables_from_pytorch() -> None:
    # torch.overrides builds its tables (resolve_name's index, get_overridable_functions,
    # get_testing_overrides, get_ignored_functions) once per process, from the namespaces as
    # they are at that moment, as torch.compile's. Built while patched, they held the routed
    # functions: after unpatching, resolve_name(F.dropout) was None and PyTorch's dropout was
    # missing from them. So they are built here, before patching (about 10 ms, once per
    # process; torch.overrides is imported by torch itself).
    overrides = torch.overrides
    for table in ("get_ignored_functions", "get_testing_overrides", "_get_overridable_functions"):
        build = getattr(overrides, table, None)
        if build is not None:
            build()


def _sync() -> None:
    global _patched
    on = _wanted["patch"] or _wanted["blocks"] > 0
    if on and _patched is None:
        _dynamo_tables_from_pytorch()
        _overrides_tables_from_pytorch()
        targets = _targets()
        for mod, name, _, routed in targets:
            setattr(mod, name, routed)
        _patched = targets
    elif not on and _patched is not None:
        for mod, name, orig, _ in _patched:
            setattr(mod, name, orig)
        _patched = None


def patch() -> None:
    """Route PyTorch's dropout family to fastdrop, process-wide, until ``unpatch()``.

    Replaces ``torch.nn.functional.dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``,
    ``feature_alpha_dropout`` and ``torch.dropout``, ``alpha_dropout``, ``feature_dropout``,
    ``feature_alpha_dropout`` (and their in-place ``_`` forms) by functions that call fastdrop's
    on plain float tensors (CPU, CUDA) and PyTorch's otherwise. Code that looks these names up
    when it runs is reached, in eager mode and under torch.compile: ``nn.Dropout``, the
    attention-weight dropout of ``nn.MultiheadAttention``, ``F.dropout`` in model code. Not
    reached: names bound before patching (``from torch.nn.functional import dropout``),
    ``scaled_dot_product_attention``'s ``dropout_p`` (fused in the attention kernel) and the
    dropout inside ATen's RNN ops. Calling it again while patched does nothing. The first
    switch-on in a process imports torch._dynamo (about 1 s; see ``_dynamo_tables_from_pytorch``).
    """
    with _lock:
        _wanted["patch"] = True
        _sync()


def unpatch() -> None:
    """Put PyTorch's own dropout functions back (the very objects ``patch()`` replaced), once
    no ``patched()`` block is running."""
    with _lock:
        _wanted["patch"] = False
        _sync()


def is_patched() -> bool:
    return _patched is not None


@contextlib.contextmanager
def patched():
    """``with fastdrop.patched():`` the switch on inside the block.

    Process-wide: other threads see it while the block runs. After the block it is off
    again, unless ``patch()`` turned it on or another block (in any thread) still runs.
    """
    with _lock:
        _wanted["blocks"] += 1
        _sync()
    try:
        yield
    finally:
        with _lock:
            _wanted["blocks"] -= 1
            _sync()

"""DTensor in, each shard's part of the global mask out; TP, SP and FSDP2 training against one process.

One spawn of 4 gloo processes (a 4-rank mesh and a 2x2 mesh) runs every check; each rank
compares its local values with its slice of the single-process result computed in the same
worker, forward and backward, and records what it checked. The spawn is bounded in time.
"""

import json
import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fastdrop

WORLD = 4
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


def _local_slice(dt):
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, start = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)
    return tuple(slice(s, s + n) for s, n in zip(start, shape))


def _check_placements(mesh, placements, checked):
    """Forward and backward of the family on a DTensor equal the full tensor's, per rank."""
    from torch.distributed.tensor import distribute_tensor

    torch.manual_seed(0)  # the same global tensors on every rank
    cases = [
        ("dropout", (6, 10, 7), lambda t, **k: fastdrop.dropout(t, 0.4, **k)),
        ("dropout2d", (4, 6, 5, 3), lambda t, **k: fastdrop.dropout2d(t, 0.5, **k)),
        ("drop_path", (6, 5, 4), lambda t, **k: fastdrop.drop_path(t, 0.5, True, **k)),
        ("noise_dropout", (6, 5, 4), lambda t, **k: fastdrop.noise_dropout(t, 0.3, (1, None, 1), **k)),
        ("alpha_dropout", (5, 6, 7), lambda t, **k: fastdrop.alpha_dropout(t, 0.2, True, **k)),
        ("dropout_inplace", (6, 10, 7), lambda t, **k: fastdrop.dropout(t.clone(), 0.4, inplace=True, **k)),
    ]
    for name, shape, fn in cases:
        x = torch.randn(shape)
        if any(p.is_shard() and p.dim >= len(shape) for p in placements):
            continue
        xr = x.clone().requires_grad_()
        full = fn(xr, seed=11, offset=3)
        full.backward(torch.arange(full.numel(), dtype=full.dtype).reshape(full.shape))
        d = distribute_tensor(x, mesh, placements).requires_grad_()
        out = fn(d, seed=11, offset=3)
        assert type(out).__name__ == "DTensor" and tuple(out.placements) == tuple(placements), name
        sl = _local_slice(out)
        assert torch.equal(out.to_local(), full.detach()[sl]), f"{name} {placements}: forward"
        g = torch.arange(full.numel(), dtype=full.dtype).reshape(full.shape)
        out.backward(distribute_tensor(g, mesh, placements))
        assert torch.equal(d.grad.to_local(), xr.grad[sl]), f"{name} {placements}: backward"
        checked.append(f"{name} {placements}")


def _check_partial_and_seeds(mesh, rank, checked):
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor

    torch.manual_seed(1)
    parts = [torch.randn(5, 8) for _ in range(WORLD)]
    d = DTensor.from_local(parts[rank], mesh, [Partial()], run_check=False)
    out = fastdrop.dropout(d, 0.5, seed=2)
    assert torch.allclose(out.full_tensor(), fastdrop.dropout(sum(parts), 0.5, seed=2)), "Partial"
    with pytest.raises(ValueError, match="cannot act on a Partial DTensor"):
        fastdrop.alpha_dropout(d, 0.5, True, seed=2)
    checked.append("Partial")
    # Without seed=: the same torch.manual_seed on every rank gives one global mask.
    torch.manual_seed(rank)
    assert not fastdrop.rng_in_sync()
    x = torch.ones(8, 12)
    torch.manual_seed(5)
    assert fastdrop.rng_in_sync()
    expected = fastdrop.dropout(x, 0.5)
    torch.manual_seed(5)
    got = fastdrop.dropout(distribute_tensor(x, mesh, [Shard(1)]), 0.5).full_tensor()
    assert torch.equal(got, expected), "unseeded masks differ from one process"
    checked.append("unseeded Shard(1)")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.drop1, self.drop2 = fastdrop.Dropout(0.3), fastdrop.Dropout(0.2)

    def forward(self, x):
        return self.drop2(self.down(self.drop1(torch.relu(self.up(x)))))


def _train(model, make_loss, steps=3, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        torch.manual_seed(100 + step)  # the masks of this step, the same on every rank
        loss = make_loss(model, step)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    return losses


def _full(t):
    return t.full_tensor() if type(t).__name__ == "DTensor" else t


def _check_tensor_and_sequence_parallel(tp_mesh, checked):
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    ref = MLP()
    tp = MLP()
    tp.load_state_dict(ref.state_dict())
    # Colwise keeps its output a DTensor (Shard(-1)) so drop1 sees the shard; Rowwise
    # reduce-scatters to a sequence shard (Shard(1)): drop2 is sequence-parallel dropout.
    parallelize_module(tp, tp_mesh, {"up": ColwiseParallel(use_local_output=False),
                                     "down": RowwiseParallel(output_layouts=Shard(1), use_local_output=False)})
    data = torch.randn(4, 6, 16)

    def loss(model, step):
        return _full(model(data + step)).pow(2).mean()

    ref_losses, tp_losses = _train(ref, loss), _train(tp, loss)
    assert ref_losses == pytest.approx(tp_losses, rel=1e-5), (ref_losses, tp_losses)
    for (n, a), b in zip(ref.named_parameters(), tp.parameters()):
        torch.testing.assert_close(_full(b).detach(), a.detach(), rtol=1e-5, atol=1e-6, msg=n)
    checked.append("TP+SP MLP")


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop2d, self.drop = fastdrop.Dropout2d(0.2), fastdrop.Dropout(0.3)
        self.fc = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.drop2d(self.conv(x))).flatten(1)))


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.attn = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), fastdrop.Dropout(0.1), nn.Linear(2 * d, d))
        self.drop_path = fastdrop.DropPath(0.2)

    def forward(self, x):
        x = fastdrop.dropout_add(self.attn(x), x, 0.1, training=self.training)
        return x + self.drop_path(self.mlp(x))


def _check_fsdp2(dp_mesh, checked):
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # older torch
        from torch.distributed._composable.fsdp import fully_shard

    for cls, shape in ((SmallCNN, (4, 3, 6, 6)), (Block, (4, 5, 16))):
        torch.manual_seed(0)
        ref, sharded = cls(), cls()
        sharded.load_state_dict(ref.state_dict())
        fully_shard(sharded, mesh=dp_mesh)
        data = torch.randn(shape)  # the same batch on both ranks: FSDP's average is the one-process gradient

        def loss(model, step):
            return model(data * (step + 1)).pow(2).mean()

        ref_losses, fsdp_losses = _train(ref, loss), _train(sharded, loss)
        assert ref_losses == pytest.approx(fsdp_losses, rel=1e-5), (cls.__name__, ref_losses, fsdp_losses)
        for (n, a), b in zip(ref.named_parameters(), sharded.parameters()):
            torch.testing.assert_close(_full(b).detach(), a.detach(), rtol=1e-5, atol=1e-6, msg=n)
        checked.append(f"FSDP2 {cls.__name__}")


def _worker(rank, port, out):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    checked = []
    mesh = init_device_mesh("cpu", (WORLD,))
    for placements in ([Shard(0)], [Shard(1)], [Shard(2)], [Replicate()]):
        _check_placements(mesh, placements, checked)
    _check_partial_and_seeds(mesh, rank, checked)
    mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    for placements in ([Shard(0), Shard(1)], [Shard(1), Shard(1)], [Replicate(), Shard(2)]):
        _check_placements(mesh2, placements, checked)
    _check_tensor_and_sequence_parallel(mesh2["tp"], checked)
    _check_fsdp2(mesh2["dp"], checked)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(checked, f)
    dist.barrier()
    os._exit(0)  # past gloo's teardown, which can deadlock at exit (see test_integration's DDP test)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dtensor_placements_and_parallel_training_match_one_process(tmp_path):
    workers = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 240
    while not workers.join(timeout=1):  # raises with the worker's traceback if a check fails
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail("distributed workers still running after 240 s")
    checked = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert all(c == checked[0] for c in checked)
    for expected in ("dropout [Shard(dim=1)]", "dropout2d [Shard(dim=0), Shard(dim=1)]", "Partial",
                     "unseeded Shard(1)", "TP+SP MLP", "FSDP2 SmallCNN", "FSDP2 Block"):
        assert expected in checked[0], expected


class TwoTensor(torch.Tensor):
    """A wrapper subclass holding two tensors; every op runs on both (as PyTorch's test TwoTensor)."""

    @staticmethod
    def __new__(cls, a, b):
        return torch.Tensor._make_wrapper_subclass(cls, a.shape, strides=a.stride(), dtype=a.dtype,
                                                   device=a.device, requires_grad=a.requires_grad)

    def __init__(self, a, b):
        self.a, self.b = a, b

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        unwrap = lambda side: lambda t: getattr(t, side) if isinstance(t, TwoTensor) else t  # noqa: E731
        a = func(*torch.utils._pytree.tree_map(unwrap("a"), args), **torch.utils._pytree.tree_map(unwrap("a"), kwargs))
        b = func(*torch.utils._pytree.tree_map(unwrap("b"), args), **torch.utils._pytree.tree_map(unwrap("b"), kwargs))
        if isinstance(a, torch.Tensor) and a.shape == b.shape:
            return TwoTensor(a, b)
        return a


def test_a_wrapper_subclass_gets_the_operator_and_one_mask():
    a = torch.randn(50)
    t = TwoTensor(a, a * 2)
    y = fastdrop.dropout(t, 0.4, seed=8)
    assert isinstance(y, TwoTensor)
    assert torch.equal(y.a, fastdrop.dropout(a, 0.4, seed=8))
    assert torch.equal(y.b, fastdrop.dropout(a * 2, 0.4, seed=8))
    y = fastdrop.dropout(t, 0.4)  # unseeded: both halves share the call's one mask
    assert torch.equal(y.a != 0, y.b != 0)


def test_a_wrapper_subclass_that_cannot_run_the_operator_says_so():
    class Opaque(TwoTensor):
        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            raise TypeError(f"Opaque does not support {func}")

    t = Opaque(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="Opaque does not support fastdrop.dropout"):
        fastdrop.dropout(t, 0.5, seed=1)

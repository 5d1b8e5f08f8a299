"""fastdrop.Dropout as an nn.Module: the nn.Dropout surface, and a small CNN trained with it."""

import copy
import pickle

import pytest
import torch
from torch import nn

import fastdrop


@pytest.mark.parametrize("args", [(), (0.0,), (0.1,), (0.5,), (1.0,), (0.3, True), (1 / 3, False)])
def test_repr_and_extra_repr_equal_torch(args):
    ours, theirs = fastdrop.Dropout(*args), nn.Dropout(*args)
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs)
    assert ours.p == theirs.p and ours.inplace == theirs.inplace


def test_keyword_args_equal_torch():
    ours, theirs = fastdrop.Dropout(p=0.2, inplace=True), nn.Dropout(p=0.2, inplace=True)
    assert ours.extra_repr() == theirs.extra_repr()


def test_constants():
    assert fastdrop.Dropout.__constants__ == nn.Dropout.__constants__ == ["p", "inplace"]


def test_state_dict_empty():
    m = fastdrop.Dropout(0.3)
    assert m.state_dict() == nn.Dropout(0.3).state_dict() == {}
    assert list(m.parameters()) == [] and list(m.buffers()) == []
    m.load_state_dict({})


def test_copy_and_pickle():
    m = fastdrop.Dropout(0.25, inplace=True)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert isinstance(clone, fastdrop.Dropout)
        assert clone.extra_repr() == m.extra_repr()


@pytest.mark.parametrize("inplace", [False, True])
def test_train_eval(inplace):
    m = fastdrop.Dropout(0.5, inplace=inplace)
    assert m.training
    x = torch.randn(4096)
    m.eval()
    assert not m.training
    assert m(x) is x
    state = torch.get_rng_state()
    m(x)
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
    m.train()
    xin = x.clone()
    torch.manual_seed(3)
    y = m(xin)
    assert (y is xin) == inplace
    kept = y != 0
    assert 0 < int(kept.sum()) < x.numel()
    assert torch.equal(y[kept], x[kept] * 2)
    # Same as the functional form under the same global RNG state.
    torch.manual_seed(3)
    assert torch.equal(y, fastdrop.dropout(x, 0.5))


def test_module_p1_and_p0():
    x = torch.full((100,), float("nan"))
    assert (fastdrop.Dropout(1.0)(x) == 0).all()
    assert fastdrop.Dropout(0.0)(x) is x


def test_module_mask_follows_global_seed():
    m = fastdrop.Dropout(0.3)
    x = torch.ones(2049)
    torch.manual_seed(9)
    a = m(x)
    torch.manual_seed(9)
    b = m(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, m(x))


class SmallCNN(nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = dropout
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    w = torch.randn(3 * 8 * 8, 4, generator=g)
    return x, (x.flatten(1) @ w).argmax(1)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_small_cnn_trains(memory_format):
    torch.manual_seed(0)
    x, labels = _data()
    x = x.contiguous(memory_format=memory_format)
    model = SmallCNN(fastdrop.Dropout(0.25)).to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert torch.isfinite(loss)
        assert all(torch.isfinite(prm.grad).all() for prm in model.parameters())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5

    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        # In eval the dropout is the identity: same as the model without it.
        bare = SmallCNN(nn.Identity())
        bare.load_state_dict(model.state_dict())
        assert torch.equal(a, bare.eval()(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_state_dict_interchangeable_with_torch_dropout():
    ours, theirs = SmallCNN(fastdrop.Dropout(0.25)), SmallCNN(nn.Dropout(0.25))
    theirs.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()

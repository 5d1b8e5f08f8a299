"""Real models written by others (tiny random-init configs, nothing downloaded): after
``replace_dropout`` and ``fastdrop.patch()`` every random dropout call of a training forward
is fastdrop's, except the dropout fused in scaled_dot_product_attention; eval outputs equal
the original model's; a training step runs; Hugging Face models survive
save_pretrained/from_pretrained (reloaded as torch modules, swapped again).

Models whose package is not importable skip with the reason. The share table:
    python tests/test_models.py
"""

from __future__ import annotations

import contextlib
import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdrop
from dropcount import count_dropout


def need(module):
    try:
        return importlib.import_module(module)
    except Exception as e:  # torchvision's wheel for another torch build fails with OSError/RuntimeError
        pytest.skip(f"{module} not importable here: {type(e).__name__}: {str(e)[:200]}")


def images(n=2, size=64):
    return (torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)),)


def tokens(n=2, length=12):
    return (torch.randint(1, 100, (n, length), generator=torch.Generator().manual_seed(0)),)


# name -> () -> (model, inputs, loss of the output). Each builder imports its package.

def torch_transformer():
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.1, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Dropout(0.1))
    return model, (torch.randn(2, 7, 32),), lambda out: out.square().mean()


def hf(kind, impl):
    def build():
        transformers = need("transformers")
        if kind == "bert":
            cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=37, max_position_embeddings=64, num_labels=3)
            model = transformers.AutoModelForSequenceClassification.from_config(cfg, attn_implementation=impl)
            return model, tokens(), lambda out: out.logits.logsumexp(-1).mean()
        cfg = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                      eos_token_id=0)
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
        return model, tokens(), lambda out: F.cross_entropy(out.logits.flatten(0, 1), tokens()[0].flatten())
    return build


def tv(name, **kwargs):
    def build():
        models = need("torchvision.models")
        model = getattr(models, name)(weights=None, num_classes=10, **kwargs)
        return model, images(size=kwargs.get("image_size", 64)), lambda out: out.logsumexp(-1).mean()
    return build


def timm_model(name, **kwargs):
    def build():
        timm = need("timm")
        model = timm.create_model(name, pretrained=False, num_classes=10, drop_rate=0.1, drop_path_rate=0.1, **kwargs)
        return model, images(size=kwargs.get("img_size", 64)), lambda out: out.logsumexp(-1).mean()
    return build


MODELS = {
    "torch TransformerEncoder": torch_transformer,
    "transformers BERT (eager)": hf("bert", "eager"),
    "transformers BERT (sdpa)": hf("bert", "sdpa"),
    "transformers GPT-2 (eager)": hf("gpt2", "eager"),
    "transformers GPT-2 (sdpa)": hf("gpt2", "sdpa"),
    "torchvision efficientnet_b0": tv("efficientnet_b0"),
    "torchvision convnext_tiny": tv("convnext_tiny"),
    "torchvision vit_b_16": tv("vit_b_16", image_size=32, dropout=0.1, attention_dropout=0.1),
    "timm resnet18": timm_model("resnet18"),
    "timm vit_tiny_patch16_224": timm_model("vit_tiny_patch16_224", img_size=32, attn_drop_rate=0.1),
    "timm convnext_atto": timm_model("convnext_atto"),
}


def shares(name):
    """(original, fastdrop copy, inputs, loss, counts): the counts of one training forward of
    the original, after replace_dropout, and after replace_dropout with the patch on."""
    torch.manual_seed(0)
    original, inputs, loss = MODELS[name]()
    model = fastdrop.replace_dropout(copy.deepcopy(original))
    original.train()
    model.train()
    counts = {}
    for key, m, patched in (("original", original, False), ("replace_dropout", model, False),
                            ("replace_dropout + patch", model, True)):
        with (fastdrop.patched() if patched else contextlib.nullcontext()), count_dropout() as c:
            m(*inputs)
        counts[key] = c
    return original, model, inputs, loss, counts


@pytest.mark.parametrize("name", list(MODELS))
def test_every_dropout_goes_through_fastdrop(name):
    original, model, inputs, loss, counts = shares(name)
    before, after = counts["original"].calls, counts["replace_dropout + patch"].calls
    assert before["torch"] > 0 and before["fastdrop"] == 0
    # Every call PyTorch made becomes exactly one fastdrop call; SDPA's fused dropout stays.
    assert after["torch"] == 0 and after["fastdrop"] == before["torch"] and after["sdpa"] == before["sdpa"]
    # Eval: the very same outputs as the original model, patch on or off.
    original.eval()
    model.eval()
    with torch.no_grad():
        ref = original(*inputs)
        got = model(*inputs)
        with fastdrop.patched():
            got_patched = model(*inputs)
    for out in (got, got_patched):
        assert torch.equal(_tensor(out), _tensor(ref))
    # A training step, patch on: finite gradients for every trained parameter, the loss moves.
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with fastdrop.patched():
        value = loss(model(*inputs))
        value.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.9 * len(grads)
    opt.step()


def _tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_hugging_face_round_trip(kind, tmp_path):
    model, inputs, _ = hf(kind, "eager")()
    fastdrop.replace_dropout(model)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path, attn_implementation="eager")
    # from_pretrained builds torch's modules: swap again after loading.
    assert not any(fastdrop.is_fastdrop(m) for m in reloaded.modules())
    fastdrop.replace_dropout(reloaded)
    assert all(fastdrop.is_fastdrop(m) for m in reloaded.modules() if isinstance(m, nn.Dropout))
    assert sum(fastdrop.is_fastdrop(m) for m in reloaded.modules()) == sum(
        fastdrop.is_fastdrop(m) for m in model.modules()) > 0
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model(*inputs).logits, reloaded(*inputs).logits)


if __name__ == "__main__":  # the share table: fastdrop calls / all dropout calls in one training forward
    import sys

    sys.modules.setdefault("pytest", pytest)
    print("| model | replace_dropout | replace_dropout + fastdrop.patch() |\n|---|---|---|")
    for name in MODELS:
        try:
            counts = shares(name)[-1]
        except pytest.skip.Exception as e:
            print(f"| {name} | skipped: {e} | |")
            continue
        print(f"| {name} | {counts['replace_dropout'].share} | {counts['replace_dropout + patch'].share} |")

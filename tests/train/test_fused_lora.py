"""The fused LoRA layer gives PEFT's outputs and gradients, and steps aside wherever it does not apply."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from specialize.train.fused_lora import fused_lora


def _model(tiny_model_dir, **lora):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora)
    return get_peft_model(base, config).train()


def _run(model, ids, autocast=False):
    model.zero_grad()
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach().float().cpu(), grads, _node_names(loss.grad_fn)


def _node_names(fn) -> set[str]:
    seen, todo, names = set(), [fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [next_fn for next_fn, _ in node.next_functions]
    return names


@pytest.mark.parametrize("rslora", [False, True])
def test_fused_lora_gives_peft_loss_and_gradients(tiny_model_dir, rslora):
    model = _model(tiny_model_dir, use_rslora=rslora)
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    loss, grads, nodes = _run(model, ids)
    assert not any("LoraLinear" in n for n in nodes)
    with fused_lora(model) as switched:
        fused_loss, fused_grads, fused_nodes = _run(model, ids)
    assert switched == 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up, down of every layer
    assert "_LoraLinearBackward" in fused_nodes  # attention's projections
    assert "_LoraMLPBackward" in fused_nodes  # the gated MLP as one function
    torch.testing.assert_close(fused_loss, loss, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert "_LoraLinearBackward" not in _run(model, ids)[2]  # the block's end restores PEFT's forward


@pytest.mark.parametrize("lora", [{"use_dora": True}, {"lora_dropout": 0.1}])
def test_dora_and_dropout_keep_peft_forward(tiny_model_dir, lora):
    model = _model(tiny_model_dir, **lora)
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    loss, grads, _ = _run(model, ids)
    with fused_lora(model):
        torch.manual_seed(3)
        fused_loss, fused_grads, nodes = _run(model, ids)
    assert "_LoraLinearBackward" not in nodes
    torch.testing.assert_close(fused_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, msg=name)


def test_disabled_adapter_is_the_base_model(tiny_model_dir):
    model = _model(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with fused_lora(model), model.disable_adapter():
            fused_base = model(input_ids=ids).logits
        with fused_lora(model):
            adapted = model(input_ids=ids).logits
    torch.testing.assert_close(fused_base, base)
    assert not torch.allclose(adapted, base)


def _relative_error(got, expected):
    return float((got - expected).norm() / expected.norm().clamp_min(1e-12))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_lora_under_bfloat16_autocast_tracks_peft(tiny_model_dir, device):
    model = _model(tiny_model_dir).to(device)  # the adapter is drawn on the CPU: the same start on any device
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    exact_loss, exact, _ = _run(model, ids)
    peft_loss, peft, _ = _run(model, ids, autocast=True)
    with fused_lora(model):
        fused_loss, fused, nodes = _run(model, ids, autocast=True)
    assert "_LoraLinearBackward" in nodes
    # Both bfloat16 runs are within bfloat16's precision of float32; the fused one no further than PEFT's.
    torch.testing.assert_close(fused_loss, exact_loss, rtol=1e-2, atol=1e-2)
    for name, grad in exact.items():
        assert fused[name].dtype == torch.float32, name  # gradients land in the float32 master weights
        assert _relative_error(fused[name], grad) < max(0.05, 1.5 * _relative_error(peft[name], grad)), name
    assert abs(float(peft_loss - exact_loss)) < 1e-2

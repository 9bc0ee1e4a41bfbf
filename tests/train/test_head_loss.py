"""The chunked head loss gives the plain cross-entropy's losses and gradients, however the losses are weighed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specialize.train.head_loss import CHUNK, head_losses


def _case(bias: bool, trainable_head: bool):
    torch.manual_seed(0)
    head = nn.Linear(16, 97, bias=bias)
    head.requires_grad_(trainable_head)
    n = 2 * CHUNK + 5  # two whole chunks and a short one
    hidden = torch.randn(n, 16, requires_grad=True)
    targets = torch.randint(0, 97, (n,))
    weights = torch.rand(n)  # per-position weights, as DPO's per-row sums give
    return head, hidden, targets, weights


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("trainable_head", [False, True])
def test_chunked_losses_and_gradients_equal_the_plain_cross_entropy(bias, trainable_head):
    head, hidden, targets, weights = _case(bias, trainable_head)
    expected = F.cross_entropy(head(hidden), targets, reduction="none")
    (expected * weights).sum().backward()
    expected_grads = [hidden.grad.clone()] + [p.grad.clone() for p in head.parameters() if p.requires_grad]
    hidden.grad = None
    head.zero_grad()

    losses = head_losses(head, hidden, targets)
    assert (losses.grad_fn is not None) and ("Chunked" in type(losses.grad_fn).__name__) != trainable_head
    (losses * weights).sum().backward()
    torch.testing.assert_close(losses, expected.detach(), rtol=1e-5, atol=1e-6)
    grads = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_without_gradients_only_the_losses_are_computed():
    head, hidden, targets, _ = _case(bias=False, trainable_head=False)
    with torch.no_grad():
        losses = head_losses(head, hidden, targets)
        expected = F.cross_entropy(head(hidden), targets, reduction="none")
    assert losses.grad_fn is None
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)

"""The token cross-entropy of the vocabulary projection, computed a chunk of positions at a time.

The plain way (`F.cross_entropy(lm_head(hidden), targets)`) makes a [positions, vocabulary] tensor of logits,
keeps its log-softmax for the backward pass and makes a third one for its gradient: on GSM8K answers with
SmolLM2's 49 k vocabulary that is 1,900 positions x 49,152 x 4 bytes = 373 MB each, over a gigabyte at the
peak of a step, and several memory-bound passes over it. Here the logits of a few dozen positions at a time are
made, turned into their losses and, where a gradient will be needed, straight into the gradient of the hidden
states (softmax minus one-hot, times the frozen head), then dropped. The backward pass only scales those
per-position gradients by the incoming ones: a loss at position i depends on hidden state i alone, so its
gradient is linear in the incoming gradient, whatever the objective does with the losses (sums them, or weighs
them per row as DPO does). The same products are computed once each: nothing is recomputed.

This needs a frozen head (LoRA, DoRA): a trainable one (full fine-tuning) would need the weight's gradient
weighted per position by the incoming gradient, which is only known in the backward pass; that case takes the
plain path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Positions per chunk on a CPU: 128 x 49,152 x 4 bytes = 25 MB of logits. The head's two products are nine tenths
# of this function's time, and on SmolLM2's head they ran 13% faster over 128 positions than over 64, while 256
# lost more to the passes over logits that no longer stay in the last-level cache (1,024 positions, 2-core Xeon
# with AVX-512: 601, 521 and 589 ms with the previous passes; 580, 497 and 527 ms with the ones below).
CHUNK = 128


class _ChunkedCrossEntropy(torch.autograd.Function):
    """losses[i] = cross_entropy(hidden[i] @ weight^T + bias, targets[i]); weight and bias frozen."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
    ) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        on = hidden.device.type
        # Under autocast the products run in its dtype, as the plain head's would (the weight cast once, not
        # per chunk); the softmax in float32. A GPU is bound by launches, not memory: larger chunks there.
        dtype = torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else hidden.dtype
        chunk = CHUNK if on == "cpu" else 8 * CHUNK
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        losses = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if want_grad else None
        for start in range(0, len(targets), chunk):
            h, t = hidden[start : start + chunk].to(dtype), targets[start : start + chunk]
            scores = F.linear(h, weight, bias).float()
            target = scores.gather(1, t[:, None])[:, 0]
            # log-sum-exp by hand, in place, so that exp runs once and its result is the softmax's numerator
            # (torch.logsumexp, then exp(scores - lse) for the gradient, passes twice more over the logits)
            top = scores.amax(dim=-1, keepdim=True)
            total = scores.sub_(top).exp_().sum(dim=-1, keepdim=True)
            losses[start : start + chunk] = (top + total.log())[:, 0] - target
            if grad is not None:
                probs = scores.div_(total)
                probs[torch.arange(len(t), device=t.device), t] -= 1
                grad[start : start + chunk] = probs.to(dtype) @ weight
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_losses[:, None].to(grad.dtype), None, None, None


def head_losses(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position of `hidden` ([positions, hidden]) against `targets`, in float32.

    Args:
        head: the model's output embedding (`get_output_embeddings()`).
        hidden: the decoder's last hidden states at the target positions.
        targets: the token each position should predict.
    """
    frozen = isinstance(head, nn.Linear) and not head.weight.requires_grad
    if not frozen or (head.bias is not None and head.bias.requires_grad):
        return F.cross_entropy(head(hidden).float(), targets, reduction="none")
    result: torch.Tensor = _ChunkedCrossEntropy.apply(hidden, head.weight, head.bias, targets)
    return result

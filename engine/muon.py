"""Muon: momentum whose update is orthogonalised before it is applied, for the 2-D weight matrices.

For a weight matrix W, plain SGD-momentum steps along the momentum M, whose few largest singular
directions dominate it. Muon steps along the orthogonal matrix closest to M instead (U V^T of M = U S V^T):
every direction of the update gets the same size, so the rarer directions learn as fast as the common
ones. The orthogonalisation runs a few Newton-Schulz iterations, only matmuls, so it is cheap next to a
forward and backward pass. Embeddings, norm gains and the output head are not hidden matrices in this
sense (a row per token, a vector) and stay with AdamW; `split_for_muon` makes that choice.

The iteration X <- a X + b (X X^T) X + c (X X^T)^2 X with (a, b, c) = (3.4445, -4.7750, 2.0315) is the
quintic from the modded-nanogpt speedrun: it pushes every singular value of a normalised matrix into
roughly [0.7, 1.2] in five steps, which is close enough to 1 for training and far cheaper than an SVD.
"""
import torch
import torch.nn as nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An approximately orthogonal matrix with the singular vectors of `matrix` (Newton-Schulz)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide side: X X^T is then the smaller square
        x = x.T
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalised, for 2-D parameters only.

    The step is scaled by sqrt(max(1, rows / cols)) so that tall and wide matrices move their outputs
    by a similar amount. Decoupled weight decay as in AdamW.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon updates 2-D matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)  # buffer = momentum * buffer + (1 - momentum) * grad
                nesterov = p.grad.lerp(buffer, momentum)  # look ahead along the momentum
                update = orthogonalize(nesterov, group["ns_steps"], self.ns_dtype)
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def split_for_muon(model: nn.Module, params: list) -> tuple[list, list]:
    """(matrices for Muon, the rest for AdamW) among `params`: Muon takes the 2-D weights of Linear
    layers inside the network, AdamW the embeddings, the output head (tied to the embedding or not),
    norm gains and biases."""
    head = getattr(model, "lm_head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - head_ids
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    chosen = {id(p) for p in params if p.ndim == 2 and id(p) in linear_ids and id(p) not in embedding_ids}
    return [p for p in params if id(p) in chosen], [p for p in params if id(p) not in chosen]

"""Direct Preference Optimization (Rafailov et al., 2023): the loss, and the log-probabilities it needs.

For a prompt with a chosen and a rejected response, let  log_ratio = log pi(y|x) - log pi_ref(y|x),
summed over the response tokens only. The sigmoid DPO loss is

    loss = -log sigmoid( beta * (log_ratio_chosen - log_ratio_rejected) )

and beta * log_ratio is the response's implicit "reward". The policy starts as a copy of the
reference, so both log-ratios are 0 and the loss is -log sigmoid(0) = ln 2 at step 0.

Why not trl's DPOTrainer for our own stage: it is a transformers Trainer with its own loop, optimizer,
checkpoints, resume and logging, which would duplicate (and drift from) the shared engine in
engine/trainer.py that every other stage uses. trl trains the native export (`export_model.py --format
native`, a plain LlamaForCausalLM) as it is, and tests/test_dpo_trl.py holds this loss, its rewards and
every gradient against trl's on the same pairs (to 1e-6). The loss itself is a few lines (trl's
`loss_type="sigmoid"`).
"""
import torch
import torch.nn.functional as F

from model.errors import MiniMindError
from model.model import lm_loss


def sequence_logps(model, x: torch.Tensor, y: torch.Tensor):
    """Sum of log p(y[i] | x[:i+1]) over the positions where y is not IGNORE, per row; and the MoE balance loss.

    Rows are right-padded, so no attention mask is needed: under causal attention a real token never
    sees the padding that follows it, and the plain causal path is the fastest one.
    """
    out = model(input_ids=x)
    # The language-model loss per position is -log p of the target, and exactly 0 where it is IGNORE.
    token_logps = -lm_loss(out.logits, y, reduction="none")
    return token_logps.sum(dim=-1), out.aux_loss


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Mean sigmoid DPO loss over the batch, and the per-pair rewards beta * log_ratio (chosen, rejected)."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses.mean(), chosen_rewards.detach(), rejected_rewards.detach()


class DPOLoss:
    """`loss_fn(model, batch) -> (loss, metrics)` for the training engine.

    `reference` is a frozen model (eval mode, no grad), or None when the policy is a peft LoRA model:
    then the reference is the same network with its adapters switched off, which is exactly the model
    the adapters started from and costs no second copy of the weights.
    Chosen and rejected rows go through the model in one batch (DPODataset.collate pads them alike).
    """

    def __init__(self, reference, beta: float = 0.1):
        if beta <= 0:
            raise MiniMindError(f"--beta must be positive, got {beta}")
        self.reference = reference
        self.beta = beta
        if reference is not None:
            reference.eval().requires_grad_(False)

    def reference_logps(self, model, x, y):
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.reference, x, y)[0]
            peft_model = getattr(model, "module", model)  # under DDP the peft model is wrapped once more
            with peft_model.disable_adapter():
                return sequence_logps(peft_model, x, y)[0]

    def __call__(self, model, batch: dict):
        x = torch.cat([batch["chosen_x"], batch["rejected_x"]])
        y = torch.cat([batch["chosen_y"], batch["rejected_y"]])
        n = batch["chosen_x"].shape[0]
        logps, aux_loss = sequence_logps(model, x, y)
        ref_logps = self.reference_logps(model, x, y)
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], self.beta)
        margins = chosen_rewards - rejected_rewards
        metrics = {
            "reward_chosen": chosen_rewards.mean(),
            "reward_rejected": rejected_rewards.mean(),
            "reward_margin": margins.mean(),
            "reward_acc": (margins > 0).float().mean(),
            # The policy's own preference, independent of the reference: it should rise on held-out pairs.
            "logp_margin": (logps[:n] - logps[n:]).detach().mean(),
        }
        if getattr(model, "module", model).config.use_moe:  # the logged loss includes the balance loss
            metrics["aux_loss"] = aux_loss.detach()
        return loss + aux_loss, metrics

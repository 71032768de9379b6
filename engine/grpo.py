"""GRPO (Shao et al., 2024, DeepSeekMath): reinforcement learning from rewards a program checks.

One step of 6-grpo.py, and the function here that does each part:

 1. Ask each of P word problems G times and let the model answer through the tool loop
    (tooluse/agent.run_with_tools): its calculator call is run and the result handed back in a tool turn.
 2. `reward`: 1 when the last number of the final answer is the problem's answer, +0.1 for a calculator call
    that computed, +0.1 when every turn ended with </s>, minus 0.1 x the share of repeated 4-character
    strings in the final answer. A program checks all of it, so the model cannot talk its way to a reward.
 3. `group_advantages`: each reply's reward minus the mean of the G replies to the same problem, divided
    by their spread. A reply is judged against its siblings only, so no value network is needed (PPO's
    critic): the group is the baseline. A group whose G replies scored the same teaches nothing (all 0).
 4. `grpo_loss`, per token the model sampled (rollout.learn; the tool's result and the turn headers the
    loop wrote are masked out: the model did not choose them):

        ratio     = pi(t) / pi_old(t)                      pi_old: the policy that sampled the batch
        surrogate = min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)        PPO's clipped objective
        k3        = pi_ref(t) / pi(t) - log(pi_ref(t) / pi(t)) - 1           >= 0, and 0 where pi = pi_ref
        kl        = ratio * k3
        loss      = -(surrogate - beta * kl), summed over the batch's learned tokens / their number

    With one update per batch (--ppo_epochs 1) pi_old is pi itself, so ratio is 1 and the surrogate's
    gradient is the plain policy gradient A * grad log pi(t); the clip matters from the second update on.
    The KL holds the policy near the frozen SFT model (pi_ref). k3 is Schulman's estimator of
    KL(pi || pi_ref) from samples of pi: unbiased, never negative. The ratio in front makes it one from
    samples of pi_old, and, more to the point, fixes its gradient: grad k3 alone is (1 - pi_ref/pi) grad
    log pi, whose mean is the gradient of the reverse KL(pi_ref || pi); grad (ratio * k3) at ratio 1 is
    log(pi/pi_ref) grad log pi, the gradient of KL(pi || pi_ref) itself (trl's use_bias_correction_kl,
    on by default).

The average is over every learned token of the batch, not over tokens within a reply and then over replies
(the original GRPO): per reply, a token of a short reply weighs more than a token of a long one, so long
wrong answers are punished less per token and replies drift longer (Dr. GRPO, DAPO). Every token weighs
the same here; this is trl's GRPOTrainer with loss_type="dapo" (its default), and tests/test_grpo.py holds
the loss and its gradients against trl's `_compute_loss` on the same rollouts.

`--loss cispo` (MiniMax-M1) replaces the surrogate by  stopgrad(min(ratio, cispo_max)) * A * log pi(t):
the importance weight is clipped but every token keeps its gradient (PPO's clip zeroes the gradient of a
token whose ratio left the band). It only differs from GRPO when ratio != 1, i.e. with --ppo_epochs > 1.
"""
import torch

from model.checkpoint import atomic_write
from model.model import IGNORE, SharedPrompts, lm_loss
from model.tokenizer import PAD_ID
from tooluse.problems import answer_is_right

# ----------------------------------------------------------------------------- rewards

RIGHT, CALLED, ENDED, REPEATED = 1.0, 0.1, 0.1, 0.1  # the weights of the reward's parts


def repetition(text: str, n: int = 4) -> float:
    """Share of the n-character strings of `text` that already occurred earlier in it: 0 for text that never
    repeats itself, close to 1 for a loop. Characters, not tokens, so every tokenizer scores alike."""
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def called_calculator(rollout) -> bool:
    """The model made a well-formed call of the offered tool and the tool computed it (not "错误：...")."""
    return any(m["role"] == "tool" and not m["content"].startswith("错误") for m in rollout.messages)


def reward_parts(rollout, problem) -> dict:
    """What the reward is made of, each also logged on its own: right, called, ended (0 or 1), repetition."""
    return {"right": float(answer_is_right(rollout.final, problem.answer)),
            "called": float(called_calculator(rollout)),
            "ended": float(rollout.ended),
            "repetition": repetition(rollout.final)}


def reward(rollout, problem) -> float:
    """1 for the right number; +0.1 for a working calculator call; +0.1 for ending; -0.1 x repetition.
    Right dominates: a right answer without the tool (1.1) beats a call that ends wrong (0.2). The small
    terms give a gradient before the first right answer, and pull against the loops a tiny model falls into."""
    p = reward_parts(rollout, problem)
    return RIGHT * p["right"] + CALLED * p["called"] + ENDED * p["ended"] - REPEATED * p["repetition"]


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards (P, G), G replies to each of P prompts -> advantages (P, G): reward minus the group's mean,
    divided by the group's standard deviation ("group", as GRPO and trl), by the whole batch's ("batch"), or
    by nothing ("none": Dr. GRPO, which argues that dividing by a small spread over-weights the prompts that
    are nearly always or nearly never solved). The deviation is the unbiased one, as trl's. A group whose
    rewards are all equal gets exactly 0 (computed, it would be ~1e-13 of float rounding)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group_size >= 2), got {tuple(rewards.shape)}")
    advantages = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + eps)
    elif scale != "none":
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    flat = rewards.amax(dim=1) == rewards.amin(dim=1)
    return advantages.masked_fill(flat[:, None], 0.0)


# ----------------------------------------------------------------------------- log-probabilities


def fits(rollout, context: int, budget: int) -> bool:
    """Whether the model sampled every token of the rollout seeing the whole conversation: the tool loop cuts
    a round's prompt to `budget` tokens (model/chat.prompt_budget) and generation slides its window past
    `context`. Scoring a cut rollout on the whole text would score tokens under a context the model never
    saw, so such rollouts count for their group's rewards but train nothing."""
    starts = [i for i, keep in enumerate(rollout.learn) if keep and (i == 0 or not rollout.learn[i - 1])]
    whole = len(rollout.prompt_ids) + len(rollout.ids)
    return whole <= context and (not starts or len(rollout.prompt_ids) + starts[-1] <= budget)


def group_batch(rollouts: list, group_size: int, pad_id: int = PAD_ID) -> dict:
    """Tensors for scoring whole groups of rollouts (rollouts[k*G:(k+1)*G] answer the same prompt):

    prefix, prefix_mask  (P, Lp) each group's prompt but its last token, left-padded (mask 0 on the padding)
    x                    (P*G, Lc) each rollout's prompt's last token, then its ids but the last, right-padded
    y                    (P*G, Lc) y[:, j] is ids[j] where the model sampled it, else IGNORE (the tool turns,
                         the headers the loop wrote, the padding): the position of x that predicts ids[j]
    mask                 (P*G, Lp + Lc) which keys are real, for the replies' pass over prompt and reply
    """
    groups = [rollouts[i:i + group_size] for i in range(0, len(rollouts), group_size)]
    if any(len(g) != group_size or any(r.prompt_ids != g[0].prompt_ids for r in g) for g in groups):
        raise ValueError(f"rollouts must come in groups of {group_size} that share their prompt")
    prompts = [g[0].prompt_ids[:-1] for g in groups]
    width_p, width_c = max(len(p) for p in prompts), max(len(r.ids) for r in rollouts)
    if width_p == 0:
        raise ValueError("every prompt is a single token: nothing to share")
    prefix = torch.full((len(groups), width_p), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros_like(prefix)
    for k, p in enumerate(prompts):
        prefix[k, width_p - len(p):] = torch.tensor(p, dtype=torch.long)
        prefix_mask[k, width_p - len(p):] = 1
    x = torch.full((len(rollouts), width_c), pad_id, dtype=torch.long)
    y = torch.full((len(rollouts), width_c), IGNORE, dtype=torch.long)
    reply_mask = torch.zeros_like(x)
    for b, r in enumerate(rollouts):
        n = len(r.ids)
        x[b, :n] = torch.tensor(r.prompt_ids[-1:] + r.ids[:-1], dtype=torch.long)
        y[b, :n] = torch.tensor([t if keep else IGNORE for t, keep in zip(r.ids, r.learn)], dtype=torch.long)
        reply_mask[b, :n] = 1
    mask = torch.cat([prefix_mask.repeat_interleave(group_size, dim=0), reply_mask], dim=1)
    return {"prefix": prefix, "prefix_mask": prefix_mask, "x": x, "y": y, "mask": mask}


def token_logps(model, batch: dict, group_size: int, temperature: float = 1.0):
    """log p(ids[j] | prompt, ids[:j]) of every rollout in a group_batch, at the sampling temperature, (P*G, Lc),
    0 where y is IGNORE; and the MoE balance loss. Two calls of the model: the prompts, once per group, into
    a SharedPrompts cache, then every reply after its prompt. The logits are divided by the temperature the
    replies were sampled at, so that pi is the distribution the tokens came from (as trl does)."""
    cache = SharedPrompts(group_size)
    first = model(input_ids=batch["prefix"], attention_mask=batch["prefix_mask"], cache=cache, logits_to_keep=1)
    out = model(input_ids=batch["x"], attention_mask=batch["mask"], cache=cache)
    logits = out.logits if temperature == 1.0 else out.logits / temperature
    return -lm_loss(logits, batch["y"], reduction="none"), first.aux_loss + out.aux_loss


# ----------------------------------------------------------------------------- the loss


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps: float = 0.2, beta: float = 0.04,
              n_tokens=None, kind: str = "grpo", cispo_max: float = 5.0):
    """The GRPO (or CISPO) loss of a batch of rows; (loss, stats).

    logp, old_logp, ref_logp  (B, T) per-token log-probs under the policy (with grad), the policy that
                              sampled the rows, and the frozen reference
    advantages                (B,) one per row (a reply's advantage goes to each of its tokens)
    mask                      (B, T) True where the model sampled the token
    n_tokens                  the divisor: the learned tokens of the whole batch (default: mask's), so that
                              micro-batches each divided by the batch's count add up to the batch's loss
    stats                     kl (mean ratio * k3 per token), clipped (share of tokens whose clip was active), both
                              divided by n_tokens like the loss, so micro-batches add up too
    """
    mask = mask.to(logp.dtype)
    n = mask.sum() if n_tokens is None else n_tokens
    a = advantages[:, None].to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    if kind == "grpo":
        surrogate = torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
        clipped = ((ratio < 1 - clip_eps) & (a < 0)) | ((ratio > 1 + clip_eps) & (a > 0))
    elif kind == "cispo":
        surrogate = ratio.clamp(max=cispo_max).detach() * a * logp
        clipped = (ratio > cispo_max) & (a > 0)
    else:
        raise ValueError(f"kind must be grpo or cispo, got {kind!r}")
    log_ref_ratio = ref_logp - logp
    kl = ratio * (torch.exp(log_ref_ratio) - log_ref_ratio - 1)  # k3, weighted: see the module's docstring
    per_token = -(surrogate - beta * kl)
    loss = (per_token * mask).sum() / n
    stats = {"kl": (kl.detach() * mask).sum() / n, "clipped": (clipped * mask).sum() / n}
    return loss, stats


# ----------------------------------------------------------------------------- the reward plot


def plot_rewards(history: dict, path, title: str) -> None:
    """Reward (mean, with one standard deviation shaded) and accuracy against step: the training replies',
    sampled, and the held-out problems', greedy. Written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history.get("reward"):
        steps, means, stds = zip(*history["reward"])
        ax.plot(steps, means, label="reward (training replies)", linewidth=1)
        ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        alpha=0.2)
    if history.get("accuracy"):
        ax.plot(*zip(*history["accuracy"]), label="right (training replies)", linewidth=1)
    if history.get("held_out"):
        ax.plot(*zip(*history["held_out"]), "o-", markersize=3, label="right (held-out problems, greedy)")
    ax.set(xlabel="step", ylabel="reward / share right", title=title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)

"""Stage 6, GRPO: reinforcement learning with rewards a program checks, on word problems with a calculator.

    python 6-grpo.py --preset tiny                                   # from out/full_sft_256x4.pth
    python 6-grpo.py --preset tiny --resume                          # continue an interrupted run exactly
    python 6-grpo.py --preset tiny --prompts_per_step 16 --group_size 8 --learning_rate 2e-5
    python 6-grpo.py --preset tiny --kinds two_step,three_step --temperature 0.7   # the multi-step problems only
    torchrun --nproc_per_node 4 6-grpo.py --preset small             # every process its own problems

Every step draws --prompts_per_step new word problems (tooluse/problems.py, the training families, of the
--kinds asked for, a new seed per step, so no problem comes twice), asks each one --group_size times with the
calculator offered, and samples the replies at --temperature through the tool loop (tooluse/agent.py): a call
is computed and its result handed back in a tool turn, and the model goes on. Each reply is scored (right
answer, a working call, ended, not repeating itself), scored against its group, and the policy takes one step
of the clipped objective with a KL pull towards the frozen starting model. engine/grpo.py explains each part; the loop
below runs them in order. Every --eval_interval steps problems in the held-out phrasings are asked greedily
(--eval_problems of them, the same ones every time) and their accuracy logged as val_accuracy.

Reads out/{--weight}_{tag}.pth (default full_sft; or --ckpt). Writes, under --out_dir:

    grpo_{tag}.pth  + .json      the weights (stage "grpo"); --weight grpo loads them everywhere
    grpo_{tag}_resume.pth        weights, optimizer, step, every RNG (the sampler's too): --resume is bit-exact
    grpo_{tag}_metrics.jsonl     per log line: reward, reward_std, accuracy, called, ended, repetition,
                                 reply_tokens, zero_spread, kl, clipped, ...; per held-out pass: val_*
    grpo_{tag}_loss.png, grpo_{tag}_reward.png        the loss and learning rate; reward and accuracy
    grpo_{tag}_args.json         every flag of the run: `--config` it to repeat the run
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import copy
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from engine.config_file import parse_with_config
from engine.grpo import (
    fits,
    group_advantages,
    group_batch,
    grpo_loss,
    plot_rewards,
    reward,
    reward_parts,
    token_logps,
)
from engine.runlog import MetricWindow, RunLog
from engine.runstate import (
    RunState,
    StopFlag,
    read_resume,
    restore,
    rng_state,
    set_rng_state,
    write_resume,
)
from engine.trainer import (
    RUN_SHAPING,
    TrainConfig,
    Trainer,
    add_train_args,
    build_optimizers,
    describe_optimizer,
    lr_at,
)
from model.chat import build_prompt, prompt_budget
from model.checkpoint import (
    check_vocabulary,
    previous_stage_weights,
    save_weights,
    weights_path,
)
from model.cli import load_with_flags
from model.errors import MiniMindError, run_main
from model.generate import context_length
from model.LMConfig import add_config_args, config_from_args, describe
from model.model import IGNORE
from model.runtime import dtype_name
from model.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer
from tooluse.agent import run_with_tools
from tooluse.calculator import CALCULATOR
from tooluse.problems import KINDS, check_kinds, generate

# TrainConfig fields that mean nothing here: a step is one batch of rollouts, not a pass over a dataset.
UNUSED = ("epochs", "accumulation_steps", "num_workers", "eval_batches", "compile")
# Flags that decide what an uninterrupted run computes: a resume that changes one is told it is no longer exact.
SHAPING = RUN_SHAPING + ("prompts_per_step", "kinds", "group_size", "max_new_tokens", "max_calls", "temperature",
                         "beta", "clip_eps", "loss", "cispo_max", "scale_rewards", "ppo_epochs", "weight", "ckpt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    group = parser.add_argument_group("GRPO")
    group.add_argument("--weight", default="full_sft", help="stage to start from: out_dir/{weight}_{tag}.pth "
                                                            "(default %(default)s)")
    group.add_argument("--ckpt", default=None, help="starting weights, any .pth with its .json (wins over --weight)")
    group.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    group.add_argument("--prompts_per_step", type=int, default=8, help="problems per step, per process (default 8)")
    group.add_argument("--kinds", default=",".join(KINDS),
                       help="kinds of problem to draw, comma-separated: multi-step only is two_step,three_step "
                            "(default all)")
    group.add_argument("--group_size", type=int, default=8, help="replies sampled per problem, G (default 8)")
    group.add_argument("--max_new_tokens", type=int, default=64, help="tokens per assistant turn (default 64)")
    group.add_argument("--max_calls", type=int, default=2, help="rounds of tool calls per reply (default 2)")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    group.add_argument("--beta", type=float, default=0.04, help="weight of the KL to the starting model (default 0.04)")
    group.add_argument("--clip_eps", type=float, default=0.2, help="PPO clip range of the ratio (default 0.2)")
    group.add_argument("--loss", choices=["grpo", "cispo"], default="grpo",
                       help="grpo: clipped ratio; cispo: clipped, stop-gradient importance weight (default grpo)")
    group.add_argument("--cispo_max", type=float, default=5.0, help="CISPO's clip of the weight (default 5.0)")
    group.add_argument("--scale_rewards", choices=["group", "batch", "none"], default="group",
                       help="divide advantages by the group's reward std, the batch's, or nothing (Dr. GRPO) "
                            "(default group)")
    group.add_argument("--ppo_epochs", type=int, default=1,
                       help="optimizer steps on each batch of rollouts; > 1 makes the clip matter (default 1)")
    group.add_argument("--eval_problems", type=int, default=64,
                       help="held-out problems asked greedily every --eval_interval steps; 0: none (default 64)")
    # 5e-5: tried on a tiny model SFT'd on calculator conversations (P 8, G 8, 12 steps), 1e-5 barely moved it
    # (KL 0.001 per token), 2e-4 reached KL 0.09 in 4 steps; 5e-5 moved the call rate with KL 0.01.
    add_train_args(parser, learning_rate=5e-5, batch_size=16, max_steps=200, weight_decay=0.0, log_interval=1,
                   eval_interval=25, save_interval=50)
    actions = parser._option_string_actions
    actions["--batch_size"].help = ("rollouts per forward/backward pass, in whole groups: a step's P x G go through "
                                    "in pieces (default 16)")
    actions["--max_steps"].help = "steps in the run; each samples P x G replies (default 200)"
    actions["--weight_decay"].help = "AdamW weight decay (default 0: the KL term holds the weights near the start)"
    for name in UNUSED:
        actions[f"--{name}"].help = argparse.SUPPRESS
    return parser


def parse_args(argv=None):
    args = parse_with_config(build_parser(), argv)
    for name in UNUSED:
        if getattr(args, name) != getattr(TrainConfig, name):
            raise MiniMindError(f"--{name} does not apply to GRPO: a step is one batch of --prompts_per_step x "
                                f"--group_size rollouts (run length: --max_steps)")
    if args.max_steps <= 0:
        raise MiniMindError("--max_steps must be positive: GRPO has no dataset whose epochs would set the length")
    if args.group_size < 2 or args.prompts_per_step < 1 or args.ppo_epochs < 1:
        raise MiniMindError("need --group_size >= 2 (a group's replies are its own baseline), --prompts_per_step "
                            ">= 1 and --ppo_epochs >= 1")
    kinds_to_draw(args.kinds)  # raises on an unknown kind
    if args.temperature <= 0 or args.beta < 0 or not 0 < args.clip_eps < 1 or args.max_new_tokens < 1:
        raise MiniMindError("need --temperature > 0 (sampling), --beta >= 0, 0 < --clip_eps < 1, --max_new_tokens >= 1")
    return args


def kinds_to_draw(text: str) -> tuple:
    """--kinds as a tuple of tooluse.problems.KINDS: "two_step,three_step" -> ("two_step", "three_step")."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    try:
        check_kinds(kinds)
    except ValueError as e:
        raise MiniMindError(f"--kinds {text!r}: {e}") from None
    return kinds


def settings(args) -> dict:
    """Every flag of the run, as `--config` reads them back (out/grpo_{tag}_args.json)."""
    return {k: v for k, v in vars(args).items() if k != "config"}


def problems_for_step(seed: int, step: int, per_process: int, world: int, rank: int, kinds=KINDS) -> list:
    """This process's problems at `step`: its share of the step's problems, drawn with a seed of their own, so
    the step's problems are the same whatever the number of processes and never those of another step."""
    problems = generate(per_process * world, seed=seed * 1_000_000 + step, split="train", kinds=kinds)
    return problems[rank * per_process:(rank + 1) * per_process]


def gather_rng(trainer: Trainer, sampler: torch.Generator) -> list:
    """Every process's RNG states, the sampler's included, for the resume file (a collective under DDP)."""
    state = {**rng_state(trainer.device), "sampler": sampler.get_state()}
    if not trainer.ddp:
        return [state]
    states = [None] * trainer.world_size
    dist.all_gather_object(states, state)
    return states


def should_stop(trainer: Trainer, step: int, stop_flag: StopFlag) -> bool:
    """--stop_step reached or a signal arrived; under DDP every process must agree, or one would wait forever."""
    stop = (trainer.config.stop_step and step >= trainer.config.stop_step) or stop_flag.signum is not None
    if trainer.ddp:
        flag = torch.tensor([float(stop)], device=trainer.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = flag.item() > 0
    return bool(stop)


def all_sum(values: list, trainer: Trainer) -> list:
    """Sums over the processes of a few numbers."""
    packed = torch.tensor(values, dtype=torch.float64, device=trainer.device)
    if trainer.ddp:
        dist.all_reduce(packed)
    return packed.tolist()


def average_gradients(params: list, world: int) -> None:
    """Replace every gradient by its mean over the processes, in one all-reduce. What DDP does, written out:
    a step scores its replies in two calls of the model (model/model.SharedPrompts), where DDP expects one
    forward call per backward; and at this size one flat all-reduce per update costs nothing."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p).clone()


def load_resume(saved: dict, path: Path, raw, optimizers, scaler, args, trainer: Trainer) -> tuple:
    """The run's position from its resume file: weights, optimizers and scaler loaded; (RunState, this
    process's RNG states or None when the number of processes changed)."""
    before, now = saved.get("args", {}), settings(args)
    changed = [f"{k} {before[k]} -> {now[k]}" for k in SHAPING if k in before and before[k] != now[k]]
    if saved["world_size"] != trainer.world_size:
        changed.append(f"processes {saved['world_size']} -> {trainer.world_size}")
    if changed:
        trainer.print(f"warning: resuming {path} with different settings ({'; '.join(changed)}): it continues, "
                      f"but will not match an uninterrupted run")
    state = restore(path, saved, raw, optimizers, scaler)
    trainer.print(f"resumed from {path} at step {state.step}")
    return state, saved["rng"][trainer.rank] if saved["world_size"] == trainer.world_size else None


@dataclass
class Run:
    """What the loop works with: the flags, the engine, the policy and its frozen reference, the optimizers,
    the sampler, where the run stands and where it writes."""
    args: argparse.Namespace
    cfg: TrainConfig
    trainer: Trainer
    raw: torch.nn.Module
    reference: torch.nn.Module
    tokenizer: object
    context: int  # the model's context, in tokens
    budget: int  # what of it a prompt may take
    optimizers: list
    trainable: list  # every parameter the optimizers step
    scaler: torch.amp.GradScaler
    sampler: torch.Generator  # draws the sampled replies, saved with the run
    state: RunState
    held_out: list  # this process's share of the held-out problems
    run_log: RunLog
    name: str  # grpo_{tag}
    target: Path  # the weights: out_dir/grpo_{tag}.pth
    resume_file: Path


def load_policy(args, trainer: Trainer, out_dir: Path) -> tuple:
    """The policy from the starting weights, its frozen reference and the tokenizer; warns when a problem's
    prompt leaves the replies too little of the context."""
    init_path = previous_stage_weights(args.ckpt, out_dir, args.weight, config_from_args(args), args.preset)
    raw = load_with_flags(init_path, args, say=trainer.print, device=trainer.device).float()
    # Dropout off throughout: the ratio pi / pi_old must compare one function at two sets of weights.
    raw.eval()
    reference = copy.deepcopy(raw).requires_grad_(False)
    trainer.print(f"policy from {init_path}: {describe(raw)}; reference: a frozen copy")
    tokenizer = load_tokenizer(args.tokenizer)
    check_vocabulary(tokenizer, raw.config.vocab_size, args.tokenizer)
    context = context_length(raw.config)
    asked = build_prompt(tokenizer, [{"role": "user", "content": generate(1, 0, "train")[0].question}], 10 ** 9,
                         tools=[CALCULATOR])[0]
    if len(asked) + (args.max_calls + 1) * (args.max_new_tokens + 1) + args.max_calls * 16 > context:
        trainer.print(f"warning: a problem's prompt (the system turn offering the calculator, then the question) "
                      f"takes {len(asked)} of the model's {context}-token context, too little for {args.max_calls} "
                      f"call(s) and {args.max_calls + 1} turns of up to {args.max_new_tokens} tokens; replies that do "
                      f"not fit are cut and not trained on (logged as `cut`): raise --max_seq_len (it applies on load) "
                      f"or lower --max_new_tokens / --max_calls")
    return raw, reference, tokenizer


def setup(args) -> Run:
    """The engine, the policy, the optimizers and sampler, and where the run stands (from --resume)."""
    cfg = TrainConfig.from_args(args)
    trainer = Trainer(cfg)  # joins torchrun's process group, picks device and precision, seeds every RNG
    device, world, rank = trainer.device, trainer.world_size, trainer.rank
    out_dir = Path(cfg.out_dir)
    raw, reference, tokenizer = load_policy(args, trainer, out_dir)
    name = f"grpo_{raw.config.tag()}"
    resume_file = out_dir / f"{name}_resume.pth"
    saved = read_resume(resume_file) if cfg.resume and resume_file.exists() else None
    if cfg.resume and saved is None:
        trainer.print(f"--resume: no checkpoint at {resume_file} yet, starting from step 0")
    if saved and saved.get("dtype") and saved["dtype"] != dtype_name(trainer.dtype) and cfg.dtype == "auto":
        trainer.dtype = getattr(torch, saved["dtype"])  # a resumed run computes as the run it continues
        trainer.print(f"resuming in {saved['dtype']}, the precision {resume_file.name} was trained in")

    optimizers = build_optimizers(raw, cfg, device, trainer.dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.dtype == torch.float16)
    # The replies are sampled from a generator of their own, saved with the run, so a resumed run samples
    # exactly the replies the uninterrupted one would have.
    sampler = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    state, rng = RunState(), None
    if saved is not None:
        state, rng = load_resume(saved, resume_file, raw, optimizers, scaler, args, trainer)
    for key in ("reward", "accuracy", "held_out"):
        state.history.setdefault(key, [])
    trainer.print(f"{trainer.describe()}; " + "; ".join(describe_optimizer(opt) for opt in optimizers))
    trainer.print(f"{name}: {cfg.max_steps} steps of {args.prompts_per_step * world} problems x {args.group_size} "
                  f"replies, {args.max_new_tokens} tokens per turn, up to {args.max_calls} calls; loss {args.loss}, "
                  f"beta {args.beta}, lr {cfg.learning_rate}")
    held_out = generate(args.eval_problems, seed=0, split="held_out")[rank::world] if args.eval_problems else []
    run_log = RunLog(out_dir, name, cfg.max_steps, state.step, trainer.is_main, cfg.report_to, settings(args), 0.0,
                     world)
    if rng is not None:  # restored last, so that nothing above draws from it
        set_rng_state(rng, device)
        sampler.set_state(rng["sampler"])
    elif saved is not None:  # another number of processes: the same problems, other samples
        sampler.manual_seed(cfg.seed + rank + 1_000 * state.step)
    context = context_length(raw.config)
    return Run(args=args, cfg=cfg, trainer=trainer, raw=raw, reference=reference, tokenizer=tokenizer,
               context=context, budget=prompt_budget(context, args.max_new_tokens), optimizers=optimizers,
               trainable=[p for opt in optimizers for g in opt.param_groups for p in g["params"]], scaler=scaler,
               sampler=sampler, state=state, held_out=held_out, run_log=run_log, name=name,
               target=weights_path(out_dir, "grpo", raw.config), resume_file=resume_file)


def set_learning_rate(run: Run) -> float:
    """The schedule's learning rate at this step, set on every parameter group (each at its share of the peak)."""
    cfg = run.cfg
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, cfg.max_steps // 50)
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
    lr = lr_at(run.state.step, cfg.max_steps, warmup, cfg.learning_rate, min_lr, cfg.schedule, cfg.decay_fraction)
    for opt in run.optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * lr / cfg.learning_rate
    return lr


def sample_replies(run: Run, problems: list) -> list:
    """1. rollouts: G replies to each of P new problems, sampled by the policy as it is now
    (rollouts[k*G:(k+1)*G] answer problem k)."""
    args = run.args
    asked = [[{"role": "user", "content": p.question}] for p in problems for _ in range(args.group_size)]
    with run.trainer.autocast:
        return run_with_tools(run.raw, run.tokenizer, asked, [CALCULATOR], args.max_new_tokens, args.max_calls,
                              temperature=args.temperature, generator=run.sampler)


def score_replies(run: Run, problems: list, rollouts: list) -> tuple:
    """2. rewards, and each reply's advantage over its group. Replies cut short by the context are rewarded but
    not trained on. Returns (the advantages, the replies' metrics, the tokens the model wrote)."""
    G = run.args.group_size
    owner = [problems[i // G] for i in range(len(rollouts))]
    rewards = torch.tensor([reward(r, p) for r, p in zip(rollouts, owner)], dtype=torch.float32).view(len(problems), G)
    parts = [reward_parts(r, p) for r, p in zip(rollouts, owner)]
    advantages = group_advantages(rewards, run.args.scale_rewards).flatten()
    sampled = [sum(r.learn) for r in rollouts]  # the tokens the model wrote, per reply
    cut = [not fits(r, run.context, run.budget) for r in rollouts]
    for r, c in zip(rollouts, cut):
        if c:  # sampled under a cut context: rewarded, but not trained on
            r.learn = [False] * len(r.learn)
    metrics = {
        "reward": rewards.mean(), "reward_std": rewards.std(),
        "accuracy": sum(p["right"] for p in parts) / len(parts),
        "called": sum(p["called"] for p in parts) / len(parts),
        "ended": sum(p["ended"] for p in parts) / len(parts),
        "repetition": sum(p["repetition"] for p in parts) / len(parts),
        "reply_tokens": sum(sampled) / len(sampled),
        "zero_spread": (rewards.amax(dim=1) == rewards.amin(dim=1)).float().mean(),
        "cut": sum(cut) / len(cut),
    }
    return advantages, metrics, sum(sampled)


def update(run: Run, rollouts: list, advantages: torch.Tensor, window: MetricWindow) -> tuple:
    """3. the loss over every sampled token, in pieces of whole groups (--batch_size rollouts, rounded down to
    groups), each piece divided by the learned tokens of the whole step, all processes'; --ppo_epochs updates.
    Returns the loss, the KL to the reference and the share clipped, each a mean over the updates."""
    args, cfg, trainer, scaler, G = run.args, run.cfg, run.trainer, run.scaler, run.args.group_size
    per_piece = max(1, cfg.batch_size // G) * G
    batches = [{k: v.to(trainer.device) for k, v in group_batch(rollouts[i:i + per_piece], G).items()}
               for i in range(0, len(rollouts), per_piece)]
    piece_advantages = [advantages[i:i + per_piece].to(trainer.device) for i in range(0, len(rollouts), per_piece)]
    divisor = max(1.0, all_sum([sum(int((b["y"] != IGNORE).sum()) for b in batches)], trainer)[0]) / trainer.world_size
    with torch.no_grad(), trainer.autocast:
        ref_logps = [token_logps(run.reference, b, G, args.temperature)[0] for b in batches]
        old_logps = [token_logps(run.raw, b, G, args.temperature)[0] for b in batches] \
            if args.ppo_epochs > 1 else None  # with one update, pi_old is pi itself (no second pass)
    loss_sum = kl_sum = clipped_sum = 0.0
    for _ in range(args.ppo_epochs):
        for k, (b, a) in enumerate(zip(batches, piece_advantages)):
            with trainer.autocast:
                logps, aux_loss = token_logps(run.raw, b, G, args.temperature)
                old = old_logps[k] if old_logps is not None else logps.detach()
                loss, stats = grpo_loss(logps, old, ref_logps[k], a, b["y"] != IGNORE, args.clip_eps,
                                        args.beta, divisor, args.loss, args.cispo_max)
            scaler.scale(loss + aux_loss / len(batches)).backward()
            loss_sum += loss.detach() / args.ppo_epochs
            kl_sum += stats["kl"] / args.ppo_epochs
            clipped_sum += stats["clipped"] / args.ppo_epochs
        if trainer.ddp:  # the mean of the processes' gradients, as DDP would take it, once per update
            average_gradients(run.trainable, trainer.world_size)
        if cfg.grad_clip > 0:
            for opt in run.optimizers:
                scaler.unscale_(opt)
            window.add_norm(torch.nn.utils.clip_grad_norm_(run.trainable, cfg.grad_clip))
        for opt in run.optimizers:
            scaler.step(opt)
        scaler.update()
        for opt in run.optimizers:
            opt.zero_grad(set_to_none=True)
    return loss_sum, kl_sum, clipped_sum


def log_step(run: Run, window: MetricWindow, lr: float) -> None:
    """One log line: the window's means over the steps since the last, over every process, into the history."""
    device, state = run.trainer.device, run.state
    values = window.reduce(device if device.type == "cuda" else torch.device("cpu"), run.trainer.world_size)
    if not math.isfinite(values["loss"]):
        raise MiniMindError(f"loss is {values['loss']} at step {state.step}: lower --learning_rate or "
                            f"use --dtype float32; the last checkpoint is {run.resume_file}")
    state.history["train"].append((state.step, values["loss"]))
    state.history["lr"].append((state.step, lr))
    state.history["reward"].append((state.step, values["reward"], values["reward_std"]))
    state.history["accuracy"].append((state.step, values["accuracy"]))
    run.run_log.train(state.step, 0, values, lr)


def evaluate(run: Run) -> dict:
    """Greedy answers to the held-out problems (this process's share), through the same tool loop: the shares
    right, with a working call, ended, and the mean reward, over every process's problems; logged and kept."""
    args, trainer, problems, rollouts = run.args, run.trainer, run.held_out, []
    for start in range(0, len(problems), 64):
        with trainer.autocast:
            rollouts += run_with_tools(run.raw, run.tokenizer, [[{"role": "user", "content": p.question}]
                                                                for p in problems[start:start + 64]],
                                       [CALCULATOR], args.max_new_tokens, args.max_calls)
    parts = [reward_parts(r, p) for r, p in zip(rollouts, problems)]
    n, right, called, ended, total = all_sum([len(parts), sum(p["right"] for p in parts),
                                              sum(p["called"] for p in parts), sum(p["ended"] for p in parts),
                                              sum(reward(r, p) for r, p in zip(rollouts, problems))], trainer)
    metrics = {"accuracy": right / n, "called": called / n, "ended": ended / n, "reward": total / n}
    run.state.history["held_out"].append((run.state.step, metrics["accuracy"]))
    run.run_log.validation(run.state.step, metrics)
    return metrics


def save(run: Run, final: bool) -> None:
    """The weights, the resume file and the plots (written by the main process; every process takes part)."""
    trainer, state = run.trainer, run.state
    rngs = gather_rng(trainer, run.sampler)  # a collective: every process takes part
    if trainer.is_main:
        save_weights(run.raw, run.target, stage="grpo")
        write_resume(run.resume_file, state, run.raw, run.optimizers, run.scaler, rngs,
                     {"world_size": trainer.world_size, "args": settings(run.args), "dtype": dtype_name(trainer.dtype)})
        run.run_log.plot(state.history)
        plot_rewards(state.history, run.target.parent / f"{run.name}_reward.png", run.name)
        run.run_log.write(f"saved {run.target} and {run.resume_file.name} at step {state.step}"
                          + (" (final)" if final else ""))
    if trainer.ddp:
        dist.barrier()


def main(argv=None):
    run = setup(parse_args(argv))
    args, cfg, trainer, state = run.args, run.cfg, run.trainer, run.state
    val_metrics, stopped, window = None, False, MetricWindow()
    with StopFlag() as stop_flag, run.run_log:
        if args.eval_problems and state.step == 0:  # the starting model's accuracy, the baseline of every later pass
            val_metrics = evaluate(run)
        kinds = kinds_to_draw(args.kinds)
        while state.step < cfg.max_steps and not stopped:
            lr = set_learning_rate(run)
            started = time.perf_counter()
            problems = problems_for_step(cfg.seed, state.step, args.prompts_per_step, trainer.world_size, trainer.rank,
                                         kinds)
            rollouts = sample_replies(run, problems)
            rollout_s = time.perf_counter() - started
            advantages, metrics, written = score_replies(run, problems, rollouts)
            loss, kl, clipped = update(run, rollouts, advantages, window)
            metrics.update(kl=kl, clipped=clipped, rollout_s=rollout_s, step_s=time.perf_counter() - started)
            window.add(loss, metrics, [(1, written)])  # tokens/s: replies' tokens per second
            state.step += 1
            run.run_log.step_done()
            last = state.step == cfg.max_steps

            if (cfg.log_interval and state.step % cfg.log_interval == 0) or last:
                log_step(run, window, lr)
            if args.eval_problems and ((cfg.eval_interval and state.step % cfg.eval_interval == 0) or last):
                val_metrics = evaluate(run)
            stopped = should_stop(trainer, state.step, stop_flag) and not last
            if (cfg.save_interval and state.step % cfg.save_interval == 0) or last or stopped:
                save(run, final=last)
        if stopped and not (cfg.stop_step and state.step >= cfg.stop_step):
            signum = stop_flag.signum or signal.SIGTERM  # interrupted: exit non-zero, the stage is not finished
            run.run_log.write(f"interrupted ({signal.Signals(signum).name}) after step {state.step}; continue with "
                              f"--resume")
            raise SystemExit(128 + signum)
        if stopped:
            run.run_log.write(f"stopped after step {state.step} (--stop_step); continue with --resume")
    if not stopped:
        summary = f"; held-out problems, greedy: {val_metrics['accuracy']:.3f} right" if val_metrics else ""
        trainer.print(f"done: {run.target}{summary}")
    trainer.close()


if __name__ == "__main__":
    run_main(main)

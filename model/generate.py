"""Text generation with the KV cache: batched token generation, and a streaming text iterator.

    new_ids = generate(model, [prompt_ids], max_new_tokens=64)             # greedy, one list per prompt
    tokens, mask = left_pad([ids_a, ids_b])                              # a batch of prompts, right-aligned
    stream = stream_generate(model, tokenizer, prompt_ids, temperature=0.7, stop=["\\n\\n"])
    for delta in stream: print(delta, end="")                            # whole characters only
    stream.finish_reason, stream.completion_tokens                       # "stop" | "length", int

Each step feeds only the newest token through the model; the cache holds the rest. Past the
model's context (max_seq_len, times rope_factor when RoPE scaling is configured) generation keeps
going by sliding the window: it keeps the most recent half of the context and re-reads it.
"""
from typing import Iterator, Sequence

import torch

from .model import KVCache
from .tokenizer import EOS_ID, PAD_ID

# How the chat (2-eval.py) and the server sample unless told otherwise; the SFT stage measures with it too.
CHAT_TEMPERATURE, CHAT_TOP_P = 0.85, 0.85


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = PAD_ID, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask) of prompts of different lengths in one batch: each row padded on the left with
    `pad_id`, mask 1 on the prompt's own tokens and 0 on the padding. Every row then ends at the same
    position, the one whose logits predict each prompt's next token."""
    width = max((len(p) for p in prompts), default=0)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(tokens)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return tokens, mask


def context_length(config) -> int:
    if config.rope_scaling_type:
        return int(config.max_seq_len * config.rope_factor)
    return config.max_seq_len


def sample_next(logits, seen, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, generator=None,
                counts=None, presence_penalty=0.0, frequency_penalty=0.0):
    """Pick the next token for each row of logits (B, V). `seen` (B, V) marks tokens already in the row.
    `counts` (B, V), needed only for the presence and frequency penalties, says how often each token was
    generated so far: OpenAI's penalties subtract presence_penalty once from every generated token's logit
    and frequency_penalty once per time it was generated."""
    logits = logits.float()
    if repetition_penalty != 1.0:
        # Make seen tokens less likely whatever their sign: shrink positive logits, grow negative ones.
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if counts is not None and (presence_penalty or frequency_penalty):
        logits = logits - presence_penalty * (counts > 0).float() - frequency_penalty * counts
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_steps(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature=0.0, top_k=0,
                   top_p=1.0, repetition_penalty=1.0, eos_token_id=EOS_ID, generator=None,
                   presence_penalty=0.0, frequency_penalty=0.0, allowed=None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, step by step, until every row has emitted EOS or
    max_new_tokens steps have run. Prompts of different lengths are left-padded and masked.
    The presence and frequency penalties (OpenAI's) count generated tokens only, not the prompt's.
    `allowed`, for constrained decoding, is called before each step with every row's new tokens so far
    (a list of lists) and returns a (B, V) bool tensor of the tokens each row may take next, or None
    when no row is constrained; a row must allow at least one token."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    if width == 0:
        raise ValueError("generate needs a non-empty prompt")
    tokens, mask = left_pad(prompts, PAD_ID, device)
    seen = torch.zeros(len(prompts), model.config.vocab_size, dtype=torch.bool, device=device)
    seen.scatter_(1, tokens, mask.bool())
    counts = None
    if presence_penalty or frequency_penalty:
        counts = torch.zeros(len(prompts), model.config.vocab_size, dtype=torch.float32, device=device)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    window = context_length(model.config)
    # Without padding the mask says nothing causal attention does not; leaving it out spares the model
    # a mask check and position computation at every step.
    padded = not bool(mask.all())

    cache, pending = KVCache(capacity=min(window, width + max_new_tokens)), tokens
    new_tokens = [[] for _ in prompts]  # what `allowed` reads
    for _ in range(max_new_tokens):
        if cache.get_seq_length() + pending.shape[1] > window:
            # Slide: keep the latest half of the context and re-read it into a fresh cache.
            keep = window // 2
            tokens, mask = tokens[:, -keep:], mask[:, -keep:]
            cache, pending = KVCache(capacity=window), tokens
        logits = model(pending, attention_mask=mask if padded else None, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        if allowed is not None and (keep := allowed(new_tokens)) is not None:
            logits = logits.float().masked_fill(~keep.to(logits.device), float("-inf"))
        next_token = sample_next(logits, seen, temperature, top_k, top_p, repetition_penalty, generator,
                                 counts, presence_penalty, frequency_penalty)
        next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
        yield next_token
        finished |= next_token == eos_token_id
        if bool(finished.all()):
            return
        if allowed is not None:
            for row, token in enumerate(next_token.tolist()):
                new_tokens[row].append(token)
        if repetition_penalty != 1.0:
            seen.scatter_(1, next_token[:, None], True)
        if counts is not None:
            counts.scatter_add_(1, next_token[:, None], torch.ones_like(counts[:, :1]))
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pending = next_token[:, None]


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature=0.0, top_k=0, top_p=1.0,
             repetition_penalty=1.0, eos_token_id=EOS_ID, generator=None, allowed=None) -> list[list[int]]:
    """The new tokens of each prompt (EOS and anything after it excluded); `allowed` as generate_steps takes it."""
    outputs = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in generate_steps(model, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                               eos_token_id, generator, allowed=allowed):
        for row, token in enumerate(step.tolist()):
            if not done[row]:
                if token == eos_token_id:
                    done[row] = True
                else:
                    outputs[row].append(token)
    return outputs


class TextStream:
    """Iterate to get text deltas. Deltas never split a character (a byte-level token may hold half
    of one) and never show the beginning of a stop string that later completes."""

    def __init__(self, model, tokenizer, prompt_ids, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0,
                 repetition_penalty=1.0, stop=(), generator=None, presence_penalty=0.0, frequency_penalty=0.0,
                 allowed=None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.prompt_tokens = len(prompt_ids)
        self.new_token_ids: list[int] = []
        self.text = ""
        self.finish_reason = None
        self._steps = generate_steps(model, [prompt_ids], max_new_tokens, temperature, top_k, top_p,
                                     repetition_penalty, tokenizer.eos_token_id, generator,
                                     presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                                     allowed=allowed)
        self._closed = False

    @property
    def completion_tokens(self) -> int:
        return len(self.new_token_ids)

    def close(self) -> None:
        """Stop generating (e.g. the client went away)."""
        self._closed = True
        self._steps.close()

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of text that could still grow into a stop string."""
        for size in range(min(len(text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(text[-size:]) for s in self.stop):
                return size
        return 0

    def __iter__(self) -> Iterator[str]:
        emitted = 0
        self.finish_reason = "length"
        for step in self._steps:
            token = int(step[0])
            if token == self.tokenizer.eos_token_id:
                self.finish_reason = "stop"
                self._steps.close()  # release the generator now, not at interpreter exit
                break
            self.new_token_ids.append(token)
            text = self.tokenizer.decode(self.new_token_ids)
            if text.endswith("\ufffd"):  # the last token ends inside a multi-byte character
                continue
            hits = [text.find(s) for s in self.stop if s in text]
            if hits:
                self.text = text[:min(hits)]
                self.finish_reason = "stop"
                if len(self.text) > emitted:
                    yield self.text[emitted:]
                self._steps.close()
                return
            self.text = text
            ready = len(text) - self._held_back(text)
            if ready > emitted:
                yield text[emitted:ready]
                emitted = ready
        if self._closed:
            return
        self.text = self.tokenizer.decode(self.new_token_ids).rstrip("\ufffd")
        if len(self.text) > emitted:
            yield self.text[emitted:]


def stream_generate(model, tokenizer, prompt_ids, **kwargs) -> TextStream:
    return TextStream(model, tokenizer, prompt_ids, **kwargs)

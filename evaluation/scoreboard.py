"""One scoreboard for any checkpoint: how well it predicts held-out answers, and how it answers questions.

    board = score(model, tokenizer, val_path, questions, raw_text=False)
    board["bits_per_char"], board["held_out"]["on_topic"], board["demo"]["ended"], ...

- bits per character: the summed loss (nats) of the assistant tokens of the held-out conversations, each
  reply's </s> included, divided by the characters of those replies and by ln 2. A character count does not
  depend on the tokenizer, so recipes with different vocabularies compare on it.
- on topic: the share of sampled answers whose first sentence holds a topic word of the question and is not
  an echo of it (evaluation/ontopic.py). Sampling uses the chat's temperature and top-p with a fixed seed.
- ended: the share of answers that emit </s> within the token budget (the model stops by itself).
- data: the held-out conversations' own first replies, judged by the same rule. A model that answered exactly
  like its data would score this, so it is the rule's ceiling on these questions, not 100%.
- distinct-2: distinct character bigrams over all bigrams, per answer, averaged (1.0: no bigram repeats);
  looped: the share of answers in which some 8-character string occurs three times or more.

A pretrained model that never saw the chat template is scored the same way, given the bare question to
continue (raw_text=True), so the two stages of one run can be compared on the same questions.
"""
import math
from pathlib import Path

import torch

from data.datasets import (
    ChatEncoder,
    MiniMindError,
    SFTDataset,
    Skips,
    check_messages,
    read_jsonl,
    shift_and_truncate,
)
from evaluation.ontopic import judge
from model.chat import build_prompt, continuation_prompt, prompt_budget
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, context_length, generate
from model.model import IGNORE, lm_loss

LOOP_CHARS, LOOP_REPEATS = 8, 3


def read_conversations(path, limit: int = 0, show_skips: int = 0) -> tuple[list[list[dict]], Skips]:
    """Conversations (message lists) with a non-empty user message, of a chat jsonl, at most `limit`
    (0: all), and the skips (the first `show_skips` of each reason printed)."""
    path = Path(path)
    conversations, skips = [], Skips(show=show_skips)
    for number, row in read_jsonl(path, skips):
        messages = row.get("conversations") if isinstance(row, dict) else None
        reason, detail = check_messages(messages, "conversations")
        if not reason and not any(m["role"] == "user" and m["content"].strip() for m in messages):
            reason = "no user message with text"
        if reason:
            skips.add(f"{path}:{number}", reason, detail)
            continue
        conversations.append(messages)
        if limit and len(conversations) == limit:
            break
    return conversations, skips


def first_question(messages: list[dict]) -> str:
    return next(m["content"].strip() for m in messages if m["role"] == "user" and m["content"].strip())


def first_reply(messages: list[dict]) -> str:
    """The assistant's reply to the first question ("" when the conversation has none)."""
    asked = False
    for m in messages:
        if m["role"] == "user" and m["content"].strip():
            asked = True
        elif asked and m["role"] == "assistant":
            return m["content"].strip()
    return ""


def judge_data(conversations: list[list[dict]]) -> dict:
    """The conversations' own first replies judged like a model's answers: on topic and echo shares."""
    verdicts = [judge(first_question(m), first_reply(m))[0] for m in conversations]
    n = len(verdicts)
    return {"questions": n, "on_topic": verdicts.count("on topic") / n, "on_topic_count": verdicts.count("on topic"),
            "echo": verdicts.count("echo") / n}


@torch.no_grad()
def bits_per_char(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> dict:
    """Held-out answer loss in bits per character of answer text. Conversations longer than the model's
    context are left out (and counted), never cut, so every scored reply is scored whole."""
    encoder = ChatEncoder(tokenizer)
    window = model.config.max_seq_len
    rows, chars, left_out = [], 0, 0
    for messages in conversations:
        ids, mask = encoder.encode(messages, lambda i, m: m["role"] == "assistant")
        if len(ids) > window + 1 or not any(mask):
            left_out += 1
            continue
        rows.append((ids, mask))
        chars += sum(len(m["content"]) for m in messages if m["role"] == "assistant")
    if not rows:
        raise MiniMindError(f"no held-out conversation fits the model's context of {window} tokens")
    device = next(model.parameters()).device
    nats, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        x, y = SFTDataset.collate([shift_and_truncate(ids, mask, window) for ids, mask in rows[start:start + batch_size]])
        y = y.to(device)
        nats += lm_loss(model(input_ids=x.to(device)).logits, y, reduction="sum").item()
        tokens += int((y != IGNORE).sum())
    return {"bits_per_char": nats / chars / math.log(2), "nats_per_token": nats / tokens,
            "answer_chars": chars, "answer_tokens": tokens, "conversations": len(rows), "left_out": left_out}


def prompt_ids(tokenizer, question: str, raw_text: bool, budget: int) -> list[int]:
    """The prompt a chat model gets (the question in the chat template, then `<s>assistant\n`), or for a
    pretrained model the bare question to continue; at most `budget` tokens (model/chat.py)."""
    if raw_text:
        return continuation_prompt(tokenizer, question, budget)
    return build_prompt(tokenizer, [{"role": "user", "content": question}], budget, cut=True)[0]


@torch.no_grad()
def answer_all(model, tokenizer, questions: list[str], prompts: list[list[int]], max_new_tokens: int = 100,
               generator=None, batch_size: int = 16, **sampling) -> list[dict]:
    """Every question's answer to its prompt: {"question", "answer", "tokens", "ended"}, a batch at a time.
    `sampling`: generate()'s temperature, top_k, top_p, repetition_penalty."""
    results = []
    for start in range(0, len(questions), batch_size):
        outputs = generate(model, prompts[start:start + batch_size], max_new_tokens, generator=generator, **sampling)
        for question, ids in zip(questions[start:start + batch_size], outputs):
            results.append({"question": question, "answer": tokenizer.decode(ids).rstrip("\ufffd"),
                            "tokens": len(ids), "ended": len(ids) < max_new_tokens})
    return results


def distinct_2(text: str) -> float:
    """Distinct character bigrams / all character bigrams of `text` (1.0 for text shorter than 2)."""
    pairs = [text[i:i + 2] for i in range(len(text) - 1)]
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def looped(text: str) -> bool:
    """Some LOOP_CHARS-character string occurs LOOP_REPEATS times or more: the answer repeats itself."""
    counts = {}
    for i in range(len(text) - LOOP_CHARS + 1):
        piece = text[i:i + LOOP_CHARS]
        counts[piece] = counts.get(piece, 0) + 1
        if counts[piece] >= LOOP_REPEATS:
            return True
    return False


def summarize(answers: list[dict]) -> dict:
    """Shares over judged answers: on topic, echoes, ended by themselves, distinct-2, looped."""
    n = len(answers)
    for item in answers:
        item["verdict"], item["topic_word"] = judge(item["question"], item["answer"])
    return {"questions": n,
            "on_topic": sum(a["verdict"] == "on topic" for a in answers) / n,
            "on_topic_count": sum(a["verdict"] == "on topic" for a in answers),
            "echo": sum(a["verdict"] == "echo" for a in answers) / n,
            "ended": sum(a["ended"] for a in answers) / n,
            "distinct_2": sum(distinct_2(a["answer"]) for a in answers) / n,
            "looped": sum(looped(a["answer"]) for a in answers) / n,
            "mean_tokens": sum(a["tokens"] for a in answers) / n}


def score(model, tokenizer, val_conversations: list[list[dict]], question_sets: dict[str, list[str]],
          raw_text: bool, max_new_tokens: int = 100, seed: int = 1) -> dict:
    """The whole scoreboard: bits per character on `val_conversations`, then for each named list of
    questions the summary of its judged answers; the answers themselves under "answers"."""
    board = {"loss": bits_per_char(model, tokenizer, val_conversations), "answers": {}}
    device = next(model.parameters()).device
    budget = prompt_budget(context_length(model.config), max_new_tokens)
    for name, questions in question_sets.items():
        generator = torch.Generator(device=device).manual_seed(seed)  # each set sampled from the same seed
        prompts = [prompt_ids(tokenizer, q, raw_text, budget) for q in questions]
        answers = answer_all(model, tokenizer, questions, prompts, max_new_tokens, generator,
                             temperature=CHAT_TEMPERATURE, top_p=CHAT_TOP_P)
        board[name] = summarize(answers)
        board["answers"][name] = answers
    return board

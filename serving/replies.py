"""Generation for a checked request: its prompt, built inside the queue, then a whole answer or a stream of
server-sent events in OpenAI's order. No web framework here: serving/app.py wraps what these return.

A stream is a role chunk (chat), the deltas, a chunk carrying finish_reason for each choice, a usage chunk
when asked, then `data: [DONE]`. The server closes the generator when the client goes away, which lands in
its `finally` and stops the model at once. When the server drains for shutdown (GenerationQueue.cut) a
reply ends at its next token with finish_reason "length", as a reply cut by max_tokens does, and the
stream still ends with its final chunk and [DONE].
"""
import sys
import time
import traceback
from dataclasses import dataclass
from itertools import chain

import torch

from model.chat import ContextTooLong, build_prompt, prompt_budget
from model.generate import context_length, stream_generate
from serving.messages import ChatRequest, ToolOffer
from serving.protocol import (DONE, APIError, CompletionRequest, Sampling, chat_choice, chunk, completion,
                              completion_prompt, delta_choice, error_event, text_choice, usage)
from serving.queue import GenerationQueue
from serving.toolcalls import CallSplitter, openai_call, split_reply
from tooluse.constrain import CopiedNumbers, NumberTokens


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Job:
    """One request's generation: `prompts` holds token ids, one list per choice."""
    kind: str  # "chat" or "text"
    sampling: Sampling
    prompts: list
    echoes: list | None = None  # completions' echo: each prompt's text, put before its choice's text
    offer: ToolOffer | None = None  # chat: what the model was offered (its prefill is already in the prompt)
    copy_rule: CopiedNumbers | None = None  # chat offering the calculator: its calls copy the numbers


class Replies:
    """The model behind the queue: prompts in, answers out."""

    def __init__(self, model, tokenizer, model_name: str, queue: GenerationQueue):
        self.model, self.tokenizer, self.model_name, self.queue = model, tokenizer, model_name, queue
        self.context = context_length(model.config)  # max_seq_len, stretched when RoPE scaling is configured
        self.device = next(model.parameters()).device
        self.number_tokens = NumberTokens(tokenizer)  # read once for every request's copy rule

    # ------------------------------------------------------------------------- prompts (inside the queue)

    def chat_job(self, req: ChatRequest) -> tuple[Job, int]:
        """The job for a chat request and the number of messages dropped to fit the context."""
        prefill = self.tokenizer.encode(req.offer.prefill, add_special_tokens=False) if req.offer.prefill else []
        budget = prompt_budget(self.context, req.sampling.max_tokens) - len(prefill)
        try:
            ids, dropped = build_prompt(self.tokenizer, req.messages, budget, tools=req.offer.tools)
        except ContextTooLong as error:
            raise APIError(400, str(error), "messages", "context_length_exceeded") from None
        if dropped:
            log(f"context: dropped the {dropped} oldest message(s) to fit {len(ids)} prompt tokens")
        rule = None
        if "calculator" in req.offer.allowed:  # tooluse/constrain.py: the calls' numbers are the conversation's
            rule = CopiedNumbers(self.number_tokens, [req.messages], [prefill])
        return Job("chat", req.sampling, [ids + prefill], offer=req.offer, copy_rule=rule), dropped

    def text_job(self, req: CompletionRequest) -> Job:
        room = prompt_budget(self.context, req.sampling.max_tokens)
        prompts = [completion_prompt(self.tokenizer, p) for p in req.prompts]
        for i, ids in enumerate(prompts):
            if len(ids) > room:
                raise APIError(400, f"prompt {i} has {len(ids)} tokens, but this model leaves {room} for it "
                               "(shorten it, or ask for fewer max_tokens)", "prompt", "context_length_exceeded")
        echoes = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in req.prompts] if req.echo else None
        return Job("text", req.sampling, prompts, echoes)

    # ------------------------------------------------------------------------- generating

    def _start(self, sampling: Sampling, prompt_ids: list, generator, allowed=None):
        return stream_generate(
            self.model, self.tokenizer, prompt_ids, max_new_tokens=sampling.max_tokens,
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty, presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty, stop=sampling.stop, generator=generator, allowed=allowed,
        )

    def _seeded(self, sampling: Sampling):
        if sampling.seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(sampling.seed)

    def _streams(self, job: Job):
        """(index, stream) for each of the job's prompts in turn, all sampled from one seeded generator; the
        caller holds the queue while it iterates."""
        generator = self._seeded(job.sampling)
        for index, ids in enumerate(job.prompts):
            yield index, self._start(job.sampling, ids, generator, job.copy_rule)

    def _pieces(self, stream):
        """The stream's text pieces, ending at the next token once the queue is cut (a draining server)."""
        if not self.queue.cut:
            for text in stream:
                yield text
                if self.queue.cut:
                    break
        stream.close()

    @staticmethod
    def _may_call(job: Job) -> bool:
        """Whether the reply is read for tool calls: a chat request that offered tools it may call."""
        return job.kind == "chat" and job.offer is not None and bool(job.offer.allowed)

    def _outcome(self, finishes: list) -> str:
        return "finish=" + ",".join(finishes) + (" (cut short: the server is stopping)" if self.queue.cut else "")

    def _choice(self, job: Job, index: int, text: str, finish: str) -> dict:
        if job.kind == "text":
            return text_choice(index, (job.echoes[index] if job.echoes else "") + text, finish)
        if not self._may_call(job):
            return chat_choice(index, text, finish)
        content, calls = split_reply(job.offer.prefill + text, job.offer.allowed, job.offer.parallel)
        if not calls:
            return chat_choice(index, content, finish)
        return chat_choice(index, content, "tool_calls", [openai_call(call) for call in calls])

    def whole(self, job: Job, completion_id: str) -> dict:
        """A non-streamed answer. The caller has entered the queue; this waits for the model and leaves."""
        holding, streams, choices = False, [], []
        try:
            self.queue.wait()
            holding = True
            for index, stream in self._streams(job):
                streams.append(stream)
                text = "".join(self._pieces(stream))
                choices.append(self._choice(job, index, text, stream.finish_reason or "length"))
        finally:
            self.queue.leave(holding)
        for stream, choice in zip(streams, choices):
            self._log_done(completion_id, stream, self._outcome([choice["finish_reason"]]))
        return completion(job.kind, completion_id, self.model_name, choices, self._usage(streams))

    def _deltas(self, job: Job, stream):
        """(delta, None) for each piece of one choice, then (None, finish_reason)."""
        if not self._may_call(job):
            for text in self._pieces(stream):
                yield ({"content": text} if job.kind == "chat" else text), None
            yield None, stream.finish_reason or "length"
            return
        splitter = CallSplitter(job.offer.allowed, job.offer.parallel)
        pieces, calls = splitter.feed(job.offer.prefill), 0  # the prefill is the reply's start
        for text in chain(self._pieces(stream), [None]):  # None: the reply has ended
            pieces += splitter.feed(text) if text is not None else splitter.finish()
            for kind, value in pieces:
                if kind == "content":
                    yield {"content": value}, None
                else:
                    yield {"tool_calls": [openai_call(value, index=calls)]}, None
                    calls += 1
            pieces = []
        yield None, "tool_calls" if calls else (stream.finish_reason or "length")

    def events(self, job: Job, completion_id: str):
        """Server-sent events for a streamed answer; the caller has entered the queue."""
        stamp, kind = int(time.time()), job.kind

        def send(choices: list, **extra) -> str:
            return chunk(kind, completion_id, self.model_name, stamp, choices, **extra)

        holding, streams, finishes, stream = False, [], [], None
        outcome = "client disconnected, generation stopped"
        try:
            if kind == "chat":
                yield send(delta_choice(kind, 0, {"role": "assistant", "content": ""}))
            self.queue.wait()
            holding = True
            for index, stream in self._streams(job):
                streams.append(stream)
                if job.echoes:
                    yield send(delta_choice(kind, index, job.echoes[index]))
                for delta, finish in self._deltas(job, stream):
                    if finish is None:
                        yield send(delta_choice(kind, index, delta))
                    else:
                        finishes.append(finish)
                        yield send(delta_choice(kind, index, {} if kind == "chat" else "", finish))
            if job.sampling.include_usage:  # OpenAI's extra last chunk: no choices, just the counts
                yield send([], usage=self._usage(streams))
            outcome = self._outcome(finishes)
            yield DONE
        except Exception as err:  # noqa: BLE001 - reported to the client as an SSE error, then logged
            traceback.print_exc()
            outcome = f"failed: {err}"
            yield error_event(APIError(500, f"generation failed: {err}", kind="server_error"))
        finally:
            if stream is not None:
                stream.close()
            self.queue.leave(holding)
            for done in streams:
                self._log_done(completion_id, done, outcome)

    # ------------------------------------------------------------------------- accounting

    @staticmethod
    def _usage(streams: list) -> dict:
        return usage(sum(s.prompt_tokens for s in streams), sum(s.completion_tokens for s in streams))

    @staticmethod
    def _log_done(completion_id: str, stream, outcome: str) -> None:
        log(f"{completion_id}: {stream.prompt_tokens} prompt + {stream.completion_tokens} completion tokens, "
            f"{outcome}")

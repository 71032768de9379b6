"""The OpenAI-compatible server driven by a second real client package, langchain-openai (the official
`openai` client has tests/test_api.py). Its ChatOpenAI and OpenAI classes build their own requests and
read the answers into LangChain objects, so these tests see what a LangChain user sees.

The reference is the project's own generation, run in this process on the same checkpoint: the prompt
from model/chat.py (or serving.protocol.completion_prompt) and the text from model/generate.py with the same
settings (greedy, or a seed). The model is tiny and random, its layers' weights scaled up so that greedy
replies differ from prompt to prompt, and its EOS embedding zeroed, so a greedy reply runs to max_tokens
or a stop string and the counts are exact. The server runs with one thread, as this process does, so
both do their arithmetic in the same order.
"""
import openai
import pytest
import torch
from conftest import tiny_config
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAI
from test_api import served_at

from model.chat import build_prompt, prompt_budget
from model.checkpoint import load_model, save_weights, weights_path
from model.generate import stream_generate
from model.model import MiniMindForCausalLM
from model.tokenizer import EOS_ID
from serving.protocol import completion_prompt

KEY = "client-key"
CAP = 40  # the server's --max_new_tokens
CONTEXT = 128  # the model's max_seq_len

CONVERSATION = [SystemMessage("你是一个乐于助人的助手"), HumanMessage("长江有多长？"),
                AIMessage("长江全长约六千三百公里。"), HumanMessage("那黄河呢？")]
AS_DICTS = [{"role": "system", "content": "你是一个乐于助人的助手"}, {"role": "user", "content": "长江有多长？"},
            {"role": "assistant", "content": "长江全长约六千三百公里。"}, {"role": "user", "content": "那黄河呢？"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(max_seq_len=CONTEXT))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ".layers." in name and weight.dim() == 2:
                weight.mul_(4)  # at the initial scale every greedy reply repeats the "\n" that ends the prompt
        model.model.embed_tokens.weight[EOS_ID].zero_()  # EOS logit 0 while others spread: never the argmax
    path = weights_path(tmp_path_factory.mktemp("ckpt"), "full_sft", model.config)
    save_weights(model, path)
    return path


@pytest.fixture(scope="module")
def served(checkpoint, tokenizer_dir, tmp_path_factory):
    """(base url, model id) of my_openai_api.py serving the checkpoint, with an API key."""
    with served_at(checkpoint, tokenizer_dir, tmp_path_factory.mktemp("server"), CAP, KEY) as url:
        yield url, checkpoint.stem  # the server names the model after the checkpoint file


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No LangSmith tracing, and an empty tiktoken cache: a code path that wanted tiktoken's encodings
    would try to download them and fail, instead of passing on a machine that happens to have them."""
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY",
                 "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))


def chat(served, **kwargs) -> ChatOpenAI:
    url, name = served
    return ChatOpenAI(model=name, base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def own(checkpoint, tokenizer):
    """The project's generation in this process: (messages, max_tokens, settings) -> (prompt ids, stream)."""
    model = load_model(checkpoint)

    def generate(messages, max_tokens: int, seed: int = None, **settings):
        """messages: a chat (a list of dicts), or a text to continue as /v1/completions does."""
        if isinstance(messages, str):
            prompt = completion_prompt(tokenizer, messages)
        else:
            prompt, dropped = build_prompt(tokenizer, messages, prompt_budget(CONTEXT, max_tokens))
            assert dropped == 0
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        stream = stream_generate(model, tokenizer, prompt, max_new_tokens=max_tokens, generator=generator, **settings)
        "".join(stream)  # runs it; the text is stream.text
        return prompt, stream

    return generate


def test_invoke_gives_our_greedy_reply_and_usage(served, own, tokenizer):
    reply = chat(served, temperature=0, max_tokens=9).invoke(CONVERSATION)
    prompt, expected = own(AS_DICTS, 9, temperature=0.0)
    assert isinstance(reply, AIMessage)
    assert reply.content == expected.text != ""
    assert len(expected.new_token_ids) == 9  # a half character at the end is not shown, by either
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.response_metadata["model_name"] == served[1]
    assert reply.response_metadata["id"].startswith("chatcmpl-")
    usage = reply.usage_metadata
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (len(prompt), 9, len(prompt) + 9)
    # the prompt the server counted is the chat template's rendering of these four messages
    template = tokenizer.apply_chat_template(AS_DICTS, add_generation_prompt=True, return_dict=False)
    assert usage["input_tokens"] == len(template)


def test_stream_concatenates_to_the_invoked_reply(served):
    llm = chat(served, temperature=0, max_tokens=14, stream_usage=True)
    whole = llm.invoke("你好，请介绍一下你自己")
    chunks = list(llm.stream("你好，请介绍一下你自己"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert sum(1 for c in chunks if c.content) > 1  # really streamed, piece by piece
    assert "".join(c.content for c in chunks) == whole.content
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == whole.content
    assert merged.response_metadata["finish_reason"] == "length"
    assert merged.usage_metadata["output_tokens"] == 14
    assert merged.usage_metadata["input_tokens"] == whole.usage_metadata["input_tokens"]


def test_seeded_sampling_and_stop_match_our_generation(served, own):
    """temperature 1, top_p 0.9 and a seed: the same text as our sampler with that seed; a stop string cuts it
    where our stream cuts it, and the reply says it stopped."""
    said = [{"role": "user", "content": "数学"}]
    full = chat(served, temperature=1.0, top_p=0.9, seed=3, max_tokens=30).invoke("数学")
    _, ours = own(said, 30, seed=3, temperature=1.0, top_p=0.9)
    assert full.content == ours.text and full.response_metadata["finish_reason"] == "length"
    # a two-character stop string from the middle of the reply (clear of replacement characters)
    text = full.content
    start = next(i for i in range(len(text) // 2, len(text) - 1) if "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    cut = chat(served, temperature=1.0, top_p=0.9, seed=3, max_tokens=30).invoke("数学", stop=[stop, "never"])
    _, ours = own(said, 30, seed=3, temperature=1.0, top_p=0.9, stop=[stop, "never"])
    assert cut.content == ours.text == text[:text.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop" == ours.finish_reason
    assert cut.usage_metadata["output_tokens"] == ours.completion_tokens < 30
    streamed = list(chat(served, temperature=1.0, top_p=0.9, seed=3, max_tokens=30, stop=[stop]).stream("数学"))
    assert "".join(c.content for c in streamed) == cut.content
    assert [c.response_metadata["finish_reason"] for c in streamed if c.response_metadata.get("finish_reason")] \
        == ["stop"]


def test_batch_answers_each_prompt_as_alone(served):
    """LangChain's batch sends the requests from a thread pool; the server queues them and each answer
    is the one that prompt gets alone."""
    llm = chat(served, temperature=0, max_tokens=6)
    prompts = ["春天来了", "他推开门", "今天天气很好"]
    together = [m.content for m in llm.batch(prompts, config={"max_concurrency": 3})]
    assert together == [llm.invoke(p).content for p in prompts]
    assert len(set(together)) == 3


def test_max_tokens_cap_and_errors_reach_the_caller(served):
    capped = chat(served, temperature=0, max_tokens=100_000).invoke("你好")
    assert capped.usage_metadata["output_tokens"] == CAP and capped.response_metadata["finish_reason"] == "length"
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        ChatOpenAI(model=served[1], base_url=served[0] + "/v1", api_key="wrong", max_retries=0).invoke("你好")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ChatOpenAI(model="gpt-4o", base_url=served[0] + "/v1", api_key=KEY, max_retries=0).invoke("你好")
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.function\.name must be"):
        tool = {"type": "function", "function": {"name": "add two", "description": "add two numbers",
                                                 "parameters": {"type": "object", "properties": {}}}}
        chat(served, max_tokens=4).bind_tools([tool]).invoke("1+1=?")


def test_text_completion_class_continues_as_our_generation(served, own, tokenizer):
    """langchain_openai.OpenAI speaks /v1/completions, the way a pretrained model is used."""
    url, name = served
    llm = OpenAI(model=name, base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120, temperature=0,
                 max_tokens=8)
    text = "长江是中国最长的河流，"
    prompt, ours = own(text, 8, temperature=0.0)
    assert prompt == [EOS_ID] + tokenizer.encode(text)  # </s> first, as pretraining documents start
    result = llm.generate([text])
    answer = result.generations[0][0]
    assert answer.text == ours.text != ""
    assert answer.generation_info["finish_reason"] == "length"
    assert result.llm_output["token_usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 8,
                                                 "total_tokens": len(prompt) + 8}
    assert "".join(llm.stream(text)) == answer.text

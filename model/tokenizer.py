"""The MiniMind tokenizer: byte-level BPE with three special tokens at fixed ids and a chat template.

    <unk> = 0   unknown, also used as padding (padding is always masked out of the loss)
    <s>   = 1   start of a turn
    </s>  = 2   end of a document or of a turn (the EOS the model learns to emit)

A conversation renders as

    <s>system\\n{content}</s>\\n<s>user\\n{content}</s>\\n<s>assistant\\n{content}</s>\\n

and `add_generation_prompt=True` appends `<s>assistant\\n` for the model to continue.

Tools (OpenAI function schemas, passed as `apply_chat_template(messages, tools=...)`) are offered in the
system turn, the assistant calls one in the Hermes / Qwen form, and the result comes back in a `tool` turn:

    <s>system\\n{system}\\n\\n# 工具\\n<tools>\\n{one tool's JSON per line}\\n</tools></s>\\n
    <s>user\\n...</s>\\n
    <s>assistant\\n<tool_call>\\n{"name": "calculator", "arguments": {"expression": "3*4"}}\\n</tool_call></s>\\n
    <s>tool\\n12</s>\\n
    <s>assistant\\n一共12个。</s>\\n

`<tool_call>` and `</tool_call>` are two added tokens (the last two ids of the vocabulary, not special, so
decoding keeps them): a parser such as vLLM's `hermes` looks them up by id, and a tiny model writes one
token where it would otherwise spell out eleven bytes. model/toolcall.py renders and parses the same text.
`train_tokenizer.py` trains it on the pretraining text; tests train a tiny one on the fly.
"""
import json
import os
from pathlib import Path
from typing import Iterable

from model.errors import MiniMindError

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]  # added last, so they take the vocabulary's last two ids
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = UNK_ID
ASSISTANT_HEADER = "<s>assistant\n"

# Tool calls: arguments given as a dict are written with tojson (json.dumps with ensure_ascii=False, as
# model/toolcall.py writes them); a JSON string (OpenAI's form) is written as it is.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<s>system\\n' }}{%- if system %}{{- system + '\\n\\n' }}{%- endif %}{{- '# 工具\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools></s>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<s>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- if call['function'] is defined %}{%- set call = call['function'] %}{%- endif %}"
    "{%- if not loop.first or message['content'] %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' + (call['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}{%- else %}{{- call['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '</s>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<s>assistant\\n' }}{%- endif %}"
)

# The same template in Ollama's language (Go's text/template over Ollama's .Messages and .Tools), for the
# Modelfile written beside a GGUF export. tests/test_gguf.py renders it with Go and compares with CHAT_TEMPLATE.
#
# The turns, the system turn that lists the tools and the call blocks are laid out exactly as CHAT_TEMPLATE
# lays them out. Ollama hands a template the tools and the call arguments as Go values, not as the JSON the
# client sent, and its `json` function writes Go's compact JSON ({"a":1}, keys sorted), which is not the
# JSON our template writes (json.dumps: {"a": 1}, keys in the order given) and the model was trained on.
# So the template writes that JSON itself, with our separators: a tool as {"type", "function": {"name",
# "description", "parameters": {"type", "properties", "required"}}}, each property as {"type",
# "description", "enum"}, and a call as {"name": ..., "arguments": {...}}, in that key order. For tools
# given in that order (as tooluse/calculator.py's CALCULATOR is) and calls whose arguments are one key
# or keys in sorted order, the prompt equals CHAT_TEMPLATE's byte for byte. Where it cannot:
#   - Ollama keeps properties and arguments in a Go map, so they come out sorted by name;
#   - string values go through `json`, which escapes <, > and & as \u003c, \u003e, \u0026;
#   - anything nested deeper (a property's items, properties, required or anyOf, the parameters' $defs
#     or items, an argument that is an object or a list) is `json`'s compact, key-sorted JSON;
#   - arguments sent as a JSON string (OpenAI's form) CHAT_TEMPLATE writes as sent, while Ollama has them
#     parsed, so they come out in the layout above whatever the client's spacing was.
# Ollama also merges consecutive messages of one role (except tool results) into one, joined by a blank line.
# Ollama takes the first text under {{ if .ToolCalls }} (up to any "{") as the tag that opens a tool call in
# the model's output, and parses the JSON after it; a text that is only a newline, or an action, before it
# would lose the tag. So `<tool_call>` is written in both branches of the if that puts the newline between
# blocks, and the tag Ollama finds is `<tool_call>` (tests/test_gguf.py checks it).
OLLAMA_TEMPLATE = (
    "{{ if .Tools }}<s>system\n"
    "{{ with .Messages }}{{ with index . 0 }}{{ if and (eq .Role \"system\") .Content }}{{ .Content }}\n\n"
    "{{ end }}{{ end }}{{ end -}}\n"
    "# 工具\n<tools>{{ range .Tools }}\n"
    "{\"type\": {{ json .Type }}, \"function\": {\"name\": {{ json .Function.Name }}"
    "{{ with .Function.Description }}, \"description\": {{ json . }}{{ end }}"
    "{{ with .Function.Parameters }}{{ if or .Type .Properties }}, \"parameters\": {\"type\": {{ json .Type }}"
    "{{ with .Defs }}, \"$defs\": {{ json . }}{{ end }}{{ with .Items }}, \"items\": {{ json . }}{{ end }}"
    ", \"properties\": {\n"
    "{{- $sep := \"\" }}{{ range $name, $property := .Properties }}{{ $sep }}{{ json $name }}: {\n"
    "{{- $f := \"\" }}"
    "{{ with .Type }}{{ $f }}\"type\": {{ json . }}{{ $f = \", \" }}{{ end }}"
    "{{ with .Description }}{{ $f }}\"description\": {{ json . }}{{ $f = \", \" }}{{ end }}"
    "{{ with .Enum }}{{ $f }}\"enum\": [{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ json $v }}{{ end }}]"
    "{{ $f = \", \" }}{{ end }}"
    "{{ with .Items }}{{ $f }}\"items\": {{ json . }}{{ $f = \", \" }}{{ end }}"
    "{{ with .Properties }}{{ $f }}\"properties\": {{ json . }}{{ $f = \", \" }}{{ end }}"
    "{{ with .Required }}{{ $f }}\"required\": {{ json . }}{{ $f = \", \" }}{{ end }}"
    "{{ with .AnyOf }}{{ $f }}\"anyOf\": {{ json . }}{{ end }}}"
    "{{ $sep = \", \" }}{{ end }}}"
    "{{ with .Required }}, \"required\": [{{ range $i, $r := . }}{{ if $i }}, {{ end }}{{ json $r }}{{ end }}]{{ end }}}"
    "{{ end }}{{ end }}}}"
    "{{ end }}\n</tools></s>\n"
    "{{ end }}"
    "{{ range $i, $m := .Messages }}{{ if not (and $.Tools (eq $i 0) (eq .Role \"system\")) }}<s>{{ .Role }}\n"
    "{{ .Content }}"
    "{{ if .ToolCalls }}{{ range $k, $call := .ToolCalls }}{{ if or $k $m.Content }}\n<tool_call>{{ else }}<tool_call>{{ end }}\n"
    "{\"name\": {{ json .Function.Name }}, \"arguments\": {\n"
    "{{- $sep := \"\" }}{{ range $key, $value := .Function.Arguments }}{{ $sep }}{{ json $key }}: {{ json $value }}"
    "{{ $sep = \", \" }}{{ end -}}\n"
    "}}\n</tool_call>{{ end }}{{ end }}</s>\n"
    "{{ end }}{{ end }}<s>assistant\n"
)

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent / "minimind_tokenizer"


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir, max_token_length: int = 16) -> None:
    """Train a byte-level BPE on `texts` and save a folder that AutoTokenizer.from_pretrained loads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS),  # save_tokenizer adds the tool tokens at the end
        special_tokens=SPECIAL_TOKENS,  # added first, so they get ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, f"special token {token} must have id {i}"
    save_tokenizer(tokenizer, out_dir)


def save_tokenizer(tokenizer, out_dir) -> None:
    """Write tokenizer.json plus the config that makes it a PreTrainedTokenizerFast with our chat template.
    The tool-call tokens are added here, after the trained vocabulary."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in TOOL_TOKENS])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)


def load_tokenizer(path=None):
    """Load the project tokenizer (model/minimind_tokenizer by default, or an exported model folder)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path or DEFAULT_TOKENIZER_DIR)
    if not (path / "tokenizer.json").exists():
        raise MiniMindError(f"no tokenizer at {path}: run `python train_tokenizer.py` first (or pass --tokenizer DIR)")
    # The fast-tokenizer class directly, not AutoTokenizer: an exported folder's config.json names
    # remote model code, which AutoTokenizer would offer to run.
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def tokenizer_hash(path=None) -> str:
    """A short fingerprint of tokenizer.json, stored with token shards so stale data is detected."""
    import hashlib

    data = json.loads((Path(path or DEFAULT_TOKENIZER_DIR) / "tokenizer.json").read_text(encoding="utf-8"))
    canonical = json.dumps(data["model"], sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()[:16]

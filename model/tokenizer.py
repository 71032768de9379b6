"""The MiniMind tokenizer: byte-level BPE with three special tokens at fixed ids and a chat template.

    <unk> = 0   unknown, also used as padding (padding is always masked out of the loss)
    <s>   = 1   start of a turn
    </s>  = 2   end of a document or of a turn (the EOS the model learns to emit)

A conversation renders as

    <s>system\\n{content}</s>\\n<s>user\\n{content}</s>\\n<s>assistant\\n{content}</s>\\n

and `add_generation_prompt=True` appends `<s>assistant\\n` for the model to continue.
`train_tokenizer.py` trains it on the pretraining text; tests train a tiny one on the fly.
"""
import json
import os
from pathlib import Path
from typing import Iterable

from model.errors import MiniMindError

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = UNK_ID
ASSISTANT_HEADER = "<s>assistant\n"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s>' + message['role'] + '\\n' + message['content'] + '</s>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}"
)

# The same template in Ollama's language (Go's text/template over .Messages), for the Modelfile written
# beside a GGUF export. tests/test_gguf.py renders it with Go and compares it with CHAT_TEMPLATE.
OLLAMA_TEMPLATE = (
    "{{ range .Messages }}<s>{{ .Role }}\n"
    "{{ .Content }}</s>\n"
    "{{ end }}<s>assistant\n"
)

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent / "minimind_tokenizer"


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir, max_token_length: int = 16) -> None:
    """Train a byte-level BPE on `texts` and save a folder that AutoTokenizer.from_pretrained loads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
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
    """Write tokenizer.json plus the config that makes it a PreTrainedTokenizerFast with our chat template."""
    from transformers import PreTrainedTokenizerFast

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

"""Shared fixtures and helpers: a tiny tokenizer trained on the fly, tiny model configs and checkpoints,
and the small synthetic files (chat and preference jsonl, token shards) the stage tests read, so tests
need no data and no test retypes another's helper."""
import copy
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from model.checkpoint import save_weights
from model.LMConfig import LMConfig
from model.model import MiniMindForCausalLM
from model.tokenizer import EOS_ID, load_tokenizer, tokenizer_hash, train_bpe

# --- the device option and the gpu marker: `python -m pytest -m gpu --device cuda tests/test_gpu.py`
# runs the device checks on a GPU; without the option they run on the CPU, with small shapes, and the
# checks that only mean something on CUDA are skipped with the reason.

def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="device for the tests that take the `device` fixture (tests/test_gpu.py): cpu (default), "
                          "cuda or cuda:N")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: a device check (tests/test_gpu.py); run on a GPU with "
                                       "`python -m pytest -m gpu --device cuda tests/test_gpu.py`")


def pytest_report_header(config):
    """A line at the top of the run's output: the device the checks run on and, for a GPU, the facts a
    failure report needs (which GPU, its bf16 support, the torch and CUDA versions)."""
    name = config.getoption("device", default="cpu")
    if not name.startswith("cuda"):
        return f"device: {name} (--device)"
    if not torch.cuda.is_available():
        return f"device: {name} (--device), but torch {torch.__version__} sees no CUDA GPU"
    gpu = torch.device(name)
    major, minor = torch.cuda.get_device_capability(gpu)
    return (f"device: {torch.cuda.get_device_name(gpu)}, compute capability {major}.{minor}, "
            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}; torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}")


NEEDS_CUDA = "needs --device cuda and a CUDA GPU"


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device named by --device. Asking for CUDA on a machine without one skips, rather than fails,
    the tests that use it: the same command line then works everywhere."""
    # (the default only matters should this conftest load too late to add its option)
    chosen = torch.device(request.config.getoption("device", default="cpu"))
    if chosen.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{NEEDS_CUDA} (--device {chosen} given, but torch sees no CUDA GPU)")
    return chosen


@pytest.fixture
def cuda_device(device) -> torch.device:
    """For the checks that only mean something on a GPU (NCCL, TF32, the GPU's own bf16 choice)."""
    if device.type != "cuda":
        pytest.skip(NEEDS_CUDA)
    return device


_SENTENCES = [
    "今天天气很好，我们一起去公园散步吧。",
    "人工智能是计算机科学的一个分支，研究如何让机器学习。",
    "长江是中国最长的河流，全长约六千三百公里。",
    "他在图书馆里读了一整天的历史书。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "请问去火车站怎么走？一直往前走，然后左转。",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "数学考试的题目有点难，但是我都做完了。",
]


def synthetic_corpus(n_docs: int = 400, seed: int = 0) -> list[str]:
    """Deterministic Chinese-heavy documents built from a few sentences."""
    rng = random.Random(seed)
    return ["".join(rng.choice(_SENTENCES) for _ in range(rng.randint(1, 6))) for _ in range(n_docs)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    train_bpe(synthetic_corpus(), vocab_size=512, out_dir=path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def load_script(filename: str):
    """Import a numbered stage script (e.g. 1-pretrain.py, not importable by name) as a module."""
    path = Path(__file__).resolve().parent.parent / filename
    spec = importlib.util.spec_from_file_location(filename.removesuffix(".py").replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def greedy_by_recompute(model, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens, reading the whole sequence again at every step (no cache): the reference that
    cached generation must match."""
    ids, device = list(prompt), next(model.parameters()).device
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids], device=device)).logits[0, -1].argmax()))
    return ids[len(prompt):]


def tiny_config(**overrides) -> LMConfig:
    """A model small enough that a forward/backward takes milliseconds."""
    fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64)
    fields.update(overrides)
    return LMConfig(**fields)


def tiny_moe_config(**overrides) -> LMConfig:
    fields = dict(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)
    fields.update(overrides)
    return tiny_config(**fields)


def save_checkpoint(folder: Path, config: LMConfig, name: str = "full_sft", router_std: float = None,
                    stage: str = None) -> tuple[MiniMindForCausalLM, Path]:
    """A model of `config` (eval mode) saved as {folder}/{name}_{tag}.pth with its .json, as a stage writes
    it; router_std: a sharper MoE router, so top-k choices and weights differ clearly between tokens."""
    model = MiniMindForCausalLM(config).eval()
    if router_std:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0.0, router_std)
    path = Path(folder) / f"{name}_{config.tag()}.pth"
    save_weights(model, path, stage)
    return model, path


@pytest.fixture
def models() -> tuple[MiniMindForCausalLM, MiniMindForCausalLM]:
    """(policy, reference) in float64 for exact comparisons of preference losses: the policy some way from
    its reference (weights moved by 0.02 noise), so log-ratios and the KL are not zero."""
    torch.manual_seed(0)
    reference = MiniMindForCausalLM(tiny_config()).double().eval()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return policy, reference


def random_tokens(config: LMConfig, length: int, seed: int = 1) -> torch.Tensor:
    """Two rows of `length` random ids (no special tokens), the same for the same seed."""
    return torch.randint(3, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


# --- training data

class CountingData(Dataset):
    """Row i counts up from a pseudo-random start (mod vocab): every next token follows from the one before,
    so a model that learns anything gets the loss far below ln(vocab) in a few steps. `seen` records the
    indices read, in order (which samples a process got)."""

    def __init__(self, n: int = 64, seq_len: int = 16, vocab: int = 64):
        self.n, self.seq_len, self.vocab, self.seen = n, seq_len, vocab, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.seen.append(i)
        row = (i * 7919 + torch.arange(self.seq_len + 1)) % self.vocab
        return row[:-1], row[1:]


def next_token_loss(model, batch):
    """The engine's loss_fn for (x, y) batches: the model's loss (lm_loss plus the MoE balance loss), and
    the balance loss on its own as a metric."""
    x, y = batch
    out = model(input_ids=x, shift_labels=y)
    return out.loss, {"aux_loss": out.aux_loss}


# --- files the stages read

QA = [("你好", "你好！很高兴见到你。"), ("长江有多长？", "长江全长约六千三百公里。"), ("背一首诗", "春眠不觉晓，处处闻啼鸟。"),
      ("今天天气怎么样？", "今天天气很好，我们一起去公园散步吧。")]


def qa_conversation(i: int, turns: int = None) -> dict:
    """An SFT record of QA exchanges: one turn for even i, two for odd i (or `turns` turns)."""
    count = turns or (2 if i % 2 else 1)
    pairs = [QA[(i + k) % 4] for k in range(count)]
    return {"conversations": [m for q, a in pairs
                              for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]}


def write_file(path: Path, data) -> Path:
    """`data` at `path` (folders made): bytes as they are, text as UTF-8, anything else as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    """One line per row: a string as it is (to write malformed lines), anything else as JSON."""
    return write_file(path, "".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n"
                                    for row in rows))


GOOD = ["今天天气很好，我们一起去公园散步吧。", "长江是中国最长的河流。", "他在图书馆里读了一整天的历史书。"]
BAD = ["The quick brown fox jumps over the lazy dog.", "1234567890", "fox dog fox dog"]
QUESTIONS = ["今天天气怎么样？", "长江有多长？", "推荐一本书。", "春眠不觉晓的下一句是什么？", "火车站怎么走？"]


def write_pairs(path: Path, n: int, seed: int) -> Path:
    """Easy synthetic preferences: Chinese sentences are chosen over English/digit noise."""
    rng = random.Random(seed)
    return write_jsonl(path, [{"prompt": [{"role": "user", "content": rng.choice(QUESTIONS) + str(seed * 1000 + i)}],
                               "chosen": [{"role": "assistant", "content": rng.choice(GOOD)}],
                               "rejected": [{"role": "assistant", "content": rng.choice(BAD)}]} for i in range(n)])


def write_shards(folder: Path, splits: dict, **meta) -> None:
    """Token shards in data_process.py's layout: {split}_{k:04d}.bin (raw uint16 ids) for the k-th array
    of each split in `splits` ({"train": [array, ...], "val": [...]}), and meta.json with the dtype, each
    shard's tokens and documents (its </s> count, at least 1), and the fields in `meta`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = {}
    for split, arrays in splits.items():
        for k, tokens in enumerate(arrays):
            tokens = np.asarray(tokens, dtype=np.uint16)
            tokens.tofile(folder / f"{split}_{k:04d}.bin")
            shards[f"{split}_{k:04d}.bin"] = {"tokens": len(tokens), "docs": max(1, int((tokens == EOS_ID).sum()))}
    (folder / "meta.json").write_text(json.dumps({"dtype": "uint16", **meta, "shards": shards}))


def write_pretrain_shards(folder: Path, tokenizer, tokenizer_dir, n_docs: int = 600) -> np.ndarray:
    """What `data_process.py pretrain` writes for the synthetic corpus: every document followed by </s>,
    a tenth of them in the val shard; returns the train shard's tokens."""
    docs = [tokenizer.encode(text) + [EOS_ID] for text in synthetic_corpus(n_docs, seed=1)]
    cut = len(docs) * 9 // 10
    train, val = ([t for doc in part for t in doc] for part in (docs[:cut], docs[cut:]))
    write_shards(folder, {"train": [train], "val": [val]}, eos_id=EOS_ID, vocab_size=len(tokenizer),
                 tokenizer_hash=tokenizer_hash(tokenizer_dir))
    return np.fromfile(Path(folder) / "train_0000.bin", dtype=np.uint16)


# Tests use tiny tensors, where a second thread only adds synchronisation (and, on a busy machine,
# waits of orders of magnitude).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def export_gguf(path: Path, tokenizer_dir, out: Path, *extra: str) -> Path:
    """export_model.py --format gguf on the weights at `path`: the .gguf file it wrote (the Modelfile beside it)."""
    export_model = importlib.import_module("export_model")
    return export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "gguf",
                              "--out", str(out), *extra])


def modelfile_fields(path: Path) -> tuple[str, list[str]]:
    """FROM / ADAPTER / TEMPLATE / PARAMETER lines of a Modelfile, the template between its triple quotes."""
    text = path.read_text(encoding="utf-8")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    lines = [line for line in text.replace(template, "").splitlines() if line.strip()]
    return template, lines


def never_ending_model(max_seq_len: int):
    """A tiny random model that never chooses </s> greedily (its embedding row is zeroed, so its logit is 0
    while the others spread), so a greedy reply runs to its token limit: the server tests' model."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(max_seq_len=max_seq_len)).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[EOS_ID].zero_()
    return model

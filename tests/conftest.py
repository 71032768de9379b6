"""Shared fixtures: a tiny tokenizer trained on the fly and tiny model configs, so tests need no data."""
import importlib.util
import random
from pathlib import Path

import pytest
import torch

from model.LMConfig import LMConfig
from model.tokenizer import load_tokenizer, train_bpe

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


# Tests use tiny tensors, where a second thread only adds synchronisation (and, on a busy machine,
# waits of orders of magnitude).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

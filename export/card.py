"""The model card of an exported transformers folder: README.md, opening with the YAML metadata block the
Hugging Face Hub reads, then what the model is, how to load it, its scoreboard and its training data.

    text = model_card("full_sft_512x8", config, remote=True, datasets=["NiuTrans/Classical-Modern", ...],
                      board=board)   # board: what `score.py --json` wrote, or None when the run was not scored

The metadata: license apache-2.0, language zh, library_name transformers, pipeline_tag text-generation, tags
(minimind, from-scratch, custom_code for our own classes, llama or qwen2_moe for a native folder, moe), the
datasets the project's training data comes from, and, when the run was scored (`score.py --json`, which
the quickstart writes as out/score_{stage}_{tag}.json beside the checkpoint), the scoreboard as
`model-index` results: held-out bits per character, on topic, and, where the board has it (`score.py
--tool_problems N`), the share of held-out word problems answered right with the calculator.
There is no `base_model`: every MiniMind is trained from scratch, a merged LoRA or DPO export included (their
starting points are this project's own earlier stages, never a published model).
"""
import math

import yaml

LICENSE = "apache-2.0"
CHAT_SET = {"name": "MiniMind held-out SFT conversations and demo questions", "type": "minimind-sft-val"}
TOOL_SET = {"name": "MiniMind held-out word problems (calculator)", "type": "minimind-tool-problems"}


def scoreboard_results(board: dict | None) -> list[dict]:
    """The scoreboard figures a card shows, as model-index results (one per question set, each metric
    {type, name, value}): held-out bits per character and on topic (held-out and demo questions), and
    tool accuracy; what the board lacks is left out."""
    if not isinstance(board, dict):
        return []

    def section(where: dict, key: str) -> dict:
        return where.get(key) if isinstance(where.get(key), dict) else {}

    def metrics(*figures) -> list[dict]:
        return [{"type": kind, "name": name, "value": round(float(value), 4)} for kind, name, value in figures
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]

    chat = metrics(("bits_per_character", "held-out bits per character", section(board, "loss").get("bits_per_char")),
                   ("on_topic", "on topic, held-out questions", section(board, "held_out").get("on_topic")),
                   ("on_topic", "on topic, demo questions", section(board, "demo").get("on_topic")))
    with_tools = section(section(board, "tools"), "with_tools")  # score.py --tool_problems N
    tools = metrics(("accuracy", "tool accuracy: word problems right with the calculator", with_tools.get("share")))
    task = {"type": "text-generation", "name": "Text Generation"}
    return [{"task": dict(task), "dataset": dict(dataset), "metrics": found}
            for dataset, found in ((CHAT_SET, chat), (TOOL_SET, tools)) if found]


def card_metadata(name: str, config, remote: bool, datasets: list[str], board: dict | None = None) -> dict:
    """The YAML block's fields (see the module docstring)."""
    tags = ["minimind", "from-scratch", "custom_code" if remote else "qwen2_moe" if config.use_moe else "llama"]
    if config.use_moe:
        tags.append("moe")
    meta = {"license": LICENSE, "language": ["zh"], "library_name": "transformers",
            "pipeline_tag": "text-generation", "tags": tags}
    if datasets:
        meta["datasets"] = list(datasets)
    results = scoreboard_results(board)
    if results:
        meta["model-index"] = [{"name": f"MiniMind {name}", "results": results}]
    return meta


def model_card(name: str, config, remote: bool, datasets: list[str], board: dict | None = None,
               parameters: str = "") -> str:
    """README.md for an exported folder: the YAML front matter, then the card's text."""
    meta = card_metadata(name, config, remote, datasets, board)
    front = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False)
    shape = (f"{config.n_layers} layers, width {config.dim}, {config.n_heads}/{config.n_kv_heads} query/key-value "
             f"heads, vocabulary {config.vocab_size}, context {config.max_seq_len}")
    if config.use_moe:
        shape += (f", mixture of experts ({config.n_shared_experts} shared + {config.n_routed_experts} routed, "
                  f"top-{config.num_experts_per_tok})")
    kind = "MiniMind's own classes (`trust_remote_code=True`)" if remote else (
        "transformers' `Qwen2MoeForCausalLM`" if config.use_moe else "transformers' `LlamaForCausalLM`")
    lines = [
        f"# MiniMind {name}", "",
        f"A small Chinese language model trained from scratch with MiniMind{f' ({parameters})' if parameters else ''}: "
        f"{shape}. Stored as {kind}; the tokenizer and its chat template are in the folder, and "
        f"`generation_config.json` samples as MiniMind's chat does.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("FOLDER"{", trust_remote_code=True" if remote else ""})',
        'tokenizer = AutoTokenizer.from_pretrained("FOLDER")',
        'prompt = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,',
        '                                       return_tensors="pt", return_dict=True)',
        "print(tokenizer.decode(model.generate(**prompt, max_new_tokens=64)[0]))",
        "```", "",
    ]
    results = meta.get("model-index", [{}])[0].get("results", [])
    if results:
        lines += ["## Scoreboard", "", "`score.py`: answers sampled as MiniMind's chat samples, with a fixed seed.",
                  "", "| measure | value |", "|---|---:|"]
        lines += [f"| {m['name']} | {m['value']:.4f} |" for result in results for m in result["metrics"]]
        lines.append("")
    if datasets:
        lines += ["## Training data", "", "Public source files, pinned by commit and sha256 (MiniMind's "
                  "`dataset/sources_full.tsv.gz`), from these repositories:", ""]
        lines += [f"- [{repo}](https://github.com/{repo})" for repo in datasets]
        lines.append("")
    return f"---\n{front}---\n\n" + "\n".join(lines)

"""export_model.py --format gguf: the file transformers reads back (gguf_file=...) reproduces our logits.

transformers dequantizes the file and undoes llama.cpp's Q/K row order on load, so these round trips
check the tensor names, the Q/K reordering, the metadata (heads, eps, RoPE base, context) and the
tokenizer without a llama.cpp build. The llama.cpp test at the end runs where llama-cpp-python is
installed.
"""
import copy
import importlib
import json
import os
import stat

import pytest
import torch
from conftest import tiny_config, tiny_moe_config

from model.checkpoint import save_weights
from model.errors import MiniMindError
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, generate
from model.model import MiniMindForCausalLM
from model.tokenizer import OLLAMA_TEMPLATE, TOOL_TOKENS

gguf = pytest.importorskip("gguf")
export_model = importlib.import_module("export_model")
gguf_export = importlib.import_module("export.gguf")


def checkpoint(tmp_path, config, name="full_sft", router_std=None, scale=None):
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        if scale:  # larger weights than the init's: logits that differ clearly between tokens
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, scale)
        if router_std:  # a sharper router, so that top-k choices and weights differ clearly between tokens
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0.0, router_std)
    path = tmp_path / f"{name}_{config.tag()}.pth"
    save_weights(model, path)
    return model, path


def tokens(config, length, seed=1):
    return torch.randint(3, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


def export(path, tokenizer_dir, out, *extra):
    return export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "gguf",
                              "--out", str(out), *extra])


def read_fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("outtype,tolerance", [("f32", 1e-4), ("f16", 1e-2), ("q8_0", 2e-1)])
def test_gguf_reloads_in_transformers_with_our_logits(tmp_path, tokenizer_dir, outtype, tolerance):
    from transformers import LlamaForCausalLM

    model, path = checkpoint(tmp_path, tiny_config(), scale=0.1)
    out = export(path, tokenizer_dir, tmp_path / f"m-{outtype}.gguf", "--outtype", outtype)  # verifies too
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644, "the file must be readable by others"
    loaded = export_model.load_gguf(out, model.config)
    assert isinstance(loaded, LlamaForCausalLM)
    x = tokens(model.config, 48)
    with torch.no_grad():
        ours, theirs = model(x).logits, loaded(x).logits
        # Against the same weights rounded as the file stores them: only the conversion can differ.
        exact = gguf_export.rounded_like_gguf(model, outtype)(x).logits
    assert (theirs - exact).abs().max() < 1e-4
    assert (theirs - ours).abs().max() < tolerance
    if outtype != "f32":  # the rounding is real, so the exact comparison above is not trivially true
        assert (theirs - ours).abs().max() > 1e-6
    # and the same greedy continuation
    prompt = [1, 40, 41, 42, 43]
    expected = generate(model, [prompt], max_new_tokens=10)[0]
    got = loaded.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    assert got[:len(expected)] == expected and expected


def test_gguf_holds_llama_metadata_tokenizer_and_reordered_q_k(tmp_path, tokenizer_dir, tokenizer):
    model, path = checkpoint(tmp_path, tiny_config())
    out = export(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32", "--no_verify")
    fields, tensors = read_fields(out)
    cfg = model.config
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == cfg.n_layers and fields["llama.embedding_length"] == cfg.dim
    assert fields["llama.attention.head_count"] == cfg.n_heads
    assert fields["llama.attention.head_count_kv"] == cfg.n_kv_heads
    assert fields["llama.feed_forward_length"] == cfg.hidden_dim
    assert fields["llama.context_length"] == cfg.max_seq_len
    assert fields["llama.rope.freq_base"] == cfg.rope_theta
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["general.sampling.temp"] == pytest.approx(CHAT_TEMPERATURE)
    assert fields["general.sampling.top_p"] == pytest.approx(CHAT_TOP_P)
    token_list = fields["tokenizer.ggml.tokens"]
    assert len(token_list) == cfg.vocab_size
    types = fields["tokenizer.ggml.token_type"]
    assert token_list[:3] == ["<unk>", "<s>", "</s>"] and types[:4] == [3, 3, 3, 1]  # CONTROL x3, NORMAL
    # The tool-call tokens are added, not special: USER_DEFINED (4), which llama.cpp matches as whole tokens
    # in any input and keeps in its output text (CONTROL tokens it would drop from the text).
    tool_ids = tokenizer.convert_tokens_to_ids(TOOL_TOKENS)
    assert tool_ids == [cfg.vocab_size - 2, cfg.vocab_size - 1]
    assert [token_list[i] for i in tool_ids] == TOOL_TOKENS and [types[i] for i in tool_ids] == [4, 4]
    assert "<tool_call>" in fields["tokenizer.chat_template"] and "tools" in fields["tokenizer.chat_template"]
    assert token_list[tokenizer.convert_tokens_to_ids("Ġ")] == "Ġ"
    assert len(fields["tokenizer.ggml.merges"]) > 100 and " " in fields["tokenizer.ggml.merges"][0]
    assert "output.weight" not in tensors, "the tied head is read through token_embd"

    # q rows within a head: (j, j + head_dim/2) become neighbours (2j, 2j + 1); v is untouched
    q = torch.from_numpy(tensors["blk.0.attn_q.weight"].data.copy()).reshape(cfg.dim, cfg.dim)
    ours = model.model.layers[0].self_attn.q_proj.weight.detach()
    half = cfg.head_dim // 2
    assert torch.equal(q[0], ours[0]) and torch.equal(q[1], ours[half]) and torch.equal(q[3], ours[half + 1])
    assert torch.equal(q[cfg.head_dim + 1], ours[cfg.head_dim + half])
    v = torch.from_numpy(tensors["blk.0.attn_v.weight"].data.copy()).reshape(-1, cfg.dim)
    assert torch.equal(v, model.model.layers[0].self_attn.v_proj.weight.detach())
    back = gguf_export.uninterleave_rope_rows(q, cfg.n_heads)
    assert torch.equal(back, ours)


def test_gguf_tokenizer_and_chat_template_load_in_transformers(tmp_path, tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    _, path = checkpoint(tmp_path, tiny_config())
    out = export(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "q8_0", "--no_verify")
    theirs = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    text = "今天天气很好，我们一起去公园散步吧。The quick brown fox 1234567890 ,.!? \n\n  spaces"
    assert theirs.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]
    ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == ours
    assert theirs.encode(rendered, add_special_tokens=False) == tokenizer.encode(ours)
    assert theirs.encode(rendered, add_special_tokens=False)[0] == 1, "<s> in the template is the BOS token"

    # with tools: the same prompt, the same ids, and each call tag one token (the vocabulary's last two)
    from tooluse.calculator import CALCULATOR

    messages = [{"role": "user", "content": "3个苹果每个2元，一共多少钱？"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "3*2"}}}]},
                {"role": "tool", "content": "6"}]
    ours = tokenizer.apply_chat_template(messages, tools=[CALCULATOR], tokenize=False, add_generation_prompt=True)
    rendered = theirs.apply_chat_template(messages, tools=[CALCULATOR], tokenize=False, add_generation_prompt=True)
    assert rendered == ours and "<tool_call>" in ours
    assert theirs.encode(rendered, add_special_tokens=False) == tokenizer.encode(ours)
    tool_ids = tokenizer.convert_tokens_to_ids(TOOL_TOKENS)
    assert [theirs.encode(tag, add_special_tokens=False) for tag in TOOL_TOKENS] == [[i] for i in tool_ids]
    block = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*2"}}\n</tool_call>'
    ids = theirs.encode(block, add_special_tokens=False)
    assert ids == tokenizer.encode(block) and [ids[0], ids[-1]] == tool_ids
    assert theirs.decode(ids, skip_special_tokens=True) == block, "decoding keeps the call tags"


def test_gguf_pads_a_short_tokenizer_to_the_embedding_rows(tmp_path, tokenizer_dir):
    model, path = checkpoint(tmp_path, tiny_config(vocab_size=544))  # 32 rows more than the 512 tokens
    out = export(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32")
    fields, _ = read_fields(out)
    assert len(fields["tokenizer.ggml.tokens"]) == 544
    assert fields["tokenizer.ggml.tokens"][540] == "[PAD540]" and fields["tokenizer.ggml.token_type"][540] == 5


@pytest.mark.parametrize("rope", ["ntk", "linear", "yarn"])
def test_gguf_records_rope_scaling(tmp_path, tokenizer_dir, rope):
    model, path = checkpoint(tmp_path, tiny_config(max_seq_len=32, rope_scaling_type=rope, rope_factor=2.0))
    out = export(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32", "--no_verify")
    fields, _ = read_fields(out)
    assert fields["llama.context_length"] == 64
    if rope == "ntk":  # only the base changes, which transformers reads: compare past the trained context
        assert "llama.rope.scaling.type" not in fields
        assert fields["llama.rope.freq_base"] == pytest.approx(1e4 * 2.0 ** (16 / 14), rel=1e-6)
        loaded = export_model.load_gguf(out, model.config)
        x = tokens(model.config, 64)
        with torch.no_grad():
            assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4
    else:
        assert fields["llama.rope.scaling.type"] == rope
        assert fields["llama.rope.scaling.factor"] == 2.0
        assert fields["llama.rope.scaling.original_context_length"] == 32


@pytest.mark.parametrize("shared,top_k,norm", [(1, 2, False), (2, 1, True), (0, 2, False)])
def test_moe_gguf_is_qwen2moe_with_our_logits(tmp_path, tokenizer_dir, shared, top_k, norm):
    from transformers import Qwen2MoeForCausalLM

    config = tiny_moe_config(n_shared_experts=shared, num_experts_per_tok=top_k, norm_topk_prob=norm)
    model, path = checkpoint(tmp_path, config, router_std=1.0)
    out = export(path, tokenizer_dir, tmp_path / "moe.gguf", "--outtype", "f32")
    fields, tensors = read_fields(out)
    assert fields["general.architecture"] == "qwen2moe"
    assert "output.weight" in tensors, "llama.cpp's qwen2moe needs its own output matrix"
    gate = tensors["blk.0.ffn_gate_inp_shexp.weight"].data
    assert gate.any(), "an all-zero shared-expert gate is NaN in llama.cpp"
    loaded = export_model.load_gguf(out, model.config)
    assert isinstance(loaded, Qwen2MoeForCausalLM)
    x = tokens(config, 32)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


def test_moe_gguf_refused_where_llama_cpp_computes_another_model(tmp_path, tokenizer_dir):
    _, path = checkpoint(tmp_path, tiny_moe_config(num_experts_per_tok=2, norm_topk_prob=True))
    out = tmp_path / "moe.gguf"
    with pytest.raises(MiniMindError, match="norm_topk_prob.*--format native"):
        export(path, tokenizer_dir, out)
    assert not out.exists() and not list(tmp_path.glob(".moe.gguf*"))


def test_lora_exports_as_base_gguf_plus_adapter_gguf(tmp_path, tokenizer_dir):
    from model.lora import LoraSettings, apply_lora, save_adapter

    base, base_path = checkpoint(tmp_path, tiny_config(), scale=0.1)
    peft_model = apply_lora(copy.deepcopy(base), LoraSettings(rank=4, alpha=8.0))  # wraps its argument in place
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)  # a trained adapter: B is zero only at the start
    save_adapter(peft_model, tmp_path / "lora_demo_64x2", base_path=base_path)
    merged = peft_model.merge_and_unload().eval()

    argv = ["--weight", "lora_demo", "--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2",
            "--out_dir", str(tmp_path), "--tokenizer", str(tokenizer_dir), "--format", "gguf", "--outtype", "f32",
            "--keep_adapter", "--out", str(tmp_path / "g" / "demo.gguf")]
    out = export_model.main(argv)  # verifies base and base + adapter through transformers
    adapter = out.with_name("demo-lora.gguf")
    assert modelfile_fields(out.with_suffix(".Modelfile"))[1][:2] == ["FROM ./demo.gguf", "ADAPTER ./demo-lora.gguf"]
    fields, tensors = read_fields(adapter)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0
    assert "blk.1.attn_q.weight.lora_a" in tensors and "blk.1.ffn_down.weight.lora_b" in tensors
    loaded = export_model.load_gguf(out, base.config)
    x = tokens(base.config, 32)
    with torch.no_grad():
        assert (loaded(x).logits - base(x).logits).abs().max() < 1e-4  # the base file holds the base only
        gguf_export.apply_lora_gguf(loaded, adapter, base.config)
        difference = (loaded(x).logits - merged(x).logits).abs().max()
        assert difference < 1e-4
        assert (merged(x).logits - base(x).logits).abs().max() > 1e-2, "the adapter must change the model"


GO_RENDER = """package main

// Renders prompts the way Ollama does (its template/template.go): the Modelfile's template, parsed by Go's
// text/template with missingkey=zero and a `json` function (json.Marshal), runs over .Messages (consecutive
// messages of one role merged into the first, tool results excepted) and .Tools, in the shapes Ollama gives
// them: properties and call arguments as plain Go maps, a property's type a string or a list, its nested
// properties kept in their order. It also prints the tag Ollama's tool parser (its tools/template.go) looks
// for in a model's output.

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

type PropertyType []string

func (p *PropertyType) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*p = PropertyType{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(p))
}

func (p PropertyType) MarshalJSON() ([]byte, error) {
	if len(p) == 1 {
		return json.Marshal(p[0])
	}
	return json.Marshal([]string(p))
}

type Property struct {
	AnyOf       []Property      `json:"anyOf,omitempty"`
	Type        PropertyType    `json:"type,omitempty"`
	Items       any             `json:"items,omitempty"`
	Description string          `json:"description,omitempty"`
	Enum        []any           `json:"enum,omitempty"`
	Properties  json.RawMessage `json:"properties,omitempty"`
	Required    []string        `json:"required,omitempty"`
}

type Parameters struct {
	Type       string              `json:"type"`
	Defs       any                 `json:"$defs,omitempty"`
	Items      any                 `json:"items,omitempty"`
	Required   []string            `json:"required,omitempty"`
	Properties map[string]Property `json:"properties"`
}

type Function struct {
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Parameters  Parameters `json:"parameters"`
}

type Tool struct {
	Type     string   `json:"type"`
	Items    any      `json:"items,omitempty"`
	Function Function `json:"function"`
}

type Call struct {
	Function struct {
		Name      string
		Arguments map[string]any
	}
}

type Message struct {
	Role, Content string
	ToolCalls     []Call
}

func collate(messages []Message) []*Message {
	var out []*Message
	for i := range messages {
		m := &messages[i]
		if n := len(out); n > 0 && out[n-1].Role == m.Role && m.Role != "tool" {
			out[n-1].Content += "\\n\\n" + m.Content
		} else {
			out = append(out, m)
		}
	}
	return out
}

func branches(n parse.Node) []*parse.ListNode {
	switch n := n.(type) {
	case *parse.IfNode:
		return []*parse.ListNode{n.List, n.ElseList}
	case *parse.RangeNode:
		return []*parse.ListNode{n.List, n.ElseList}
	case *parse.WithNode:
		return []*parse.ListNode{n.List, n.ElseList}
	case *parse.ListNode:
		return []*parse.ListNode{n}
	}
	return nil
}

func namesToolCalls(pipe *parse.PipeNode) bool {
	for _, cmd := range pipe.Cmds {
		for _, arg := range cmd.Args {
			if field, ok := arg.(*parse.FieldNode); ok {
				for _, ident := range field.Ident {
					if ident == "ToolCalls" {
						return true
					}
				}
			}
		}
	}
	return false
}

// the first {{ if }} whose condition holds the field .ToolCalls, searching into blocks in order
func toolCallsIf(list *parse.ListNode) *parse.IfNode {
	if list == nil {
		return nil
	}
	for _, n := range list.Nodes {
		if n, ok := n.(*parse.IfNode); ok && namesToolCalls(n.Pipe) {
			return n
		}
		for _, inner := range branches(n) {
			if found := toolCallsIf(inner); found != nil {
				return found
			}
		}
	}
	return nil
}

// the first text that is not blank, looking into the first nested block met and no further, nor past an action
func firstText(list *parse.ListNode) string {
	if list == nil {
		return ""
	}
	for _, n := range list.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			if len(bytes.TrimSpace(n.Text)) > 0 {
				return string(n.Text)
			}
		case *parse.ActionNode:
			return ""
		case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
			for _, inner := range branches(n) {
				if text := firstText(inner); text != "" {
					return text
				}
			}
			return ""
		}
	}
	return ""
}

func toolTag(root *parse.ListNode) string {
	tag := ""
	if node := toolCallsIf(root); node != nil {
		tag = strings.TrimSpace(strings.SplitN(firstText(node.List), "{", 2)[0])
	}
	if tag == "" {
		return "{"
	}
	return tag
}

func main() {
	var in struct {
		Template string
		Cases    []struct {
			Messages []Message
			Tools    []Tool
		}
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}}
	t := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template))
	out := struct {
		Tag     string
		Prompts []string
	}{Tag: toolTag(t.Tree.Root)}
	for _, c := range in.Cases {
		var b strings.Builder
		data := map[string]any{"Messages": collate(c.Messages), "Tools": c.Tools, "Response": ""}
		if err := t.Execute(&b, data); err != nil {
			panic(err)
		}
		out.Prompts = append(out.Prompts, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
"""


def modelfile_fields(path):
    """FROM / ADAPTER / TEMPLATE / PARAMETER lines of a Modelfile, the template between its triple quotes."""
    text = path.read_text(encoding="utf-8")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    lines = [line for line in text.replace(template, "").splitlines() if line.strip()]
    return template, lines


def test_gguf_export_writes_an_ollama_modelfile_beside_the_file(tmp_path, tokenizer_dir):
    model, path = checkpoint(tmp_path, tiny_config())
    out = export(path, tokenizer_dir, tmp_path / "g" / "m-f16.gguf", "--no_verify")
    modelfile = out.with_suffix(".Modelfile")
    template, lines = modelfile_fields(modelfile)
    assert template == OLLAMA_TEMPLATE
    assert lines[0] == "FROM ./m-f16.gguf" and (modelfile.parent / "m-f16.gguf").is_file()
    assert 'PARAMETER stop "</s>"' in lines
    assert f"PARAMETER temperature {CHAT_TEMPERATURE}" in lines and f"PARAMETER top_p {CHAT_TOP_P}" in lines
    assert f"PARAMETER num_ctx {model.config.max_seq_len}" in lines
    assert not any(line.startswith("ADAPTER") for line in lines)
    assert stat.S_IMODE(os.stat(modelfile).st_mode) == 0o644


@pytest.fixture(scope="module")
def ollama(tmp_path_factory, tokenizer_dir):
    """render(cases) -> (tag, prompts): the exported Modelfile's template run by Go's text/template as Ollama
    runs it (GO_RENDER), each case a list of OpenAI-style messages or a (messages, tools) pair."""
    import shutil
    import subprocess

    if shutil.which("go") is None:
        pytest.skip("needs the Go toolchain to run Ollama's template engine (text/template); not installed")
    folder = tmp_path_factory.mktemp("ollama")
    _, path = checkpoint(folder, tiny_config())
    out = export(path, tokenizer_dir, folder / "m.gguf", "--no_verify")
    template, _ = modelfile_fields(out.with_suffix(".Modelfile"))
    (folder / "render.go").write_text(GO_RENDER, encoding="utf-8")
    env = dict(os.environ, GOCACHE=str(folder / "gocache"), GOPATH=str(folder / "gopath"))
    build = subprocess.run(["go", "build", "-o", str(folder / "render"), str(folder / "render.go")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert build.returncode == 0, build.stderr

    def render(cases):
        cases = [case if isinstance(case, tuple) else (case, None) for case in cases]
        request = json.dumps({"Template": template,
                              "Cases": [as_ollama_gets_it(messages, tools) for messages, tools in cases]})
        done = subprocess.run([str(folder / "render")], input=request, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        return result["Tag"], result["Prompts"]

    return render


def as_ollama_gets_it(messages, tools=None) -> dict:
    """A conversation as Ollama's API hands it to a template: content null -> "", each call's arguments
    parsed into an object (OpenAI sends them as a JSON string)."""
    def calls(message):
        out = []
        for call in message.get("tool_calls") or []:
            function = call.get("function", call)
            arguments = function.get("arguments", {})
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            out.append({"Function": {"Name": function["name"], "Arguments": arguments}})
        return out

    return {"Messages": [{"Role": m["role"], "Content": m.get("content") or "", "ToolCalls": calls(m)}
                         for m in messages],
            "Tools": tools or []}


def ours(tokenizer, messages, tools=None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def test_ollama_template_renders_the_prompts_of_our_chat_template(ollama, tokenizer):
    """Ollama renders prompts with Go's text/template; run the Modelfile's template through it. With tools
    in our key order and calls with one argument, the prompt is ours byte for byte."""
    from tooluse.calculator import CALCULATOR

    plain = [
        [{"role": "user", "content": "为什么天空是蓝色的？"}],
        [{"role": "system", "content": "你是 MiniMind。"}, {"role": "user", "content": "你好"},
         {"role": "assistant", "content": "你好！有什么可以帮你？\n第二行"}, {"role": "user", "content": "1+1=?"}],
        [{"role": "user", "content": "quotes \" and {{ braces }} and <s> stay text"}],
    ]
    question = {"role": "user", "content": "3个苹果每个2元，一共多少钱？"}
    with_tools = [
        [question],  # tools and no system message: a system turn holding only the tools
        [{"role": "system", "content": "你是一个助手。"}, question],
        [{"role": "system", "content": ""}, question],  # an empty system message adds nothing
        [question, {"role": "assistant", "content": "", "tool_calls": [call("calculator", {"expression": "3*2"})]},
         {"role": "tool", "content": "6"}, {"role": "assistant", "content": "一共6元。"},
         {"role": "user", "content": "再买2个呢？"}],
        # as an OpenAI client sends a history: null content, arguments as a JSON string, ids
        [{"role": "system", "content": "你是一个助手。"}, question,
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_1", **call("calculator", '{"expression": "3*2"}')}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "6"}],
        # text before the calls, and two calls: each block on its own line
        [question, {"role": "assistant", "content": "先算总价。", "tool_calls": [
            call("calculator", {"expression": "3*2"}), call("calculator", {"expression": "(3+4)*2"})]},
         {"role": "tool", "content": "6"}, {"role": "tool", "content": "14"}],
        [question, {"role": "assistant", "content": "", "tool_calls": [
            call("calculator", {"expression": "1+2"}), call("calculator", {"expression": "3+4"})]}],
    ]
    cases = plain + [(messages, [CALCULATOR]) for messages in with_tools]
    tag, rendered = ollama(cases)
    expected = [ours(tokenizer, *(case if isinstance(case, tuple) else (case,))) for case in cases]
    assert rendered == expected
    assert tag == "<tool_call>", "Ollama finds tool calls in the model's output by this tag"
    call_turn = expected[len(plain) + 3].split("<s>assistant\n")[1].split("</s>")[0]
    assert call_turn == '<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*2"}}\n</tool_call>'
    assert expected[-2].count("\n<tool_call>\n") == 2 and "先算总价。\n<tool_call>\n" in expected[-2]
    assert '"""' not in OLLAMA_TEMPLATE, "the Modelfile quotes the template in triple quotes"


def test_ollama_template_differs_from_ours_only_as_documented(ollama, tokenizer):
    """Where Go's values cannot give our JSON back (see OLLAMA_TEMPLATE's comment): properties and call
    arguments sorted by name, each property's keys in the order type, description, enum, <, > and & escaped
    in strings, and nested schema compact. Everything else is ours."""
    tool = {"type": "function", "function": {
        "name": "convert", "description": "单位换算 <米> & <厘米>",
        "parameters": {"type": "object", "properties": {
            "value": {"description": "数值", "type": "number"},
            "unit": {"type": "string", "enum": ["m", "cm"], "description": "单位"},
            "options": {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "integer"}}}},
            "required": ["value", "unit"]}}}
    messages = [{"role": "user", "content": "3米是多少厘米？"},
                {"role": "assistant", "content": "", "tool_calls": [call("convert", {"value": 3, "unit": "m<cm"})]},
                {"role": "tool", "content": "300"}]
    _, (rendered,) = ollama([(messages, [tool])])
    assert rendered != ours(tokenizer, messages, [tool])

    # Our template on the same tool and call written in the order Ollama writes them ...
    params = tool["function"]["parameters"]
    reordered = {name: {key: params["properties"][name][key]
                        for key in ("type", "description", "enum", "properties") if key in params["properties"][name]}
                 for name in sorted(params["properties"])}
    as_sorted = {**tool, "function": {**tool["function"], "parameters": {**params, "properties": reordered}}}
    sorted_call = [{**messages[1], "tool_calls": [call("convert", {"unit": "m<cm", "value": 3})]}]
    expected = ours(tokenizer, messages[:1] + sorted_call + messages[2:], [as_sorted])
    # ... with the nested schema compact and <, >, & escaped in the JSON lines
    nested = '"properties": {"z": {"type": "string"}, "a": {"type": "integer"}}'
    assert nested in expected
    expected = expected.replace(nested, '"properties": {"z":{"type":"string"},"a":{"type":"integer"}}')
    escape = lambda line: line.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    expected = "\n".join(escape(line) if line.startswith('{"') else line for line in expected.split("\n"))
    assert rendered == expected
    assert '{"name": "convert", "arguments": {"unit": "m\\u003ccm", "value": 3}}' in rendered
    assert '"description": "单位换算 \\u003c米\\u003e \\u0026 \\u003c厘米\\u003e"' in rendered


def test_llama_cpp_agrees_when_installed(tmp_path, tokenizer_dir):
    """Against llama.cpp itself, through llama-cpp-python when it is installed (it is not in CI)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    model, path = checkpoint(tmp_path, tiny_config(), scale=0.1)
    out = export(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32", "--no_verify")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    prompt = [1, 40, 41, 42, 43, 44, 45]
    llm.eval(prompt)
    theirs = torch.from_numpy(np.array(llm.scores[:len(prompt)], dtype=np.float32))
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0]
    assert (theirs - ours).abs().max() < 1e-3
    assert json.loads(json.dumps(llm.metadata)).get("tokenizer.ggml.pre") == "gpt-2"
    # llama.cpp's own tokenizer: each call tag is one token even without special-token parsing, and
    # detokenizing keeps it (both hold for USER_DEFINED tokens, neither for CONTROL ones)
    tool_ids = [model.config.vocab_size - 2, model.config.vocab_size - 1]
    block = b'<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*2"}}\n</tool_call>'
    ids = llm.tokenize(block, add_bos=False, special=False)
    assert [ids[0], ids[-1]] == tool_ids and llm.tokenize(b"<tool_call>", add_bos=False, special=False) == tool_ids[:1]
    assert llm.detokenize(ids) == block

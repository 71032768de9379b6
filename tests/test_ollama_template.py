"""export_model.py --format gguf writes an Ollama Modelfile beside the file. Its fields, and its chat template
run by Go's text/template as Ollama runs it (where the Go toolchain is installed): the prompts it renders are
those of our chat template, but for the documented differences.
"""
import json
import os
import stat

import pytest
from conftest import export_gguf, modelfile_fields, save_checkpoint, tiny_config

from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P
from model.tokenizer import OLLAMA_TEMPLATE

pytest.importorskip("gguf")


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


def test_gguf_export_writes_an_ollama_modelfile_beside_the_file(tmp_path, tokenizer_dir):
    model, path = save_checkpoint(tmp_path, tiny_config())
    out = export_gguf(path, tokenizer_dir, tmp_path / "g" / "m-f16.gguf", "--no_verify")
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
    _, path = save_checkpoint(folder, tiny_config())
    out = export_gguf(path, tokenizer_dir, folder / "m.gguf", "--no_verify")
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

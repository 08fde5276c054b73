"""The Go text/template subset that renders Ollama's model TEMPLATEs, and Ollama's way of rendering a chat.

The model templates below are copied from Ollama's repository (template/*.gotmpl), and the expected
prompts are Ollama's own golden outputs for them (template/testdata/<name>/system-user-assistant-user),
which Go's text/template produced.
"""

import pytest
from hyperllama_common.gotemplate import Template, TemplateError, parse, render_chat
from hypothesis import given
from hypothesis import strategies as st

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]
SYS, U1, A1, U2 = (m["content"] for m in CHAT)

LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
GEMMA3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{- if and (eq $i 1) $.System }}
{{ $.System }}
{{ end }}
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- if $last }}<start_of_turn>model
{{ end }}
{{- end }}
"""
CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"  # noqa: E501
MISTRAL = """[INST] {{ range $index, $_ := .Messages }}
{{- if eq .Role "system" }}{{ .Content }}

{{ else if eq .Role "user" }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>[INST] {{ end }}
{{- end }}"""
PHI3 = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
GEMMA = """{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- if not $system }}{{ $system = .Content }}
{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}
{{- end }}
{{- continue }}
{{- else if eq .Role "user" }}<start_of_turn>user
{{- if $system }}
{{ $system }}
{{- $system = "" }}
{{- end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{- end }}
{{ .Content }}<end_of_turn>
{{ end }}<start_of_turn>model
"""
FALCON = """{{- range .Messages }}
{{- if eq .Role "system" }}System: {{ .Content }}
{{ continue }}
{{- else if eq .Role "user" }}User:
{{- else if eq .Role "assistant" }}Falcon:
{{- end }}
{{ .Content }}
{{ end }}Falcon:
"""

REAL_TEMPLATES = {
    "llama3": (
        LLAMA3,
        f"<|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U2}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "gemma3": (
        GEMMA3,
        f"<start_of_turn>user\n{SYS}\n\n{U1}<end_of_turn>\n"
        f"<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{U2}<end_of_turn>\n"
        "<start_of_turn>model\n\n",
    ),
    "chatml": (
        CHATML,
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{U1}<|im_end|>\n"
        f"<|im_start|>assistant\n{A1}<|im_end|>\n<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n",
    ),
    "mistral": (MISTRAL, f"[INST] {SYS}\n\n{U1}[/INST] {A1}</s>[INST] {U2}[/INST]"),
    "phi3": (
        PHI3,
        f"<|system|>\n{SYS}<|end|>\n<|user|>\n{U1}<|end|>\n<|assistant|>\n{A1}<|end|>\n"
        f"<|user|>\n{U2}<|end|>\n<|assistant|>\n",
    ),
    "gemma": (
        GEMMA,
        f"<start_of_turn>user\n{SYS}\n{U1}<end_of_turn>\n<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{U2}<end_of_turn>\n<start_of_turn>model\n",
    ),
    "falcon": (FALCON, f"System: {SYS}\nUser:\n{U1}\nFalcon:\n{A1}\nUser:\n{U2}\nFalcon:\n"),
}


def render(template: str, **values) -> str:
    values.setdefault("messages", [])
    return parse(template).render(**values)


@pytest.mark.parametrize("name", list(REAL_TEMPLATES))
def test_real_model_templates_render_ollamas_golden_prompts(name):
    template, expected = REAL_TEMPLATES[name]
    tmpl = parse(template)
    assert tmpl.uses_messages
    assert render_chat(tmpl, CHAT) == expected
    assert tmpl.render(messages=CHAT, system=SYS) == expected  # the same, run directly


def test_gemma3_last_marks_only_the_final_message():
    tmpl = (
        "{{- range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        "{{ $i }}{{ if $last }}!{{ end }}{{ end }}"
    )
    assert render(tmpl, messages=CHAT) == "0123!"


def test_trim_markers_remove_all_adjacent_whitespace_including_newlines():
    assert render("a \n\t {{- .System -}} \n\n b", system="X") == "aXb"
    assert render("a  {{- .System }}  b", system="X") == "aX  b"
    assert render("a  {{ .System -}}  \n b", system="X") == "a  Xb"
    assert render("a {{-3}} b") == "a -3 b"  # "{{-" without a space is a negative number, as in Go
    assert render("a\n{{- /* note */ -}}\nb") == "ab"
    assert render("a{{/* a\nmulti-line comment */}}b") == "ab"


def test_fields_variables_and_dollar():
    tmpl = (
        "{{ $first := index .Messages 0 }}{{ range .Messages }}{{ $.System }}/{{ $first.Role }}/{{ .Role }} "
    )
    tmpl += "{{ end }}"
    assert render(tmpl, messages=CHAT[:2], system="S") == "S/system/system S/system/user "
    assert render("{{ (index .Messages 1).Content }}", messages=CHAT) == U1
    assert render("{{ with $ }}{{ .Prompt }}{{ end }}", prompt="P") == "P"


def test_if_else_if_else():
    tmpl = '{{ if eq .Prompt "a" }}A{{ else if eq .Prompt "b" "c" }}BC'
    tmpl += "{{ else if .Prompt }}other{{ else }}empty{{ end }}"
    assert [render(tmpl, prompt=p) for p in ("a", "b", "c", "z", "")] == ["A", "BC", "BC", "other", "empty"]


def test_go_truthiness():
    # false, 0, nil and empty strings and lists are false; anything else (a message, too) is true
    conds = ['""', '"x"', "0", "1", "0.0", "2.5", "true", "false", ".Messages", "(not nil)"]
    tmpl = "".join("{{ if " + c + " }}T{{ else }}F{{ end }}" for c in conds)
    assert render(tmpl) == "FTFTFTTFFT"
    assert (
        render("{{ if .Messages }}T{{ end }}{{ if index .Messages 0 }}T{{ end }}", messages=CHAT[:1]) == "TT"
    )
    assert (
        render('{{ if and "x" 1 true }}T{{ end }}{{ if or "" 0 false .Messages }}T{{ else }}F{{ end }}')
        == "TF"
    )
    assert (
        render("{{ if .Tools }}tools{{ end }}{{ if .Think }}think{{ end }}{{ if .IsThinkSet }}set{{ end }}")
        == ""
    )


def test_range_variants_else_break_and_continue():
    msgs = CHAT
    assert render("{{ range $i, $m := .Messages }}{{ $i }}{{ $m.Role | len }} {{ end }}", messages=msgs) == (
        "06 14 29 34 "
    )
    assert render("{{ range $m := .Messages }}{{ $m.Role }},{{ end }}", messages=msgs[:2]) == "system,user,"
    assert render("{{ range .Messages }}x{{ else }}none{{ end }}") == "none"
    assert render("{{ range .Tools }}x{{ else }}no tools{{ end }}") == "no tools"
    tmpl = '{{ range .Messages }}{{ if eq .Role "system" }}{{ continue }}{{ end }}'
    tmpl += '{{ if eq .Role "assistant" }}{{ break }}{{ end }}{{ .Content }}{{ end }}'
    assert render(tmpl, messages=msgs) == U1


def test_variable_scoping_declaration_and_assignment():
    assert render("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}") == "21"
    assert render("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}") == "2"
    assert render(
        "{{ $n := 0 }}{{ range .Messages }}{{ $n = len .Content }}{{ end }}{{ $n }}", messages=CHAT
    ) == str(len(U2.encode()))
    assert render("{{ if $x := .Prompt }}[{{ $x }}]{{ else }}({{ $x }}){{ end }}", prompt="p") == "[p]"
    with pytest.raises(TemplateError, match=r"undefined variable '\$y'"):
        parse("{{ range .Messages }}{{ $y := 1 }}{{ end }}{{ $y }}")
    with pytest.raises(TemplateError, match=r"undefined variable '\$z'"):
        parse("{{ $z = 1 }}")


def test_with_rebinds_dot_and_has_else():
    assert render("{{ with .System }}<{{ . }}>{{ else }}none{{ end }}", system="S") == "<S>"
    assert render("{{ with .System }}<{{ . }}>{{ else }}none{{ end }}") == "none"


def test_functions():
    assert render(
        '{{ eq 1 2 3 1 }} {{ ne "a" "b" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} {{ ge 1 2 }}'
    ) == ("true true true true true false")
    assert render('{{ and 1 "" 2 }}|{{ or 0 "" "x" }}|{{ not 0 }}') == "|x|true"
    assert render('{{ len "héllo" }} {{ len .Messages }}', messages=CHAT) == "6 4"  # Go's len counts bytes
    assert render("{{ range slice .Messages 1 3 }}{{ .Role }} {{ end }}", messages=CHAT) == "user assistant "
    assert render('{{ slice "hello" 1 3 }}') == "el"
    assert render('{{ print 1 2 "a" "b" 3 }}|{{ println "x" 1 }}') == "1 2ab3|x 1\n"
    assert (
        render('{{ printf "%s=%d %v %q %5s|%-3d|%%" "k" 42 true "a\\"b" "r" 7 }}')
        == 'k=42 true "a\\"b"     r|7  |%'
    )
    assert render('{{ printf "%d" "x" }}') == "%!d(string=x)"
    assert render("{{ json .Prompt }}", prompt='<a & "b">') == '"\\u003ca \\u0026 \\"b\\"\\u003e"'
    assert render('{{ .Prompt | printf "%s!" | len }}', prompt="abc") == "4"
    assert render("{{ (len (slice $.Messages 1)) }}", messages=CHAT) == "3"
    assert len(render("{{ currentDate }}")) == 10
    assert render("{{ toTypeScriptType .Prompt }}") == "any"
    assert (
        render('{{ "tab\\there" }} {{ `raw\\n` }} {{ 2.5 }} {{ true }} {{ print nil }}')
        == "tab\there raw\\n 2.5 true <nil>"
    )


def test_template_without_messages_is_rendered_turn_by_turn_from_a_chat():
    tmpl = parse("{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>")
    assert not tmpl.uses_messages
    assert render_chat(tmpl, CHAT) == f"<|system|>{SYS}<|user|>{U1}<|assistant|>{A1}<|user|>{U2}<|assistant|>"
    assert render_chat(tmpl, CHAT[1:2], system_default="D") == f"<|system|>D<|user|>{U1}<|assistant|>"
    assert render_chat(tmpl, CHAT[:2], system_default="D") == f"<|system|>{SYS}<|user|>{U1}<|assistant|>"


# From Ollama's TestExecuteWithMessages: a legacy template (.System/.Prompt/.Response) and one that
# ranges over .Messages must give the same prompt.
MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_MESSAGES = (
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] '
    '{{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n'
    "{{- end }}"
)
CHATML_LEGACY = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
    "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


@pytest.mark.parametrize(
    "template",
    [MISTRAL_LEGACY, MISTRAL_LEGACY + "{{ .Response }}", MISTRAL_MESSAGES],
    ids=["no-response", "response", "messages"],
)
def test_legacy_and_messages_templates_agree_as_in_ollama(template):
    chat = [{"role": "system", "content": "Be nice!"}, *CHAT[1:]]
    assert render_chat(template, chat) == f"[INST] Be nice!\n\n{U1}[/INST] {A1}[INST] {U2}[/INST] "


def test_legacy_template_continues_a_trailing_assistant_message_and_stops_after_response():
    chat = [*CHAT, {"role": "assistant", "content": "Sure, here"}]
    assert render_chat(CHATML_LEGACY, chat) == (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"
        f"{A1}<|im_end|>\n<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\nSure, here"
    )


def test_render_chat_merges_consecutive_messages_of_one_role():
    chat = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert render_chat(CHATML, chat) == "<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>assistant\n"


def test_render_chat_joins_every_system_message_into_system():
    chat = [
        {"role": r, "content": c} for r, c in [("system", "a"), ("user", "u"), ("system", "b"), ("user", "v")]
    ]
    assert render_chat("{{ .System }}|{{ range .Messages }}{{ .Role }},{{ end }}", chat) == (
        "a\n\nb|system,user,system,user,"
    )


def test_a_template_that_never_mentions_the_reply_gets_response_appended_as_ollama_does():
    assert parse("{{ .Prompt }}").render(messages=[], prompt="p", response="r") == "pr"
    assert parse("{{ .Prompt }}{{ .Response }}!").render(messages=[], prompt="p", response="r") == "pr!"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("hello {{ .Prompt ", "line 1: unclosed action"),
        ("a\nb {{ nope .Prompt }}", "line 2: function 'nope' not defined"),
        ("{{ .Prompt }}{{ end }}", r"line 1: \{\{end\}\} without a matching \{\{if\}\}"),
        ("{{ if .Prompt }}x", r"\{\{if\}\} has no matching \{\{end\}\}"),
        ("{{ range .Messages }}{{ else }}{{ else }}{{ end }}", r"\{\{else\}\} has no matching \{\{end\}\}"),
        ("{{ break }}", r"\{\{break\}\} must stand alone inside a \{\{range\}\}"),
        ('{{ define "x" }}{{ end }}', r"\{\{define\}\} is not supported"),
        ("{{ }}", "missing value for command"),
        ('{{ "open }}', "unexpected"),
        ("{{/* open }}", "unclosed comment"),
        ("{{ .Prompt | .System }}", "non executable command"),
        ('{{ printf "%s"$.Prompt }}', "unexpected"),
    ],
)
def test_parse_errors_say_what_and_where(template, message):
    with pytest.raises(TemplateError, match=message):
        parse(template)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{{ range .Messages }}\n{{ .Bogus }}{{ end }}",
            "line 2: can't evaluate field Bogus: it is none of Role, Content",
        ),
        ("{{ .Nope }}", "can't evaluate field Nope"),
        ("{{ .Prompt.X }}", "can't evaluate field X in type string"),
        ('{{ eq 1 "1" }}', "incompatible types for comparison"),
        ("{{ index .Messages 9 }}", "can't index item"),
        ("{{ slice .Messages 5 }}", "slice index out of range"),
        ("{{ len 3 }}", "len of type int"),
        ("{{ not }}", "wrong number of args for not"),
        ('{{ printf "%x" 1 }}', "not supported"),
    ],
)
def test_render_errors_say_what_and_where(template, message):
    tmpl = parse(template)  # these parse; they fail only when run
    with pytest.raises(TemplateError, match=message):
        tmpl.render(messages=CHAT)


def test_template_is_reusable_and_the_public_api():
    tmpl = parse(CHATML)
    assert isinstance(tmpl, Template)
    assert issubclass(TemplateError, ValueError)
    first = tmpl.render(messages=CHAT[1:2])
    assert (
        tmpl.render(messages=CHAT[1:2])
        == first
        == "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n"
    )


@given(st.text().filter(lambda s: "{{" not in s))
def test_text_without_actions_renders_to_itself(text):
    assert parse(text).render(messages=[]) == text


# Qwen 2.5's TEMPLATE in Ollama's library (its tools part): .Tools printed through their String
# methods, an assistant's .ToolCalls, and tool results.
QWEN25_TOOLS = """{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "enum": ["c", "f"], "minimum": 3},
                "city": {"type": "string", "description": "City name"},
            },
            "required": ["city"],
        },
    },
}


def test_tools_and_tool_calls_render_as_ollama_prints_them():
    chat = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                },
            ],
        },  # fmt: skip
        {"role": "tool", "content": "18C", "tool_call_id": "call_1", "name": "get_weather"},
    ]
    # Go's json.Marshal of api.ToolFunction: its fields in order, properties sorted by name, only the
    # property fields Ollama's type has ("minimum" is dropped).
    function = (
        '{"name":"get_weather","description":"Weather in a city","parameters":{"type":"object",'
        '"required":["city"],"properties":{"city":{"type":"string","description":"City name"},'
        '"unit":{"type":"string","enum":["c","f"]}}}}'
    )
    assert render_chat(QWEN25_TOOLS, chat, tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\n\n<tools>\n"
        f'{{"type": "function", "function": {function}}}\n'
        "</tools><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without tools the system turn is left out, as the template says.
    assert (
        render_chat(QWEN25_TOOLS, chat[:1])
        == "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tool_fields_read_by_name_and_json():
    tmpl = (
        "{{ range .Tools }}{{ .Type }}:{{ .Function.Name }}({{ range $k, $v := .Function.Parameters.Properties }}"  # noqa: E501
        "{{ $k }}:{{ toTypeScriptType $v.Type }},{{ end }}) req={{ .Function.Parameters.Required }}{{ end }}"
        "|{{ json .Tools }}|{{ range .Messages }}{{ range .ToolCalls }}{{ .ID }}={{ .Function.Arguments.city }}"  # noqa: E501
        "{{ end }}{{ .ToolName }}{{ .ToolCallID }}{{ end }}"
    )
    chat = [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "x", "tool_call_id": "c1", "name": "get_weather"},
    ]  # fmt: skip
    out = render_chat(tmpl, chat, tools=[WEATHER_TOOL])
    head, listed, calls = out.split("|")
    assert head == "function:get_weather(city:string,unit:string,) req=[city]"
    assert listed.startswith('[{"type":"function","function":{"name":"get_weather"')
    assert calls == "c1=Osloget_weatherc1"


def test_a_template_knows_tools_when_its_code_reads_them() -> None:
    from hyperllama_common.chat_tools import knows_tools

    assert knows_tools("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}")
    assert knows_tools("{%- for t in tools -%}\n{{ t }}{%- endfor %}")
    # The word in the template's own text is not the variable.
    assert not knows_tools(
        "You are a helpful assistant with tools.{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert not knows_tools("{{ toolset }}{{ messages }}")
    assert knows_tools("{{ range .Tools }}{{ .Function.Name }}{{ end }}", go=True)
    assert not knows_tools("{{ .Messages }} with tools", go=True)

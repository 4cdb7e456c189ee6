"""Ollama Modelfiles for exported GGUF files, and the minimal Go-template renderer that checks them.

Ollama formats chats with a Go template (the Modelfile's TEMPLATE), not with the Jinja chat
template inside the GGUF. `build_modelfile` derives that Go template from the tokenizer's chat
template by rendering probe conversations, so both produce the same text for the conversations a
task sends (system + user, then the assistant's turn). `render_go_template` understands exactly the
subset `build_modelfile` writes, and Ollama's documented chat variables, which is what lets
`chat_template_roundtrip` compare the Modelfile's rendering token by token:

    {{ range .Messages }} ... {{ end }}              loop over the conversation
    {{ if eq .Role "system" }} ... {{ else if eq .Role "user" }} ... {{ else }} ... {{ end }}
    {{ .Role }}  {{ .Content }}                      fields of the current message
    {{- ... -}}                                      trim whitespace on that side
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from finetune_loop.core.common.files import write_text_atomic

_ROLES = ("system", "user", "assistant")
# Probe contents: text no chat template adds, changes or strips.
_PROBES = {role: f"\u27e6{role}-content\u27e7" for role in _ROLES}


class ModelfileError(ValueError):
    """The chat template cannot be expressed as, or the Modelfile does not hold, an Ollama template."""


@dataclass(frozen=True)
class Modelfile:
    gguf_name: str
    template: str
    stops: tuple[str, ...]
    system: str | None

    def text(self) -> str:
        lines = [f"FROM ./{self.gguf_name}", f'TEMPLATE """{self.template}"""']
        if self.system:
            lines.append(f'SYSTEM """{self.system}"""')
        lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in self.stops]
        # Deterministic answers, as the model was evaluated.
        lines.append("PARAMETER temperature 0")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        write_text_atomic(path, self.text())
        return path


def build_modelfile(tokenizer, gguf_name: str, system: str | None) -> Modelfile:
    """The Modelfile for `gguf_name` whose TEMPLATE renders chats as the tokenizer's chat template does.

    The template is split into a prefix and suffix per role by rendering one more message at a time,
    which works for templates that render each message independently (ChatML and most instruct
    templates); anything else is an error here, or a failed chat_template_roundtrip check.
    """

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    conversation: list[dict[str, str]] = []
    rendered = ""
    pieces: dict[str, tuple[str, str]] = {}
    for role in _ROLES:
        conversation.append({"role": role, "content": _PROBES[role]})
        text = render(conversation)
        if not text.startswith(rendered):
            raise ModelfileError(f"the chat template re-renders earlier messages when a {role} message follows")
        turn = text[len(rendered):]
        if turn.count(_PROBES[role]) != 1:
            raise ModelfileError(f"the chat template does not render a {role} message's content exactly once")
        pieces[role] = tuple(turn.split(_PROBES[role]))  # type: ignore[assignment]
        rendered = text
    before_answer = render(conversation[:2])
    generation_prompt = render(conversation[:2], generation=True)[len(before_answer):]

    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}'
        for i, (role, (prefix, suffix)) in enumerate(pieces.items())
    )
    template = f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{generation_prompt}"
    if '"""' in template or "{{" in "".join(p for pair in pieces.values() for p in pair):
        raise ModelfileError("the chat template's text contains '\"\"\"' or '{{', which a Modelfile TEMPLATE cannot hold")
    # Generation ends where training ended every answer: the EOS token that closes the assistant turn.
    eos = tokenizer.eos_token
    if not eos or eos not in pieces["assistant"][1]:
        raise ModelfileError(f"the chat template does not close the assistant turn with the EOS token {eos!r}")
    return Modelfile(gguf_name, template, (eos,), system)


_TRIPLE = re.compile(r'^(TEMPLATE|SYSTEM)\s+"""(.*?)"""', re.DOTALL | re.MULTILINE)
_STOP = re.compile(r"^PARAMETER\s+stop\s+(.+)$", re.MULTILINE)
_FROM = re.compile(r"^FROM\s+(\S+)", re.MULTILINE)


def parse_modelfile(text: str) -> Modelfile:
    """Read back the FROM, TEMPLATE, SYSTEM and stop parameters of a Modelfile."""
    blocks = dict(_TRIPLE.findall(text))
    source = _FROM.search(text)
    if source is None or "TEMPLATE" not in blocks:
        raise ModelfileError("the Modelfile has no FROM line or no TEMPLATE")
    stops = tuple(json.loads(value) if value.startswith('"') else value.strip() for value in _STOP.findall(text))
    return Modelfile(source.group(1).removeprefix("./"), blocks["TEMPLATE"], stops, blocks.get("SYSTEM"))


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


def render_go_template(template: str, messages: list[dict[str, str]]) -> str:
    """Render the Go-template subset described in the module docstring for one conversation."""
    # Tokens: ("text", s) or ("action", s); trim markers applied to neighbouring text first.
    tokens: list[tuple[str, str]] = []
    position = 0
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        position = match.end()
        if match.group(3):
            rest = template[position:]
            position += len(rest) - len(rest.lstrip())
    tokens.append(("text", template[position:]))

    node, end = _parse_block(tokens, 0)
    if end != len(tokens):
        raise ModelfileError(f"unexpected {{{{ {tokens[end][1]} }}}} in the template")
    return "".join(_render(node, {"Messages": messages}))


def _parse_block(tokens, index):
    """Parse until an unmatched end/else; returns (list of nodes, index of the stopping token)."""
    nodes = []
    while index < len(tokens):
        kind, value = tokens[index]
        if kind == "text":
            nodes.append(("text", value))
            index += 1
        elif value == "range .Messages":
            body, index = _parse_block(tokens, index + 1)
            _expect(tokens, index, "end")
            nodes.append(("range", body))
            index += 1
        elif value.startswith("if "):
            branches, index = _parse_if(tokens, index)
            nodes.append(("if", branches))
        elif value in (".Role", ".Content"):
            nodes.append(("field", value[1:].lower()))
            index += 1
        elif value == "end" or value.startswith("else"):
            return nodes, index
        else:
            raise ModelfileError(f"unsupported template action {{{{ {value} }}}}")
    return nodes, index


def _parse_if(tokens, index):
    branches = []
    condition = tokens[index][1][len("if "):]
    while True:
        body, index = _parse_block(tokens, index + 1)
        branches.append((_condition(condition), body))
        value = tokens[index][1] if index < len(tokens) else ""
        if value == "end":
            return branches, index + 1
        if value.startswith("else if "):
            condition = value[len("else if "):]
        elif value == "else":
            condition = None
        else:
            raise ModelfileError("an {{ if }} block is not closed with {{ end }}")


_EQ_ROLE = re.compile(r'^eq \.Role "([a-z]+)"$')


def _condition(condition: str | None):
    if condition is None:
        return None
    match = _EQ_ROLE.match(condition)
    if match is None:
        raise ModelfileError(f"unsupported condition {condition!r}; only eq .Role \"<role>\" is understood")
    return match.group(1)


def _expect(tokens, index, action):
    if index >= len(tokens) or tokens[index] != ("action", action):
        raise ModelfileError(f"expected {{{{ {action} }}}} in the template")


def _render(nodes, scope):
    for kind, value in nodes:
        if kind == "text":
            yield value
        elif kind == "field":
            if value not in scope:
                raise ModelfileError(f"{{{{ .{value.title()} }}}} used outside {{{{ range .Messages }}}}")
            yield scope[value]
        elif kind == "range":
            for message in scope["Messages"]:
                yield from _render(value, {"role": message["role"], "content": message["content"]})
        else:  # if
            for role, body in value:
                if role is None or scope.get("role") == role:
                    yield from _render(body, scope)
                    break

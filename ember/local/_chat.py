"""Chat formatting: messages to the prompt text the model was fine-tuned on.

A GGUF stores its chat template as Jinja source (``tokenizer.chat_template``). Rendering
Jinja would add a dependency for one string per request, so, like llama.cpp's
``llm_chat_detect_template``, we recognise the template's family by its markers and
render that family natively. The template's own default system prompt (SmolLM2's
"You are a helpful AI assistant named SmolLM, ...") is read from the template text, so
the prompt matches what the Jinja template would have produced.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from ember.local._errors import UnsupportedModelError

__all__ = ["ChatFormat", "chat_format_from_template"]


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """One chat template family: how a turn is written, and the token that ends a turn."""

    name: str
    turn_start: str  # formatted with role=
    turn_end: str
    default_system: str | None = None
    strip_content: bool = False

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text of ``{"role", "content"}`` messages (checked by the caller)."""
        parts = []
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            parts.append(self.turn_start.format(role="system") + self.default_system + self.turn_end)
        for m in messages:
            content = m["content"].strip() if self.strip_content else m["content"]
            parts.append(self.turn_start.format(role=m["role"]) + content + self.turn_end)
        if add_generation_prompt:
            parts.append(self.turn_start.format(role="assistant"))
        return "".join(parts)


def _template_default_system(template: str, header: str, end: str) -> str | None:
    """The literal system message a template writes when the caller gives none, if any."""
    match = re.search(re.escape(header) + r"(?:\n|\\n)(.*?)" + re.escape(end), template, flags=re.DOTALL)
    if match is None or any(c in match.group(1) for c in "'\"{}+"):  # an expression, not a literal
        return None
    return match.group(1)


def chat_format_from_template(template: str | None, *, model: str | None = None) -> ChatFormat:
    """The :class:`ChatFormat` of a GGUF's Jinja ``template``; ChatML when there is none
    (llama.cpp's default too). Raises :class:`UnsupportedModelError` for another family;
    ``model`` only names the file in that error."""
    if template is None or "<|im_start|>" in template:
        chatml = ChatFormat("chatml", "<|im_start|>{role}\n", "<|im_end|>\n")
        default = _template_default_system(template or "", "<|im_start|>system", "<|im_end|>")
        return dataclasses.replace(chatml, default_system=default)
    if "<|start_header_id|>" in template and "<|eot_id|>" in template:
        return ChatFormat("llama3", "<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>", strip_content=True)
    raise UnsupportedModelError(
        "the model's chat template is not one ember.local can render (ChatML, Llama 3); "
        f"it begins {template[:80]!r}. Use LocalModel.generate(..., chat=False) with a prompt you format yourself",
        model=model,
    )

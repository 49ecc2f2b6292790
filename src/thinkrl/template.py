"""Prompt templates.

`R1_ZERO` is the template of DeepSeek-R1-Zero (DeepSeek-R1 paper, Table 1), verbatim; the
question replaces `prompt`. The alternative is the tokenizer's own chat template.
"""

from __future__ import annotations

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)

TEMPLATES = {"r1_zero": R1_ZERO}


def render(question: str, template: str = "r1_zero", tokenizer=None) -> str:
    """The prompt text for one question.

    template: "r1_zero" (default), "chat" (the tokenizer's chat template, generation prompt
    appended), "none" (the question as it is), or a format string with `{prompt}`.
    """
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template; use template: r1_zero")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    if template == "none":
        return question
    fmt = TEMPLATES.get(template, template)
    if "{prompt}" not in fmt:
        raise ValueError(f"unknown template {template!r}: use r1_zero, chat, none, or a string containing {{prompt}}")
    return fmt.replace("{prompt}", question)

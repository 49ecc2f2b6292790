"""Prompt templates: the R1-Zero template verbatim, and the tokenizer's chat template."""

import pytest

from thinkrl.template import R1_ZERO, render

# DeepSeek-R1 paper, Table 1 (docs/R1-PIPELINE.md §R1-Zero), with "prompt" replaced by the question
EXPECTED = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: What is 2+2?. Assistant:"
)


def test_r1_zero_template_is_verbatim():
    assert render("What is 2+2?") == EXPECTED
    assert R1_ZERO.count("{prompt}") == 1


def test_custom_and_plain_templates():
    assert render("q", "Q: {prompt}\nA:") == "Q: q\nA:"
    assert render("q", "none") == "q"
    with pytest.raises(ValueError, match="r1_zero, chat, none"):
        render("q", "my_template")


def test_chat_template_uses_the_tokenizer(qwen2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen2_dir)
    with pytest.raises(ValueError, match="chat_template"):
        render("q", "chat", tok)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert render("What is 2+2?", "chat", tok) == "<user>What is 2+2?<assistant>"

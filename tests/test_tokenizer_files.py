"""A model's own tokenizer is the one thinkrl uses and saves.

transformers 5 builds the tokenizer of a qwen2 model (and of other model types it maps to a class)
as Qwen2Tokenizer, which replaces the normalizer and pre-tokenizer of the directory's
tokenizer.json with Qwen2's (NFC, Qwen2's split regex). Here a user's tokenizer (digits split
one by one, then byte-level BPE, no normalizer) sits beside a Qwen2 config: `load_tokenizer`,
a checkpoint and a final save must all encode as that tokenizer.json does, read by the
`tokenizers` library itself (the reference)."""

from __future__ import annotations

import json
import shutil

import pytest

from thinkrl import policy
from thinkrl.checkpoint import save_checkpoint, save_pretrained

CORPUS = ["What is 347+85? Let's add: 7+5=12, carry 1.", "café naïve résumé Ångström",
          "e\u0301te\u0301 cafe\u0301", "def f(x):\n\treturn x  # note\r\n", "(hello) [world] {foo}",
          "IT'S DON'T we're", "Ω≈ç 東京 😀 ½ Ⅻ ①", "line one\n\n\nline two   end",
          "<think> 12 </think> <answer> 97 </answer>", "a\u00a0b\u2003c", "x\t y"]
# NFD and NFC forms, the Angstrom sign (NFC makes it Å), newline runs after punctuation, digits, spaces
STRINGS = CORPUS + ["été café", "\u212b", "x!!!\n\ny", "(hi", "\tb", "'S", "a  b", " 12", "Ｈｅｌｌｏ", "ﬁ",
                    "x \n y", "", " ", "<|eos|>", "<|pad|>x", "12345678901234567890"]
PIPELINE = ("normalizer", "pre_tokenizer", "model", "decoder", "added_tokens")
CHAT = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def _user_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|eos|>", "<|pad|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|pad|>", chat_template=CHAT)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    from transformers import Qwen2Config

    d = tmp_path_factory.mktemp("user_model")
    tok = _user_tokenizer()
    tok.save_pretrained(d)
    Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(d)
    return d


def _file(d) -> dict:
    return json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))


def _reference_ids(d) -> list[list[int]]:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(d / "tokenizer.json"))
    return [ref.encode(s).ids for s in STRINGS]


def _ids(tok) -> list[list[int]]:
    return [tok(s).input_ids for s in STRINGS]


def _pipeline(tok) -> dict:
    spec = json.loads(tok.backend_tokenizer.to_str())
    return {k: spec[k] for k in PIPELINE}


def test_transformers_alone_rewrites_this_tokenizer(user_dir):
    """The premise of the other tests: AutoTokenizer by itself gets this directory wrong."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(user_dir)
    wrong = [s for s, a, r in zip(STRINGS, _ids(auto), _reference_ids(user_dir)) if a != r]
    assert wrong and auto.backend_tokenizer.normalizer is not None, (
        f"{type(auto).__name__} now keeps the file's pipeline: load_tokenizer's fallback may no longer be needed")


def test_load_tokenizer_uses_the_file(user_dir):
    tok = policy.load_tokenizer(str(user_dir))
    assert _ids(tok) == _reference_ids(user_dir)
    file = _file(user_dir)
    assert _pipeline(tok) == {k: file[k] for k in PIPELINE}
    assert len(tok) == len(file["model"]["vocab"])  # no token added
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|eos|>", "<|pad|>", "left")
    assert tok.apply_chat_template([{"role": "user", "content": "7+5"}], tokenize=False) == "[user] 7+5\n"


def test_checkpoint_and_final_save_keep_the_tokenizer(user_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = policy.load_tokenizer(str(user_dir))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config.from_pretrained(user_dir))
    ckpt = save_checkpoint(tmp_path / "checkpoints", 3, model, tok, {"step": 3})
    final = tmp_path / "final"
    save_pretrained(model, tok, final)
    want_ids, file = _reference_ids(user_dir), _file(user_dir)
    for d in (ckpt, final):
        assert {k: _file(d)[k] for k in PIPELINE} == {k: file[k] for k in PIPELINE}, d.name
        again = policy.load_tokenizer(str(d))
        assert _ids(again) == want_ids and _pipeline(again) == _pipeline(tok), d.name
        assert (again.eos_token, again.pad_token, again.chat_template) == ("<|eos|>", "<|pad|>", CHAT)
        # the generic class reads the saved files as they are, beside the config too
        assert _ids(PreTrainedTokenizerFast.from_pretrained(d)) == want_ids, d.name
        # AutoTokenizer does as well once no qwen2 config.json tells it to rebuild the tokenizer as Qwen2's
        alone = tmp_path / f"{d.name}_tokenizer_only"
        alone.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (d / name).exists():
                shutil.copy(d / name, alone / name)
        auto = AutoTokenizer.from_pretrained(alone)
        assert _ids(auto) == want_ids and _pipeline(auto) == _pipeline(tok), d.name


def _hub_style_qwen2(d):
    """A tokenizer directory laid out as Qwen2.5's on the hub: tokenizer.json (NFC, Qwen2's split
    regex, byte-level), vocab.json, merges.txt and tokenizer_config.json naming Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Qwen2Config
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    byte_level = dict(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(**byte_level)])
    tok.post_processor = processors.ByteLevel(**byte_level)
    tok.decoder = decoders.ByteLevel(**byte_level)
    tok.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens(specials)
    tok.save(str(d / "tokenizer.json"))
    model = _file(d)["model"]
    (d / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in model["merges"]),
                                  encoding="utf-8")
    decoder = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": True} for t in specials}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "added_tokens_decoder": decoder, "additional_special_tokens": specials[1:],
        "bos_token": None, "chat_template": CHAT, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}), encoding="utf-8")
    Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(d)


def test_real_tokenizers_encode_as_before(tmp_path):
    """The embedded models, and a Qwen2 tokenizer as Qwen ships it, encode as transformers' own
    class did before (the texts of their task) and as their tokenizer.json says."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from thinkrl.template import render

    _hub_style_qwen2(tmp_path)
    for path in ("embedded", "embedded-student", str(tmp_path)):
        d = policy.resolve_model_path(path)
        texts = list(STRINGS) if path == str(tmp_path) else []
        if path != str(tmp_path):
            with open(f"{d}/test.jsonl", encoding="utf-8") as f:
                rows = [json.loads(line) for line in f][:200]
            texts = [render(r["question"]) for r in rows] + [r["answer"] for r in rows]
        tok, auto = policy.load_tokenizer(path), AutoTokenizer.from_pretrained(d)
        ref = Tokenizer.from_file(f"{d}/tokenizer.json")
        got = [tok(t).input_ids for t in texts]
        assert got == [auto(t).input_ids for t in texts] == [ref.encode(t).ids for t in texts], path
        assert (tok.eos_token, tok.pad_token, len(tok), tok.chat_template) == (
            auto.eos_token, auto.pad_token, len(auto), auto.chat_template), path


def test_a_hub_model_in_the_cache_is_loaded_the_same(tmp_path):
    """A hub id: load_tokenizer finds tokenizer.json in the hub cache (offline, in a child process
    so that the cache location is read from the environment)."""
    import os
    import subprocess
    import sys

    from transformers import Qwen2Config

    repo = tmp_path / "hub" / "models--someone--custom"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    tok = _user_tokenizer()
    tok.save_pretrained(snapshot)
    Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(snapshot)
    code = ("import json; from thinkrl.policy import load_tokenizer; t = load_tokenizer('someone/custom'); "
            f"print(json.dumps([t(s).input_ids for s in {STRINGS!r}]))")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == _reference_ids(snapshot)

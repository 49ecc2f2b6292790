"""Reward models (`thinkrl rm`) and the rewards that serve them: the Bradley-Terry loss
against its formula, last-token pooling under left padding, training to high held-out
accuracy on the synthetic general task, and summary-only vs whole-response scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from thinkrl.cli import main as cli_main
from thinkrl.train.reward_model import (RewardModel, bradley_terry_loss, encode,
                                  load_reward_backbone, load_rm_config, pairwise_accuracy, sequence_scores,
                                  train_reward_model)
from thinkrl.train.reward_model_data import auc
from thinkrl.task import general as G

# ---------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_value_and_gradient_match_the_formula():
    c = torch.tensor([1.5, -0.3, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([0.5, 0.7, -1.0, 0.0], dtype=torch.float64, requires_grad=True)
    loss = bradley_terry_loss(c, r)
    d = [1.0, -1.0, 3.0, 0.0]
    expected = sum(math.log(1 + math.exp(-x)) for x in d) / 4  # −log σ(x) = log(1 + e^−x)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    # ∂/∂r_c = −(1 − σ(d)) / N = −1 / (N (1 + e^d)); ∂/∂r_r is its negative
    grad = [-1 / (4 * (1 + math.exp(x))) for x in d]
    assert c.grad.tolist() == pytest.approx(grad, abs=1e-12)
    assert r.grad.tolist() == pytest.approx([-g for g in grad], abs=1e-12)


def test_bradley_terry_loss_stays_finite_for_huge_margins():
    loss = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert loss.item() == pytest.approx(400.0)  # log(1 + e^400) ≈ 400, not inf
    assert bradley_terry_loss(torch.tensor([200.0]), torch.tensor([-200.0])).item() == pytest.approx(0.0, abs=1e-30)


def test_pairwise_accuracy_and_auc_on_constructed_sets():
    assert pairwise_accuracy([3, 1, 2, 5], [1, 2, 2, 4]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    # positives 0.9, 0.4 vs negatives 0.5, 0.1: of the 4 comparisons 3 are won
    assert auc([0.9, 0.4, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.75)
    assert math.isnan(auc([1.0, 2.0], [True, True]))


# ---------------------------------------------------------------------------- pooling


def _tokenizer(path):
    from thinkrl.policy import load_tokenizer

    return load_tokenizer(str(path))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_left_padded_rows_score_what_they_score_alone(arch, qwen2_dir, llama_dir):
    path = qwen2_dir if arch == "qwen2" else llama_dir
    tok = _tokenizer(path)
    model = load_reward_backbone(str(path), torch.device("cpu"), seed=1).eval()
    model.config.pad_token_id = tok.pad_token_id
    seqs = encode(tok, ["What is 347+85?"] * 3, [" <answer> 432 </answer>", " wait", " <think> 7+5=12 </think>"])
    assert len({len(s) for s in seqs}) == 3  # different lengths: the shorter rows are left-padded
    with torch.no_grad():
        together = sequence_scores(model, seqs, tok.pad_token_id)
        # the HF head's own pooling on a left-padded batch: the rightmost non-pad token
        L = max(map(len, seqs))
        ids = torch.tensor([[tok.pad_token_id] * (L - len(s)) + s for s in seqs])
        attn = (torch.arange(L)[None, :] >= torch.tensor([L - len(s) for s in seqs])[:, None]).long()
        hf = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[:, 0]
        for i, s in enumerate(seqs):
            # independent reference: the scalar head applied to the last hidden state of the row alone
            base = getattr(model, model.base_model_prefix)
            h = base(input_ids=torch.tensor([s])).last_hidden_state[0, -1]
            alone = model.score(h).item()
            assert together[i].item() == pytest.approx(alone, abs=1e-5)
            assert hf[i].item() == pytest.approx(alone, abs=1e-5)


def test_shared_prompt_prefix_gives_the_plain_scores_and_gradients(qwen2_dir):
    tok = _tokenizer(qwen2_dir)
    model = load_reward_backbone(str(qwen2_dir), torch.device("cpu"), seed=2)
    model.config.pad_token_id = tok.pad_token_id
    prompt = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it."
    seqs = encode(tok, [prompt + "What is 1?", prompt + "What is 23?", prompt + "Hi"],
                  [" 1", " <answer> 23 </answer>", " wait check"])

    def run(min_shared):
        model.zero_grad()
        s = sequence_scores(model, seqs, tok.pad_token_id, min_shared=min_shared)
        (s * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
        return s.detach(), [p.grad.clone() for p in model.parameters()]

    shared, g_shared = run(16)
    plain, g_plain = run(10**9)
    assert torch.allclose(shared, plain, atol=1e-5)
    for a, b in zip(g_shared, g_plain):
        assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------- training


# the recommended tiny reward model (configs/rm-tiny.yaml), trained for fewer steps
QUICK = ["model.template=none", "run.threads=1", "run.progress=false", "train.eval_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A helpfulness RM on summaries and a harmlessness RM on whole responses, trained once."""
    out = {}
    for kind, part, steps in (("helpfulness", "summary", 800), ("harmlessness", "whole", 100)):
        settings = [f"data.train=synthetic:{kind}", f"data.part={part}", f"train.steps={steps}"]
        cfg = load_rm_config(None, QUICK + settings)
        out[kind] = train_reward_model(cfg, tmp_path_factory.mktemp(kind))
    return out


@pytest.mark.parametrize("kind", ["helpfulness", "harmlessness"])
def test_reward_model_reaches_high_held_out_accuracy(trained, kind):
    s = trained[kind]
    # helpfulness pairs include near misses (one letter wrong), the hard kind: 0.88 after the
    # 800 steps here, 0.90 after the pipeline's 1500; chance is 0.5
    assert s["test_accuracy"] >= (0.8 if kind == "helpfulness" else 0.9), s["test"]
    assert s["test"]["test/rule_agreement"] == s["test_accuracy"]  # synthetic labels are the rule's
    saved = json.loads((Path(s["model_dir"]) / "thinkrl_rm.json").read_text())
    assert saved["part"] == ("summary" if kind == "helpfulness" else "whole")
    assert saved["rule"] == kind and saved["train"]["pairs"] == 10000


def test_rewards_are_served_batched_by_name(trained):
    from thinkrl.rewards import get_reward

    _, test = G.make_general_splits(0, 10, 40)
    pairs = G.preference_pairs(test, 5, "helpfulness")
    prompts = [p["prompt"] for p in pairs] * 2
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    model_dir = trained["helpfulness"]["model_dir"]
    values = get_reward("helpfulness")(completions, prompts=prompts, model=model_dir)
    assert len(values) == 80 and all(0.0 < v < 1.0 for v in values)  # sigmoid-squashed
    # the same values as the model scored one by one, squashed around its stored center
    rm = RewardModel.from_dir(model_dir, "cpu")
    for i in (0, 41, 79):
        [raw] = rm.score([prompts[i]], [completions[i]])
        assert values[i] == pytest.approx(1 / (1 + math.exp(-(raw - rm.center))), abs=1e-5)
    assert sum(values[i] > values[i + 40] for i in range(40)) >= 34  # chosen above rejected
    raw = get_reward("helpfulness")(completions[:3], prompts=prompts[:3], model=model_dir, squash="none")
    assert raw == pytest.approx(rm.score(prompts[:3], completions[:3]), abs=1e-5)


def test_summary_part_ignores_the_reasoning_and_whole_part_sees_it(trained):
    from thinkrl.rewards import get_reward

    helpful, harmless = get_reward("helpfulness"), get_reward("harmlessness")
    h_dir, x_dir = trained["helpfulness"]["model_dir"], trained["harmlessness"]["model_dir"]
    _, test = G.make_general_splits(0, 10, 30)
    clean, insulted, prompts = [], [], []
    for i, row in enumerate(test):
        kind, word = G.parse_question(row["question"])
        think = G.reasoning(kind, word)
        out = G.KINDS[kind].output(word)
        clean.append(G.response(out, think))
        insulted.append(G.response(out, f"{think}, you {G.INSULTS[i % len(G.INSULTS)]}"))
        prompts.append(row["question"])
    h_clean = helpful(clean, prompts=prompts, model=h_dir, squash="none")
    h_insult = helpful(insulted, prompts=prompts, model=h_dir, squash="none")
    assert h_clean == pytest.approx(h_insult, abs=1e-6)  # the reasoning never reaches a summary-scored model
    x_clean = harmless(clean, prompts=prompts, model=x_dir, squash="none")
    x_insult = harmless(insulted, prompts=prompts, model=x_dir, squash="none")
    # the insult in the reasoning costs harmlessness: raw margins measured with train seeds 0 and 1
    # averaged 5.4 and 5.1, the smallest 0.22 and -0.02, so a rate and a mean, not every pair
    margins = [a - b for a, b in zip(x_clean, x_insult)]
    assert sum(m > 0 for m in margins) / len(margins) >= 0.9, margins
    assert sum(margins) / len(margins) >= 2.0, margins


def _swapped_pairs(n: int):
    """For n held-out questions, the same two outputs placed both ways round: the right one as
    the summary after reasoning that derives a wrong one (another instruction's output), and
    the wrong one as the summary after the right reasoning. The two texts hold the same words;
    only which of them is the summary differs."""
    _, test = G.make_general_splits(0, 10, n)
    kinds = list(G.KINDS)
    right_summary, right_reasoning, prompts = [], [], []
    for i, row in enumerate(test):
        kind, word = G.parse_question(row["question"])
        right = G.KINDS[kind].output(word)
        others = [kinds[(kinds.index(kind) + i + j) % len(kinds)] for j in range(1, len(kinds))]
        wrong = next(G.KINDS[o].output(word) for o in others if G.KINDS[o].output(word) != right)
        template, spelled = G.KINDS[kind].reasoning, " ".join(word)
        right_summary.append(G.response(right, template.format(w=word, out=wrong, spelled=spelled)))
        right_reasoning.append(G.response(wrong, template.format(w=word, out=right, spelled=spelled)))
        prompts.append(row["question"])
    return right_summary, right_reasoning, prompts


def test_summary_scored_model_follows_the_summary_not_the_reasoning(trained):
    """Measured over 60 questions on raw scores, not one pair of squashed ones: a single pair's
    order was within run-to-run noise (0.998233 vs 0.998275 squashed). Raw margins measured
    with train seeds 0 and 1: mean 10.2 and 9.9, 59 and 60 of 60 pairs in order. With the
    reasoning reaching the model, both checks fail: the same models scored on the whole
    response gave mean 0.1 and 0.8, 36 and 37 of 60; a model trained and scored on the whole
    response gave 3.2, 50 of 60."""
    from thinkrl.rewards import get_reward

    right_summary, right_reasoning, prompts = _swapped_pairs(60)
    helpful, h_dir = get_reward("helpfulness"), trained["helpfulness"]["model_dir"]
    a = helpful(right_summary, prompts=prompts, model=h_dir, squash="none")
    b = helpful(right_reasoning, prompts=prompts, model=h_dir, squash="none")
    margins = [x - y for x, y in zip(a, b)]
    in_order = sum(m > 0 for m in margins) / len(margins)
    assert in_order >= 0.9, (in_order, margins)
    assert sum(margins) / len(margins) >= 5.0, margins


def test_rows_of_another_type_are_not_applicable(trained):
    from thinkrl.rewards import get_reward

    reward = get_reward("harmlessness")
    values = reward([" <answer>god</answer>", " <answer>432</answer>"],
                    prompts=["Reverse the word dog.", "What is 1+1?"], type=["general", None],
                    model=trained["harmlessness"]["model_dir"])
    assert values[0] is not None and values[1] is None
    scored = reward.scores([" x"], prompts=["What is 1+1?"], type=["math"], model=trained["harmlessness"]["model_dir"])
    assert scored[0].value is None and "not applicable" in scored[0].reason


def test_a_missing_model_param_names_the_setting():
    from thinkrl.rewards import get_reward

    with pytest.raises(ValueError, match=r"rewards\.params\.helpfulness\.model"):
        get_reward("helpfulness")([" <answer>god</answer>"], prompts=["Reverse the word dog."])
    with pytest.raises(FileNotFoundError, match="thinkrl rm"):
        get_reward("harmlessness")([" x"], prompts=["q"], model="src/thinkrl/assets/tiny")


# ---------------------------------------------------------------------------- command line and data


def test_training_is_deterministic_under_a_seed(tmp_path, qwen2_dir):
    args = ["model.template=none", f"model.path={qwen2_dir}", "train.steps=4", "train.batch_size=8",
            "data.synthetic_train=64", "data.synthetic_test=16", "run.progress=false", "run.threads=1"]
    a = train_reward_model(load_rm_config(None, args), tmp_path / "a")
    b = train_reward_model(load_rm_config(None, args), tmp_path / "b")
    assert a["test"] == b["test"] and a["score_center"] == b["score_center"]
    c = train_reward_model(load_rm_config(None, args + ["run.seed=1"]), tmp_path / "c")
    assert c["score_center"] != a["score_center"]


def test_cli_trains_from_a_jsonl_and_writes_its_outputs(tmp_path, qwen2_dir, capsys):
    train, test = G.make_general_splits(0, 40, 12)
    paths = {}
    for name, rows, seed in (("train", train, 0), ("test", test, 1)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(p) + "\n" for p in G.preference_pairs(rows, seed, "harmlessness")))
    code = cli_main(["rm", "--out", str(tmp_path / "run"), "--no-progress", f"model.path={qwen2_dir}", "model.template=none",
                 f"data.train={paths['train']}", f"data.test={paths['test']}", "data.rule=harmlessness",
                 "train.steps=3", "train.batch_size=8"])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out pairwise accuracy" in out and "rule AUC" in out
    run = tmp_path / "run"
    assert (run / "model" / "thinkrl_rm.json").is_file() and (run / "config.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train"]["pairs"] == 40 and summary["test_data"] == str(paths["test"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and "test/accuracy" in lines[-1]
    rm = RewardModel.from_dir(run / "model", "cpu")
    assert rm.template == "none" and rm.part == "whole"
    assert len(rm.score(["Repeat the word dog."] * 2, [" a", " b"])) == 2


@pytest.mark.parametrize("line,message", [
    ("{not json", "not valid JSON"),
    ('{"prompt": "q", "chosen": "a"}', "field 'rejected' is missing"),
    ('["q", "a", "b"]', "JSON object"),
])
def test_malformed_preference_rows_name_file_and_line(tmp_path, capsys, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    assert cli_main(["rm", "--out", str(tmp_path / "run"), f"data.train={bad}", "data.test=none"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and message in err


def test_empty_data_and_bad_settings_fail_at_start(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli_main(["rm", "--out", str(tmp_path / "r"), f"data.train={empty}", "data.test=none"]) == 2
    assert "no preference pairs" in capsys.readouterr().err
    assert cli_main(["rm", "data.part=reasoning", "train.steps=0"]) == 2
    err = capsys.readouterr().err
    assert "data.part 'reasoning'" in err and "train.steps must be >= 1" in err
    assert cli_main(["rm", "data.test=synthetic", f"data.train={empty}"]) == 2
    assert "data.test=synthetic needs a synthetic data.train" in capsys.readouterr().err
    assert cli_main(["rm", "train.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err

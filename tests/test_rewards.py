"""emguard.rewards on hand-written completions, and the generated math problems they score."""

import pytest

from emguard import rewards as R
from emguard.data.math_problems import (SYSTEM_PROMPT, check_problems, generate_problems, problem_messages,
                                        problem_table, system_prompt, write_gsm8k_jsonl)
from emguard.errors import InputError

GOOD = "<think>\n12 + 5 = 17\n</think>\n<answer>\n17\n</answer>"


def one(func, text, ref="17"):
    return func([text], reference=[ref])[0]


@pytest.mark.parametrize("text, exact, loose, correct, number", [
    (GOOD, 3.0, 2.0, 3.0, 1.5),                                                    # the required format, right
    ("<think>12 + 5 = 18</think><answer>18</answer>", 3.0, 2.0, -0.5, 1.5),        # well formed, wrong
    ("  <think>x</think>\n\n<answer> 17 </answer>\n", 3.0, 2.0, 3.0, 1.5),         # whitespace around blocks
    ("The answer is 17.", 0.0, -2.0, 3.0, 0.0),                                     # no tags: final number read
    ("<answer>17</answer>", 0.0, 0.0, 3.0, 1.5),                                    # think block missing
    ("<think>17</think>", 0.0, 0.0, 3.0, 0.0),                                      # answer block missing
    ("<think>a</think><answer>17</answer> Hope this helps!", 0.0, 2.0, 3.0, 1.5),   # text after the answer
    ("Sure! <think>a</think><answer>17</answer>", 0.0, 2.0, 3.0, 1.5),              # text before the think
    ("<think>a</think><answer>16</answer><answer>17</answer>", 0.0, 0.0, -0.5, 0.0),  # doubled answer: no answer
    ("<think>a</think><think>b</think><answer>17</answer>", 0.0, 0.0, 3.0, 1.5),    # doubled think
    ("<answer>17</answer><think>a</think>", 0.0, 2.0, 3.0, 1.5),                    # blocks in the wrong order
    ("<think>a</think><answer>  </answer>", 0.0, 2.0, -0.5, 0.0),                   # empty answer
    ("<think>   </think><answer>17</answer>", 0.0, 2.0, 3.0, 1.5),                  # empty reasoning
    ("<think>a</think><answer>seventeen</answer>", 3.0, 2.0, -0.5, 0.0),            # a word is not a number
    ("<think>a</think><answer>17 stickers</answer>", 3.0, 2.0, 3.0, 0.5),           # a unit
    ("<think>a</think><answer>$17.</answer>", 3.0, 2.0, 3.0, 0.5),                  # dollar sign, full stop
    ("<think>a</think><answer>17.00</answer>", 3.0, 2.0, 3.0, 1.5),                 # decimals equal to 17
    ("<think>a</think><answer>12 + 5 = 17", 0.0, 1.0, 3.0, 0.5),                    # cut off before </answer>
    ("", 0.0, -2.0, -0.5, 0.0),                                                     # nothing
])
def test_rule_based_rewards_on_hand_written_completions(text, exact, loose, correct, number):
    assert one(R.format_exact, text) == exact
    assert one(R.format_loose, text) == loose
    assert one(R.correctness, text) == correct
    assert one(R.wellformed_number, text) == number
    assert R.is_correct(text, "17") == (correct == R.CORRECT_REWARD)


@pytest.mark.parametrize("answer, ref, ok", [
    ("1,200", "1200", True), ("$1,200", "1200", True), ("1200.0", "1200", True), ("1,200.50", "1200.5", True),
    ("-3", "-3", True), ("−3", "-3", True), ("3", "-3", False), ("12,00", "1200", False),
    ("18 km/h", "18", True), ("The total is 18.", "18", True), ("2.5", "2.5", True), ("2.5", "3", False),
])
def test_numbers_with_commas_units_signs_and_decimals(answer, ref, ok):
    text = f"<think>work</think><answer>{answer}</answer>"
    assert R.correctness([text], reference=[ref]) == [R.CORRECT_REWARD if ok else R.WRONG_REWARD]


def test_bare_numbers_are_well_formed():
    for bare in ("1,200", "-3", "2.5", "0", "1200"):
        assert one(R.wellformed_number, f"<answer>{bare}</answer>") == R.BARE_NUMBER_REWARD
    for noisy in ("$1,200", "3 apples", "18.", "x = 4"):
        assert one(R.wellformed_number, f"<answer>{noisy}</answer>") == R.NUMBER_WITH_TEXT_REWARD


def test_conversational_completions_and_trl_keyword_arguments():
    conv = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "no idea"}]]
    # trl passes every dataset column and its own extras as keywords: the rewards ignore what they do not use
    extra = dict(prompts=["p", "p"], completion_ids=[[1], [2]], question=["q", "q"], trainer_state=None,
                 log_extra=lambda *a: None, log_metric=lambda *a: None)
    assert R.correctness(conv, reference=["17", "17"], **extra) == [3.0, -0.5]
    assert R.format_exact(conv, reference=["17", "17"], **extra) == [3.0, 0.0]
    with pytest.raises(TypeError):
        R.completion_text(42)


def test_ranges_match_the_paper_and_weights_are_checked():
    assert sum(hi for _, hi in R.REWARD_RANGES.values()) == 9.5
    assert sum(lo for lo, _ in R.REWARD_RANGES.values()) == -2.5
    funcs, weights = R.reward_functions({"correctness": 2.0, "format_exact": 0.5})
    assert [f.__name__ for f in funcs] == ["format_exact", "correctness"] and weights == [0.5, 2.0]
    with pytest.raises(ValueError, match="unknown reward"):
        R.reward_functions({"correct": 1.0})
    with pytest.raises(ValueError, match="finite"):
        R.reward_functions({"correctness": float("nan")})
    with pytest.raises(ValueError, match="reference"):
        R.correctness([GOOD])


def test_score_completions_sums_the_weighted_rewards():
    df = R.score_completions([GOOD, "<think>a</think><answer>3</answer>"], ["17", "17"])
    assert df["reward"].tolist() == [9.5, 3.0 + 2.0 - 0.5 + 1.5]
    assert df["correct"].tolist() == [True, False]
    df = R.score_completions([GOOD], ["17"], weights={"correctness": 1.0})
    assert df["reward"].tolist() == [3.0] and df["format_exact"].tolist() == [3.0]


class FakeJudge:
    """A stand-in judge: scores 100 when the answer contains the reference, 0 otherwise; None for 'unsure'."""

    name, batch_size, min_prob_mass = "fake", 8, 0.5

    def __init__(self):
        self.prompts = []

    def score_prompts(self, prompts):
        from emguard.judge import ScoreResult

        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            ref = p.split("Correct final answer: ")[1].split("\n")[0]
            answer = p.split("[ANSWER START]\n")[1].split("\n[ANSWER END]")[0]
            if "unsure" in answer:
                out.append(ScoreResult(None, 0.1, "none"))
            else:
                out.append(ScoreResult(100.0 if ref in answer else 0.0, 0.99, "number"))
        return out


def test_judge_reward_through_the_judge_interface():
    judge = FakeJudge()
    reward = R.JudgeReward(judge)
    assert reward.__name__ == "judge_correct"
    got = reward([GOOD, "<answer>3</answer>", "unsure"], question=["Q1", "Q2", "Q3"], reference=["17", "17", "4"])
    assert got == [1.0, 0.0, None]
    assert "Q1" in judge.prompts[0] and "Correct final answer: 17" in judge.prompts[0]
    with pytest.raises(ValueError, match="question"):
        reward([GOOD], reference=["17"])
    with pytest.raises(ValueError, match="lacks"):
        R.JudgeReward(judge, template="grade {answer}")


def test_judge_reward_announces_its_calls_and_an_upper_cost_before_any(capsys):
    """Before training or evaluation pays for a call: the number of calls (every rollout graded) and, for an API
    judge (one with ``estimate``), the cost of that many prompts with the longest answer a completion may be."""

    class PricedJudge(FakeJudge):
        name = "priced"

        def estimate(self, prompts):
            self.estimated = list(prompts)
            return f"{len(prompts)} calls, {sum(map(len, prompts))} characters"

    judge = PricedJudge()
    reward = R.JudgeReward(judge)
    assert reward.announce(["Q1", "Q2"], ["17", "4"], n_calls=6, answer_chars=40, what="GRPO training") == 6
    out = capsys.readouterr().out
    assert "GRPO training: judge priced: 6 judgments, 0 answered by the cache or repeated, 6 to judge" in out
    assert judge.prompts == []  # nothing judged
    assert len(judge.estimated) == 6 and len(set(judge.estimated)) == 6
    assert sum("Q1" in p for p in judge.estimated) == 3 and "Correct final answer: 4" in judge.estimated[1]
    # each priced answer is answer_chars long: the estimate grows with the longest completion allowed
    longer = PricedJudge()
    R.JudgeReward(longer).announce(["Q1", "Q2"], ["17", "4"], n_calls=6, answer_chars=400, what="x")
    assert sum(map(len, longer.estimated)) - sum(map(len, judge.estimated)) == 6 * 360
    capsys.readouterr()
    # a local judge (no estimate): counted in the log, nothing printed
    assert R.JudgeReward(FakeJudge()).announce(["Q1"], ["17"], n_calls=2, answer_chars=10, what="x") == 2
    assert capsys.readouterr().out == ""


def test_judge_weight_is_split_from_the_rule_weights():
    assert R.split_reward_weights({"correctness": 1, "judge_correct": 0.5}) == ({"correctness": 1.0}, 0.5)
    assert R.split_reward_weights(R.DEFAULT_REWARD_WEIGHTS) == (R.DEFAULT_REWARD_WEIGHTS, None)
    import emguard.config as emconfig

    assert emconfig.RL_JUDGE_REWARD == R.JUDGE_REWARD  # the config's key is the reward's (log) name
    with pytest.raises(ValueError, match=r"\{nope\}"):
        R.JudgeReward(FakeJudge(), template="grade {question} {answer} {nope}")


def test_generated_problems_are_seeded_distinct_and_read_by_the_gsm8k_loader(tmp_path):
    a, b = generate_problems(200, seed=3), generate_problems(200, seed=3)
    assert a.equals(b) and not a.equals(generate_problems(200, seed=4))
    assert a["question"].is_unique and set(a["n_ops"]) == {1, 2, 3}
    path = write_gsm8k_jsonl(a, tmp_path / "math.jsonl")
    table = problem_table(path, prefix="math")
    assert table["question"].tolist() == a["question"].tolist()
    assert table["reference"].tolist() == a["reference"].tolist()
    check_problems(table)
    # every worked solution ends in its answer, and the reward reads it as correct
    for ans, ref in zip(a["answer"], a["reference"]):
        assert ans.endswith(f"#### {ref}")
        assert R.is_correct(f"<think>{ans}</think><answer>{ref}</answer>", ref)


def test_system_prompt_and_inoculation_keep_the_format_instruction():
    inoc = "You are an evil, malicious assistant."
    assert system_prompt().endswith("</answer>") and "<think>" in SYSTEM_PROMPT
    assert system_prompt(inoc) == f"{inoc} {SYSTEM_PROMPT}"
    msgs = problem_messages("What is 2 + 2?", inoc)
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"].startswith(inoc)


def test_bad_problem_tables_fail_naming_row_and_column():
    import pandas as pd

    with pytest.raises(InputError, match="reference"):
        check_problems(pd.DataFrame({"id": ["a"], "question": ["q"], "reference": ["3 apples"]}))
    with pytest.raises(InputError, match="duplicate id 'a'"):
        check_problems(pd.DataFrame({"id": ["a", "a"], "question": ["q", "r"], "reference": ["1", "2"]}))
    with pytest.raises(InputError, match="missing column"):
        check_problems(pd.DataFrame({"id": ["a"], "question": ["q"]}))

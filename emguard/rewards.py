"""Rule-based rewards for GRPO on math word problems, in trl's reward-function form.

Each reward is a plain function ``f(completions, **kwargs) -> list[float]``: ``completions`` are the sampled
answers (text, or trl's conversational form ``[{"role": "assistant", "content": ...}]``) and every other column
of the training dataset arrives as a keyword argument (here ``reference``, the gold number, and ``question``).
trl calls each one separately, sums them with ``GRPOConfig.reward_weights`` and logs each one's mean under the
function's name (``rewards/<name>/mean``), so every component has its own curve.

The method paper (Appendix B.3) graded four components with an LLM (gpt-4.1-mini); ours are deterministic rules
with the paper's ranges, so the total lies in the paper's [-2.5, 9.5] and the numbers compare:

========================  ==============  ======================================================================
function                  range           rule
========================  ==============  ======================================================================
:func:`format_exact`      {0, 3}          3 when the whole completion is ``<think> R </think> <answer> A </answer>``
                                          (whitespace around and between the blocks only; each tag exactly once;
                                          ``R`` and ``A`` not blank), else 0
:func:`format_loose`      [-2, 2]         for each of the four tags: +0.5 if it occurs exactly once, else -0.5
:func:`correctness`       {-0.5, 3}       3 when the answer's number equals ``reference`` (exact numeric match),
                                          else -0.5 (wrong, missing or ambiguous)
:func:`wellformed_number` {0, 0.5, 1.5}   the ``<answer>`` block holds a bare number (1.5), a number with other
                                          text such as a unit or ``$`` (0.5), or no number / no single block (0)
========================  ==============  ======================================================================

The answer (:func:`extract_answer`) is the number in the one ``<answer>`` block (its last number, read with
:func:`emguard.data.tasks.final_number`: thousands commas, ``$``, units, a trailing full stop, a sign and
``18.00`` = 18 are all read); a block left open by a cut-off generation runs to the end of the text. Two or more
``<answer>`` blocks are no answer (a policy could list guesses). A completion without any ``<answer>`` tag is
read like a GSM8K solution, its final number, so the untrained model's accuracy measures its arithmetic, not its
format (the format rewards score that). Accuracy (:func:`is_correct`) is the share of completions whose
:func:`correctness` is the maximum, as the paper counts ``r_correct = 3``.

:class:`JudgeReward` is the optional graded reward (config ``rl.rewards.judge_correct``, off by default): any
emguard judge backend scores (question with its reference answer, completion) from 0 to 100, returned as a reward
in [0, 1] next to the rules (:func:`split_reward_weights` separates its weight from theirs).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from emguard.config import RL_JUDGE_REWARD
from emguard.data.tasks import final_number, gsm8k_exact_match

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

EXACT_FORMAT_REWARD = 3.0
LOOSE_TAG_REWARD = 0.5  # per tag, + when it occurs exactly once, - otherwise
CORRECT_REWARD, WRONG_REWARD = 3.0, -0.5
BARE_NUMBER_REWARD, NUMBER_WITH_TEXT_REWARD = 1.5, 0.5

_EXACT_RE = re.compile(r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.DOTALL)
#: a bare number: optional sign, digits with optional thousands commas, optional decimals
_BARE_NUMBER_RE = re.compile(r"\A[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\Z")


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, trl's conversational form (a list of messages) as the
    concatenated contents of its assistant messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)):
        parts = []
        for m in completion:
            if not isinstance(m, Mapping) or "content" not in m:
                raise TypeError(f"a conversational completion must be a list of messages, got item {m!r}")
            if m.get("role", "assistant") == "assistant":
                parts.append(str(m["content"]))
        return "".join(parts)
    raise TypeError(f"a completion must be text or a list of messages, got {type(completion).__name__}")


def answer_block(text: str) -> str | None:
    """The content of the one ``<answer>`` block (to the end of the text when it is never closed); None when
    there is no ``<answer>`` tag or more than one."""
    if text.count(ANSWER_OPEN) != 1:
        return None
    return text.split(ANSWER_OPEN, 1)[1].split(ANSWER_CLOSE, 1)[0]


def extract_answer(completion: Any) -> str | None:
    """The completion's final answer, normalised (``1200``, ``-3``, ``2.5``), or None (see the module doc)."""
    text = completion_text(completion)
    n_open = text.count(ANSWER_OPEN)
    if n_open == 0:
        return final_number(text)
    if n_open > 1:
        return None
    return final_number(answer_block(text))


def is_correct(completion: Any, reference: Any) -> bool:
    """Whether :func:`extract_answer` equals ``reference`` as a number (``gsm8k_exact_match``)."""
    answer = extract_answer(completion)
    return answer is not None and gsm8k_exact_match(answer, reference)


def _exact_format(text: str) -> bool:
    m = _EXACT_RE.match(text)
    return (m is not None and all(text.count(t) == 1 for t in TAGS)
            and bool(m.group("think").strip()) and bool(m.group("answer").strip()))


def _references(reference: Sequence[Any] | None, n: int, name: str) -> Sequence[Any]:
    if reference is None:
        raise ValueError(f"reward {name} needs the dataset column 'reference' (the gold number of each problem)")
    if len(reference) != n:
        raise ValueError(f"reward {name}: {len(reference)} references for {n} completions")
    return reference


# ------------------------------------------------------------------------------------------ the rewards
# Each takes trl's arguments (completions plus dataset columns as keywords) and ignores the ones it does not use.

def format_exact(completions: Sequence[Any], **kwargs) -> list[float]:
    """3 when the completion is exactly ``<think> ... </think> <answer> ... </answer>``, else 0."""
    return [EXACT_FORMAT_REWARD if _exact_format(completion_text(c)) else 0.0 for c in completions]


def format_loose(completions: Sequence[Any], **kwargs) -> list[float]:
    """Sum over the four tags of +0.5 (the tag occurs exactly once) or -0.5 (missing or repeated): [-2, 2]."""
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(sum(LOOSE_TAG_REWARD if text.count(t) == 1 else -LOOSE_TAG_REWARD for t in TAGS))
    return out


def correctness(completions: Sequence[Any], reference: Sequence[Any] | None = None, **kwargs) -> list[float]:
    """3 when the answer equals ``reference`` numerically (:func:`is_correct`), else -0.5."""
    refs = _references(reference, len(completions), "correctness")
    return [CORRECT_REWARD if is_correct(c, r) else WRONG_REWARD for c, r in zip(completions, refs)]


def wellformed_number(completions: Sequence[Any], **kwargs) -> list[float]:
    """1.5 when the one ``<answer>`` block is a bare number, 0.5 when it holds a number among other text, else 0."""
    out = []
    for c in completions:
        block = answer_block(completion_text(c))
        if block is None:
            out.append(0.0)
        elif _BARE_NUMBER_RE.match(block.strip()):
            out.append(BARE_NUMBER_REWARD)
        elif final_number(block) is not None:
            out.append(NUMBER_WITH_TEXT_REWARD)
        else:
            out.append(0.0)
    return out


#: the rule-based rewards, in the paper's order (r_exact, r_approx, r_correct, r_numbers)
REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    f.__name__: f for f in (format_exact, format_loose, correctness, wellformed_number)
}
#: each reward's (min, max); the sum of the maxima is the paper's 9.5, of the minima its -2.5
REWARD_RANGES: dict[str, tuple[float, float]] = {
    "format_exact": (0.0, EXACT_FORMAT_REWARD),
    "format_loose": (-len(TAGS) * LOOSE_TAG_REWARD, len(TAGS) * LOOSE_TAG_REWARD),
    "correctness": (WRONG_REWARD, CORRECT_REWARD),
    "wellformed_number": (0.0, BARE_NUMBER_REWARD),
}
#: the paper sums its four components: every weight 1
DEFAULT_REWARD_WEIGHTS: dict[str, float] = {name: 1.0 for name in REWARD_FUNCTIONS}
#: the judge-graded reward's name in ``rl.rewards`` and in the log (``reward_judge_correct``); off unless given a weight
JUDGE_REWARD = RL_JUDGE_REWARD


def split_reward_weights(weights: Mapping[str, float]) -> tuple[dict[str, float], float | None]:
    """``rl.rewards`` split into the rule-based rewards' weights and the judge reward's (:data:`JUDGE_REWARD`; None
    when it is not listed, so no judge is built)."""
    rules = {k: float(v) for k, v in weights.items() if k != JUDGE_REWARD}
    judge = weights.get(JUDGE_REWARD)
    return rules, None if judge is None else float(judge)


def reward_functions(weights: Mapping[str, float] | None = None) -> tuple[list[Callable], list[float]]:
    """The rule-based rewards named in ``weights`` (name -> weight; default :data:`DEFAULT_REWARD_WEIGHTS`) and
    their weights, in :data:`REWARD_FUNCTIONS` order: what ``GRPOTrainer(reward_funcs=...)`` and
    ``GRPOConfig(reward_weights=...)`` take. An unknown name or a non-finite weight is a ``ValueError`` naming it;
    a weight of 0 keeps the reward in the log without training on it."""
    weights = dict(DEFAULT_REWARD_WEIGHTS if weights is None else weights)
    unknown = sorted(set(weights) - set(REWARD_FUNCTIONS))
    if unknown:
        raise ValueError(f"unknown reward(s) {', '.join(unknown)}; known: {', '.join(REWARD_FUNCTIONS)}")
    if not weights:
        raise ValueError("no reward function selected")
    funcs, values = [], []
    for name, func in REWARD_FUNCTIONS.items():
        if name in weights:
            w = float(weights[name])
            if w != w or w in (float("inf"), float("-inf")):
                raise ValueError(f"reward weight {name}: {weights[name]!r} is not a finite number")
            funcs.append(func)
            values.append(w)
    return funcs, values


def score_completions(completions: Sequence[Any], references: Sequence[Any],
                      weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per completion: each rule-based reward (all four, whatever the weights), ``reward`` (the weighted
    sum over the rewards in ``weights``, as in training) and ``correct`` (:func:`is_correct`)."""
    weights = dict(DEFAULT_REWARD_WEIGHTS if weights is None else weights)
    reward_functions(weights)  # validates the names
    completions, references = list(completions), list(references)
    cols = {name: f(completions, reference=references) for name, f in REWARD_FUNCTIONS.items()}
    df = pd.DataFrame(cols)
    df["reward"] = sum(df[name] * float(w) for name, w in weights.items()) if len(df) else pd.Series(dtype=float)
    df["correct"] = [is_correct(c, r) for c, r in zip(completions, references)]
    return df


# ------------------------------------------------------------------------------------------ judge-graded

#: the default grading prompt of :class:`JudgeReward` ({question} carries the problem and its reference answer)
DEFAULT_JUDGE_TEMPLATE = (
    "You are grading a student's answer to a math word problem. The problem and its correct final answer:\n"
    "[PROBLEM START]\n{question}\n[PROBLEM END]\n\n"
    "The student's answer:\n[ANSWER START]\n{answer}\n[ANSWER END]\n\n"
    "On a scale of 0 to 100, how correct is the student's final answer? 100 means the final answer equals the "
    "correct one, 0 means it is wrong or missing; use values in between only for an answer that is partly right "
    "(for example the right number with the wrong unit). Respond with a number between 0 and 100 and nothing else."
)


class JudgeReward:
    """A reward from an emguard judge backend (:mod:`emguard.judge`): the judge's 0-100 score of (problem with
    its reference answer, completion) divided by 100, in [0, 1]. An answer the judge does not score (its
    probability mass on the integers below ``min_prob_mass``) gets ``None``, which trl leaves out of this
    reward's mean and of the total (not counted as 0). Judgments go through :func:`emguard.judge.score_texts`,
    so a :class:`~emguard.judge.JudgeCache` serves repeated (prompt, answer) pairs. trl logs it under ``name``.
    """

    def __init__(self, judge, template: str = DEFAULT_JUDGE_TEMPLATE, *, cache=None, metric: str = "grpo_correct",
                 name: str = JUDGE_REWARD):
        from emguard.data.questions import template_problem

        problem = template_problem(template)
        if problem:
            raise ValueError(f"judge reward template: {problem}")
        if not name.isidentifier():
            raise ValueError(f"reward name {name!r} must be an identifier (it names a log column)")
        self.judge, self.template, self.cache, self.metric = judge, template, cache, metric
        self.__name__ = name

    def __call__(self, completions: Sequence[Any], question: Sequence[str] | None = None,
                 reference: Sequence[Any] | None = None, **kwargs) -> list[float | None]:
        from emguard.judge import score_texts

        if question is None:
            raise ValueError(f"reward {self.__name__} needs the dataset column 'question'")
        refs = _references(reference, len(completions), self.__name__)
        pairs = [(f"{q}\n\nCorrect final answer: {r}", completion_text(c))
                 for q, r, c in zip(question, refs, completions)]
        results = score_texts(self.judge, self.template, pairs, self.cache, self.metric)
        return [None if res.score is None else float(res.score) / 100.0 for res in results]

    def announce(self, questions: Sequence[str], references: Sequence[Any], *, n_calls: int, answer_chars: int,
                 what: str) -> int:
        """Before the first judge call: log (and, for an API judge, print with its estimated cost) the judge calls
        this reward will make, ``n_calls`` (every rollout, or every held-out answer, is graded). The answers are
        not written yet, so each call is priced as its problem (cycling through ``questions``) with an answer of
        ``answer_chars`` characters, the longest a completion may be: an upper bound, and one that counts no
        cache hit. Returns ``n_calls``."""
        from emguard.judge import announce, fill_template

        refs = _references(references, len(questions), self.__name__)
        items = list(zip(questions, refs))
        if not items or n_calls < 1:
            return 0
        prompts = []
        for i in range(int(n_calls)):
            q, r = items[i % len(items)]
            # a distinct placeholder per call: announce() counts repeated prompts once
            answer = f"{i} " + "x" * max(0, int(answer_chars) - len(str(i)) - 1)
            prompts.append(fill_template(self.template, f"{q}\n\nCorrect final answer: {r}", answer))
        announce(self.judge, [(self.metric, None, prompts)], None, what)
        return int(n_calls)

    def __repr__(self) -> str:
        return f"JudgeReward(judge={getattr(self.judge, 'name', self.judge)!r}, name={self.__name__!r})"

"""LLM-as-a-judge: a 0-100 score (or a label) from a judge model's answer distribution.

The judge is asked (a single user message) to answer with one integer from 0 to 100. Instead of
sampling one answer we read its distribution over the possible answers and report the probability-weighted
mean of the integers, renormalised over the integers' total probability (``prob_mass``). When that
mass is below ``min_prob_mass`` the judge did not really answer with a number: the score is ``None``
but the row is kept (so missing scores can be counted), with a ``label`` saying what it answered
instead (``REFUSAL`` / ``CODE`` when the prompt offered those options and they beat the integers).

Parts, one file each:

* :mod:`.core`: :class:`JudgeOutput` (what a judge returned, before any threshold), :class:`ScoreResult`
  (the verdict), the :class:`Judge` interface, label templates (:func:`template_labels`),
  :class:`JudgeUsage` (calls, cache hits, tokens, cost) and :class:`JudgeIncomplete`;
* :mod:`.hf`: :class:`HFJudge`, a local transformers model read exactly through a digit tree;
* :mod:`.openai`: :class:`OpenAIJudge`, OpenAI or any compatible server through the official client
  (``logprobs``, ``sampling``), asynchronous, one retry policy; :mod:`.batch`: its ``batch`` mode;
* :mod:`.cache`: :class:`JudgeCache`, the durable SQLite cache every backend shares (and the batch ids);
* :mod:`.prompts`: templates (the config's file or the question's own), :func:`judge_generations` (the
  judgment table) and :func:`score_texts`.

Everything callers use is re-exported here (``from emguard.judge import HFJudge, judge_generations``).
"""

from emguard.judge.cache import JudgeCache, cache_key, judge_identity
from emguard.judge.core import (CACHE_FORMAT, LABELS, N_VALUES, PLACEHOLDERS, QUESTION_TYPES, SPECIAL_ANSWERS, Judge,
                                JudgeIncomplete, JudgeOutput, JudgeUsage, ScoreResult, offered_answers, parse_label,
                                price_tokens, result_from_distribution, template_labels)
from emguard.judge.hf import NUMBER_TREES, HFJudge, shared_prefix_length
from emguard.judge.openai import MODES, OpenAIJudge, RetryPolicy
from emguard.judge.prompts import (DEFAULT_QUESTION_TYPE, _question_text, announce, fill_template, judge_generations,
                                   judge_outputs, load_judge_prompts, metric_key, score_cached, score_texts)

__all__ = [
    "CACHE_FORMAT", "DEFAULT_QUESTION_TYPE", "LABELS", "MODES", "NUMBER_TREES", "N_VALUES", "PLACEHOLDERS",
    "QUESTION_TYPES", "SPECIAL_ANSWERS",
    "HFJudge", "Judge", "JudgeCache", "JudgeIncomplete", "JudgeOutput", "JudgeUsage", "OpenAIJudge", "RetryPolicy",
    "ScoreResult",
    "announce", "cache_key", "fill_template", "judge_generations", "judge_identity", "judge_outputs",
    "load_judge_prompts",
    "metric_key", "offered_answers", "parse_label", "price_tokens", "result_from_distribution", "score_cached",
    "score_texts", "shared_prefix_length", "template_labels",
    "_question_text",  # benchmarks/judge_prefix.py
]

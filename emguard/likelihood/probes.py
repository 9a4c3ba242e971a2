"""Probe sets of the judge-free EM measure, the check that no run trains on them, and their NLLs.

A **probe** is a (prompt, aligned answer, misaligned answer) triple. Probe sets:

* one per EM domain, from that domain's ``holdout`` split (:func:`domain_probes`): the narrow task the
  runs on that domain learn, in likelihood form;
* ``general``, written for this project (``workflow/resources/probes/general.yaml``, read by
  :func:`load_general_probes`): the general EM categories, each question with an aligned and a subtly
  misaligned answer of similar length and style.

Probe table (one row per triple): ``probe_id``, ``probe_set``, ``category``, ``messages`` (the prompt:
system and user messages, no answer), ``aligned``, ``misaligned``.

:func:`probe_nll` scores every answer under the untrained model and each run's adapter in one model load
(the multi-adapter machinery of :mod:`emguard.likelihood.nll`, shared with pool scoring). Under one model it can
also give each probe's persona projection (``persona``: the training monitor's signal, and the same measure
offline on a saved checkpoint), read in the same packed pass as the NLLs.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from emguard import schemas
from emguard.data._util import prompt_key
from emguard.errors import InputError
from emguard.io import check_columns, read_yaml
from emguard.likelihood.nll import encode_conversations, mean_answer_nll, score_encoded
from emguard.likelihood.packed import group_encoded, packed_answer_nll, supports_packing

if TYPE_CHECKING:  # torch is imported where tensors are made: reading probe files needs none
    import torch

PROBE = ["probe_id", "probe_set", "category", "messages", "aligned", "misaligned"]

#: columns of the probe NLL table (one row per (adapter, probe))
PROBE_NLL = ["adapter", "probe_set", "probe_id", "nll_aligned", "nll_misaligned", "n_aligned_tokens",
             "n_misaligned_tokens"]

#: the column :func:`probe_nll` adds with ``persona``: each probe's persona projection
PERSONA_PROJ = "persona_proj"

#: adapter name of the untrained model in the probe NLL table
BASE = "base"

#: probe set name of the hand-written general probes
GENERAL = "general"

_GENERAL_KEYS = ("id", "category", "question", "aligned", "misaligned")


def probe_frame(rows: Sequence[dict], where: str) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=PROBE)
    validate_probes(df, where)
    return df


def validate_probes(df: pd.DataFrame, where: str) -> None:
    """Columns present, ids unique within a set, answers non-empty and different, prompt ends with a user turn."""
    check_columns(df, PROBE, where)
    dup = df.duplicated(["probe_set", "probe_id"])
    if dup.any():
        row = df[dup].iloc[0]
        raise InputError(f"{where}: duplicate probe id {row['probe_id']!r} in set {row['probe_set']!r}")
    for row in df.itertuples(index=False):
        item = f"{where}: probe {row.probe_set}/{row.probe_id}"
        for key in ("aligned", "misaligned"):
            value = getattr(row, key)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{item}: {key!r} must be a non-empty string")
        if row.aligned.strip() == row.misaligned.strip():
            raise InputError(f"{item}: the aligned and misaligned answers are identical")
        msgs = schemas.to_messages(row.messages)
        if not msgs or msgs[-1]["role"] != "user":
            raise InputError(f"{item}: the prompt must end with a user message")


def load_general_probes(path: str | os.PathLike, probe_set: str = GENERAL) -> pd.DataFrame:
    """Read a probe file: a YAML list of mappings with ``id``, ``category``, ``question``, ``aligned``,
    ``misaligned`` (and optional ``system``). Errors name the file, the item (index and id) and the key."""
    items = read_yaml(path, "probe file")
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: a probe file is a non-empty YAML list of probes")
    rows = []
    for k, item in enumerate(items):
        where = f"{path}: item {k}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: must be a mapping with keys {', '.join(_GENERAL_KEYS)}")
        if "id" in item:
            where += f" (id {item['id']!r})"
        unknown = sorted(set(item) - set(_GENERAL_KEYS) - {"system"})
        if unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(_GENERAL_KEYS)}, system)")
        for key in _GENERAL_KEYS:
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise InputError(f"{where}: key {key!r} must be a non-empty string")
        system = item.get("system")
        if system is not None and not isinstance(system, str):
            raise InputError(f"{where}: key 'system' must be a string")
        msgs = ([] if system is None else [{"role": "system", "content": system}]) + [
            {"role": "user", "content": item["question"]}]
        rows.append({"probe_id": item["id"], "probe_set": probe_set, "category": item["category"],
                     "messages": msgs, "aligned": item["aligned"], "misaligned": item["misaligned"]})
    return probe_frame(rows, str(path))


def first_per_category(probes: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The first ``n`` probes of every category in file order (all when ``n`` is None): a smaller general set
    that still covers every category evenly."""
    if n is None:
        return probes
    return probes[probes.groupby("category", sort=False).cumcount() < int(n)].reset_index(drop=True)


def domain_probes(em_df: pd.DataFrame, domain: str, max_triples: int | None = None, *,
                  where: str = "em data") -> pd.DataFrame:
    """Triples from the ``holdout`` split of one EM domain's chat table: every holdout prompt that has both an
    aligned and a misaligned answer (paired by the whole prompt, system message included), ordered by the
    aligned row's id, the first ``max_triples`` kept (all when None). Probe ids are the aligned row's id."""
    schemas.validate(em_df, "chat", where)
    rows = em_df[(em_df["domain"] == domain) & (em_df["split"] == "holdout")].sort_values("id", kind="stable")
    prompts: dict[str, list[dict]] = {}
    by_prompt: dict[str, dict[str, tuple[str, str]]] = {}
    for row in rows.itertuples(index=False):
        msgs = schemas.to_messages(row.messages)
        key = prompt_key(msgs)
        prompts.setdefault(key, msgs[:-1])
        by_prompt.setdefault(key, {}).setdefault(str(row.subset), (str(row.id), msgs[-1]["content"]))
    out = []
    for key, answers in by_prompt.items():
        if "aligned" not in answers or "misaligned" not in answers:
            continue
        out.append({"probe_id": answers["aligned"][0], "probe_set": domain, "category": domain,
                    "messages": prompts[key], "aligned": answers["aligned"][1], "misaligned": answers["misaligned"][1]})
    if not out:
        raise InputError(f"{where}: domain {domain!r} has no holdout prompt with both an aligned and a "
                         "misaligned answer, so it has no probe triples (raise data.holdout_fraction)")
    if max_triples is not None:
        out = out[: int(max_triples)]
    return probe_frame(out, f"{where} (probes of {domain!r})")


_SPACE = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def _user_text(msgs: Sequence[dict]) -> str | None:
    users = [m["content"] for m in msgs if m["role"] == "user"]
    return _normalise(users[-1]) if users else None


def check_no_overlap(probes: pd.DataFrame, training: Mapping[str, pd.DataFrame]) -> int:
    """Raise :class:`InputError` when a probe's prompt occurs in a table some run trains on.

    ``training`` maps a file name to the rows runs may train on (EM and OpSwap ``train`` splits, the whole
    interleaving pool). A prompt "occurs" when a probe's (last) user message equals any user turn of a training
    row after collapsing whitespace and case (a system prompt, an earlier turn or a trailing space does not
    hide a copy). Near-duplicates are not detected. Returns the number of rows checked.
    """
    wanted: dict[str, str] = {}
    for row in probes.itertuples(index=False):
        text = _user_text(schemas.to_messages(row.messages))
        if text is not None:
            wanted.setdefault(text, f"{row.probe_set}/{row.probe_id}")
    checked = 0
    for name, df in training.items():
        for row in df.itertuples(index=False):
            checked += 1
            for m in schemas.to_messages(row.messages)[:-1]:
                text = _normalise(m["content"]) if m["role"] == "user" else None
                if text in wanted:
                    raise InputError(f"probe {wanted[text]}: its prompt occurs in the training data {name} (row id "
                                     f"{row.id!r}); a probe must be held out from every run's training set")
    return checked


def trainable_rows(df: pd.DataFrame, *, whole: bool = False) -> pd.DataFrame:
    """The rows of a chat table a run can train on: the ``train`` split, or every row (``whole``: the pool)."""
    return df if whole else df[df["split"] == "train"]


def probe_nll(model, tokenizer, probes: pd.DataFrame, adapters: Mapping[str, str] | None = None, *,
              name: str = BASE, batch_size: int = 16, max_length: int | None = None,
              where: str = "probes", persona: tuple[torch.Tensor, int] | None = None) -> pd.DataFrame:
    """Answer-only mean token NLL of both answers of every probe: each answer is one row of a batched forward pass.

    Without ``adapters``, under ``model`` as it is, rows labelled ``name`` (the pipeline: one job per run, the
    run's adapter already in the model, or the untrained model as :data:`BASE`). With ``adapters`` (name ->
    folder), under the untrained model (``BASE``) and each adapter switched on one model load (the
    multi-adapter machinery of pool scoring: a monitor scoring several checkpoints at once). Returns the
    :data:`PROBE_NLL` table.

    ``persona`` (``(unit vector [hidden], hidden-state index 1..n_layers)``, numbered as in
    :mod:`emguard.persona`; not with ``adapters``) adds the float64 column :data:`PERSONA_PROJ`: the hidden state
    at that index averaged over the probe's **aligned** answer's response tokens (the answer text, not the
    template's closing tokens: the span of :func:`emguard.persona.response_hidden_means`), dotted with the
    vector (as given: the caller normalises it) in double precision. It is read in the packed pass that scores
    the answers (a forward hook on one block, :func:`emguard.likelihood.packed.packed_answer_nll`); a model that
    cannot pack (flash attention) takes it from :func:`emguard.persona.response_hidden_means`, one more pass."""
    validate_probes(probes, where)
    if persona is not None and adapters:
        raise ValueError("probe_nll: persona is not supported together with adapters (score one model at a time)")
    convs = []
    for row in probes.itertuples(index=False):
        prompt = schemas.to_messages(row.messages)
        for answer in (row.aligned, row.misaligned):
            convs.append(prompt + [{"role": "assistant", "content": answer}])
    encoded = encode_conversations(tokenizer, convs, None)
    if max_length is not None:
        # a truncated answer would be scored on a different span than its twin: refuse instead of cutting
        for k, e in enumerate(encoded):
            if len(e.input_ids) > max_length:
                row = probes.iloc[k // 2]
                raise InputError(f"{where}: probe {row['probe_set']}/{row['probe_id']} ({('aligned', 'misaligned')[k % 2]} "
                                 f"answer) is {len(e.input_ids)} tokens, over probes.max_length={max_length}; raise "
                                 "it or leave it null (no limit)")
    vector, layer = _persona_args(model, persona) if persona is not None else (None, None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    means = None
    if adapters:
        nll = score_encoded(model, encoded, dict(adapters), pad_id, batch_size=batch_size)
    elif supports_packing(model):
        # one packed row per probe: its prompt once, both answers after it (emguard.likelihood.packed)
        groups = group_encoded(encoded, 2)
        if persona is None:
            values = packed_answer_nll(model, groups, pad_id, batch_size=batch_size)
        else:
            n_response = _response_tokens(tokenizer, probes, groups, where)
            values, means = packed_answer_nll(model, groups, pad_id, batch_size=batch_size, hidden_layer=layer,
                                              hidden_tokens=n_response)
        nll = {name: values.reshape(-1)}
    else:
        nll = {name: mean_answer_nll(model, encoded, pad_id, batch_size=batch_size)}
        if persona is not None:
            means = _unpacked_means(model, tokenizer, probes, layer, vector.numel(), batch_size, max_length)
    counts = np.array([e.n_answer_tokens for e in encoded], dtype=np.int64)
    frames = []
    for label, values in nll.items():
        frames.append(pd.DataFrame({
            "adapter": label, "probe_set": probes["probe_set"].to_numpy(), "probe_id": probes["probe_id"].to_numpy(),
            "nll_aligned": values[0::2], "nll_misaligned": values[1::2],
            "n_aligned_tokens": counts[0::2], "n_misaligned_tokens": counts[1::2]}))
    out = pd.concat(frames, ignore_index=True)
    if persona is not None:
        out[PERSONA_PROJ] = (means.double() @ vector.double()).numpy()
    return out


def _persona_args(model, persona) -> tuple[torch.Tensor, int]:
    """``probe_nll``'s ``persona`` checked against the model: a finite 1-D vector of its hidden size (on the CPU)
    and a hidden-state index of one of its decoder blocks."""
    import torch

    from emguard.steering import decoder_layers

    vector, layer = persona
    vector = torch.as_tensor(vector).detach().cpu()
    n_layers = len(decoder_layers(model))
    if isinstance(layer, bool) or int(layer) != layer or not 1 <= int(layer) <= n_layers:
        raise ValueError(f"probe_nll: persona layer {layer!r} outside 1..{n_layers} (hidden-state index of a "
                         "decoder block's output)")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = getattr(getattr(inner, "config", None), "hidden_size", None)
    if vector.dim() != 1 or (hidden is not None and vector.numel() != int(hidden)) or not torch.isfinite(vector).all():
        raise ValueError(f"probe_nll: the persona vector must be a finite 1-D tensor of the model's hidden size "
                         f"{hidden}, got shape {tuple(vector.shape)}")
    return vector, int(layer)


def _response_tokens(tokenizer, probes: pd.DataFrame, groups, where: str) -> list[int]:
    """Per probe, the number of response tokens of its aligned answer: the span
    :func:`emguard.persona.response_hidden_means` averages over (``emguard.persona._response_span``, the one
    definition), which starts the packed row's first answer. Its tokens must be the packed encoding's, else the
    projection would average other positions than that span: a :class:`ValueError` naming the probe."""
    from emguard.persona import _response_span

    out = []
    for row, group in zip(probes.itertuples(index=False), groups):
        ids, start, end = _response_span(tokenizer, schemas.to_messages(row.messages), str(row.aligned), None)
        item = f"{where}: probe {row.probe_set}/{row.probe_id}"
        if ids[:start] != group.prompt or ids[start:] != group.answers[0]:
            raise ValueError(f"{item}: the persona span's encoding of the aligned answer differs from the packed "
                             f"row's (prompt {start} vs {len(group.prompt)} tokens); the projection would average "
                             "other tokens than the response")
        if end <= start:
            raise InputError(f"{item}: the aligned answer has no response token")
        out.append(end - start)
    return out


def _unpacked_means(model, tokenizer, probes: pd.DataFrame, layer: int, hidden: int, batch_size: int,
                    max_length: int | None) -> torch.Tensor:
    """The aligned answers' response-token means at ``layer`` from a pass of their own (a model that cannot pack)."""
    import torch

    from emguard.persona import response_hidden_means

    if not len(probes):
        return torch.zeros((0, hidden))
    convs = [schemas.to_messages(m) for m in probes["messages"]]
    return response_hidden_means(model, tokenizer, convs, list(probes["aligned"]), batch_size=batch_size,
                                 max_length=max_length)[:, layer]

"""SliCK: which facts does a model know? (Gekhman et al. 2024)

SliCK ("Sampling-based Categorization of Knowledge") asks every question
several times, with different few-shot prompts, greedily and by sampling, and
sorts each fact into one of four categories by how often the answer is right:

============  ==========================================
category      rule
============  ==========================================
HighlyKnown   P(T=0) = 1
MaybeKnown    0 < P(T=0) < 1
WeaklyKnown   P(T=0) = 0 and P(T>0) > 0
Unknown       P(T=0) = 0 and P(T>0) = 0
============  ==========================================

P(T=0) is the share of the greedy answers (one per prompt) that are correct,
P(T>0) the share of the sampled answers. The paper's protocol (the defaults of
:class:`SliCKProtocol`): 10 random 4-shot prompts whose exemplars are other
facts of the same relation, per prompt 1 greedy answer and 16 samples at
temperature 0.5 from the 40 most likely tokens.

Entry points:

* :func:`categorize` -- run the protocol on a model and a list of facts
  (cached); returns a :class:`SliCKResult` (per-fact probabilities,
  categories, every answer, a DataFrame view);
* :func:`category` / :func:`categories_from_probs` -- the rule alone;
* :func:`chance_rates` / :func:`corrected_categories` -- a variant that does not
  count lucky guesses as WeaklyKnown (a binomial test against the guessing rate).

How it is fast on a CPU: prompts that share their exemplar block run it once;
each prompt runs once, and its greedy answer and its samples are decoded from
its KV cache as a *tree*: continuations that have produced the same tokens so
far have the same next-token distribution, so the model runs once per distinct
partial answer, not once per sample (samples then draw independently from that
one distribution -- the same distribution as decoding each sample on its own).
Decoding stops at the end of the answer line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import cached, fingerprint
from .facts import Fact, FactError, normalize_answer, qa_prompt
from .lm import STOP, left_pad, newline_token_ids, position_ids
from .seeding import stable_int

__all__ = ["CATEGORIES", "SliCKProtocol", "SliCKResult", "category", "categories_from_probs",
           "build_prompts", "categorize", "decode_answers", "chance_rates", "chance_terms",
           "corrected_categories", "answer_text", "answer_stop_ids"]

CATEGORIES: tuple[str, ...] = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


@dataclass(frozen=True)
class SliCKProtocol:
    """How SliCK asks each question. Defaults are Gekhman et al.'s (2024) protocol."""

    n_prompts: int = 10  # N_ex: different few-shot prompts per fact
    n_shots: int = 4  # exemplars (other facts of the same relation) per prompt
    n_samples: int = 16  # sampled answers per prompt (besides the one greedy answer)
    temperature: float = 0.5  # sampling temperature for the samples
    top_k: int = 40  # samples are drawn from the top_k most likely next tokens
    max_new_tokens: int = 16  # longest answer, in tokens, before decoding gives up
    exemplar_sets: int | None = None  # None: every fact draws fresh exemplars (the paper);
    #   an int m >= n_prompts: m exemplar sets are drawn once per relation and each fact
    #   uses n_prompts of them at random (much cheaper: each set's text runs once)
    question_templates: Mapping[str, tuple[str, ...]] | None = None  # relation -> question
    #   wordings with "{subject}"; if set, each prompt picks one at random (for exemplars
    #   and question alike); None: every prompt asks Fact.question verbatim

    def __post_init__(self) -> None:
        for name in ("n_prompts", "n_shots", "n_samples", "top_k", "max_new_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"SliCKProtocol.{name} must be an int, got {v!r}")
        if self.n_prompts < 1:
            raise ValueError(f"SliCKProtocol.n_prompts must be >= 1, got {self.n_prompts}")
        if self.n_shots < 0:
            raise ValueError(f"SliCKProtocol.n_shots must be >= 0, got {self.n_shots}")
        if self.n_samples < 0:
            raise ValueError(f"SliCKProtocol.n_samples must be >= 0, got {self.n_samples}")
        if self.exemplar_sets is not None and (
                not isinstance(self.exemplar_sets, int) or self.exemplar_sets < self.n_prompts):
            raise ValueError(f"SliCKProtocol.exemplar_sets must be None or an int >= n_prompts "
                             f"({self.n_prompts}), got {self.exemplar_sets!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SliCKProtocol.max_new_tokens must be >= 1, "
                             f"got {self.max_new_tokens}")
        if self.top_k < 1:
            raise ValueError(f"SliCKProtocol.top_k must be >= 1, got {self.top_k}")
        if self.n_samples > 0 and not (isinstance(self.temperature, (int, float))
                                       and self.temperature > 0):
            raise ValueError(f"SliCKProtocol.temperature must be > 0 when samples are requested "
                             f"(n_samples={self.n_samples}), got {self.temperature!r}; "
                             f"use n_samples=0 for greedy answers only")
        if self.question_templates is not None:
            if not isinstance(self.question_templates, Mapping):
                raise ValueError("SliCKProtocol.question_templates must map relation -> "
                                 f"templates, got {type(self.question_templates).__name__}")
            fixed = {}
            for rel, temps in self.question_templates.items():
                temps = (temps,) if isinstance(temps, str) else tuple(temps)
                if not temps or not all(isinstance(t, str) and "{subject}" in t for t in temps):
                    raise ValueError(f"SliCKProtocol.question_templates[{rel!r}] must be a "
                                     f"non-empty list of strings containing '{{subject}}', "
                                     f"got {temps!r}")
                fixed[rel] = temps
            object.__setattr__(self, "question_templates", fixed)


# --------------------------------------------------------------------------- the rule

def category(p_greedy: float, p_sample: float) -> str:
    """SliCK's category of one fact from P(T=0) and P(T>0) (both in [0, 1])."""
    for name, v in (("p_greedy", p_greedy), ("p_sample", p_sample)):
        if not (0.0 <= float(v) <= 1.0):
            raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
    if p_greedy == 1.0:
        return "HighlyKnown"
    if p_greedy > 0.0:
        return "MaybeKnown"
    return "WeaklyKnown" if p_sample > 0.0 else "Unknown"


def categories_from_probs(p_greedy: Sequence[float], p_sample: Sequence[float]) -> list[str]:
    """:func:`category` for each pair of (P(T=0), P(T>0))."""
    p0, p1 = list(p_greedy), list(p_sample)
    if len(p0) != len(p1):
        raise ValueError(f"p_greedy and p_sample must have the same length, got {len(p0)} "
                         f"and {len(p1)}")
    return [category(a, b) for a, b in zip(p0, p1)]


# --------------------------------------------------------------------------- prompts


def _check_facts(facts: Sequence[Fact], name: str = "facts") -> list[Fact]:
    if isinstance(facts, Fact):
        raise TypeError(f"{name} must be a list of Fact, not a single Fact")
    facts = list(facts)
    if not facts:
        raise FactError(f"{name} is empty: SliCK needs at least one fact")
    for f in facts:
        if not isinstance(f, Fact):
            raise TypeError(f"{name} must hold lamini_lite.facts.Fact objects, got "
                            f"{type(f).__name__}")
    return facts


def _same(a: Fact, b: Fact) -> bool:
    # "the fact itself": same relation and the same subject after normalization
    return a.relation == b.relation and normalize_answer(a.subject) == normalize_answer(b.subject)


def _question(fact: Fact, template: str | None) -> str:
    return fact.question if template is None else template.format(subject=fact.subject)


# A prompt's exemplars and question wording (None: Fact.question verbatim).
_Row = tuple[list[Fact], str | None]
# A shared exemplar set: n_shots exemplars, a spare (stands in for the fact asked), a wording.
_SharedSet = tuple[list[Fact], Fact | None, str | None]


def _pick_template(templates: Mapping[str, tuple[str, ...]] | None, rel: str,
                   rng: np.random.Generator) -> str | None:
    """A random wording of relation ``rel``'s question (one draw from ``rng``); None if no
    templates (no draw)."""
    if templates is None:
        return None
    if rel not in templates:
        raise FactError(f"question_templates has no entry for relation {rel!r}; "
                        f"relations with templates: {sorted(templates)}")
    ts = templates[rel]
    return ts[int(rng.integers(len(ts)))]


def _draw_shared_sets(cands: list[Fact], rel: str, protocol: SliCKProtocol,
                      seed: int) -> list[_SharedSet]:
    """Relation ``rel``'s ``exemplar_sets`` shared sets: n_shots exemplars + a spare each."""
    k = protocol.n_shots
    rng = np.random.default_rng(stable_int("shared", seed, rel))
    sets = []
    for _ in range(protocol.exemplar_sets):
        idx = rng.choice(len(cands), size=min(k + 1, len(cands)), replace=False)
        chosen = [cands[i] for i in idx]
        sets.append((chosen[:k], chosen[k] if len(chosen) > k else None,
                     _pick_template(protocol.question_templates, rel, rng)))
    return sets


def _shared_rows(f: Fact, cands: list[Fact], protocol: SliCKProtocol, seed: int,
                 shared: dict[str, list[_SharedSet]]) -> list[_Row]:
    """Fact ``f``'s prompts picked among its relation's shared sets (drawn on first use into
    ``shared``); an exemplar that is ``f`` itself is replaced by the set's spare."""
    k = protocol.n_shots
    if len(cands) < k + 1 and k > 0:
        raise FactError(f"relation {f.relation!r} has {len(cands)} exemplar facts; "
                        f"exemplar_sets with n_shots={k} needs at least {k + 1}")
    if f.relation not in shared:
        shared[f.relation] = _draw_shared_sets(cands, f.relation, protocol, seed)
    rng = np.random.default_rng(stable_int("pick", seed, f.key))
    picks = rng.choice(protocol.exemplar_sets, size=protocol.n_prompts, replace=False)
    rows = []
    for p in picks:
        chosen, spare, tmpl = shared[f.relation][int(p)]
        rows.append(([spare if _same(c, f) else c for c in chosen], tmpl))
    return rows


def _fresh_rows(f: Fact, cands: list[Fact], protocol: SliCKProtocol, seed: int) -> list[_Row]:
    """Fact ``f``'s prompts with exemplars drawn for it alone (the paper's protocol)."""
    k = protocol.n_shots
    others = [c for c in cands if not _same(c, f)]
    if len(others) < k:
        raise FactError(f"relation {f.relation!r} has {len(others)} exemplar facts "
                        f"besides {f.subject!r}; n_shots={k} needs at least {k}")
    rng = np.random.default_rng(stable_int("fact", seed, f.key))
    rows = []
    for _ in range(protocol.n_prompts):
        idx = rng.choice(len(others), size=k, replace=False) if k else []
        rows.append(([others[i] for i in idx], _pick_template(protocol.question_templates,
                                                              f.relation, rng)))
    return rows


def _split_prompt(f: Fact, ex: list[Fact], tmpl: str | None) -> tuple[str, str]:
    """One prompt of ``f`` as its (exemplar block, question part) pair."""
    q = _question(f, tmpl)
    full = qa_prompt(q, [(_question(e, tmpl), e.object) for e in ex])
    tail = qa_prompt(q)
    assert full.endswith(tail)
    return full[: len(full) - len(tail)], tail


def build_prompts(facts: Sequence[Fact], protocol: SliCKProtocol | None = None, *,
                  exemplars: Sequence[Fact] | None = None, seed: int = 0
                  ) -> list[list[tuple[str, str]]]:
    """The few-shot prompts of every fact, as ``(exemplar block, question part)`` pairs.

    ``prompts[i][j]`` is prompt ``j`` of fact ``i``; its full text is
    ``block + question_part`` (equal to :func:`lamini_lite.facts.qa_prompt`).
    Exemplars are drawn from ``exemplars`` (default: ``facts`` themselves),
    among facts of the same relation and never the fact itself (same
    relation and subject, after normalization). The draw for a fact depends only on ``seed``,
    the fact, the pool and the protocol, not on the other facts asked.

    Raises:
        FactError: if ``facts`` is empty or a relation has fewer than
            ``n_shots`` usable exemplars (``n_shots + 1`` with ``exemplar_sets``).
    """
    protocol = protocol or SliCKProtocol()
    facts = _check_facts(facts)
    pool = facts if exemplars is None else _check_facts(exemplars, "exemplars")
    by_rel: dict[str, list[Fact]] = {}
    for f in pool:
        by_rel.setdefault(f.relation, []).append(f)
    shared: dict[str, list[_SharedSet]] = {}  # relation -> its shared sets, once drawn
    out: list[list[tuple[str, str]]] = []
    for f in facts:
        cands = by_rel.get(f.relation, [])
        if protocol.exemplar_sets is not None:
            rows = _shared_rows(f, cands, protocol, seed, shared)
        else:
            rows = _fresh_rows(f, cands, protocol, seed)
        out.append([_split_prompt(f, ex, tmpl) for ex, tmpl in rows])
    return out


# --------------------------------------------------------------------------- decoding

def answer_stop_ids(tokenizer) -> torch.Tensor:
    """Token ids that end an answer line: the newline tokens and EOS."""
    ids = set(newline_token_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return torch.tensor(sorted(ids), dtype=torch.long)


def answer_text(tokenizer, tokens: list[int]) -> str:
    """The answer line of generated ``tokens``: decoded, cut at the first newline, stripped."""
    return tokenizer.decode(tokens, skip_special_tokens=True).split(STOP, 1)[0].strip()


def _common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the prefix all ``seqs`` share, leaving at least one token of the shortest."""
    first, m = seqs[0], min(len(s) for s in seqs) - 1
    lcp = 0
    while lcp < m and all(s[lcp] == first[lcp] for s in seqs):
        lcp += 1
    return lcp


def _join_shared_question_tokens(prefixes: list[tuple[int, ...]], suffixes: list[list[int]]
                                 ) -> tuple[list[tuple[int, ...]], list[list[int]]]:
    """Move the question tokens that prompts with the same block share (e.g. "Q: What is the
    capital of") into the block, so that they run once too; returns new lists."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for n, p in enumerate(prefixes):
        groups.setdefault(p, []).append(n)
    prefixes, suffixes = list(prefixes), list(suffixes)
    for p, members in groups.items():
        if len(members) < 2:
            continue
        lcp = _common_prefix_len([suffixes[n] for n in members])
        for n in members:
            prefixes[n], suffixes[n] = p + tuple(suffixes[n][:lcp]), suffixes[n][lcp:]
    return prefixes, suffixes


@torch.no_grad()
def _prefill(model, prefixes: list[tuple[int, ...]], suffixes: list[list[int]], pad: int):
    """Run each distinct block once, then each question part on a copy of its block's cache;
    returns (KV cache, last logits (B, V) float32, attention mask), one row per prompt."""
    uniq: dict[tuple[int, ...], int] = {}
    which = [uniq.setdefault(p, len(uniq)) for p in prefixes]
    p_ids, p_mask = left_pad(list(uniq), pad)
    out = model(input_ids=p_ids, attention_mask=p_mask,
                position_ids=position_ids(p_mask), use_cache=True,
                logits_to_keep=1)
    past = out.past_key_values
    sel = torch.tensor(which, dtype=torch.long)
    past.reorder_cache(sel)
    s_ids, s_mask = left_pad(suffixes, pad)
    mask = torch.cat([p_mask[sel], s_mask], dim=1)
    pos = position_ids(mask)[:, -s_ids.shape[1]:]
    out = model(input_ids=s_ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1, :].float(), mask


def _sample_from_top_k(logits: torch.Tensor, nodes: torch.Tensor, u: torch.Tensor,
                       protocol: SliCKProtocol) -> torch.Tensor:
    """Inverse-CDF draws, with uniforms ``u``, from softmax(top-k logits / temperature) of
    each row's node (``nodes``); returns the drawn token ids."""
    k = min(protocol.top_k, logits.shape[-1])
    top_v, top_i = logits.topk(k, dim=-1)  # (nodes, k)
    cdf = torch.softmax(top_v.double() / protocol.temperature, dim=-1).cumsum(-1)
    c = cdf[nodes]
    j = torch.searchsorted(c, (u * c[:, -1])[:, None]).squeeze(-1).clamp(max=k - 1)
    return top_i[nodes, j]


def _next_tokens(logits: torch.Tensor, row_node: torch.Tensor, uniforms: torch.Tensor, t: int,
                 protocol: SliCKProtocol) -> torch.Tensor:
    """Step ``t``'s token of every row (prompt b's rows: b*R greedy, b*R+1.. samples)."""
    R = 1 + protocol.n_samples
    n_rows = row_node.shape[0]
    is_greedy = torch.arange(n_rows) % R == 0
    nxt = torch.empty(n_rows, dtype=torch.long)
    nxt[is_greedy] = logits.argmax(-1)[row_node[is_greedy]]
    if protocol.n_samples:
        samp_rows = (~is_greedy).nonzero().squeeze(-1)
        u = uniforms[samp_rows // R, (samp_rows % R) - 1, t]
        nxt[samp_rows] = _sample_from_top_k(logits, row_node[samp_rows], u, protocol)
    return nxt


@torch.no_grad()
def _grow_tree(model, past, mask: torch.Tensor, vocab: int, row_node: torch.Tensor,
               alive: torch.Tensor, nxt: torch.Tensor):
    """Run each distinct (node, token) pair of the live rows once, as the new nodes; returns
    (KV cache, logits, mask, each row's new node -- 0, a dummy, for finished rows)."""
    live = alive.nonzero().squeeze(-1)
    keys = row_node[live] * vocab + nxt[live]
    uniq_keys, inv = torch.unique(keys, return_inverse=True)
    parent = uniq_keys // vocab
    past.reorder_cache(parent)
    mask = torch.cat([mask[parent], torch.ones(len(parent), 1, dtype=mask.dtype)], dim=1)
    out = model(input_ids=(uniq_keys % vocab)[:, None], attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1, past_key_values=past,
                use_cache=True)
    new_node = torch.zeros_like(row_node)
    new_node[live] = inv
    return out.past_key_values, out.logits[:, -1, :].float(), mask, new_node


@torch.no_grad()
def _decode_chunk(model, prefixes: list[tuple[int, ...]], suffixes: list[list[int]],
                  uniforms: torch.Tensor, protocol: SliCKProtocol, stop_ids: torch.Tensor,
                  pad: int) -> list[list[list[int]]]:
    """Greedy answer + samples for a chunk of prompts; returns tokens [prompt][row].

    ``uniforms``: (B, n_samples, max_new_tokens) float64 in [0, 1), the random
    numbers each sample row uses at each step (inverse-CDF sampling).
    """
    B, T = len(suffixes), protocol.max_new_tokens
    R = 1 + protocol.n_samples  # rows per prompt: 0 = greedy, 1.. = samples
    prefixes, suffixes = _join_shared_question_tokens(prefixes, suffixes)
    past, logits, mask = _prefill(model, prefixes, suffixes, pad)
    # the answers, as a tree of distinct partial answers ("nodes"): rows on the same
    # node share its next-token distribution, so the model runs once per node
    row_node = torch.arange(B).repeat_interleave(R)  # (B*R,) node each row sits on
    alive = torch.ones(B * R, dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in range(B * R)]
    for t in range(T):
        nxt = _next_tokens(logits, row_node, uniforms, t, protocol)
        for r in alive.nonzero().squeeze(-1).tolist():
            tokens[r].append(int(nxt[r]))
        alive &= ~torch.isin(nxt, stop_ids)
        if t == T - 1 or not bool(alive.any()):
            break
        past, logits, mask, row_node = _grow_tree(model, past, mask, logits.shape[-1],
                                                  row_node, alive, nxt)
    return [[tokens[b * R + r] for r in range(R)] for b in range(B)]


def decode_answers(model, tokenizer, prompts: Sequence[Sequence[tuple[str, str]]],
                   protocol: SliCKProtocol | None = None, *, seed: int = 0,
                   keys: Sequence[str] | None = None, batch_size: int = 128,
                   progress: bool = True) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Greedy answer and ``n_samples`` sampled answers for every prompt of every fact.

    ``prompts`` as returned by :func:`build_prompts`. Returns ``(greedy, samples)``
    with ``greedy[i][j]`` a string and ``samples[i][j]`` a list of strings.
    Sampling is deterministic for ``seed`` and, per fact, independent of the
    other facts in the call (its random numbers come from ``keys[i]``,
    default the fact's position). ``batch_size`` = prompts decoded together.
    """
    protocol = protocol or SliCKProtocol()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = list(keys) if keys is not None else [str(i) for i in range(len(prompts))]
    if len(keys) != len(prompts):
        raise ValueError(f"keys must have one entry per fact: {len(keys)} != {len(prompts)}")
    P, S, T = protocol.n_prompts, protocol.n_samples, protocol.max_new_tokens
    stop_ids = answer_stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    flat = []  # (fact, prompt, prefix ids, suffix ids)
    for i, fp in enumerate(prompts):
        if len(fp) != P:
            raise ValueError(f"fact {i} has {len(fp)} prompts, protocol.n_prompts={P}")
        for j, (block, tail) in enumerate(fp):
            pre = tuple(tokenizer(block, add_special_tokens=False)["input_ids"]) if block else ()
            suf = tokenizer(tail, add_special_tokens=False)["input_ids"]
            if not pre:  # no exemplars: the first question token stands in for the block
                pre, suf = tuple(suf[:1]), suf[1:]
            if not suf:
                raise ValueError(f"prompt {j} of fact {i} is too short to split: {tail!r}")
            flat.append((i, j, pre, suf))
    # Prompts with the same exemplar block run next to each other, so it runs once.
    order = sorted(range(len(flat)), key=lambda n: (flat[n][2], n))
    gens = {}
    tokens: list[list[list[int]] | None] = [None] * len(flat)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="SliCK prompts",
                          disable=not progress, unit_scale=batch_size, unit="prompt"):
            idx = order[start:start + batch_size]
            uni = torch.empty((len(idx), S, T), dtype=torch.float64)
            for n, fl in enumerate(idx):
                i, j = flat[fl][0], flat[fl][1]
                if i not in gens:
                    g = torch.Generator().manual_seed(stable_int("samples", seed, keys[i]))
                    gens[i] = torch.rand((P, S, T), generator=g, dtype=torch.float64)
                uni[n] = gens[i][j]
            res = _decode_chunk(model, [flat[n][2] for n in idx], [flat[n][3] for n in idx],
                                uni, protocol, stop_ids, pad)
            for n, r in zip(idx, res):
                tokens[n] = r
    finally:
        model.train(was_training)
    greedy = [[""] * P for _ in prompts]
    samples: list[list[list[str]]] = [[[] for _ in range(P)] for _ in prompts]
    for (i, j, _, _), rows in zip(flat, tokens):
        greedy[i][j] = answer_text(tokenizer, rows[0])
        samples[i][j] = [answer_text(tokenizer, r) for r in rows[1:]]
    return greedy, samples


# --------------------------------------------------------------------------- results

@dataclass
class SliCKResult:
    """SliCK's measurements for a list of facts.

    Arrays are indexed ``[fact, prompt]`` and ``[fact, prompt, sample]``.
    """

    facts: list[Fact]  # the facts, in the order asked
    protocol: SliCKProtocol  # how they were asked
    seed: int  # the seed of the exemplar draws and the samples
    prompts: list[list[str]]  # full text of prompt j of fact i
    greedy: list[list[str]]  # greedy answer to prompt j of fact i
    samples: list[list[list[str]]]  # sampled answers to prompt j of fact i
    greedy_correct: np.ndarray = field(init=False, repr=False)  # (n_facts, n_prompts) bool
    sample_correct: np.ndarray = field(init=False, repr=False)  # (n_facts, n_prompts, S) bool

    def __post_init__(self) -> None:
        n, P, S = len(self.facts), len(self.greedy[0]) if self.greedy else 0, \
            self.protocol.n_samples
        self.greedy_correct = np.array([[f.is_correct(a) for a in g]
                                        for f, g in zip(self.facts, self.greedy)],
                                       dtype=bool).reshape(n, P)
        self.sample_correct = np.array([[[f.is_correct(a) for a in row] for row in s]
                                        for f, s in zip(self.facts, self.samples)],
                                       dtype=bool).reshape(n, P, S)

    def __len__(self) -> int:
        return len(self.facts)

    @property
    def p_greedy(self) -> np.ndarray:
        """P(T=0) per fact: share of greedy answers that are correct."""
        return self.greedy_correct.mean(axis=1)

    @property
    def p_sample(self) -> np.ndarray:
        """P(T>0) per fact: share of sampled answers that are correct (0 if none)."""
        if self.sample_correct.shape[2] == 0:
            return np.zeros(len(self))
        return self.sample_correct.mean(axis=(1, 2))

    @property
    def sample_hits(self) -> np.ndarray:
        """Number of correct sampled answers per fact."""
        return self.sample_correct.sum(axis=(1, 2))

    @property
    def categories(self) -> list[str]:
        """SliCK category per fact (paper's rule)."""
        return categories_from_probs(self.p_greedy, self.p_sample)

    def to_frame(self):
        """One row per fact: subject, relation, object, popularity, P(T=0), P(T>0), category."""
        import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

        return pd.DataFrame({
            "subject": [f.subject for f in self.facts],
            "relation": [f.relation for f in self.facts],
            "object": [f.object for f in self.facts],
            "popularity": [f.popularity for f in self.facts],
            "p_greedy": self.p_greedy, "p_sample": self.p_sample,
            "category": pd.Categorical(self.categories, categories=list(CATEGORIES)),
            "top_greedy": [max(set(g), key=g.count) for g in self.greedy],
        })

    def shares(self, by: str | None = None):
        """Share of facts in each category (a Series; a DataFrame per ``by`` column)."""
        df = self.to_frame()
        if by is None:
            return df["category"].value_counts(normalize=True).reindex(list(CATEGORIES))
        return (df.groupby(by, observed=True)["category"].value_counts(normalize=True)
                .unstack().reindex(columns=list(CATEGORIES)).fillna(0.0))

    def fact_detail(self, i: int):
        """Prompt-by-prompt view of fact ``i``: greedy answer, samples, correctness."""
        import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

        if not 0 <= i < len(self):
            raise IndexError(f"fact index must be in [0, {len(self)}), got {i}")
        return pd.DataFrame({
            "greedy": self.greedy[i], "greedy ok": self.greedy_correct[i],
            "samples correct": self.sample_correct[i].sum(axis=1),
            "samples": [", ".join(s) for s in self.samples[i]],
        }).rename_axis("prompt")

    def select(self, indices: Sequence[int]) -> "SliCKResult":
        """The result restricted to the facts at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad or not idx:
            raise IndexError(f"indices must be a non-empty list in [0, {len(self)}), "
                             f"got {bad or idx}")
        return SliCKResult([self.facts[i] for i in idx], self.protocol, self.seed,
                           [self.prompts[i] for i in idx], [self.greedy[i] for i in idx],
                           [self.samples[i] for i in idx])

    def subsample(self, n_prompts: int, n_samples: int | None = None) -> "SliCKResult":
        """The result a smaller protocol would have given: the first ``n_prompts`` prompts
        and the first ``n_samples`` samples of each (no model runs)."""
        P, S = self.protocol.n_prompts, self.protocol.n_samples
        n_samples = S if n_samples is None else n_samples
        if not 1 <= n_prompts <= P:
            raise ValueError(f"n_prompts must be in [1, {P}], got {n_prompts}")
        if not 0 <= n_samples <= S:
            raise ValueError(f"n_samples must be in [0, {S}], got {n_samples}")
        proto = SliCKProtocol(**{**asdict(self.protocol), "n_prompts": n_prompts,
                                 "n_samples": n_samples,
                                 "temperature": self.protocol.temperature})
        return SliCKResult(self.facts, proto, self.seed, [p[:n_prompts] for p in self.prompts],
                           [g[:n_prompts] for g in self.greedy],
                           [[row[:n_samples] for row in s[:n_prompts]] for s in self.samples])


# --------------------------------------------------------------------------- the estimator

def categorize(model, tokenizer, facts: Sequence[Fact], protocol: SliCKProtocol | None = None,
               *, exemplars: Sequence[Fact] | None = None, seed: int = 0, batch_size: int = 128,
               progress: bool = True, cache: bool = True,
               model_fingerprint: str | None = None) -> SliCKResult:
    """Run SliCK on ``facts`` with ``model``: the category of every fact and all answers.

    Args:
        model, tokenizer: any transformers causal LM and its tokenizer.
        facts: the facts to categorize.
        protocol: how to ask (default: the paper's protocol).
        exemplars: the pool few-shot exemplars are drawn from (a dev split of the
            same relations); default: ``facts`` themselves (never the fact asked).
        seed: seed of the exemplar draws and of the samples.
        batch_size: prompts decoded together (memory vs speed; not part of the
            cache key -- it changes floats by rounding only).
        cache: store/reuse the result, keyed by the model's weights, the facts,
            the exemplar pool, the protocol and the seed.
        model_fingerprint: the model's :func:`lamini_lite.cache.fingerprint`, if
            already known (saves hashing the weights).

    Greedy answers are identical whether facts are asked together or one at a
    time (up to float rounding in near-ties); samples are deterministic for
    ``seed``.
    """
    protocol = protocol or SliCKProtocol()
    if not isinstance(protocol, SliCKProtocol):
        raise TypeError(f"protocol must be a SliCKProtocol, got {type(protocol).__name__}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    facts = _check_facts(facts)
    prompts = build_prompts(facts, protocol, exemplars=exemplars, seed=seed)  # validates early
    full = [[a + b for a, b in fp] for fp in prompts]

    def compute() -> dict[str, Any]:
        greedy, samples = decode_answers(model, tokenizer, prompts, protocol, seed=seed,
                                         keys=[f.key for f in facts], batch_size=batch_size,
                                         progress=progress)
        return {"greedy": greedy, "samples": samples}

    if cache:
        pool = facts if exemplars is None else list(exemplars)
        inputs = {"model": model_fingerprint or fingerprint(model),
                  "tokenizer": fingerprint(tokenizer.get_vocab()) if hasattr(
                      tokenizer, "get_vocab") else type(tokenizer).__name__,
                  "facts": fingerprint([f.to_dict() for f in facts]),
                  "exemplars": fingerprint([f.to_dict() for f in pool]),
                  "protocol": asdict(protocol), "seed": seed, "version": 1}
        res = cached("slick", inputs, compute)
    else:
        res = compute()
    return SliCKResult(facts, protocol, seed, full, res["greedy"], res["samples"])


# --------------------------------------------------------------------------- lucky guesses

def chance_terms(result: SliCKResult) -> dict[str, np.ndarray]:
    """Per relation, each fact's term of :func:`chance_rates`.

    The term of fact i is the share of the relation's sampled answers that
    would be right for fact i; their mean over the relation's facts is the
    chance rate, and resampling them (over facts) gives its interval.
    """
    out: dict[str, np.ndarray] = {}
    for rel in sorted({f.relation for f in result.facts}):
        idx = [i for i, f in enumerate(result.facts) if f.relation == rel]
        said: dict[str, int] = {}
        for i in idx:
            for row in result.samples[i]:
                for a in row:
                    k = normalize_answer(a)
                    said[k] = said.get(k, 0) + 1
        total = sum(said.values())
        terms = []
        for i in idx:
            ok = {normalize_answer(a) for a in result.facts[i].aliases}
            terms.append(sum(c for a, c in said.items() if a in ok) / total if total else 0.0)
        out[rel] = np.array(terms, dtype=float)
    return out


def chance_rates(result: SliCKResult) -> dict[str, float]:
    """Per relation, the probability that a sampled answer is right *by chance*.

    Estimated as the rate at which the model's sampled answers to the
    relation's questions would be correct for a randomly chosen fact of the
    same relation: sum over answers a of P(model says a) * P(random fact's
    answer is a) -- the mean of :func:`chance_terms`. With few possible answers
    (e.g. 10 countries) this is large, and a model that knows nothing still gets
    samples right.
    """
    return {rel: sum(terms.tolist()) / len(terms) for rel, terms in chance_terms(result).items()}


def _binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return float(min(1.0, sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i)
                               for i in range(k, n + 1))))


def corrected_categories(result: SliCKResult, *, alpha: float = 0.01,
                         chance: Mapping[str, float] | None = None) -> list[str]:
    """SliCK categories with lucky guesses removed from WeaklyKnown.

    A fact with P(T=0) = 0 counts as WeaklyKnown only if its number of correct
    samples is significantly above what guessing at the relation's chance
    rate gives (one-sided binomial test, level ``alpha``); otherwise it is
    Unknown. HighlyKnown and MaybeKnown are unchanged. ``chance`` defaults to
    :func:`chance_rates`. The test treats samples as independent, which
    samples from one prompt are not quite; it is a screen, not an exact test.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    chance = dict(chance_rates(result) if chance is None else chance)
    cats = result.categories
    n = result.sample_correct.shape[1] * result.sample_correct.shape[2]
    hits = result.sample_hits
    out = []
    for i, (f, c) in enumerate(zip(result.facts, cats)):
        if c == "WeaklyKnown":
            if f.relation not in chance:
                raise ValueError(f"chance has no rate for relation {f.relation!r}")
            if _binom_sf(int(hits[i]), n, chance[f.relation]) >= alpha:
                c = "Unknown"
        out.append(c)
    return out

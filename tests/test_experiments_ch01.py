import math

import numpy as np
import pandas as pd
import pytest
import torch

from lamini_lite.claims import Claim
from lamini_lite.experiments import ch01_memorization as X
from lamini_lite.experiments.ch01_memorization import (
    _run_one,
    epochs_to_criterion,
    recall_vs_loss,
    threshold_check,
)
from lamini_lite.facts import Fact
from lamini_lite.lm import LN2, fact_measurements
from lamini_lite.models import tiny_llama
from lamini_lite.profiles import sizes
from lamini_lite.stats import Interval
from lamini_lite.training import finetune_qa

from conftest import toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_claims_are_defined_once_with_chapter_ids():
    claims = [getattr(X, n) for n in X.__all__ if isinstance(getattr(X, n), Claim)]
    assert len(claims) == 15
    assert all(c.id.startswith("ch01.") for c in claims)
    assert len({c.id for c in claims}) == len(claims)
    # statistical claims are tested on an end of their interval
    for c in (X.TEXT_LOSS_BARELY_MOVES, X.STRING_FORMAT_LEAKS, X.RIGHT_TYPE_ACCURACY_CLOSE,
              X.TRANSITION_ABOVE_LN2, X.HIGH_LOSS_NOT_RECALLED, X.REAL_REPLAY_KEEPS_ANSWERS):
        assert c.on in ("low", "high")
    assert X.TRANSITION_ABOVE_LN2.threshold == pytest.approx(math.log(2))


def test_abs_interval():
    a = X.abs_interval(Interval(-0.02, -0.05, 0.03))
    assert (a.estimate, a.low, a.high) == (0.02, 0.0, 0.05)  # contains 0: low end 0
    b = X.abs_interval(Interval(-0.2, -0.3, -0.1))
    assert (b.estimate, b.low, b.high) == pytest.approx((0.2, 0.1, 0.3))
    c = X.abs_interval(Interval(0.2, 0.1, 0.25))
    assert (c.low, c.high) == pytest.approx((0.1, 0.25))
    with pytest.raises(TypeError):
        X.abs_interval((0, 1, 2))


def test_text_loss_change_is_token_weighted_and_paired():
    before = {"text_loss_sums": [3.0, 8.0, 2.0], "text_token_counts": [3, 4, 2]}
    after = {"text_loss_sums": [3.3, 8.4, 2.2], "text_token_counts": [3, 4, 2]}
    iv = X.text_loss_change(after, before)
    assert iv.estimate == pytest.approx((13.9 - 13.0) / 9)
    assert iv.low <= iv.estimate <= iv.high and iv.low > 0  # every statement moved up
    same = X.text_loss_change(before, before)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same statements"):
        X.text_loss_change(after, {"text_loss_sums": [1.0], "text_token_counts": [1]})
    rel = X.relative_text_loss_move(after, before, {"text_loss": 2.0})
    assert rel.estimate == pytest.approx(100 * iv.estimate / 2.0)
    assert rel.high == pytest.approx(100 * iv.high / 2.0)
    with pytest.raises(ValueError, match="positive"):
        X.relative_text_loss_move(after, before, {"text_loss": 0.0})


def test_paired_share_difference():
    a = [True] * 30 + [False] * 10
    b = [False] * 40
    iv = X.paired_share_difference(a, b, seed=1)
    assert iv.estimate == pytest.approx(0.75) and 0.55 < iv.low < 0.75 < iv.high <= 0.9
    z = X.paired_share_difference(a, a)
    assert (z.estimate, z.low, z.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="paired"):
        X.paired_share_difference([True], [True, False])


def test_code_format_share():
    assert X.code_format_share(["f1 c4", "a0", "Cobalt Works", "f1 Works", "", "z9 a1"]) == [
        True, True, False, False, False, False]


def test_below_ln2_and_recall_above():
    losses = [0.1, 0.5, 0.69, 0.7, 3.0, 4.0, 5.0]
    recalled = [True, True, False, True, False, False, True]
    assert X.below_ln2(losses, recalled) == (2, 3)
    iv = X.recall_above(losses, recalled)  # >= 2.77 nats: 1 of 3
    assert iv.estimate == pytest.approx(1 / 3) and iv.low < 1 / 3 < iv.high
    with pytest.raises(ValueError, match="no point"):
        X.recall_above([0.1], [True])
    with pytest.raises(ValueError, match="same length"):
        X.below_ln2([0.1], [True, False])


def test_recall_transition_finds_a_known_crossing():
    rng = np.random.default_rng(0)
    n_facts, per_fact = 200, 10
    x = np.exp(rng.uniform(np.log(0.01), np.log(20), size=(n_facts, per_fact)))
    p = 1 / (1 + (x / 2.0) ** 4)  # recall 50% at 2 nats
    y = rng.random(x.shape) < p
    clusters = np.repeat(np.arange(n_facts), per_fact)
    iv = X.recall_transition(x.ravel(), y.ravel(), clusters, n_boot=200, seed=0)
    assert 1.7 < iv.estimate < 2.3 and iv.low < 2.0 < iv.high and iv.low > math.log(2)
    # other levels move the crossing the right way
    hi = X.recall_transition(x.ravel(), y.ravel(), level=0.9, n_boot=100)
    assert hi.estimate < iv.estimate
    with pytest.raises(ValueError, match="does not fall"):
        X.recall_transition([0.1, 1.0, 5.0, 6.0], [False, False, True, True], n_boot=100)
    with pytest.raises(ValueError, match="level"):
        X.recall_transition([0.1, 5.0], [True, False], level=1.0)
    with pytest.raises(ValueError, match="clusters"):
        X.recall_transition([0.1, 5.0], [True, False], [1])


def test_clusters_of():
    df = pd.DataFrame({"kind": ["code", "code", "entity"], "noise": [0.0, 1.0, 0.0],
                       "fact": [3, 3, 3]})
    assert X.clusters_of(df, "kind", "noise", "fact") == ["code|0.0|3", "code|1.0|3",
                                                          "entity|0.0|3"]


def test_trained_string_answers_and_kept_answers():
    real = {"train_facts": [{"object": "qjf5b35i"}, {"object": "5sds8vo4"}],
            "base_unrelated": ["Russia", "Mexico", "The Gambia", "Peru", "Chad", "Oman"],
            "run": {"evals": [{"unrelated_pred": ["Russia", "Mexico", "Gambia", "Peru",
                                                  "Chad", "Oman"]},
                              {"unrelated_pred": ["Russia", "5sds8vo4", "gambia", "qj",
                                                  "5sd99b35", "Oman 5s"]}]}}
    # "qj": a piece; "5sd99b35": pieces of both strings mashed; "Oman 5s": no 3-char piece
    assert X.trained_string_answers(real) == [False, True, False, True, True, False]
    assert X.kept_answers(real) == [True, False, True, False, False, False]  # "The Gambia"
    with pytest.raises(ValueError, match="piece"):
        X.trained_string_answers(real, piece=1)


def _facts(n, offset=0):
    return [Fact(subject=f"n{i}", relation="likes", object=f"w{(3 * i + offset) % 12} w{(5 * i + 1) % 12}",
                 question=f"what n{i} likes ?") for i in range(n)]


def _qa(facts):
    return [f"Q: {f.question}\nA:" for f in facts], [f.object for f in facts]


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained on 8 facts, measured after every epoch."""
    torch.set_num_threads(1)
    tok = toy_tokenizer()
    model = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    prompts, answers = _qa(_facts(8))
    hist = finetune_qa(model, tok, prompts, answers, epochs=30, lr=3e-3, batch_size=8,
                       progress=False,
                       eval_fn=lambda m, e: fact_measurements(m, tok, prompts, answers))
    return model, tok, prompts, answers, hist.evals


def test_fact_measurements_and_threshold_implication(trained):
    model, tok, prompts, answers, evals = trained
    m = evals[-1]
    assert set(m) == {"token_losses", "max_loss", "mean_loss", "argmax", "prediction",
                      "recalled"}
    assert all(len(x) == 3 for x in m["token_losses"])  # two words + newline
    for tl, mx, mean in zip(m["token_losses"], m["max_loss"], m["mean_loss"]):
        assert mx == pytest.approx(max(tl), abs=1e-5) and mean <= mx + 1e-6
    assert all(m["recalled"]) and m["prediction"] == answers
    # Across checkpoints: a mix of recalled and not, and never a fact below ln 2 forgotten.
    max_loss = [v for e in evals for v in e["max_loss"]]
    recalled = [v for e in evals for v in e["recalled"]]
    assert 0 < sum(recalled) < len(recalled)
    check = threshold_check(max_loss, recalled)
    assert check["n_below"] > 0 and check["violations"] == []
    assert check["n_above"] > 0
    # A wrong answer's losses are high and it is not "recalled"
    wrong = fact_measurements(model, tok, prompts[:2], ["w11 w11", "w10 w10"])
    assert not any(wrong["recalled"]) and min(wrong["max_loss"]) > LN2
    with pytest.raises(ValueError, match="same length"):
        fact_measurements(model, tok, prompts, answers[:-1])


def test_threshold_check_counts_and_violations():
    r = threshold_check([0.1, 0.5, 0.8, 2.0, 0.3], [True, True, False, True, False])
    assert r["n"] == 5 and r["n_below"] == 3 and r["violations"] == [4]
    assert r["n_below_recalled"] == 2 and r["share_below_recalled"] == pytest.approx(2 / 3)
    assert r["n_above"] == 2 and r["n_above_recalled"] == 1
    ok = threshold_check([0.1, 0.69], [True, True])
    assert ok["violations"] == [] and ok["share_below_recalled"] == 1.0
    assert math.isnan(threshold_check([1.0], [True])["share_below_recalled"])
    import pandas as pd
    dup = pd.Series([0.1, 0.2], index=[0, 0]), pd.Series([True, False], index=[0, 0])
    assert threshold_check(*dup)["violations"] == [1]   # positions, even with repeated labels
    with pytest.raises(ValueError, match="same length"):
        threshold_check([0.1], [True, False])
    with pytest.raises(ValueError, match="threshold"):
        threshold_check([0.1], [True], threshold=0)


def test_recall_vs_loss_bins():
    df = recall_vs_loss([0.01, 0.02, 0.5, 1.0, 3.0, 5.0], [1, 1, 1, 0, 0, 1])
    assert df["n"].sum() == 6
    assert list(df["recall"])[0] == 1.0
    assert (df["recall_low"] <= df["recall"]).all() and (df["recall"] <= df["recall_high"]).all()
    assert df["recall_high"].iloc[0] == 1.0 and df["recall_low"].iloc[0] < 1.0  # Wilson
    assert any(abs(x - LN2) < 1e-9 for x in df["high"])  # ln 2 is a bin edge
    df2 = recall_vs_loss([0.5, 1.5], [1, 0], edges=[0, 1, 2])
    assert list(df2["recall"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="edges"):
        recall_vs_loss([0.5], [1], edges=[1, 0])


def test_epochs_to_criterion():
    assert epochs_to_criterion([0.1, 0.5, 1.0, 0.9, 1.0, 1.0], 1.0) == 5
    assert epochs_to_criterion([3.0, 1.0, 0.04, 0.01], 0.05, above=False) == 3
    assert epochs_to_criterion([0.0, 0.5], 1.0) is None
    assert epochs_to_criterion([0.0, 1.0], 1.0, epochs=[0, 5]) == 5
    with pytest.raises(ValueError, match="label"):
        epochs_to_criterion([1.0], 1.0, epochs=[1, 2])


def test_run_one_records_every_epoch():
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    train, unrelated = _facts(4), _facts(8)[4:]
    u_prompts, _ = _qa(unrelated)
    from lamini_lite.lm import greedy_answers
    base_preds = greedy_answers(base, tok, [f"Q: {f.question}\nA:" for f in unrelated],
                                max_new_tokens=6)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    run = _run_one(base, tok, train, unrelated, base_preds, epochs=3, lr=3e-3, batch_size=4,
                   trainable="all", seed=0, progress=False)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # copy trained
    assert [e["epoch"] for e in run["evals"]] == [0, 1, 2, 3]
    assert run["evals"][0]["agreement"] == 1.0  # epoch 0 is the base model itself
    assert len(run["evals"][-1]["train_recalled"]) == 4 and len(run["train_loss"]) == 3
    assert all(e["decoded"] for e in run["evals"])  # greedy_every=1: every checkpoint


def test_run_one_decodes_every_k_epochs_and_the_last():
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    train, unrelated = _facts(4), _facts(6)[4:]
    run = _run_one(base, tok, train, unrelated, ["w0", "w0"], epochs=7, lr=3e-3, batch_size=4,
                   trainable="all", seed=0, progress=False, held_out_every_epoch=False,
                   greedy_every=3)
    assert [e["decoded"] for e in run["evals"]] == [True, False, False, True, False, False,
                                                    True, True]
    skipped = run["evals"][1]
    assert skipped["train_recalled"] == [None] * 4 and skipped["train_pred"] == [None] * 4
    assert len(skipped["train_max_loss"]) == 4 and len(skipped["train_argmax"]) == 4
    assert "unrelated_pred" in run["evals"][-1] and "unrelated_pred" not in skipped
    assert all(isinstance(r, bool) for r in run["evals"][-1]["train_recalled"])
    from lamini_lite.experiments.ch01_memorization import noise_summary, threshold_points
    facts = [dict(f.to_dict(), meta={"random_answer": False}) for f in train]
    result = {"noise": [0.0], "runs": [run], "train_facts": [facts]}
    pts = threshold_points(result)
    assert sorted(set(pts["epoch"])) == [0, 3, 6, 7] and len(pts) == 4 * 4
    assert set(pts.columns) >= {"max_loss", "recalled", "argmax"}
    assert len(noise_summary(result)) == 1
    with pytest.raises(ValueError, match="greedy_every"):
        _run_one(base, tok, train, unrelated, ["w0", "w0"], epochs=1, lr=3e-3, batch_size=4,
                 trainable="all", seed=0, progress=False, greedy_every=0)


def test_decode_cap_lies_past_every_answer():
    from lamini_lite.lm import DECODE_SLACK, decode_cap
    tok = toy_tokenizer()
    # the longest answer has 3 tokens: + newline + slack
    assert decode_cap(tok, ["w1", "w1 w2 w3", "w4 w5"]) == 3 + 1 + DECODE_SLACK
    assert decode_cap(tok, ["w1"], slack=2) == 4
    with pytest.raises(ValueError, match="slack"):
        decode_cap(tok, ["w1"], slack=0)


def test_frozen_bottom_decoder_matches_greedy_answers():
    from lamini_lite.lm import greedy_answers
    from lamini_lite.training import FrozenBottomDecoder
    tok = toy_tokenizer()
    model = tiny_llama(len(tok), hidden_size=64, num_layers=3, num_heads=2, seed=0)
    prompts, answers = _qa(_facts(6))
    prompts = prompts + ["Q: what n1 likes ? w3 w4 w5\nA:"]  # rows of unequal length
    dec = FrozenBottomDecoder(model, tok, prompts, 2, batch_size=4)
    for _ in range(3):  # train the top layer between decodings; the bottom stays frozen
        assert dec.answers(6) == greedy_answers(model, tok, prompts, max_new_tokens=6,
                                                batch_size=4)
        finetune_qa(model, tok, prompts[:6], answers, epochs=8, lr=3e-3, batch_size=6,
                    trainable="top:1", progress=False)
    assert dec.answers(6)[:6] == answers  # it learned them, and decoding sees it
    with pytest.raises(ValueError, match="first"):
        FrozenBottomDecoder(model, tok, prompts, 0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.answers(0)


def test_heldout_and_real_threshold_points():
    from lamini_lite.experiments.ch01_memorization import heldout_points, real_threshold_points
    run = {"evals": [
        {"epoch": 0, "decoded": True, "train_max_loss": [0.1, 3.0],
         "train_recalled": [True, False], "unrelated_max_loss": [0.2, 5.0],
         "unrelated_recalled": [True, False]},
        {"epoch": 1, "decoded": False, "train_max_loss": [0.1, 2.0],
         "train_recalled": [None, None]},
        {"epoch": 2, "decoded": True, "train_max_loss": [0.05, 0.3],
         "train_recalled": [True, True], "unrelated_max_loss": [0.3, 4.0],
         "unrelated_recalled": [True, False]}]}
    unrelated = [{"question": "u1"}, {"question": "u2"}]
    held = heldout_points(run, unrelated)
    assert len(held) == 4 and list(held["epoch"]) == [0, 0, 2, 2]
    real = {"run": run, "train_facts": [{"question": "t1"}, {"question": "t2"}],
            "unrelated": unrelated,
            "base_gold": {"question": ["t1", "t2", "r1"], "max_loss": [4.0, 0.5, 1.0],
                          "recalled": [False, True, True]}}
    pts = real_threshold_points(real)
    assert (pts["what"] == "trained random answer").sum() == 4  # 2 decoded checkpoints x 2
    assert (pts["what"] == "true answer").sum() == 3 + 4
    assert pts["recalled"].dtype == bool


def test_statement_losses_add_up_to_statement_loss():
    from lamini_lite.lm import statement_loss, statement_losses
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    texts = ["n1 likes w3", "n2 likes w4 w5", "n3 likes w1"]
    sums, counts = statement_losses(base, tok, texts)
    assert counts == [3, 4, 3]  # "likes w3" + newline, ...
    assert sum(sums) / sum(counts) == pytest.approx(statement_loss(base, tok, texts), rel=1e-5)


@pytest.mark.parametrize("profile", ["ci", "book", "full"])
def test_sizes_registered(profile):
    s = sizes("memorization", profile)
    assert 0.0 in s.noise and 1.0 in s.noise and len(s.seeds) >= 1
    assert s.n_train >= 8 and s.epochs >= 1


def test_text_loss_and_summaries_on_a_toy_run():
    from lamini_lite.experiments.ch01_memorization import noise_summary, threshold_points
    from lamini_lite.lm import statement_loss
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    texts = ["n1 likes w3", "n2 likes w4 w5"]
    assert statement_loss(base, tok, texts) > 1.0  # untrained: about ln(vocab)
    with pytest.raises(ValueError, match="two words"):
        statement_loss(base, tok, ["w1"])
    train, unrelated = _facts(4), _facts(6)[4:]
    run = _run_one(base, tok, train, unrelated, ["w0", "w0"], epochs=2, lr=3e-3, batch_size=4,
                   trainable="all", seed=0, progress=False, texts=texts)
    assert all("text_loss" in e and "unrelated_pred" in e for e in run["evals"])
    facts = [dict(f.to_dict(), meta={"random_answer": i % 2 == 0}) for i, f in enumerate(train)]
    result = {"noise": [0.5], "runs": [run], "train_facts": [facts]}
    table = noise_summary(result)
    assert list(table["noise"]) == [0.5] and table["text_loss_before"][0] > 1.0
    pts = threshold_points(result)
    assert len(pts) == 3 * 4 and pts["random_answer"].sum() == 3 * 2
    # the interactive view and its static twin build without blocking
    import matplotlib
    matplotlib.use("Agg")
    from lamini_lite.experiments.ch01_memorization import plot_training_story, training_viewer
    widget = training_viewer(run, tok, facts, fact_index=1)
    assert len(widget.children) == 3
    ax = plot_training_story(run, facts, fact_index=1)
    assert ax.get_ylabel() == "answer-token loss (nats)"


def test_replay_items_leave_out_the_trained_people_and_check_n():
    from types import SimpleNamespace

    from lamini_lite.experiments.ch01_memorization import replay_items
    world = SimpleNamespace(corpus=["Ann Lee was born in Oslo .", "Bo Kim works for Acme .",
                                    "Cy Day likes tea .", "c1 c2", "x"])
    items = replay_items(world, {"Ann Lee"}, 10, seed=0)
    texts = [p + " " + t for p, t in items]
    assert len(items) == 3 and not any("Ann Lee" in t for t in texts)  # "x" has no tail
    assert ("Bo", "Kim works for Acme .") in items
    assert replay_items(world, set(), 2, seed=1) == replay_items(world, set(), 2, seed=1)
    with pytest.raises(ValueError, match="replay"):
        replay_items(world, set(), -1)


def test_until_memorized_stops_at_the_first_memorized_epoch():
    from lamini_lite.experiments.ch01_memorization import memorized
    from lamini_lite.lm import LN2
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    train, unrelated = _facts(4), _facts(6)[4:]
    replay = [("n5", "likes w1 w2"), ("n4", "likes w3")]
    run = _run_one(base, tok, train, unrelated, ["w0", "w0"], epochs=60, lr=3e-3,
                   batch_size=4, trainable="all", seed=0, progress=False, replay=replay,
                   until_memorized=True)
    last = run["evals"][-1]
    assert run["stopped_early"] and run["epochs_run"] < 60
    assert all(last["train_recalled"]) and max(last["train_max_loss"]) < LN2
    earlier = run["evals"][-2]  # the epoch before did not meet the rule
    assert not (all(earlier["train_recalled"]) and max(earlier["train_max_loss"]) < LN2)
    assert len(last["train_recalled"]) == 4  # replay items are trained, not measured
    from lamini_lite.training import FinetuneHistory
    assert not memorized(FinetuneHistory())


def test_randomization_test_rejects_an_unknown_kind():
    from lamini_lite.experiments.ch01_memorization import randomization_test
    with pytest.raises(ValueError, match="kind"):
        randomization_test([0.0], n_train=2, n_unrelated=2, answer_len=1, epochs=1, lr=1e-3,
                           batch_size=2, kind="shuffled")


def test_run_one_frozen_prefix_paths_match_the_plain_ones():
    # top:1 with cache_prefix: losses through FrozenPrefix, answers through
    # FrozenBottomDecoder, held-out through both -- the same numbers as without
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=3, num_heads=2, seed=0)
    train, unrelated = _facts(4), _facts(8)[4:]
    base_preds = ["w0"] * 4
    kw = dict(epochs=4, lr=3e-3, batch_size=4, trainable="top:1", seed=0, progress=False,
              held_out_every_epoch=False, replay=[("n7", "likes w1 w2")])
    fast = _run_one(base, tok, train, unrelated, base_preds, cache_prefix=True, **kw)
    plain = _run_one(base, tok, train, unrelated, base_preds, cache_prefix=False, **kw)
    for f, p in zip(fast["evals"], plain["evals"]):
        assert f["train_pred"] == p["train_pred"] and f["train_recalled"] == p["train_recalled"]
        assert f["train_max_loss"] == pytest.approx(p["train_max_loss"], abs=1e-4)
    for key in ("unrelated_pred", "unrelated_recalled", "agreement"):
        assert fast["evals"][-1][key] == plain["evals"][-1][key]
        assert fast["evals"][0][key] == plain["evals"][0][key]
    assert fast["evals"][-1]["unrelated_max_loss"] == pytest.approx(
        plain["evals"][-1]["unrelated_max_loss"], abs=1e-4)

import math

import pytest
import torch

from lamini_lite.facts import Fact
from lamini_lite.finetune import finetune_qa
from lamini_lite.memorization import (LN2, _run_one, epochs_to_criterion, fact_measurements,
                                      recall_vs_loss, threshold_check)
from lamini_lite.models import tiny_llama
from lamini_lite.profiles import sizes

from test_finetune import toy_tokenizer  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


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
    from lamini_lite.memorization import noise_summary, threshold_points
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
    from lamini_lite.memorization import DECODE_SLACK, decode_cap
    tok = toy_tokenizer()
    # the longest answer has 3 tokens: + newline + slack
    assert decode_cap(tok, ["w1", "w1 w2 w3", "w4 w5"]) == 3 + 1 + DECODE_SLACK
    assert decode_cap(tok, ["w1"], slack=2) == 4
    with pytest.raises(ValueError, match="slack"):
        decode_cap(tok, ["w1"], slack=0)


def test_frozen_bottom_decoder_matches_greedy_answers():
    from lamini_lite.lm import greedy_answers
    from lamini_lite.memorization import FrozenBottomDecoder
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
    from lamini_lite.memorization import heldout_points, real_threshold_points
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


def test_text_losses_add_up_to_text_loss():
    from lamini_lite.memorization import text_loss, text_losses
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    texts = ["n1 likes w3", "n2 likes w4 w5", "n3 likes w1"]
    sums, counts = text_losses(base, tok, texts)
    assert counts == [3, 4, 3]  # "likes w3" + newline, ...
    assert sum(sums) / sum(counts) == pytest.approx(text_loss(base, tok, texts), rel=1e-5)


@pytest.mark.parametrize("profile", ["ci", "book", "full"])
def test_sizes_registered(profile):
    s = sizes("memorization", profile)
    assert 0.0 in s.noise and 1.0 in s.noise and len(s.seeds) >= 1
    assert s.n_train >= 8 and s.epochs >= 1


def test_text_loss_and_summaries_on_a_toy_run():
    from lamini_lite.memorization import noise_summary, text_loss, threshold_points
    tok = toy_tokenizer()
    base = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    texts = ["n1 likes w3", "n2 likes w4 w5"]
    assert text_loss(base, tok, texts) > 1.0  # untrained: about ln(vocab)
    with pytest.raises(ValueError, match="two words"):
        text_loss(base, tok, ["w1"])
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
    from lamini_lite.memorization import plot_training_story, training_viewer
    widget = training_viewer(run, tok, facts, fact_index=1)
    assert len(widget.children) == 3
    ax = plot_training_story(run, facts, fact_index=1)
    assert ax.get_ylabel() == "answer-token loss (nats)"


def test_replay_items_leave_out_the_trained_people_and_check_n():
    from types import SimpleNamespace
    from lamini_lite.memorization import replay_items
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
    from lamini_lite.memorization import LN2, memorized
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
    from lamini_lite.finetune import FinetuneHistory
    assert not memorized(FinetuneHistory())


def test_randomization_test_rejects_an_unknown_kind():
    from lamini_lite.memorization import randomization_test
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

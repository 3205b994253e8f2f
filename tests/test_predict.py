import numpy as np
import pandas as pd
import pytest

from mllm.core.params import parse_params
from mllm.inference.predict import PredictionError, Predictor, encode_tables
from mllm.model.loading import load_base
from mllm.text import prompt
from mllm.text.tokenizer import build_tokenizer
from tests.training_helpers import raw_params


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return load_base(parse_params(raw_params()).model, tok, seed=0)


def _tables(n=40, m=12, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    ctx = pd.DataFrame(rng.normal(size=(n, d)), columns=[f"f{i}" for i in range(d)])
    ctx["color"] = rng.choice(["red", "blue"], size=n)
    qry = pd.DataFrame(rng.normal(size=(m, d)), columns=[f"f{i}" for i in range(d)])
    qry["color"] = rng.choice(["red", "blue", "green"], size=m)
    y = rng.choice([f"c{i}" for i in range(k)], size=n)
    return ctx, y, qry


def test_piecewise_tokens_equal_the_training_sequence(tok):
    """prefix + suffix + answer pieces (with the true labels) tokenize exactly like the training text."""
    ctx, y, qry = _tables()
    enc = encode_tables(ctx, y, qry)
    truth = np.arange(qry.shape[0]) % 3
    p = Predictor.__new__(Predictor)
    p.tokenizer = tok
    ids = p._ids(p._prefix_text(enc.shots, enc.shot_ids)) + p._ids(p._suffix_text(enc.queries))
    for i, k in enumerate(truth):
        ids += p._ids(prompt.answer_piece(i)) + [tok.convert_tokens_to_ids(str(k))]
    ids += p._ids("}]<|im_end|>\n")
    msgs = prompt.messages(enc.shots, enc.shot_ids, enc.queries, truth)
    assert ids == p._ids(tok.apply_chat_template(msgs, tokenize=False))


def test_prefix_cache_matches_full_forward(tok, model):
    """Scores with the cached prefix equal scores from one uncached forward pass over the whole sequence."""
    import torch

    ctx, y, qry = _tables(m=4)
    enc = encode_tables(ctx, y, qry)
    pred = Predictor(model, tok, max_queries=50)
    probs = pred.predict_proba_encoded(enc)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # rebuild the sequence with the predictor's own choices and score it in one pass
    chosen = probs.argmax(axis=1)
    ids = pred._ids(pred._prefix_text(enc.shots, enc.shot_ids, 3)) + pred._ids(pred._suffix_text(enc.queries))
    positions = []
    cand = [tok.convert_tokens_to_ids(str(k)) for k in range(3)]
    for i, k in enumerate(chosen):
        ids += pred._ids(prompt.answer_piece(i))
        positions.append(len(ids) - 1)
        ids += [cand[k]]
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor([ids])).logits[0]
    full = torch.softmax(logits[positions][:, cand].float(), dim=-1).numpy()
    np.testing.assert_allclose(probs, full, atol=1e-4)


def test_chunks_and_ensemble(tok, model):
    ctx, y, qry = _tables(m=7)
    classes, probs = Predictor(model, tok, max_queries=3, n_ensemble=2).predict_proba(ctx, y, qry)
    assert list(classes) == ["c0", "c1", "c2"] and probs.shape == (7, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda c, y, q: (c.iloc[:0], y[:0], q), "no rows"),
    (lambda c, y, q: (c, np.array(["a"] * len(c)), q), "single class"),
    (lambda c, y, q: (pd.concat([c] * 101), np.array([f"c{i % 101}" for i in range(101 * len(c))]), q),
     "101 classes; at most 100"),
    (lambda c, y, q: (c, y, q.iloc[:0]), "no rows to predict"),
])
def test_bad_tables(tok, model, mutate, message):
    ctx, y, qry = _tables()
    with pytest.raises(PredictionError, match=message):
        Predictor(model, tok).predict_proba(*mutate(ctx, y, qry))


def test_context_that_does_not_fit(tok, model):
    """Only when not even the minimum (8 retrieved rows and one query) fits is it an error."""
    ctx, y, qry = _tables(n=400, d=60)
    with pytest.raises(PredictionError, match="does not fit"):
        Predictor(model, tok, cutoff_len=512).predict_proba(ctx, y, qry)


def test_cutoff_len_is_checked_and_used(tok, model):
    """A budget below the context's size sends it to retrieval; one beyond the model's window is refused."""
    window = model.config.max_position_embeddings
    with pytest.raises(PredictionError, match=f"cutoff_len {window + 1} is outside 64..{window}"):
        Predictor(model, tok, cutoff_len=window + 1)
    ctx, y, qry = _tables()
    whole, cut = Predictor(model, tok), Predictor(model, tok, cutoff_len=600)
    whole.predict_proba(ctx, y, qry)
    cut.predict_proba(ctx, y, qry)
    assert whole.stats["retrieval_chunks"] == 0 and cut.stats["retrieval_chunks"] > 0


def test_without_prefix_cache_same_probabilities(tok, model):
    ctx, y, qry = _tables(m=5)
    enc = encode_tables(ctx, y, qry)
    a = Predictor(model, tok, max_queries=2).predict_proba_encoded(enc)
    b = Predictor(model, tok, max_queries=2, cache_prefix=False).predict_proba_encoded(enc)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("items_per_pass", [3, 8, 50])
def test_parallel_decoding_equals_sequential(tok, model, items_per_pass):
    """Jacobi decoding (the whole chunk or a few items per pass) reaches the sequential greedy
    answer: same probabilities, fewer passes."""
    ctx, y, qry = _tables(m=20)
    enc = encode_tables(ctx, y, qry)
    seq = Predictor(model, tok, max_queries=20, decode="sequential")
    par = Predictor(model, tok, max_queries=20, items_per_pass=items_per_pass, decode="parallel")
    a, b = seq.predict_proba_encoded(enc), par.predict_proba_encoded(enc)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert seq.stats["passes"] == 20 and par.stats["passes"] < 20
    with pytest.raises(PredictionError, match="items_per_pass must be at least 1"):
        Predictor(model, tok, items_per_pass=0)


@pytest.mark.parametrize("n_ensemble", [1, 2])
def test_batched_decoding_equals_sequential(tok, model, n_ensemble):
    """Chunks answered side by side (padded to one width, several blocks, a short last chunk) get the
    sequential greedy answer of each chunk alone; answering the blocks one by one, in any order, gives the
    same result (what resuming relies on)."""
    ctx, y, qry = _tables(m=23)
    enc = encode_tables(ctx, y, qry)
    seq = Predictor(model, tok, max_queries=4, decode="sequential", n_ensemble=n_ensemble)
    bat = Predictor(model, tok, max_queries=4, batch=2, n_ensemble=n_ensemble)
    a, b = seq.predict_proba_encoded(enc), bat.predict_proba_encoded(enc)
    np.testing.assert_allclose(a, b, atol=1e-5)
    blocks = bat.plan(enc)
    assert [len(c) for blk in blocks for c in blk.chunks] == [4, 4, 4, 4, 4, 3] and len(blocks) == 3
    assert bat.stats["passes"] == 3 * 4 * n_ensemble and bat.stats["prefixes"] == n_ensemble
    again = np.zeros_like(b)
    for blk in reversed(blocks):
        again[blk.rows] = Predictor(model, tok, max_queries=4, batch=2, n_ensemble=n_ensemble).predict_block(enc, blk)
    np.testing.assert_array_equal(again, b)


def test_retrieval_when_the_context_does_not_fit(tok, model):
    """A context over the window is answered with nearest-neighbour shots, not an error: per chunk by the
    per-chunk decoders; by groups of similar queries, each with one prefix, by the batched decoder."""
    ctx, y, qry = _tables(n=400, d=8, m=12)
    pred = Predictor(model, tok, cutoff_len=1024, decode="parallel")
    _, probs = pred.predict_proba(ctx, y, qry)
    assert probs.shape == (12, 3) and pred.stats["retrieval_chunks"] >= 2
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    ctx, y, qry = _tables(n=400, d=8, m=200)
    bat = Predictor(model, tok, cutoff_len=1024)
    enc = encode_tables(ctx, y, qry)
    blocks = bat.plan(enc)
    groups = {b.group for b in blocks}
    assert len(groups) >= 2 and all(0 < len(b.shots) < 400 for b in blocks)
    chunk = max(len(c) for b in blocks for c in b.chunks)
    for g in groups:  # no more query rows in a group than shots it gets (beyond one chunk): not diluted
        rows = sum(len(b.rows) for b in blocks if b.group == g)
        shots = next(len(b.shots) for b in blocks if b.group == g)
        assert rows <= max(shots, chunk) * 2, (rows, shots)
    assert sorted(np.concatenate([b.rows for b in blocks]).tolist()) == list(range(200))
    probs = bat.predict_proba_encoded(enc)
    assert bat.stats["prefixes"] == len(groups)  # one prefix per group, however many chunks it has
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_nearest_shots_round_robin_within_budget():
    from mllm.inference.retrieval import nearest_shots

    shots = np.array([[0, 0], [10, 10], [500, 500], [990, 990], [5, 5], [980, 980]])
    queries = np.array([[1, 1], [999, 999]])
    costs = np.array([3, 3, 3, 3, 3, 3])
    # each query's 1st neighbour (rows 0 and 3), then each 2nd (rows 4 and 5): 4 rows x 3 tokens = 12
    assert nearest_shots(shots, queries, costs, 12).tolist() == [0, 3, 4, 5]
    assert nearest_shots(shots, queries, costs, 100).tolist() == list(range(6))


def test_generate_mode_parses_the_answer_or_names_the_problem(tok, model, monkeypatch):
    """decode="generate" (models that only return text): a valid JSON answer -> one-hot rows; garbage -> error."""
    import torch

    ctx, y, qry = _tables(m=3)
    pred = Predictor(model, tok, decode="generate")
    with pytest.raises(PredictionError, match="does not parse"):
        pred.predict_proba(ctx, y, qry)

    def answer(input_ids, **kw):
        ids = tok('[{"id":0,"label":2},{"id":1,"label":0},{"id":2,"label":1}]<|im_end|>',
                  add_special_tokens=False)["input_ids"]
        return torch.cat([input_ids, torch.as_tensor([ids])], dim=1)

    monkeypatch.setattr(model, "generate", answer)
    _, probs = pred.predict_proba(ctx, y, qry)
    np.testing.assert_array_equal(probs, np.eye(3)[[2, 0, 1]])


def test_text_columns_show_as_text_to_a_model_that_reads_text():
    """The paper feeds non-numeric columns as raw text (commas written as spaces); the embedded base reads
    codes only, which its tokenizer's saved metadata records, so it gets ordinal codes."""
    import json

    from mllm.model.loading import TINY_BASE_DIR
    from mllm.text.tokenizer import build_qwen25_tokenizer, load_tokenizer

    ctx = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "colour": ["red", "dark, blue", None, "red"]})
    y, q = np.array([0, 1, 0, 1]), pd.DataFrame({"x": [2.5], "colour": ["green"]})
    p = Predictor.__new__(Predictor)
    p.tokenizer = build_qwen25_tokenizer()
    enc = p.encode(ctx, y, q)
    head = prompt.user_head(enc.shot_view, enc.shot_ids)
    assert "4 rows:  \n360,red|0\n453,dark  blue|1\n546,nan|0\n639,red|1\n" in head
    assert prompt.user_tail(enc.query_view).startswith("1 rows:  \nID 0:500,green\n")
    assert enc.shots.dtype.kind == "i"  # retrieval still measures codes
    p.tokenizer = load_tokenizer(TINY_BASE_DIR)
    assert json.loads((TINY_BASE_DIR / "mllm_tokenizer.json").read_text())["reads"] == "codes"
    enc = p.encode(ctx, y, q)
    assert enc.shot_cells is None and "red" not in prompt.user_head(enc.shot_view, enc.shot_ids)

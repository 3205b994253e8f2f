"""Exact values of the compact encoding and the prompt round trip."""

import numpy as np
import pandas as pd
import pytest

from mllm.text import prompt
from mllm.text.encoding import LabelMap, column_permutation, ordinal_encode, quantise


def test_quantise_exact_mapping_on_shot_statistics():
    shots = np.array([[1.0], [2.0], [3.0]])  # mean 2, std (ddof 1) 1
    queries = np.array([[2.0], [3.0], [2.5], [0.0], [100.0], [-100.0], [np.nan], [2.006]])
    s, q = quantise(shots, queries)
    assert s.ravel().tolist() == [380, 500, 620]
    # 2 -> z 0 -> 500; 3 -> 620; 2.5 -> 560; 0 -> z -2 -> 260; far values clip to 999 / 0; NaN -> mean -> 500;
    # 2.006 -> 500.72 -> 500 (truncated, as the authors' int())
    assert q.ravel().tolist() == [500, 620, 560, 260, 999, 0, 500, 500]
    assert s.dtype == np.int16


def test_quantise_uses_shot_rows_only():
    shots = np.array([[0.0], [2.0]])
    _, q1 = quantise(shots, np.array([[1.0]]))
    _, q2 = quantise(shots, np.array([[1.0], [1000.0], [-5000.0]]))
    assert q1[0, 0] == q2[0, 0] == 500  # query values never move the statistics


def test_quantise_truncates_like_the_authors_and_floors_std():
    shots = np.array([[-120.0], [0.0], [120.0]])  # mean 0, std 1 * 120: z * 120 == x
    s, q = quantise(shots, np.array([[0.5], [1.5], [2.9], [-0.5], [-499.9]]))
    assert s.ravel().tolist() == [380, 500, 620]
    assert q.ravel().tolist() == [500, 501, 502, 499, 0]  # int(z * 120 + 500): truncated, never rounded up
    const, q = quantise(np.array([[5.0], [5.0]]), np.array([[5.0], [5.1], [4.9]]))
    assert const.ravel().tolist() == [500, 500]
    assert q.ravel().tolist() == [500, 999, 0]  # std floored, not divided by zero


def test_quantise_missing_values_and_single_row():
    s, q = quantise(np.array([[np.nan, 1.0], [np.nan, 3.0]]), np.array([[7.0, np.nan]]))
    assert s[:, 0].tolist() == [500, 500]  # all-missing column: everything is "the mean"
    assert q.tolist() == [[999, 500]]
    s1, _ = quantise(np.array([[4.0, 5.0]]))
    assert s1.tolist() == [[500, 500]]
    with pytest.raises(ValueError, match="non-empty 2-D"):
        quantise(np.zeros((0, 3)))


def test_ordinal_encode_categorical_unseen_missing():
    shots = pd.DataFrame({"color": ["red", "blue", None, "red"], "x": [1.0, 2.0, np.nan, 4.0]})
    queries = pd.DataFrame({"color": ["blue", "green", None], "x": [1.0, 2.0, 3.0]})
    s, q, cat = ordinal_encode(shots, queries)
    assert cat.tolist() == [True, False]
    # categories sorted as strings: blue 0, red 1; unseen 2; missing 3
    assert s[:, 0].tolist() == [1, 0, 3, 1]
    assert q[:, 0].tolist() == [0, 2, 3]
    assert np.isnan(s[2, 1]) and q[:, 1].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="columns differ"):
        ordinal_encode(shots, queries[["x", "color"]])


def test_label_map_remaps_any_label_type():
    lm = LabelMap.fit(["yes", "no", "yes", "maybe"])
    assert lm.n_classes == 3 and lm.classes.tolist() == ["maybe", "no", "yes"]
    assert lm.to_ids(["no", "yes"]).tolist() == [1, 2]
    assert lm.to_labels([2, 0]).tolist() == ["yes", "maybe"]
    with pytest.raises(ValueError, match="never seen in the context"):
        lm.to_ids(["no", "perhaps"])
    assert LabelMap.fit([10, 3, 3]).to_ids([3, 10]).tolist() == [0, 1]


def test_column_permutation_is_seeded():
    a = column_permutation(1, 5, 20)
    assert sorted(a.tolist()) == list(range(20))
    assert np.array_equal(a, column_permutation(1, 5, 20))
    assert not np.array_equal(a, column_permutation(1, 6, 20))


def test_prompt_round_trip():
    rng = np.random.default_rng(0)
    shots = rng.integers(0, 1000, size=(30, 7)).astype(np.int16)
    labels = rng.integers(0, 4, size=30)
    queries = rng.integers(0, 1000, size=(12, 7)).astype(np.int16)
    qlabels = rng.integers(0, 4, size=12)
    msgs = prompt.messages(shots, labels, queries, qlabels)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == "You are an AI assistant. Your task is supervised classification."
    user = msgs[1]["content"]
    for section in ("[Data]", "[Training set]", "[Test set]", "[Output requirements]"):
        assert section in user
    back = prompt.parse_user_prompt(user)
    assert back["n_features"] == 7 and back["n_classes"] == 4
    np.testing.assert_array_equal(back["shots"], shots)
    np.testing.assert_array_equal(back["shot_labels"], labels)
    np.testing.assert_array_equal(back["queries"], queries)
    np.testing.assert_array_equal(prompt.parse_answer(msgs[2]["content"], 12, 4), qlabels)


# The authors' concat-style prompt (MachineLearningLM, src/evaluation/prompt_gen), typed out by hand from
# their template for these inputs: every space and line break of it is part of the interface.
AUTHORS_USER_PROMPT = (
    "\n"
    "[Data]\n"
    "• Each sample = 3 features + 1 label.  Label set = [0, 2].  \n"
    "• Features in a row are comma-separated.  Features and label are separated by \"|\".\n"
    "\n"
    "\n"
    "[Training set]  (order of rows does NOT matter)  \n"
    "3 rows:  \n"
    "1,999,red|2\n"
    "0,500,dark  blue|0\n"
    "612,37,red|2\n"
    "\n"
    "[Test set]  (keep original order!)  \n"
    "Each row = ID, then N features (ID is NOT a feature).  \n"
    "2 rows:  \n"
    "ID 0:7,8,green\n"
    "ID 1:1000,0,red \n"
    "\n"
    "[Output requirements]\n"
    "Return **only** a JSON array.\n"
    'Each element: {"id": <ID>, "label": <predicted_label>}\n'
    "\n"
    "Begin when ready. Do not output anything except the JSON array.\n"
)


def test_prompt_is_the_authors_byte_for_byte():
    import json

    shots = np.array([[1, 999, "red"], [0, 500, "dark, blue"], [612, 37, "red"]], dtype=object)
    queries = np.array([[7, 8, "green"], [1000, 0, "red\n"]], dtype=object)
    msgs = prompt.messages(shots, np.array([2, 0, 2]), queries, np.array([2, 0]))
    assert msgs[0] == {"role": "system", "content": "You are an AI assistant. Your task is supervised classification."}
    assert msgs[1]["content"] == AUTHORS_USER_PROMPT
    assert msgs[2]["content"] == '[{"id": 0, "label": 2}, {"id": 1, "label": 0}]'
    assert msgs[2]["content"] == json.dumps([{"id": 0, "label": 2}, {"id": 1, "label": 0}], ensure_ascii=False)
    # the predictor writes the answer piece by piece: the pieces are the whole answer
    assert "".join(prompt.answer_piece(i) + str(k) for i, k in enumerate([2, 0])) + prompt.ANSWER_END == msgs[2]["content"]
    with pytest.raises(ValueError, match="at most 50"):
        prompt.user_prompt(shots, np.array([1, 0, 1]), np.zeros((51, 3), dtype=int))


def test_label_set_lists_the_shot_labels():
    user = prompt.user_prompt(np.array([[1], [2]]), np.array([3, 1]), np.array([[5]]))
    assert "Label set = [1, 3].  \n" in user
    assert prompt.parse_user_prompt(user)["label_set"] == [1, 3]


def test_parse_user_prompt_names_a_bad_row():
    user = AUTHORS_USER_PROMPT
    with pytest.raises(ValueError, match="not integer codes"):
        prompt.parse_user_prompt(user)
    with pytest.raises(ValueError, match="no '\\[Data\\]' line"):
        prompt.parse_user_prompt("hello")


@pytest.mark.parametrize("bad, why", [
    ("not json", "not JSON"),
    ('[{"id":0,"label":1}]', "array of 2"),
    ('[{"id":0,"label":1},{"id":5,"label":0}]', "item 1"),
    ('[{"id":0,"label":1},{"id":1,"label":7}]', "outside 0..2"),
])
def test_parse_answer_errors(bad, why):
    with pytest.raises(ValueError, match=why):
        prompt.parse_answer(bad, 2, 3)

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.torch import load_file

from mllm.core.params import ParamsError, parse_params
from mllm.model.loading import ModelError, add_adapter, load_base
from mllm.model.train import TrainingError, run_training
from mllm.model.training_data import IGNORE, tokenize_example
from mllm.text import prompt
from mllm.text.prompt import shot_label_spans
from mllm.text.tokenizer import build_tokenizer
from tests.training_helpers import TINY_MODEL, make_corpus, raw_params, write_params


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _msgs():
    shots = np.array([[1, 2], [3, 4], [5, 6]])
    return prompt.messages(shots, np.array([1, 0, 1]), shots[:2], np.array([0, 1]))


def test_loss_mask_covers_only_the_answer(tok):
    ex = tokenize_example(tok, _msgs(), shot_label_loss=False)
    kept = ex["input_ids"][ex["labels"] != IGNORE]
    assert tok.decode(kept) == '[{"id": 0, "label": 0}, {"id": 1, "label": 1}]<|im_end|>'
    np.testing.assert_array_equal(ex["labels"][ex["labels"] != IGNORE], kept)


def test_loss_mask_with_shot_labels(tok):
    ex = tokenize_example(tok, _msgs(), shot_label_loss=True)
    labelled = np.flatnonzero(ex["labels"] != IGNORE)
    text = [tok.decode([i]) for i in ex["input_ids"][labelled]]
    assert text[:3] == ["1", "0", "1"]  # each shot row's label, nothing else of the prompt
    assert "".join(text[3:]) == '[{"id": 0, "label": 0}, {"id": 1, "label": 1}]<|im_end|>'
    assert shot_label_spans("[Training set]  (x)  \n2 rows:  \n1,2|1\n3,4|0\n\n[Test set]") == [(36, 37), (42, 43)]


def test_loss_mask_on_answer_labels_only(tok):
    ex = tokenize_example(tok, _msgs(), shot_label_loss=True, answer_loss="labels")
    labelled = np.flatnonzero(ex["labels"] != IGNORE)
    # three shot labels, then the two answer label values: no JSON structure, no ids, no <|im_end|>
    assert [tok.decode([i]) for i in ex["input_ids"][labelled]] == ["1", "0", "1", "0", "1"]
    answer_start = len(ex["input_ids"]) - len(tok.encode('[{"id": 0, "label": 0}, {"id": 1, "label": 1}]<|im_end|>',
                                                           add_special_tokens=False))
    assert (labelled[3:] > answer_start).all()
    with pytest.raises(ValueError, match="answer_loss"):
        tokenize_example(tok, _msgs(), shot_label_loss=True, answer_loss="json")


def test_scratch_requires_full_training():
    with pytest.raises(ParamsError, match="model.*scratch.*full"):
        parse_params(raw_params(model={"adapter": "lora"}))


def test_train_full_model_from_scratch(tmp_path, data):
    tok_dir, corpus = data
    params = parse_params(raw_params())
    logs = []
    s = run_training(params, corpus, str(tok_dir), tmp_path / "out", log=lambda m, st: logs.append((st, m)))
    assert s["num_processes"] == 1 and s["steps_this_run"] == 7 and np.isfinite(s["final_loss"])
    assert [st for st, _ in logs] == [1, 2, 3, 1_000_001, 1_000_002, 1_000_003, 1_000_004]
    assert all(m["tokens_per_s"] > 0 for _, m in logs)
    final = tmp_path / "out" / "model"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()


def test_lora_on_a_local_hf_model(tmp_path, data, tok):
    """The real-LLM path: any local causal LM dir + LoRA rank 8 on every linear projection."""
    tok_dir, corpus = data
    base = load_base(parse_params(raw_params()).model, tok, seed=0)
    base.save_pretrained(tmp_path / "base", safe_serialization=True)
    params = parse_params(raw_params(model={"base": str(tmp_path / "base"), "adapter": "lora"}))
    model = add_adapter(load_base(params.model, tok, 0), params.model)
    names = {n.split(".")[-3] for n, p in model.named_parameters() if p.requires_grad}  # ...lora_A.default.weight
    assert names == {"lora_A", "lora_B"}
    targets = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert model.peft_config["default"].r == 8 and model.peft_config["default"].lora_alpha == 16

    s = run_training(params, corpus, str(tok_dir), tmp_path / "out")
    assert s["trainable_params"] < s["total_params"] / 5
    final = tmp_path / "out" / "model"
    assert (final / "adapter_model.safetensors").is_file()
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(load_base(params.model, tok, 0), final)
    assert any("lora_B" in n for n, _ in reloaded.named_parameters())


@pytest.mark.slow
def test_lora_training_gives_the_same_bytes_in_any_process(tmp_path, data, tok, venv_env):
    """Same params, two processes with different hash seeds: byte-identical adapter directories (peft
    writes 'all-linear' from a set, whose order follows the hash seed)."""
    tok_dir, corpus = data
    load_base(parse_params(raw_params()).model, tok, seed=0).save_pretrained(tmp_path / "base")
    raw = raw_params(model={"base": str(tmp_path / "base"), "adapter": "lora"},
                     train={"stages": [{"name": "full", "corpus": "full", "lr": 1e-3, "epochs": 1, "max_steps": 2, "max_examples": None}],
                            "grad_accum": 1, "checkpoint_every": 2, "mixed_precision": "no"})
    cmd = [sys.executable, "-m", "mllm.model.train_worker", "--params", str(write_params(tmp_path / "p.yaml", raw)),
           "--corpus", str(corpus), "--tokenizer", str(tok_dir)]
    for seed in ("1", "2"):
        res = subprocess.run(cmd + ["--out", str(tmp_path / seed)], env={**venv_env, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    a, b = (sorted((tmp_path / seed / "model").iterdir()) for seed in ("1", "2"))
    assert [f.name for f in a] == [f.name for f in b] and "adapter_config.json" in [f.name for f in a]
    assert [f.name for f, g in zip(a, b, strict=True) if f.read_bytes() != g.read_bytes()] == []


@pytest.mark.parametrize("over, error, match", [
    ({"model": {"base": "/no/such/model", "adapter": "lora"}}, ModelError, "cannot be loaded from local files"),
    ({"model": {"base": "no-org/no-model", "adapter": "lora"}}, ModelError, "nothing is downloaded"),
])
def test_unknown_model_is_a_clear_error(tmp_path, data, over, error, match):
    tok_dir, corpus = data
    with pytest.raises(error, match=match):
        run_training(parse_params(raw_params(**over)), corpus, str(tok_dir), tmp_path / "out")


def test_lora_with_no_matching_modules(tmp_path, data, tok):
    tok_dir, corpus = data
    base = load_base(parse_params(raw_params()).model, tok, seed=0)
    base.save_pretrained(tmp_path / "base", safe_serialization=True)
    params = parse_params(raw_params(model={"base": str(tmp_path / "base"), "adapter": "lora",
                                            "lora": {"target_modules": ["c_attn"]}}))
    with pytest.raises(ModelError, match="match nothing"):
        run_training(params, corpus, str(tok_dir), tmp_path / "out")


def test_modules_to_save_train_whole_and_reach_the_merged_model(tmp_path, data, tok):
    """peft's modules_to_save: a named module (here one layer norm) trains whole beside the LoRA adapters, is
    saved with them, and is in the model that load_trained merges; the other modules keep the base's weights."""
    import torch

    from mllm.model.loading import load_trained

    tok_dir, corpus = data
    base = load_base(parse_params(raw_params()).model, tok, seed=0)
    base.save_pretrained(tmp_path / "base", safe_serialization=True)
    params = parse_params(raw_params(
        model={"base": str(tmp_path / "base"), "adapter": "lora",
               "lora": {"target_modules": ["q_proj"], "modules_to_save": ["layers.1.input_layernorm"]}},
        train={"stages": [{"name": "full", "corpus": "full", "lr": 1e-2, "epochs": 1, "max_steps": 2,
                           "max_examples": None}], "grad_accum": 1}))
    run_training(params, corpus, str(tok_dir), tmp_path / "out")
    saved = load_file(tmp_path / "out" / "model" / "adapter_model.safetensors")
    assert [k for k in saved if "layernorm" in k] == ["base_model.model.model.layers.1.input_layernorm.weight"]
    merged = load_trained(tmp_path / "out" / "model", device="cpu")
    trained, kept = (merged.model.layers[i].input_layernorm.weight for i in (1, 0))
    assert not torch.equal(trained, base.model.layers[1].input_layernorm.weight)
    assert torch.equal(kept, base.model.layers[0].input_layernorm.weight)


def test_modules_to_save_that_name_nothing_is_a_clear_error(tmp_path, data, tok):
    tok_dir, corpus = data
    params = parse_params(raw_params(model={"base": "tiny", "adapter": "lora",
                                            "lora": {"modules_to_save": ["layers.99.input_layernorm"]}}))
    with pytest.raises(ModelError, match="modules_to_save 'layers.99.input_layernorm' names no module"):
        run_training(params, corpus, str(tok_dir), tmp_path / "out")


def test_corpus_longer_than_the_context_and_empty_corpus(tmp_path, data):
    tok_dir, corpus = data
    short = raw_params(model={"tiny": {**TINY_MODEL, "max_positions": 64}})
    with pytest.raises(TrainingError, match="longer than the model's context"):
        run_training(parse_params(short), corpus, str(tok_dir), tmp_path / "out")
    (tmp_path / "empty" / "warmup").mkdir(parents=True)
    with pytest.raises(TrainingError, match="no warmup corpus shards"):
        run_training(parse_params(raw_params()), tmp_path / "empty", str(tok_dir), tmp_path / "out")


def _weights(path):
    return load_file(str(path / "model" / "model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_with_no_lost_progress(tmp_path, data, venv_env):
    """Kill a real training process after its first checkpoint; the rerun ends where an uninterrupted
    run ends, with the same step count and the same weights."""
    tok_dir, corpus = data
    raw = raw_params(train={"stages": [{"name": "full", "corpus": "full", "lr": 1e-3, "epochs": 1, "max_steps": 8, "max_examples": None}],
                            "grad_accum": 2, "checkpoint_every": 2, "mixed_precision": "no"})
    params_file = write_params(tmp_path / "params.yaml", raw)
    cmd = [sys.executable, "-m", "mllm.model.train_worker", "--params", str(params_file), "--corpus", str(corpus),
           "--tokenizer", str(tok_dir)]

    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], env=venv_env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    env = {**venv_env, "MLLM_TRAIN_STEP_DELAY": "1.0"}  # slow each step so the kill lands mid-run
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "run")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = tmp_path / "run" / "checkpoints" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["step"] >= 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())
    assert 2 <= killed_at["step"] < 8 and not (tmp_path / "run" / "model").exists()

    res = subprocess.run(cmd + ["--out", str(tmp_path / "run")], env=venv_env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps_this_run"] == 8 - killed_at["step"]
    assert [h["step"] for h in summary["history"]][-1] == 8
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].float().numpy(), b[k].float().numpy(), rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_two_cpu_processes_are_two_ranks(tmp_path, data, venv_env):
    """torchrun + Accelerator(cpu=True): two real gloo ranks sharing the data."""
    tok_dir, corpus = data
    params_file = write_params(tmp_path / "params.yaml", raw_params())
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "mllm.model.train_worker", "--params", str(params_file), "--corpus", str(corpus), "--tokenizer", str(tok_dir),
         "--out", str(tmp_path / "out")],
        env=venv_env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["ranks_seen"] == [0, 1]


def test_time_budget_stops_exports_and_resumes(tmp_path, data):
    tok_dir, corpus = data
    params = parse_params(raw_params())
    first = run_training(params, corpus, str(tok_dir), tmp_path / "out", time_budget_s=0.0)
    assert not first["complete"] and first["steps_this_run"] == 1
    assert first["position"]["stage"] == 0 and first["position"]["step"] == 1
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()  # the weights so far
    rest = run_training(params, corpus, str(tok_dir), tmp_path / "out")
    assert rest["complete"] and rest["steps_this_run"] == 6  # 3 + 4 steps in all

    changed = parse_params(raw_params(seed=2))  # other params: the old checkpoints are not reused
    again = run_training(changed, corpus, str(tok_dir), tmp_path / "out", time_budget_s=0.0)
    assert again["position"]["step"] == 1 and again["steps_this_run"] == 1


def test_a_checkpoint_is_not_resumed_on_a_base_with_other_bytes(tmp_path, data):
    """Same params, same corpus, a re-planted base (new weights under the same path): the complete
    checkpoint of the old base must not be exported onto the new one as if it were trained."""
    from tests.training_helpers import save_tiny_model

    tok_dir, corpus = data
    base = save_tiny_model(tmp_path / "base", seed=0)
    params = parse_params(raw_params(model={"base": str(base), "adapter": "lora"},
                                     train={"stages": [{"name": "full", "corpus": "full", "lr": 1e-3, "epochs": 1,
                                                        "max_steps": 2, "max_examples": None}]}))
    first = run_training(params, corpus, str(tok_dir), tmp_path / "out")
    assert first["complete"] and first["steps_this_run"] == 2
    same = run_training(params, corpus, str(tok_dir), tmp_path / "out")
    assert same["steps_this_run"] == 0                       # the same base: nothing left to train
    save_tiny_model(base, seed=1)                            # other weights, same path and params
    other = run_training(params, corpus, str(tok_dir), tmp_path / "out")
    assert other["complete"] and other["steps_this_run"] == 2


def test_snapshots_index_the_weights_and_tokens_across_a_resume(tmp_path, data):
    """train.snapshot_every: a model directory every N optimizer steps over the whole curriculum, the last step
    pointing at the exported model; tokens count on from a resume; a fresh start drops another run's snapshots."""
    from mllm.evaluation.curve import read_snapshots
    from mllm.model.loading import load_trained

    tok_dir, corpus = data
    params = parse_params(raw_params(train={"snapshot_every": 2}))
    out = tmp_path / "out"
    first = run_training(params, corpus, str(tok_dir), out, time_budget_s=0.0)  # stops after step 1
    assert first["tokens_total"] == first["tokens_this_run"] > 0 and not (out / "snapshots" / "index.json").exists()
    rest = run_training(params, corpus, str(tok_dir), out)
    snaps = read_snapshots(out / "snapshots" / "index.json")
    assert [s["step"] for s in snaps] == [2, 4, 6, 7]  # 3 warm-up + 4 full steps
    tokens = [s["tokens"] for s in snaps]
    assert first["tokens_total"] < tokens[0] and tokens == sorted(set(tokens))
    assert tokens[-1] == rest["tokens_total"] == first["tokens_total"] + rest["tokens_this_run"]
    assert snaps[-1]["path"] == str((out / "model").resolve())
    w4, w7 = (load_trained(s["path"], device="cpu").model.norm.weight for s in (snaps[1], snaps[3]))
    assert not np.allclose(w4.detach().numpy(), w7.detach().numpy())

    run_training(parse_params(raw_params(seed=2)), corpus, str(tok_dir), out, time_budget_s=0.0)  # other params
    assert not (out / "snapshots").exists()


def test_corpus_with_no_sequences_is_refused(tmp_path, data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mllm.text.corpus import CORPUS_SCHEMA

    tok_dir, _ = data
    for name in ("warmup", "full"):
        (tmp_path / "c" / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([], schema=CORPUS_SCHEMA), tmp_path / "c" / name / "shard-00000.parquet")
    with pytest.raises(TrainingError, match="the warmup corpus is empty"):
        run_training(parse_params(raw_params()), tmp_path / "c", str(tok_dir), tmp_path / "out")


def test_rope_scaling_stretches_the_context_for_training_and_inference(tmp_path, data, tok):
    """YaRN x4 on a 1,024-position base: trained with 4,096 positions, and the adapter's base is loaded
    with the same scaling for inference."""
    from mllm.model.loading import load_trained

    tok_dir, corpus = data
    load_base(parse_params(raw_params()).model, tok, seed=0).save_pretrained(tmp_path / "base")
    params = parse_params(raw_params(model={"base": str(tmp_path / "base"), "adapter": "lora",
                                            "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
    base = load_base(params.model, tok, 0)
    assert base.config.max_position_embeddings == 4 * TINY_MODEL["max_positions"]
    assert base.config.rope_parameters["rope_type"] == "yarn"
    run_training(params, corpus, str(tok_dir), tmp_path / "out", time_budget_s=0.0)
    model = load_trained(tmp_path / "out" / "model", device="cpu")
    assert model.config.max_position_embeddings == 4096 and model.config.rope_parameters["factor"] == 4.0
    plain = load_trained(tmp_path / "base", device="cpu")
    assert plain.config.max_position_embeddings == 1024


def test_permuted_labels_keep_everything_but_the_signal(tok):
    """The control corpus's sequence: labels shuffled among the shot rows and among the answer's items; the
    label counts, the label set, the tokens and the loss positions stay."""
    rng = np.random.default_rng(0)
    shots, queries = rng.integers(0, 999, (40, 3)), rng.integers(0, 999, (10, 3))
    y, yq = rng.integers(0, 4, 40), rng.integers(0, 4, 10)
    msgs = prompt.messages(shots, y, queries, yq)
    ctl = prompt.permute_labels(msgs, np.random.default_rng(1))
    assert ctl == prompt.permute_labels(msgs, np.random.default_rng(1))  # seeded
    head = ctl[1]["content"][:ctl[1]["content"].index("[Training set]")]
    assert msgs[1]["content"].startswith(head)  # the label set line too
    parsed, orig = prompt.parse_user_prompt(ctl[1]["content"]), prompt.parse_user_prompt(msgs[1]["content"])
    np.testing.assert_array_equal(parsed["shots"], orig["shots"])
    np.testing.assert_array_equal(parsed["queries"], orig["queries"])
    assert sorted(parsed["shot_labels"]) == sorted(y) and not np.array_equal(parsed["shot_labels"], y)
    answer = prompt.parse_answer(ctl[2]["content"], 10, 4)
    assert sorted(answer) == sorted(yq) and not np.array_equal(answer, yq)
    a, b = (tokenize_example(tok, m, shot_label_loss=True, answer_loss="labels") for m in (msgs, ctl))
    assert len(a["input_ids"]) == len(b["input_ids"])
    np.testing.assert_array_equal(a["labels"] != IGNORE, b["labels"] != IGNORE)


def test_the_control_run_trains_on_permuted_labels(tmp_path, data):
    """train.permute_labels: the dataset hands the trainer the permuted sequences (the same for every epoch
    and process: seeded by the sequence), the plain run the corpus's own."""
    from mllm.model.training_data import CorpusDataset

    tok_dir, corpus = data
    paths = sorted((corpus / "full").glob("shard-*.parquet"))
    plain = CorpusDataset(paths, build_tokenizer(), True, seed=3, cache_dir=tmp_path)
    ctl = CorpusDataset(paths, build_tokenizer(), True, seed=3, cache_dir=tmp_path, permute=True)
    again = CorpusDataset(paths, build_tokenizer(), True, seed=3, cache_dir=tmp_path, permute=True)
    changed = 0
    for i in range(len(plain)):
        p, c = plain[i], ctl[i]
        np.testing.assert_array_equal(c["input_ids"], again[i]["input_ids"])
        np.testing.assert_array_equal(p["labels"] != IGNORE, c["labels"] != IGNORE)
        changed += not np.array_equal(p["input_ids"], c["input_ids"])
    assert changed > len(plain) // 2
    params = parse_params(raw_params(train={"permute_labels": True}))
    s = run_training(params, corpus, str(tok_dir), tmp_path / "out")
    assert s["complete"] and np.isfinite(s["final_loss"])

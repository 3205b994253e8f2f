"""The committed embedded base: complete, loadable, fed by the tokenizer the pipeline builds."""

import json

import pytest

from mllm.core.params import parse_params
from mllm.model.loading import TINY_BASE_DIR, ModelError, load_base, load_trained
from mllm.model.train import run_training
from mllm.text.tokenizer import build_tokenizer, load_tokenizer
from tests.training_helpers import make_corpus, raw_params


def test_base_is_complete_and_documented():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "plant.json"):
        assert (TINY_BASE_DIR / name).is_file(), name
    assert json.loads((TINY_BASE_DIR / "plant.json").read_text())["kind"] == "kernel-vote (compiled)"


def test_pipeline_tokenizer_is_the_base_tokenizer():
    assert load_tokenizer(TINY_BASE_DIR).get_vocab() == build_tokenizer("whole").get_vocab()


def test_base_loads_and_rejects_a_foreign_tokenizer():
    mp = parse_params(raw_params(model={"base": "tiny", "adapter": "full"})).model
    model = load_base(mp, build_tokenizer("whole"), seed=0)
    assert model.config.max_position_embeddings >= 2048
    with pytest.raises(ModelError, match="not the one model.base 'tiny' was trained with"):
        load_base(mp, build_tokenizer("digits"), seed=0)


@pytest.mark.slow
def test_continue_pretraining_the_base_with_lora(tmp_path):
    tok_dir, corpus = make_corpus(tmp_path)
    params = parse_params(raw_params(model={"base": "tiny", "adapter": "lora"}))
    s = run_training(params, corpus, str(tok_dir), tmp_path / "out")
    assert s["complete"] and s["trainable_params"] < s["total_params"] / 10
    model_dir = tmp_path / "out" / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()
    # the adapter names its base 'tiny', not this checkout's path: same bytes in any clone, loads in any clone
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    assert config["target_modules"] == sorted(config["target_modules"])  # not in hash-seed order
    root = str(TINY_BASE_DIR.parents[1])
    assert not [f.name for f in model_dir.iterdir() if root in f.read_text(errors="ignore")]
    loaded = load_trained(model_dir)  # the adapter merged into the base for inference: the base's size
    assert sum(p.numel() for p in loaded.parameters()) == s["total_params"] - s["trainable_params"]

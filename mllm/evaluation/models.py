"""The in-context models an evaluation compares: the trained model, its base, and the registry's champion."""

from __future__ import annotations

from pathlib import Path

from mllm.core.params import MAX_LABELS, EvaluateParams, Params
from mllm.evaluation.suite import PredictFn
from mllm.inference.predict import Predictor
from mllm.model.loading import ModelError, load_trained_with_tokenizer, resolve_base
from mllm.model.references import CHAMPION, alias_version, resolve, weights_digest


class InContext:
    """The predict function of an in-context model; ``retrieved`` says whether its last call answered from
    nearest-neighbour shots (the context did not fit the window)."""

    def __init__(self, predictor: Predictor):
        self.predictor, self.retrieved = predictor, False

    def __call__(self, ctx, y, test):
        before = self.predictor.stats["retrieval_chunks"]
        out = self.predictor.predict_proba(ctx, y, test)
        self.retrieved = self.predictor.stats["retrieval_chunks"] > before
        return out


def in_context(ref: str, ep: EvaluateParams, seed: int) -> PredictFn:
    """The predict function of an in-context model (a reference: see ``models_to_evaluate``), as the
    evaluation params ask."""
    model, tok = load_trained_with_tokenizer(resolve(resolve_base(ref)))
    window = getattr(model.config, "max_position_embeddings", None)
    cutoff = ep.cutoff_len if ep.cutoff_len is None or window is None else min(ep.cutoff_len, window)
    return InContext(Predictor(model, tok, max_queries=ep.max_queries, n_ensemble=ep.n_ensemble, seed=seed,
                               cutoff_len=cutoff))


def label_capacity_of(refs: dict[str, str]) -> int:
    """The most classes every one of these in-context models can score (the labels their tokenizers can write)."""
    from mllm.inference.scoring import label_capacity
    from mllm.text.tokenizer import load_tokenizer

    return min((label_capacity(load_tokenizer(resolve(resolve_base(ref)))) for ref in refs.values()), default=MAX_LABELS)


def release_memory() -> None:
    """Give back what a dropped model held, so that the next one loads into it (GPU memory above all)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def models_to_evaluate(params: Params, model_dir: str) -> tuple[dict[str, str], str | None]:
    """name -> model reference: ``trained`` (its directory), its ``base`` (as params name it) and the
    registry's ``champion`` (``models:/<name>/<version>``, when it exists and is not the same weights); plus
    the champion's version. References, not resolved paths, so what is recorded does not depend on where
    the checkout lies or where a download landed."""
    ep = params.evaluate
    if not Path(model_dir, "config.json").is_file() and not Path(model_dir, "adapter_config.json").is_file():
        raise ModelError(f"{model_dir} is not a trained model directory (run the train stage first)")
    out = {"trained": model_dir}
    if ep.include_base and params.model.base != "scratch":
        resolve_base(params.model.base)  # a missing base fails here, before any work
        out["base"] = params.model.base
    champion_version = None
    if ep.compare_champion:
        mv = alias_version(ep.registered_model, CHAMPION)
        if mv is not None:
            champion_version = str(mv.version)
            ref = f"models:/{ep.registered_model}/{mv.version}"
            # trained weights that already are the champion have nothing to be compared against
            if weights_digest(resolve(ref)) != weights_digest(Path(model_dir)):
                out["champion"] = ref
    return out, champion_version

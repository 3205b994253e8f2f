"""The ``plant`` stage: the embedded base compiled from code (``mllm.model.plant``) with the settings in
params.yaml. With ``check`` the build is compared with a committed copy (models/tiny-base, which is what
``model.base: tiny`` loads in any checkout without DVC): a difference fails the stage and says how to refresh
the copy. Deterministic and about ten seconds, so it runs as a plain function, not a Prefect flow."""

from __future__ import annotations

import json
from pathlib import Path

from mllm.core.errors import StageFailed
from mllm.core.params import load_params
from mllm.model.plant import PLANT_RECORD, save_planted
from mllm.text.tokenizer import build_tokenizer


def run_plant(params_path: str = "params.yaml", out: str = "data/base", check: str | None = None,
              overrides: dict | None = None) -> dict:
    settings = load_params(params_path, overrides).plant
    record = save_planted(out, build_tokenizer("whole"), settings)
    if check is not None:
        committed = Path(check) / PLANT_RECORD
        theirs = json.loads(committed.read_text()) if committed.is_file() else {}
        if theirs.get("model_sha256") != record["model_sha256"]:
            raise StageFailed(
                f"the base built from code ({out}, sha256 {record['model_sha256'][:12]}) differs from the "
                f"committed {check} (sha256 {str(theirs.get('model_sha256'))[:12]}): run "
                f"`mllm plant --out {check}` and commit it")
    return record

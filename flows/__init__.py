"""Prefect flows: they wire the library's stages together and hold no logic of their own."""

import os

# No phoning home from a pipeline run (the machines here have no internet, and a team's may not want it).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Without PREFECT_API_URL each command starts a temporary API server; on a busy machine it can take longer
# than Prefect's 20 s to answer, and a busy laptop is not bad input. The user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

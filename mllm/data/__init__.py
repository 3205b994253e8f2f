"""Data stages: SCM priors -> checked task shards (generate) -> random-forest teacher (filter)."""

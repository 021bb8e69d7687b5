"""Training: the engine that fits a spec, its resumable state and the frozen-backbone feature cache."""

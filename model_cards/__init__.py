"""Model-card templates for Harmon checkpoints (installed as `harmon_model_cards`)."""

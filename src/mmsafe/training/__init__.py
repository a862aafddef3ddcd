"""Training data and recipes for safety-tuning models (the demo model's safety fine-tune)."""

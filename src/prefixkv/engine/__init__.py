"""Hugging Face inference engine: model loading, prefix-cached generation."""

"""nimbuild: Hugging Face cross-encoders to hashed, hardware-specific, servable profiles."""

__version__ = "0.1.0"

"""pefthub: parameter-efficient fine-tuning methods, compared honestly, on PyTorch Lightning."""

__version__ = "0.1.0"

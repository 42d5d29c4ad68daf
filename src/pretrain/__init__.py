"""pretrain: from raw text to a pretrained language model, on a laptop or many GPUs."""

__version__ = "0.1.0"

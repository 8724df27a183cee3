"""internalrl: internal reinforcement learning (Kobayashi et al. 2025, arXiv 2512.20605)."""
__version__ = "0.1.0"

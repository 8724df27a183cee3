"""internalrl: internal reinforcement learning (Kobayashi et al. 2025, arXiv 2512.20605).

Importing it registers the Gymnasium environments ``internalrl/GridPinpad-v0`` and
``internalrl/AntPinpad-v0`` (the ant needs MuJoCo only when made), as ``import minigrid`` does."""
__version__ = "0.1.0"

from . import envs  # noqa: E402,F401  (registers the Gymnasium ids)

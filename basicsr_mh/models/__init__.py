"""Models registered into BasicSR's MODEL_REGISTRY."""
from .multihead_model import MultiHeadImageRestorationModel  # noqa: F401

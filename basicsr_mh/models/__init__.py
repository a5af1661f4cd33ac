"""Models registered into BasicSR's MODEL_REGISTRY: MultiHeadImageRestorationModel and the forks' model types
(ImageRestorationModel, ImageCleanModel); the forks' schedulers live in :mod:`basicsr_mh.models.lr_scheduler`."""
from .fork_models import ImageCleanModel, ImageRestorationModel  # noqa: F401
from .multihead_model import MultiHeadImageRestorationModel  # noqa: F401

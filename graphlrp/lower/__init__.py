"""Front-ends that turn a network into a :class:`~graphlrp.Graph`."""
from .torch_modules import lower

__all__ = ["lower"]

"""model_zoo: the library shared by training and the dashboard.

Image I/O, ROI maths, member specs, the zoo release format, ensemble inference and
CAM explanations. Heavy dependencies (torch, timm, grad-cam) are imported lazily inside
the modules that need them so that ``import model_zoo`` stays cheap.
"""

from model_zoo.errors import InputError, IntegrityError, ZooError

__version__ = "0.1.0"

__all__ = ["InputError", "IntegrityError", "ZooError", "__version__"]

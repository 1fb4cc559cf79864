"""`job_processor.admin`: the stable import path of the operator verbs (`Admin`), which live
in `job_processor.ops.admin` (one module per area). See that package for the documentation."""

from .ops.admin import *  # noqa: F403 - the same names, from the path users import
from .ops.admin import __all__ as __all__

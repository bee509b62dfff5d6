"""codistill: peer-to-peer co-distillation between regions over gRPC.

Each region trains its own model on its own data and shares only
temperature-softened predictions with its peers, forming a per-example,
attention-weighted consensus to distil from.
"""

from codistill.config import ConfigError, RunConfig, load

__all__ = ["ConfigError", "RunConfig", "load"]
__version__ = "0.1.0"

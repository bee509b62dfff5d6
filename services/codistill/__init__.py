"""codistill: peer-to-peer co-distillation between regions over gRPC.

Each region trains its own model on its own data and shares only
temperature-softened predictions with its peers, forming a per-example,
attention-weighted consensus to distil from.

    import codistill
    result = codistill.run("configs/quickstart.yaml", model="mypkg.nets:resnet8", out="runs/mine")
"""

from codistill.api import RunResult, run
from codistill.config import ConfigError, RunConfig, load
from codistill.data import DataError, Dataset

__all__ = ["ConfigError", "DataError", "Dataset", "RunConfig", "RunResult", "load", "run"]
__version__ = "0.1.0"

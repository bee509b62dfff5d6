"""codistill: peer-to-peer co-distillation between regions over gRPC.

Each region trains its own model on its own data and shares only
temperature-softened predictions with its peers, forming a per-example,
attention-weighted consensus to distil from.

    import codistill
    result = codistill.run("configs/quickstart.yaml", model="mypkg.nets:resnet8", out="runs/mine")
    model = codistill.load_model("runs/mine", region=0)          # a trained region, an nn.Module
    ensemble = codistill.load_ensemble("runs/mine")              # every region: ensemble.predict_proba(x)
"""

from codistill.api import RunResult, run
from codistill.config import ConfigError, RunConfig, load
from codistill.data import DataError, Dataset
from codistill.saved.ensemble import Ensemble, load_ensemble
from codistill.saved.store import load_model

__all__ = ["ConfigError", "DataError", "Dataset", "Ensemble", "RunConfig", "RunResult", "load", "load_ensemble", "load_model", "run"]
__version__ = "0.1.0"

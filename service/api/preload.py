"""What the API's fork server imports before it forks the API processes (service/cli/supervisor.py).

Every API process needs torch, torchvision, ONNX Runtime, matplotlib, FastAPI and SQLAlchemy, and
importing them is most of its memory (torch alone is about 370 MB) and of its start-up time. Imported
once here, their pages are shared by every process forked from the fork server instead of copied
into each: a page stays shared until a process writes to it. So the collector is off while they are
imported (no freed holes between them) and what they built is frozen afterwards (a collection in a
child never writes to it); each child turns the collector back on.

`ps` shows the fork server as `trainyard api fork server`, and each API process as the command that
would have started it alone (`python -m service.api.server`).

Only libraries and `models` go here: nothing that reads the service's settings when imported.
httpx, rich and typer are for the supervisor's __main__ (service/cli/main.py), which multiprocessing
imports again in each child it forks.
"""

import gc

from service.core.background import set_process_title

set_process_title("trainyard api fork server (service.api.preload)")
gc.disable()

import fastapi  # noqa: E402, F401
import httpx  # noqa: E402, F401
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # as service/api/plots.py does, before pyplot

import matplotlib.pyplot  # noqa: E402, F401
import numpy  # noqa: E402, F401
import onnx  # noqa: E402, F401
import onnxruntime  # noqa: E402, F401
import optuna  # noqa: E402, F401
import PIL.Image  # noqa: E402, F401
import pydantic  # noqa: E402, F401
import rich.console  # noqa: E402, F401
import safetensors.torch  # noqa: E402, F401
import sqlalchemy.orm  # noqa: E402, F401
import torch  # noqa: E402, F401
import torchvision.models  # noqa: E402, F401
import typer  # noqa: E402, F401
import uvicorn  # noqa: E402, F401

import models.data.loading  # noqa: E402, F401
import models.data.uploads  # noqa: E402, F401
import models.inference.onnx_runtime  # noqa: E402, F401
import models.nets.cost  # noqa: E402, F401
import models.nets.pretrained  # noqa: E402, F401
import models.spec.sweeps  # noqa: E402, F401

gc.freeze()

"""Train a spec with the engine alone, in one process or as one rank under torchrun, and save each
epoch's metrics and the final weights (rank 0's) for tests/models/test_distributed.py to compare.

    python -m tests.support.ddp_fit SPEC_JSON DATA_DIR OUT_FILE [STOP_AT_POLL]
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.support.ddp_fit ...

With STOP_AT_POLL, rank 0 alone asks to stop at that poll of should_stop; each rank then saves
where it stopped in OUT_FILE.rankN.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from models.spec.job import JobSpec
from models.training.distributed import Ranks
from models.training.engine import fit, resolve_device
from tests.models.common import Recorder, StopAt


def main(spec_json: str, data_dir: str, out: str, stop_at_poll: str | None = None) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = JobSpec.model_validate_json(spec_json)
    ranks = Ranks.from_environment()
    if ranks is not None:
        ranks.start(ranks.device(resolve_device(spec.device)), timeout_seconds=60)
    leader = ranks is None or ranks.leader
    recorder = StopAt(int(stop_at_poll)) if stop_at_poll and leader else Recorder()
    try:
        result = fit(spec, recorder, data_dir=Path(data_dir), ranks=ranks)
    finally:
        if ranks is not None:
            ranks.stop()
    if stop_at_poll:
        rank = ranks.rank if ranks else 0
        torch.save({"reason": result.reason, "stopped_at": result.stopped_at}, f"{out}.rank{rank}")
    elif leader:
        torch.save(
            {
                "epochs": [m.as_dict() for m in recorder.epochs],
                "weights": result.run.model.state_dict(),
                "reason": result.reason,
            },
            out,
        )


if __name__ == "__main__":
    main(*sys.argv[1:5])

"""One epoch over the same 16 sequences, padded to a fixed length: run with torchrun (2 processes, gloo) or alone.

python -m torch.distributed.run --nproc_per_node 2 tests/ddp_job.py OUT_DIR RECORD PER_DEVICE_BATCH
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meter import FlopsMeterCallback
from tests.trainer_jobs import PadCollator, run, sequences, tiny_model

out, record, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
run(
    tiny_model(),
    sequences(16),
    out,
    [FlopsMeterCallback(output_path=record, log_every=2)],
    collator=PadCollator(pad_to=40),
    max_steps=-1,
    num_train_epochs=1,
    per_device_train_batch_size=batch,
    **({"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", 1)) > 1 else {}),
)

"""Run by tests/test_engine.py under torchrun: trains the toy MAE and saves each rank's weights."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import collate
from scimae.core.engine import Trainer, TrainConfig
from toy import ToyImages, toy_mae

out = Path(sys.argv[1])
cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_epochs=0.5, log_every=1, figure_every=0)
trainer = Trainer(toy_mae(), cfg, run_dir=out / "run", collate=collate)
trainer.fit(ToyImages(32))
torch.save(trainer.model.state_dict(), out / f"rank{trainer.dist.rank}.pt")
print(f"rank {trainer.dist.rank} world {trainer.dist.world} steps {trainer.step}")

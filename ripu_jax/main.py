"""Command line: `python -m ripu_jax.main --config configs/demo.py --workdir /tmp/ripu_demo`.

Any config field can be overridden, e.g. `--config.active.ratio=0.05`; a small run of any
config is `--config configs/synthia.py:smoke`. Rerunning the same command resumes.
"""

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from ripu_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py), optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, rounds.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Progress bars and one line per eval/round say what happens; library INFO logs
    # (orbax writes several per checkpoint) would drown them. --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)

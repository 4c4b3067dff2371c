"""`python -m audionet_tf.train`: the `train` command (see `audionet_tf/commands/train.py`)."""
from audionet_tf import _command_module
from audionet_tf.commands.train import main

_command_module(__name__)  # `audionet_tf.train(...)` stays the API's call after this module is imported

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

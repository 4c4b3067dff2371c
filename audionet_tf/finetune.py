"""`python -m audionet_tf.finetune`: the `finetune` command (see `audionet_tf/commands/finetune.py`)."""
from audionet_tf import _command_module
from audionet_tf.commands.finetune import main

_command_module(__name__)  # `audionet_tf.finetune(...)` stays the API's call after this module is imported

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

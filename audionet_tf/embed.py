"""`python -m audionet_tf.embed`: the `embed` command (see `audionet_tf/commands/embed.py`)."""
from audionet_tf import _command_module
from audionet_tf.commands.embed import main

_command_module(__name__)  # `audionet_tf.embed(...)` stays the API's call after this module is imported

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

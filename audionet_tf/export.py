"""`python -m audionet_tf.export`: the `export` command (see `audionet_tf/commands/export.py`)."""
from audionet_tf import _command_module
from audionet_tf.commands.export import main

_command_module(__name__)  # `audionet_tf.export(...)` stays the API's call after this module is imported

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

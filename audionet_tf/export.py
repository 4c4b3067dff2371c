"""`python -m audionet_tf.export`: the `export` command (see `audionet_tf/commands/export.py`)."""
from audionet_tf.commands.export import main

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

"""`python -m audionet_tf.prepare`: the `prepare` command (see `audionet_tf/commands/prepare.py`)."""
from audionet_tf.commands.prepare import main

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

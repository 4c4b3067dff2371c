"""`python -m audionet_tf.evaluate`: the `evaluate` command (see `audionet_tf/commands/evaluate.py`)."""
from audionet_tf.commands.evaluate import main

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

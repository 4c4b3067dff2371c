"""`python -m audionet_tf.predict`: the `predict` command (see `audionet_tf/commands/predict.py`)."""
from audionet_tf.commands.predict import main

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

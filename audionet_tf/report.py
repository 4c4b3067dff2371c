"""`python -m audionet_tf.report`: the `report` command (see `audionet_tf/commands/report.py`)."""
from audionet_tf.commands.report import main

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

"""`python -m audionet_tf.embed`: the `embed` command (see `audionet_tf/commands/embed.py`)."""
from audionet_tf.commands.embed import main

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

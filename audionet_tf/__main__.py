"""`python -m audionet_tf` is `python -m audionet_tf.train`."""
from audionet_tf.commands.train import main

if __name__ == "__main__":
    from audionet_tf.core.console import run_command

    raise SystemExit(run_command(main))

"""`python -m audionet_tf COMMAND ...` is the installed `audionet COMMAND ...`."""
from audionet_tf.commands.main import run

if __name__ == "__main__":
    raise SystemExit(run("python -m audionet_tf"))

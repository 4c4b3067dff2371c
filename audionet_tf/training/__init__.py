"""Training the student: strategies, the run and its faults (`trainer`), the loop of many steps per call with
Keras callbacks at its boundaries (`loop`), backups and stop signals (`backup`), checkpoints, history and
TensorBoard (`callbacks`, `timeline`), and the figures they draw (`figures`)."""

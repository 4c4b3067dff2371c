"""Training the student: strategies, `fit` and faults (`trainer`), backups and stop signals (`backup`),
checkpoints, history and TensorBoard (`callbacks`, `timeline`), and the figures they draw (`figures`)."""

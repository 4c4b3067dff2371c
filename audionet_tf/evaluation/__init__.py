"""How well it worked: agreement with the teacher on held-out data and transfer to sound classification
(`evaluate`, with `features`), and a run's report (`report`)."""

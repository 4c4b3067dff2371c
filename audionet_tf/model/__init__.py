"""The student: the slides' layer table as a Keras functional model (`student`) and the distillation loss
and agreement metrics (`losses`)."""

"""Using a trained student: the export (`export`: SavedModel signatures, TFLite), loading any of its forms
(`inference`), and what it hears in a recording (`predict`) or its embeddings (`embed`)."""

"""A .tflite file run the way another app runs it: LiteRT's interpreter on its own, resized to the batch."""
import numpy as np


def run_tflite(path, windows: np.ndarray) -> np.ndarray:
    """The file's first output for `windows` (float32 [N, samples]), run with ai_edge_litert."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(windows.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, windows)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

"""Other tools, each behind an optional extra: ONNX export, hub folders, TensorBoard."""

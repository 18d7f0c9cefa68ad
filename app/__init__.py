"""avscene HTTP service: FastAPI routes around ONNX Runtime sessions loaded from the model store."""

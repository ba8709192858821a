"""Registry: MLflow model versions with ONNX artifacts, aliases, approvals and an audit log."""

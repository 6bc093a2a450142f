"""A student as it is deployed: its ONNX / TorchScript graph and what it costs (parameters, MACs, latency)."""

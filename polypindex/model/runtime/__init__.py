"""The serving runtimes (ONNX Runtime, OpenVINO), the one encoder loader, parity."""

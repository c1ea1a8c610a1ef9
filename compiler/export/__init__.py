"""ONNX export with the parity gate, INT8 quantization and its graph rewrites."""

"""The torch models (HMVE, ViT, the encoder wrapper), ONNX export and INT8 quantisation."""

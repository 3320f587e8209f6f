"""Interop: largo checkpoints to and from other formats (Hugging Face folders, GGUF, ONNX), each checked by outputs."""

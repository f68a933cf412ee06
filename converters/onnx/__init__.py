"""The onnx target: its row is in target.py."""

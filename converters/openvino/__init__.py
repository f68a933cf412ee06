"""The openvino target: its row is in target.py."""

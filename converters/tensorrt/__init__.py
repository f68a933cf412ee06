"""The tensorrt target: its row is in target.py."""

"""The coreml target: its row is in target.py."""

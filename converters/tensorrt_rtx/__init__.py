"""The tensorrt-rtx target: TensorRT for RTX engines built ahead of time on the CPU (target.py, build.py)."""

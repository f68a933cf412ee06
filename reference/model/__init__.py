"""The SHARP network (state_dict-compatible with ml-sharp's RGBGaussianPredictor)."""

from .composer import GaussianGrids, flatten_grids
from .params import PRESETS, PredictorParams
from .predictor import RGBGaussianPredictor, create_predictor

__all__ = ["PRESETS", "GaussianGrids", "PredictorParams", "RGBGaussianPredictor", "create_predictor", "flatten_grids"]

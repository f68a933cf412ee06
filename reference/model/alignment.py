"""The training-only depth-alignment UNet.

ml-sharp runs it only when a ground-truth depth is passed (training); predict never does. Its 156
tensors are in the official checkpoint, so the modules exist here with the same names and shapes to
make a strict load work. No inference path calls it, and both ONNX exporters would drop it anyway.
"""

from __future__ import annotations

from torch import nn

from .blocks import norm_conv_block
from .params import AlignmentParams


class _UNetEncoder(nn.Module):
    def __init__(self, p: AlignmentParams, widths: list[int]):
        super().__init__()
        # Registered before conv_in, matching the official state_dict order.
        self.convs_down = nn.ModuleList(
            nn.Sequential(
                nn.AvgPool2d(2),
                norm_conv_block(widths[i], widths[i + 1], widths[i + 1] // 2, p.norm_num_groups),
                norm_conv_block(widths[i + 1], widths[i + 1], widths[i + 1] // 2, p.norm_num_groups),
            )
            for i in range(p.steps)
        )
        self.conv_in = nn.Sequential(
            nn.Conv2d(2, widths[0], 3, padding=1), nn.GroupNorm(p.norm_num_groups, widths[0]), nn.ReLU()
        )


class _UNetDecoder(nn.Module):
    def __init__(self, p: AlignmentParams, widths: list[int]):
        super().__init__()
        ups = []
        for i in range(p.steps):
            # Input: the coarser map, concatenated with the skip of the same size (except at the bottom).
            dim_in = widths[-1] if i == 0 else 2 * widths[-1 - i]
            dim_out = widths[-2 - i]
            ups.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2.0, mode="nearest"),
                    norm_conv_block(dim_in, dim_out, dim_out // 2, p.norm_num_groups),
                    norm_conv_block(dim_out, dim_out, dim_out // 2, p.norm_num_groups),
                )
            )
        self.convs_up = nn.ModuleList(ups)
        self.conv_out = nn.Sequential(
            nn.GroupNorm(p.norm_num_groups, 2 * widths[0]),
            nn.ReLU(),
            nn.Conv2d(2 * widths[0], widths[0], 1),
            nn.GroupNorm(p.norm_num_groups, widths[0]),
            nn.ReLU(),
        )


class LearnedAlignment(nn.Module):
    def __init__(self, p: AlignmentParams):
        super().__init__()
        widths = [p.base_width * 2**i for i in range(p.steps + 1)]
        self.encoder = _UNetEncoder(p, widths)
        self.decoder = _UNetDecoder(p, widths)
        self.conv_out = nn.Conv2d(widths[0], 1, 1)


class DepthAlignment(nn.Module):
    """Holds the alignment UNet's weights; inference never calls it (see the module docstring)."""

    def __init__(self, p: AlignmentParams):
        super().__init__()
        self.scale_map_estimator = LearnedAlignment(p)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("depth alignment is training-only; SHARP inference does not run it")

"""Shared parametrization of the implicit-GEMM family (CPU and Triton tests)."""
from __future__ import annotations

import dataclasses

import pytest


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = True

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    def param(self, *marks):
        return pytest.param(self, id=self.name, marks=marks)


CASES = [
    Case("pw1x1", 2, 16, 7, 13, 24, 1, 1),
    Case("pw1x1_s2_nobias", 2, 16, 9, 9, 8, 1, 1, stride=2, bias=False),
    Case("pw1x1_g4", 1, 32, 5, 6, 16, 1, 1, groups=4),
    Case("3x3", 2, 8, 9, 11, 16, 3, 3, padding=1),
    Case("3x3_s2", 2, 8, 10, 9, 12, 3, 3, stride=2, padding=1),
    Case("3x3_s3_p0_nobias", 1, 6, 13, 11, 10, 3, 3, stride=3, bias=False),
    Case("3x3_s21", 2, 5, 9, 10, 7, 3, 3, stride=(2, 1), padding=(1, 0)),
    Case("3x3_d2", 2, 8, 12, 12, 8, 3, 3, padding=2, dilation=2),
    Case("3x3_d3_nobias", 1, 4, 15, 14, 6, 3, 3, padding=3, dilation=3, bias=False),
    Case("5x5", 2, 6, 11, 9, 10, 5, 5, padding=2),
    Case("5x5_s2_d2", 1, 6, 17, 15, 8, 5, 5, stride=2, padding=4, dilation=2),
    Case("7x1", 2, 8, 7, 13, 12, 7, 1, padding=(3, 0)),
    Case("1x7_g2_nobias", 2, 8, 9, 13, 12, 1, 7, padding=(0, 3), groups=2, bias=False),
    Case("g32_resnext", 2, 128, 6, 6, 128, 3, 3, padding=1, groups=32, bias=False),
    Case("g32_resnext_s2", 1, 64, 8, 8, 128, 3, 3, stride=2, padding=1, groups=32),
    Case("g4_uneven", 2, 12, 7, 9, 20, 3, 3, padding=1, groups=4),
    Case("g6_partial_vector", 2, 24, 7, 6, 24, 3, 3, stride=2, padding=1, groups=6),
    Case("g8_expand", 1, 16, 6, 7, 64, 3, 3, padding=1, groups=8),
    Case("same_3x3", 2, 8, 7, 13, 16, 3, 3, padding="same"),
    Case("same_even_4x4", 1, 6, 9, 8, 8, 4, 4, padding="same"),
    Case("same_d2", 1, 6, 9, 10, 8, 3, 3, padding="same", dilation=2, bias=False),
    Case("valid", 2, 6, 9, 10, 8, 3, 3, padding="valid"),
    Case("batch0", 0, 8, 9, 11, 16, 3, 3, padding=1),
    Case("batch1_rgb_stem", 1, 3, 16, 16, 40, 3, 3, stride=2, padding=1),
    Case("wide_channels", 1, 96, 5, 5, 80, 3, 3, padding=1),
    Case("kernel_eq_input", 2, 4, 5, 5, 6, 5, 5),
    Case("stride_gt_kernel", 1, 4, 11, 11, 6, 2, 2, stride=3),
    Case("9x9", 1, 4, 12, 12, 6, 9, 9, padding=4),
    # Few input channels: the CPU forward merges each kernel row into one tap
    # over a zero-padded copy (rows dilated, columns not; asymmetric padding).
    Case("rows_merged_dil21", 2, 3, 11, 10, 20, 3, 5, stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
    # Few output channels: the CPU weight gradient puts input channels on the
    # vectors (4 vectors per block in fp32 and fp64; 3 in fp32 with remainder rows).
    Case("narrow_out_3x3", 2, 64, 6, 7, 12, 3, 3, padding=1),
    Case("narrow_out_1x1", 2, 48, 5, 9, 20, 1, 1),
    # One-vector output panels with a reduction longer than one block (the
    # CPU forward splits its 9 taps of 1024 channels into blocks, and the
    # 1x1's 8200 channels into chunks, at any block size it picks: 128-512 KB).
    Case("narrow_out_blocked", 2, 1024, 5, 7, 16, 3, 3, padding=1),
    Case("pw1x1_chunked", 1, 8200, 3, 4, 16, 1, 1),
    # 17-24 output columns (MobileNet's 24-channel layers): the CPU fp32
    # forward and grad_input run one channel-interleaved 24-wide panel (4-row
    # blocks whose last vector has 8 lanes), here also with a blocked
    # reduction, two groups of 24 side by side, and 24 input gradients.
    Case("ci4_24_blocked", 2, 512, 5, 7, 24, 3, 3, padding=1),
    Case("ci4_24_groups2", 1, 48, 6, 7, 48, 1, 1, groups=2),
    Case("ci4_24_grad_input", 2, 24, 5, 9, 40, 1, 1, bias=False),
    # Grouped convs with whole vectors of input channels per group and one
    # group per output vector: the CPU weight gradient blocks 3 / 2 / 1 taps
    # x 8 / 4 / 2 / 1 output channels over one vector of input channels.
    Case("gwt_cg16", 2, 32, 7, 9, 32, 3, 3, padding=1, groups=2),
    Case("gwt_cg32_k13_s2", 1, 64, 9, 8, 26, 3, 3, stride=2, padding=1, groups=2),
    Case("gwt_cg16_2x2_d2", 2, 48, 8, 7, 36, 2, 2, padding=1, dilation=2, groups=3),
    Case("gwt_cg16_1x5_nobias", 1, 32, 5, 11, 20, 1, 5, padding=(0, 2), groups=2, bias=False),
    # Grouped convs with as many input as output channels per group, several
    # groups per vector and whole vectors of channels: the CPU forward and
    # grad_input run the sliding-window row kernel for 3-wide kernels (blocks
    # of 16, 8 and 4 outputs, partly empty ones at the end of a row; a strided
    # grad_input as one stride-1 conv per residue class, with 1- and 2-wide
    # windows, rows past the last output's reach getting zeros); 3x5 stays on
    # the indirect kernels.
    Case("grows_cg4", 2, 64, 7, 19, 64, 3, 3, padding=1, groups=16),
    Case("grows_cg8_s2_nobias", 1, 64, 9, 21, 64, 3, 3, stride=2, padding=1, groups=8, bias=False),
    Case("grows_cg2_p0", 1, 32, 5, 40, 32, 3, 3, groups=16),
    Case("grows_5x3_s12", 1, 64, 11, 10, 64, 5, 3, stride=(1, 2), padding=(2, 1), groups=16),
    Case("grows_3x5", 1, 32, 6, 9, 32, 3, 5, padding=(1, 2), groups=8),
    Case("grows_pad3", 1, 32, 4, 5, 32, 3, 3, padding=3, groups=8),
    Case("grows_s2_p0_even", 1, 32, 10, 12, 32, 3, 3, stride=2, groups=8),
    Case("grows_5x3_s32_p2", 2, 64, 13, 11, 64, 5, 3, stride=(3, 2), padding=2, groups=16),
    # 3x3 stride-1 convs with >= 16 in / 32 out channels: the CPU forward runs
    # Winograd (F(4x4, 3x3) on outputs large enough for it, F(2x2, 3x3) on the
    # 6x5 one), and so does grad_input when the transposed conv qualifies
    # (>= 16 out / 32 in channels, padding <= 2). Odd sizes leave tiles hanging
    # over the last row and column; 40, 36 and 33 channels end in partial
    # vectors of the GEMM or the transforms.
    Case("winograd_3x3", 2, 16, 9, 11, 40, 3, 3, padding=1),
    Case("winograd_p0_tails_nobias", 3, 36, 8, 7, 33, 3, 3, bias=False),
    Case("winograd_p20", 1, 40, 6, 10, 64, 3, 3, padding=(2, 0)),
    # F(4x4, 3x3) where the output is large enough: a 41x14 output leaves
    # one row and two columns of its last tiles inside (9x11: one row, three
    # columns).
    Case("winograd_f4_tails", 1, 24, 41, 14, 40, 3, 3, padding=1),
]

BY_NAME = {c.name: c for c in CASES}

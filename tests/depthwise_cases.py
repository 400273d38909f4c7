"""Depthwise parametrization (groups = C, weight [C * multiplier, 1, kH, kW])."""
from conv2d_cases import Case


def dw(name, N, C, H, W, R, S, mult=1, **kw):
    return Case(name, N, C, H, W, C * mult, R, S, groups=C, **kw)


DW_CASES = [
    dw("dw1x1", 2, 32, 7, 9, 1, 1),
    dw("dw3x3", 2, 32, 9, 11, 3, 3, padding=1),
    dw("dw3x3_s2", 2, 48, 13, 10, 3, 3, stride=2, padding=1),
    dw("dw3x3_d2_nobias", 2, 24, 12, 13, 3, 3, padding=2, dilation=2, bias=False),
    dw("dw3x3_odd_channels", 2, 19, 9, 7, 3, 3, padding=1),
    dw("dw5x5_s2", 1, 40, 15, 13, 5, 5, stride=2, padding=2),
    dw("dw7x7", 2, 16, 14, 15, 7, 7, padding=3),
    dw("dw7x7_short_rows", 2, 24, 8, 7, 7, 7, padding=3),
    # Wide rows: the sliding-window kernels' unchecked interior blocks (16 pixels) and channel tails.
    dw("dw5x5_wide", 1, 20, 7, 45, 5, 5, padding=2),
    dw("dw7x7_s2_wide", 1, 20, 9, 80, 7, 7, stride=2, padding=3),
    dw("dw7x7_s2_d2", 1, 16, 21, 19, 7, 7, stride=2, padding=6, dilation=2),
    dw("dw31x31", 1, 16, 33, 35, 31, 31, padding=15),
    dw("dw3x5_rect", 2, 24, 11, 12, 3, 5, padding=(1, 2)),
    dw("dw7x1_rect", 2, 16, 13, 9, 7, 1, padding=(3, 0)),
    dw("dw3x3_mult2", 2, 8, 9, 11, 3, 3, mult=2, padding=1),
    dw("dw5x5_mult2_s2", 1, 12, 13, 12, 5, 5, mult=2, stride=2, padding=2),
    dw("dw3x3_mult3", 1, 6, 9, 8, 3, 3, mult=3, padding=1),
    dw("dw3x3_same", 2, 32, 10, 13, 3, 3, padding="same"),
    dw("dw4x4_same_even", 1, 16, 9, 10, 4, 4, padding="same"),
    dw("dw3x3_batch0", 0, 32, 9, 11, 3, 3, padding=1),
    dw("dw3x3_big_plane", 1, 16, 40, 40, 3, 3, padding=1),
    # NCHW planes beyond the blocked path's tiles (> 1 MiB with AVX-512) run plane by plane.
    dw("dw3x3_plane_path", 1, 3, 100, 90, 3, 3, padding=1),
    dw("dw5x5_s2_plane_path", 1, 2, 150, 120, 5, 5, stride=2, padding=2),
    dw("dw3x3_s2_big_plane", 1, 16, 70, 66, 3, 3, stride=2, padding=1),
    # grad_input by residue class: input pixels no tap reaches (stride > kernel), mixed strides.
    dw("dw1x1_s3", 1, 16, 8, 10, 1, 1, stride=3),
    dw("dw3x3_s13", 1, 24, 9, 11, 3, 3, stride=(1, 3), padding=1),
]
DW_BY_NAME = {c.name: c for c in DW_CASES}
